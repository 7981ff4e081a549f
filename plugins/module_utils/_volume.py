# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Logic shared by the volume, volume_info and volume_prune modules.

Private to the collection. Everything except ``PrecheckedDockerClient`` is pure
(no Docker calls) so it can be unit-tested without a daemon.
"""

from __future__ import annotations

import os

from ansible_collections.volumeops.docker.plugins.module_utils._docker_client import ACTIVE_STATES, AnsibleDockerClient

# Engines from API 1.42 (Docker 23.0) mark anonymous volumes with this label and
# their prune removes only volumes carrying it unless the filter all=true is given.
ANONYMOUS_LABEL = 'com.docker.volume.anonymous'
PRUNE_ALL_MIN_API = (1, 42)


class PrecheckedDockerClient(AnsibleDockerClient):
    """AnsibleDockerClient that validates the module's own parameters first.

    Invalid input must be refused before any API call: ``precheck(params)``
    returns an error message or None, and runs as soon as the module's
    parameters are known (the base class contacts the daemon only later, on
    the first API call).
    """

    def __init__(self, argument_spec, precheck=None, **module_kwargs):
        super(PrecheckedDockerClient, self).__init__(argument_spec, **module_kwargs)
        if precheck is not None:
            error = precheck(self.module.params)
            if error:
                self.fail(error)


def api_version_tuple(version):
    """'1.41' -> (1, 41); unparsable parts count as 0."""
    result = []
    for part in str(version or '0').split('.')[:2]:
        result.append(int(part) if part.isdigit() else 0)
    while len(result) < 2:
        result.append(0)
    return tuple(result)


def normalize_volume(inspect):
    """The comparable state of a volume: Docker returns null or {} for "none"."""
    if not inspect:
        return dict(exists=False)
    return dict(
        exists=True,
        driver=inspect.get('Driver'),
        options=dict(inspect.get('Options') or {}),
        labels=dict(inspect.get('Labels') or {}),
    )


def wanted_state(driver, options, labels, current):
    """What the volume should look like; None options/labels mean "not managed"."""
    current = current if current and current.get('exists') else {}
    return dict(
        exists=True,
        driver=driver,
        options=dict(current.get('options') or {}) if options is None else dict(options),
        labels=dict(current.get('labels') or {}) if labels is None else dict(labels),
    )


def _dict_differences(prefix, current, wanted):
    diffs = []
    for key in sorted(set(current) | set(wanted)):
        if current.get(key) != wanted.get(key) or (key in current) != (key in wanted):
            diffs.append(dict(key='%s.%s' % (prefix, key),
                              current=current.get(key), wanted=wanted.get(key),
                              current_set=key in current, wanted_set=key in wanted))
    return diffs


def volume_differences(current, wanted):
    """Exact differences between two normalized states (a removed label counts).

    Each difference is a dict: key ('driver', 'driver_options.<k>', 'labels.<k>'),
    current, wanted, current_set, wanted_set.
    """
    diffs = []
    if current.get('driver') != wanted.get('driver'):
        diffs.append(dict(key='driver', current=current.get('driver'), wanted=wanted.get('driver'),
                          current_set=True, wanted_set=True))
    diffs.extend(_dict_differences('driver_options', current.get('options') or {}, wanted.get('options') or {}))
    diffs.extend(_dict_differences('labels', current.get('labels') or {}, wanted.get('labels') or {}))
    return diffs


def describe_difference(diff):
    def side(value, is_set):
        return repr(value) if is_set else 'not set'
    return '%s (current %s, requested %s)' % (diff['key'], side(diff['current'], diff['current_set']),
                                              side(diff['wanted'], diff['wanted_set']))


def public_differences(diffs):
    """Differences as returned to the user (no internal *_set flags)."""
    return [dict(key=d['key'], current=d['current'] if d['current_set'] else None,
                 wanted=d['wanted'] if d['wanted_set'] else None) for d in diffs]


def recreate_warning(name, diffs):
    return ('Volume %s differs from the requested configuration: %s. Docker cannot change a volume in place, '
            'so nothing was changed (recreate=never). To apply it, set recreate=options-changed: '
            'that REMOVES the volume and ALL ITS DATA and creates it empty.'
            % (name, '; '.join(describe_difference(d) for d in diffs)))


def describe_containers(containers):
    """'web (running), db-old (exited)' for error messages."""
    return ', '.join('%s (%s)' % (c['name'], c.get('state') or ('running' if c.get('running') else 'stopped'))
                     for c in containers)


# --- volume_info ---------------------------------------------------------------------------------

def mounts_by_volume(container_summaries):
    """{volume name: [in_use_by entries]} from one GET /containers/json?all=1 answer.

    ``running`` is true in every state of ACTIVE_STATES (running, paused, restarting).
    """
    result = {}
    for summary in container_summaries or []:
        name = (summary.get('Names') or ['/' + summary.get('Id', '')[:12]])[0].lstrip('/')
        state = summary.get('State')
        for mount in summary.get('Mounts') or []:
            if mount.get('Type') != 'volume' or not mount.get('Name'):
                continue
            result.setdefault(mount['Name'], []).append(dict(
                name=name,
                id=summary.get('Id'),
                # A paused or restarting container holds the volume mounted, as containers_using_volume counts it.
                running=state in ACTIVE_STATES,
                state=state,
                destination=mount.get('Destination'),
                read_only=not mount.get('RW', True),
            ))
    for entries in result.values():
        entries.sort(key=lambda e: (e['name'], e['destination'] or ''))
    return result


def sizes_from_df(df):
    """{volume name: (size_bytes or None, ref_count or None)} from one /system/df answer.

    Docker reports Size -1 when it did not compute it, and leaves out volumes
    with driver options (tmpfs, nfs, ...) and non-local drivers entirely.
    """
    result = {}
    for vol in (df or {}).get('Volumes') or []:
        usage = vol.get('UsageData') or {}
        size = usage.get('Size')
        refs = usage.get('RefCount')
        result[vol.get('Name')] = (size if isinstance(size, int) and size >= 0 else None,
                                   refs if isinstance(refs, int) and refs >= 0 else None)
    return result


def filesystem_usage(statvfs_result, is_mount):
    """size/used/free/percent of the filesystem holding a volume, like df(1).

    ``free`` is what unprivileged writers can still use (f_bavail); percent is
    used / (used + free), the figure df prints, so 100% means writes fail.
    """
    st = statvfs_result
    size = st.f_blocks * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    free = st.f_bavail * st.f_frsize
    denominator = used + free
    percent = round(100.0 * used / denominator, 1) if denominator else 0.0
    return dict(size_bytes=size, used_bytes=used, free_bytes=free, percent_used=percent,
                dedicated=bool(is_mount))


def mounted_only_in_use(driver, options):
    """True for a local volume with driver options (tmpfs, nfs, a device): the daemon mounts it on its mountpoint
    only while a container uses it; the rest of the time the mountpoint is a plain directory of the Docker root."""
    return driver == 'local' and bool(options)


def local_filesystem_usage(mountpoint, driver=None, options=None):
    """filesystem_usage() for a path on this host, or None when it is not there.

    None too for a volume mounted only while in use (mounted_only_in_use) that is not mounted now: statvfs
    of its mountpoint would describe the Docker root's filesystem, not the volume's.
    """
    if not mountpoint or not os.path.isdir(mountpoint):
        return None
    if mounted_only_in_use(driver, options) and not os.path.ismount(mountpoint):
        return None
    try:
        return filesystem_usage(os.statvfs(mountpoint), os.path.ismount(mountpoint))
    except OSError:
        return None


def volume_facts(inspect, in_use_by):
    """The per-volume dict volume_info returns (without usage figures)."""
    return dict(
        name=inspect.get('Name'),
        driver=inspect.get('Driver'),
        options=dict(inspect.get('Options') or {}),
        labels=dict(inspect.get('Labels') or {}),
        mountpoint=inspect.get('Mountpoint'),
        scope=inspect.get('Scope'),
        created=inspect.get('CreatedAt'),
        in_use_by=list(in_use_by or []),
    )


# --- volume_prune --------------------------------------------------------------------------------

PRUNE_FILTER_KEYS = ('label', 'label!', 'all')


LABEL_FILTER_KEYS = ('label', 'label!')


def filter_values(key, value):
    """The strings to send for the list/prune filter ``key``, or raise ValueError with the message for the user.

    Accepted: a non-empty string, a list of non-empty strings, and for the label filters also a dict
    (``{k: v}`` is ``k=v``, ``{k: null}`` is ``k``, as labels are written in YAML). Nothing is turned
    into a string silently: ``label!: {keep: 'yes'}`` once became the expression "{'keep': 'yes'}",
    which no volume carries, so the volumes meant to be kept were pruned. An empty value is refused
    too: ``label: []`` (a template that came out empty) once dropped the filter, and a prune then
    matched every unused volume of the host.
    """
    what = 'Filter %s' % key
    if value is None or (isinstance(value, (str, list, tuple, dict)) and not value):
        raise ValueError('%s is empty. Give at least one value, or leave the key out%s.'
                         % (what, ' (an empty label filter would match every volume)' if key in LABEL_FILTER_KEYS else ''))
    if isinstance(value, str):
        values = [value]
    elif isinstance(value, (list, tuple)):
        values = list(value)
        bad = [v for v in values if not isinstance(v, str) or not v]
        if bad:
            raise ValueError('%s must be a list of non-empty strings; %r is not one%s.'
                             % (what, bad[0], ' (quote it)' if isinstance(bad[0], (bool, int, float)) else ''))
    elif isinstance(value, dict) and key in LABEL_FILTER_KEYS:
        values = []
        for k, v in value.items():
            if not isinstance(k, str) or not k or '=' in k:
                raise ValueError('%s: %r is not a label key.' % (what, k))
            if v is None:
                values.append(k)
            elif isinstance(v, bool) or isinstance(v, float) or not isinstance(v, (str, int)):
                # YAML turns yes into True and 1.0 into 1.0, whose strings are rarely what was typed.
                raise ValueError('%s: the value %r of label %s is not a string; quote it.' % (what, v, k))
            else:
                values.append('%s=%s' % (k, v))
    else:
        raise ValueError('%s must be a string or a list of strings%s, not %r.'
                         % (what, ' or a dict of label keys and values' if key in LABEL_FILTER_KEYS else '', value))
    return values


def _match_kv(expression, labels):
    """Docker's label filter: 'key' matches presence, 'key=value' an exact value."""
    if '=' in expression:
        key, value = expression.split('=', 1)
        return key in labels and labels[key] == value
    return expression in labels


def prune_filter_matches(labels, label_filters, not_label_filters):
    """Mirror the engine: every `label` must match; a volume is kept back only
    when it matches ALL `label!` expressions (Docker's MatchKVList semantics)."""
    labels = labels or {}
    if not all(_match_kv(expr, labels) for expr in label_filters):
        return False
    if not_label_filters and all(_match_kv(expr, labels) for expr in not_label_filters):
        return False
    return True


def prune_settings(filters, api_version):
    """Validate the prune filters against the engine's API version.

    Returns (api_filters, anonymous_only, error). api_filters is what to send to
    POST /volumes/prune; anonymous_only says which semantics the engine applies.
    """
    filters = dict(filters or {})
    unknown = sorted(set(filters) - set(PRUNE_FILTER_KEYS))
    if unknown:
        return None, None, ('Unsupported filter(s) %s; volume prune supports %s.'
                            % (', '.join(unknown), ', '.join(PRUNE_FILTER_KEYS)))
    new_engine = api_version_tuple(api_version) >= PRUNE_ALL_MIN_API
    api_filters = {}
    for key in LABEL_FILTER_KEYS:
        if key in filters:
            try:
                api_filters[key] = filter_values(key, filters[key])
            except ValueError as exc:
                return None, None, str(exc)
    all_value = filters.get('all')
    if all_value is not None and not isinstance(all_value, bool):
        text = str(all_value).lower()
        if text in ('true', 'yes', '1'):
            all_value = True
        elif text in ('false', 'no', '0'):
            all_value = False
        else:
            return None, None, 'Filter all must be a boolean, got %r.' % (filters.get('all'),)
    if new_engine:
        if all_value:
            api_filters['all'] = ['true']
        return api_filters, not all_value, None
    if all_value is False:
        return None, None, ('This Docker engine (API %s) cannot prune only anonymous volumes: before API 1.42 '
                            '(Docker 23.0) prune always removes every unused local volume matching the label '
                            'filters. Remove filters.all or set it to true, after checking with check mode what '
                            'would be removed.' % api_version)
    if all_value is None and 'label' not in api_filters:
        # The same task removes only anonymous volumes on a newer engine: here it would remove every
        # unused NAMED volume too (a database volume whose container was removed for an upgrade).
        return None, None, ('This Docker engine (API %s) cannot prune only anonymous volumes: before API 1.42 '
                            '(Docker 23.0) prune removes every unused local volume, named ones included. Refusing '
                            'without an explicit choice: select the volumes with filters.label, or set filters.all '
                            'to true to remove every unused volume (check mode lists them first).' % api_version)
    return api_filters, False, None


def prune_candidates(volumes, used_names, api_filters, anonymous_only):
    """Names of the volumes the engine's prune would remove, sorted.

    ``volumes`` are inspect dicts (GET /volumes), ``used_names`` the volumes
    referenced by any container. Like the engine: local driver only, and never
    volumes with driver options (tmpfs, nfs, ...: their data is not on this disk).
    """
    label_filters = api_filters.get('label') or []
    not_label_filters = api_filters.get('label!') or []
    result = []
    for vol in volumes or []:
        name = vol.get('Name')
        labels = vol.get('Labels') or {}
        if vol.get('Driver') != 'local' or vol.get('Options') or name in used_names:
            continue
        if anonymous_only and ANONYMOUS_LABEL not in labels:
            continue
        if prune_filter_matches(labels, label_filters, not_label_filters):
            result.append(name)
    return sorted(result)
