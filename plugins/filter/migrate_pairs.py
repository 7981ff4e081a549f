# Copyright (c) volumeops.docker contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The migrate_pairs filter: the migrate role's pairs, each with every setting, and what is wrong with them.

Python rather than a Jinja template in the role: Ansible compiles a task's templates again for every
task it runs, and this logic as Jinja cost about 0.1 s of every migration (twice: the plan play and
the migration play run it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ansible_collections.volumeops.docker.plugins.filter.name_list import name_list
from ansible_collections.volumeops.docker.plugins.module_utils._validation import volume_name_error

# Settings that may come as one comma-separated string (-e, an AWX survey's text field).
LIST_SETTINGS = ('volumes', 'volume_labels', 'containers', 'stop_containers', 'exclude')

CHOICES = (
    ('strategy', ('cold', 'two_phase')),
    ('verify', ('metadata', 'content')),
    ('transfer', ('direct', 'controller')),
    ('existing', ('fail', 'replace')),
)

INVALID = ('Invalid migration pair %s -> %s: source and destination must be two different inventory hostnames, '
           'strategy cold|two_phase, verify metadata|content, transfer direct|controller, existing fail|replace, '
           'and at least one of volumes, volume_labels, compose_project or containers must select volumes.')


def _is_list(value):
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _count(value):
    """How many items a selection setting holds (a string counts its characters, as Jinja's length does)."""
    return len(value) if isinstance(value, (Sequence, Mapping)) else 0


def _name(value):
    return value if isinstance(value, str) and value else '?'


VOLUME_KEYS = ('name', 'dest_name', 'driver', 'driver_options', 'labels')


def _volume_entry_error(item):
    """Why one item of a pair's volumes is not a volume to migrate, or ''."""
    if isinstance(item, str):
        return volume_name_error(item) or ''
    if not isinstance(item, Mapping) or not isinstance(item.get('name'), str):
        return ('invalid volume entry %r in volumes: each is a volume name, or a dict with a name and optional %s.'
                % (item, ', '.join(VOLUME_KEYS[1:])))
    errors = [volume_name_error(item['name'])]
    if item.get('dest_name') is not None and item.get('dest_name') != '':
        errors.append(volume_name_error(item['dest_name'], 'dest_name'))
    for key in ('driver_options', 'labels'):
        if item.get(key) is not None and not isinstance(item[key], Mapping):
            errors.append('%s of volume %s must be a dict.' % (key, item['name']))
    if item.get('driver') is not None and not isinstance(item['driver'], str):
        errors.append('driver of volume %s must be a string.' % item['name'])
    errors = [e for e in errors if e]
    return ('invalid volume entry %r in volumes: %s' % (dict(item), ' '.join(errors))) if errors else ''


def _settings_errors(pair):
    """What volume_transfer would refuse only after the source containers were stopped: the pair's volume
    entries, compression level and exclude patterns (the module's own rules), each one message."""
    errors = [e for e in (_volume_entry_error(item) for item in pair['volumes']) if e]
    try:
        level = int(pair.get('compression_level', 1))
    except (TypeError, ValueError):
        level = None
    if level is None or not 1 <= level <= 19:
        errors.append('compression_level must be between 1 and 19 (got %r).' % (pair.get('compression_level'),))
    patterns = pair.get('exclude') or []
    if not _is_list(patterns):
        errors.append('exclude must be a list of patterns.')
    elif patterns:
        # Imported only when there are patterns (it is the modules' walk: standard library only, but not small).
        from ansible_collections.volumeops.docker.plugins.module_utils._tree import exclude_pattern_error
        errors.extend(e for e in (exclude_pattern_error(p) for p in patterns) if e)
    return errors


def _pair_ok(pair, hosts):
    source, dest = pair.get('source'), pair.get('destination')
    if not (isinstance(source, str) and source and isinstance(dest, str) and dest):
        return False
    if source == dest or source not in hosts or dest not in hosts:
        return False
    if any(pair.get(key) not in allowed for key, allowed in CHOICES):
        return False
    if not _is_list(pair.get('volumes')):
        return False
    project = pair.get('compose_project')
    return (_count(pair['volumes']) + _count(pair.get('volume_labels')) + _count(pair.get('containers'))) > 0 \
        or (isinstance(project, str) and len(project) > 0)


def _shared_destinations(pairs):
    """'destination:volume (from source:volume, ...)' for each destination volume that two pairs name."""
    sources = {}
    for pair in pairs:
        keys = []
        for volume in pair['volumes']:
            spec = {'name': volume} if isinstance(volume, str) else volume
            if not isinstance(spec, Mapping):
                continue
            name = spec.get('name', '?')
            key = '%s:%s' % (pair['destination'], spec.get('dest_name') or name)
            if key not in keys:  # one pair naming a volume twice copies it once
                keys.append(key)
                sources.setdefault(key, []).append('%s:%s' % (pair['source'], name))
    return ['%s (from %s)' % (key, ', '.join(who)) for key, who in sources.items() if len(who) > 1]


def migrate_pairs(given, defaults, hosts):
    """Normalize and check the migrate role's pairs.

    ``given``: the pairs (migrate_pairs, or the one pair of migrate_source/migrate_destination); each a
    dict whose keys override ``defaults`` (the migrate_* settings). ``hosts``: what holds the inventory's
    hostnames (hostvars). Returns ``{'pairs': [...], 'problems': [...]}``: every pair with every setting,
    the list settings given as strings split into lists; one message per invalid pair, then one naming
    the destination volumes that two pairs would both copy into (judged only when every pair is valid).
    """
    pairs, problems = [], []
    for item in given if _is_list(given) else [given]:
        if not isinstance(item, Mapping):
            problems.append(INVALID % ('?', '?'))
            continue
        pair = dict(defaults)
        pair.update(item)
        for key in LIST_SETTINGS:
            if isinstance(pair.get(key), str):
                pair[key] = name_list(pair[key])
        pairs.append(pair)
        if not _pair_ok(pair, hosts):
            problems.append(INVALID % (_name(pair.get('source')), _name(pair.get('destination'))))
            continue
        errors = _settings_errors(pair)
        if errors:
            problems.append('Invalid migration pair %s -> %s: %s'
                            % (pair['source'], pair['destination'], ' '.join(errors)))
    if not problems:
        shared = _shared_destinations(pairs)
        if shared:
            problems.append('Two migration pairs would copy into the same destination volume: %s. The second would '
                            'replace the first; give one of them another dest_name.' % '; '.join(shared))
    return {'pairs': pairs, 'problems': problems}


class FilterModule(object):
    def filters(self):
        return {'migrate_pairs': migrate_pairs}
