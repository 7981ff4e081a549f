# Copyright (c) volumeops.docker contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The migrate role's choice of volumes for one pair: migrate_select (which volumes, under which
destination names and migration ids) and migrate_keep (which of them to copy, which containers stop,
and what is wrong with the choice).

Python rather than Jinja templates in the role: Ansible compiles a task's templates again for every
task it runs, and this logic as Jinja cost about 0.1 s of every pair.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping

from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.volumeops.docker.plugins.filter.command_error import command_error
from ansible_collections.volumeops.docker.plugins.module_utils._docker_client import ACTIVE_STATES

# A migration id given by the user (migrate_id, a pair's id) becomes part of marker and staging names.
ID_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,50}')


def _container_name(name):
    return name[1:] if isinstance(name, str) and name.startswith('/') else name


def _unique(items):
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _has_labels(labels, selectors):
    """Whether ``labels`` match every selector (``key`` or ``key=value``); False for no selectors."""
    if not selectors:
        return False
    for selector in selectors:
        key, sep, value = selector.partition('=')
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _mounted_only_in_use(volume):
    """A source volume whose directory on the host is empty unless a container mounts it: another driver,
    or the local driver with mount options (NFS, CIFS, a device). The rule of _archive.mounted_only_in_use,
    which the modules use; not imported here, because importing _archive costs each task's worker process
    on the controller 20 ms."""
    options = volume.get('options') or {}
    return (volume.get('driver') or 'local') != 'local' or 'type' in options or 'device' in options


# A container in one of ACTIVE_STATES runs the processes that write its volumes (a paused one resumes writing
# when unpaused, a restarting one is started again by its restart policy): the role stops it like a running one
# (docker stop works on both) and starts its destination twin. The modules count the same states as users.


def _inspect_output(inspect, source):
    """The volumes and containers of host ``source`` from the registered result of the role's inspect program
    (raw), and '' or why there are none. Each container: {name, id, state, running, mounts}."""
    stdout = inspect.get('stdout') or ''
    head, sep, lines = stdout.partition('\ncontainers:\n')
    if inspect.get('rc', 1) != 0 or not head.startswith('volumes:') or not sep:
        return [], [], 'Cannot list the Docker volumes on %s: %s' % (
            source, command_error(inspect) or inspect.get('msg') or 'exit status %s' % inspect.get('rc'))
    decoder = json.JSONDecoder()
    containers = []
    try:
        found = json.loads(head[len('volumes:'):])
        for line in lines.splitlines():
            if not line.strip():
                continue
            # One container per line: its name, status, mounts and ID, each JSON, separated by one space.
            name, end = decoder.raw_decode(line)
            status, end = decoder.raw_decode(line, end + 1)
            mounts, end = decoder.raw_decode(line, end + 1)
            cid = json.loads(line[end:]) if line[end:].strip() else ''
            containers.append({'name': _container_name(name), 'id': cid or '', 'state': status,
                               'running': status in ACTIVE_STATES, 'mounts': mounts or []})
        users = {}
        for c in containers:
            for mount in c['mounts']:
                if mount.get('Type') == 'volume' and mount.get('Name'):
                    users.setdefault(mount['Name'], []).append({
                        'name': c['name'], 'running': c['running'], 'state': c['state'],
                        'destination': mount.get('Destination')})
        volumes = [{'name': v['Name'], 'driver': v.get('Driver') or 'local', 'options': v.get('Options') or {},
                    'labels': v.get('Labels') or {}, 'mountpoint': v.get('Mountpoint') or '',
                    'in_use_by': sorted(users.get(v['Name'], []), key=lambda u: (u['name'], u['destination'] or ''))}
                   for v in found]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return [], [], 'Cannot read the Docker volumes of %s from the docker CLI (%s)' % (source, exc)
    return volumes, containers, ''


def source_volumes(inspect, source):
    """The volumes of host ``source`` from the registered result of the role's inspect program (raw): a list
    of {name, driver, options, labels, mountpoint, in_use_by: [{name, running, state, destination}]}, and
    '' or why there is none. The containers' part follows _volume.mounts_by_volume (volume_info), with the
    fields the role uses; running is true for a running, paused or restarting container."""
    volumes, dummy, error = _inspect_output(inspect, source)
    return volumes, error


def _given_containers(given, containers):
    """The names of the containers that the pair's containers setting names (a name, a full ID or an ID prefix,
    as docker takes them), the entries that match none, and those that match several."""
    names, unknown, ambiguous = [], [], []
    for entry in given or []:
        entry = _container_name(entry)
        found = [c['name'] for c in containers if c['name'] == entry]
        if not found and isinstance(entry, str) and entry:
            found = [c['name'] for c in containers if c['id'].startswith(entry)]
        if not found:
            unknown.append(entry)
        elif len(found) > 1:
            ambiguous.append('%s (%s)' % (entry, ', '.join(found)))
        else:
            names.append(found[0])
    return names, unknown, ambiguous


def _source_unreadable(volume):
    """Why a source volume cannot be migrated by the role whatever it is set to, or '': a tmpfs (the local
    driver with type=tmpfs) holds its content only while a container uses it, so stopping the containers (which
    the copy needs) wipes it, and the copy would be an empty volume."""
    options = volume.get('options') or {}
    if (volume.get('driver') or 'local') == 'local' and options.get('type') == 'tmpfs':
        return 'local %s, a tmpfs: its content is gone once its containers stop' % json.dumps(options, sort_keys=True)
    return ''


def migrate_select(src_inspect, pair, destination):
    """The volumes of one pair, in order: those named (their specs), then those of the source's volumes
    (``src_inspect``, the registered result of the role's inspect program) that its volume_labels,
    compose_project or containers select.

    Returns ``{'unreachable': message or '', 'selected': [specs], 'planned': [volumes]}``; each planned
    volume has name, dest_name, migration_id (unique per source volume and destination volume, also with
    one migrate id for many pairs: two sources' volumes of one name must never count as each other's copy),
    size 0, mountpoint, exists, src_mounted, driver, driver_options, labels and users (the containers that
    mount it). Nothing is planned when the source did not answer (unreachable says why).
    """
    if src_inspect.get('unreachable'):
        return {'unreachable': 'Source %s is unreachable: %s' % (pair['source'], src_inspect.get('msg', '')),
                'selected': [], 'planned': []}
    volumes, containers, error = _inspect_output(src_inspect, pair['source'])
    if error:
        return {'unreachable': error, 'selected': [], 'planned': []}
    given, unknown, ambiguous = _given_containers(pair.get('containers'), containers)
    selected, names = [], []
    for item in pair['volumes']:
        spec = {'name': item} if isinstance(item, str) else item
        if spec.get('name') not in names:
            selected.append(spec)
            names.append(spec.get('name'))
    for volume in sorted(volumes, key=lambda v: v['name']):
        labels = volume.get('labels') or {}
        users = [_container_name(u['name']) for u in volume.get('in_use_by') or []]
        project = pair.get('compose_project') or ''
        chosen = (_has_labels(labels, pair.get('volume_labels') or [])
                  or (project and labels.get('com.docker.compose.project') == project)
                  or any(user in given for user in users))
        if chosen and volume['name'] not in names:
            selected.append({'name': volume['name']})
            names.append(volume['name'])
    by_name = dict((v['name'], v) for v in volumes)
    planned = []
    for spec in selected:
        src = by_name.get(spec['name'])
        dest_name = spec.get('dest_name') or spec['name']
        tag = hashlib.sha256(('%s|%s|%s|%s' % (pair['source'], spec['name'], destination, dest_name))
                             .encode('utf-8')).hexdigest()
        mid = ('%s-%s' % (pair['id'], tag[:12])) if pair.get('id') else 'vm-' + tag[:20]
        planned.append({
            'name': spec['name'], 'dest_name': dest_name, 'migration_id': mid, 'size': 0,
            'mountpoint': (src.get('mountpoint') or '') if src else '',
            'exists': src is not None,
            'src_mounted': src is not None and _mounted_only_in_use(src),
            'src_unreadable': _source_unreadable(src) if src else '',
            'driver': spec.get('driver', ''), 'driver_options': spec.get('driver_options', {}),
            'labels': spec.get('labels') or ((src.get('labels') if src else None) or {}),
            'users': ((src.get('in_use_by') if src else None) or []),
        })
    return {'unreachable': '', 'selected': selected, 'planned': planned, 'unknown_containers': unknown,
            'ambiguous_containers': ambiguous}


def _gone_done(gone_markers):
    """Volumes an earlier run migrated and removed from the source (remove_source): the destination's
    marker of the volume (slurp results) says complete, for this migration id."""
    out = []
    for result in (gone_markers or {}).get('results') or []:
        if 'content' not in result:
            continue
        marker = json.loads(base64.b64decode(result['content']))
        volume = result['migrate__v']
        if isinstance(marker, Mapping) and marker.get('migration_id', '') == volume['migration_id'] \
                and marker.get('state', '') == 'complete':
            out.append(volume['name'])
    return out


def _running_extra(extra):
    """Names of the running containers among ``extra`` (results of docker container inspect)."""
    out = []
    for result in (extra or {}).get('results') or []:
        if 'stdout' not in result:
            continue
        info = json.loads(result['stdout'])[0]
        state = info.get('State') or {}
        if state.get('Running') or state.get('Status') in ACTIVE_STATES:
            out.append(_container_name(info['Name']))
    return out


def _problem(selection, pair, destination, done, claimed, dest_docker_root):
    """The first of what makes the pair's choice of volumes impossible, or ''."""
    if selection['unreachable']:
        return selection['unreachable']
    planned = selection['planned']
    unknown, ambiguous = selection.get('unknown_containers') or [], selection.get('ambiguous_containers') or []
    if unknown or ambiguous:
        return ' '.join(
            (['Container(s) not found on %s: %s (containers selects the volumes of containers by name, ID or ID '
              'prefix; nothing was stopped).' % (pair['source'], ', '.join(unknown))] if unknown else [])
            + (['Container ID prefix(es) matching several containers on %s: %s; give a name or a longer ID.'
                % (pair['source'], '; '.join(ambiguous))] if ambiguous else []))
    missing = [v['name'] for v in planned if not v['exists'] and v['name'] not in done]
    if missing:
        msg = 'Volume(s) not found on %s: %s.' % (pair['source'], ', '.join(missing))
        if boolean(pair.get('remove_source'), strict=False):
            msg += (' With remove_source, a volume gone from the source counts as migrated only when %s holds its'
                    ' complete copy by this migration under migrate_dest_docker_root=%s; none was found there.'
                    % (destination, dest_docker_root))
        return msg
    if not selection['selected']:
        return ('No volume on %s matches the selection (volumes, volume_labels, compose_project, containers).'
                % pair['source'])
    # Destination names that two selected volumes of this pair, or an earlier pair of this host to the same
    # destination in this run, would share.
    shared = []
    for name in _unique(v['dest_name'] for v in planned):
        sources = [v['name'] for v in planned if v['dest_name'] == name] \
            + [c['from'] for c in claimed if c['key'] == '%s:%s' % (destination, name)]
        if len(sources) > 1:
            shared.append('%s (from %s)' % (name, ', '.join(sources)))
    if shared:
        return ('Two or more selected volumes would be copied into the same destination volume on %s: %s. Each would'
                ' replace the one before; give each its own dest_name.' % (destination, '; '.join(shared)))
    if pair.get('id') and not ID_PATTERN.fullmatch(pair['id']):
        return 'migrate id must match [A-Za-z0-9][A-Za-z0-9_.-]{0,50}'
    return ''


def migrate_keep(selection, pair, destination, gone_markers, extra, claimed, dest_docker_root):
    """What the pair copies and stops, from migrate_select's ``selection``.

    ``gone_markers``: the registered slurp of the destination markers of volumes missing on the source
    (remove_source), ``extra``: the registered inspect of the further containers to stop, ``claimed``: the
    destination volumes of this host's earlier pairs ({key: 'destination:volume', from}).
    Returns vols (the planned volumes that exist on the source), done_results (summary rows of volumes an
    earlier run migrated and removed from the source), to_stop (running source containers that use the
    volumes, when stop_using_containers, and the running ones of stop_containers; paused and restarting ones
    count as running), candidates_dest (the containers whose same-named twins may be started on the destination:
    exactly to_stop), claimed (with this pair's destination volumes,
    unless there is a problem) and problem ('' when the pair can go on).
    """
    planned = selection['planned']
    done = _gone_done(gone_markers)
    problem = _problem(selection, pair, destination, done, claimed, dest_docker_root)
    vols = [v for v in planned if v['exists']]
    users = [u for v in vols for u in v['users']]
    done_results = [{
        'source': pair['source'], 'destination': destination, 'volume': v['name'], 'dest_volume': v['dest_name'],
        'status': 'ok', 'changed': False, 'note': 'source already removed', 'bytes': 0, 'bytes_sent': 0,
        'duration': 0, 'final_duration': 0, 'mb_per_s': 0, 'downtime': 0, 'verified': True, 'verify': 'marker',
        'strategy': pair['strategy'], 'relayed': False, 'fingerprint': ''} for v in planned if v['name'] in done]
    to_stop = _unique(([_container_name(u['name']) for u in users if u.get('running')]
                       if boolean(pair.get('stop_using_containers'), strict=False) else []) + _running_extra(extra))
    # The destination starts only the twins of the containers this migration stops: those running (paused,
    # restarting) on the source when it selected them. Not a container that was stopped there (a one-off job,
    # an app its operator stopped), nor one left running on the source (stop_using_containers false: the app
    # would run on both hosts); so a rerun after success, whose source containers are stopped, starts nothing.
    candidates = list(to_stop)
    if not problem:
        claimed = list(claimed) + [{'key': '%s:%s' % (destination, v['dest_name']), 'from': v['name'] + ' of an earlier pair'}
                                   for v in planned]
    return {'vols': vols, 'done_results': done_results, 'to_stop': to_stop, 'candidates_dest': candidates,
            'claimed': claimed, 'problem': problem}


class FilterModule(object):
    def filters(self):
        return {'migrate_select': migrate_select, 'migrate_keep': migrate_keep}
