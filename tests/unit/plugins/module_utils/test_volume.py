# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests for the pure logic of the volume modules (plugins/module_utils/_volume.py)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _volume as v


# --- comparison --------------------------------------------------------------------------------------

def test_normalize_treats_null_and_empty_options_alike():
    a = v.normalize_volume({'Driver': 'local', 'Options': None, 'Labels': None})
    b = v.normalize_volume({'Driver': 'local', 'Options': {}, 'Labels': {}})
    assert a == b == {'exists': True, 'driver': 'local', 'options': {}, 'labels': {}}
    assert v.normalize_volume(None) == {'exists': False}


def test_unmanaged_options_and_labels_take_the_current_values():
    current = v.normalize_volume({'Driver': 'local', 'Options': {'o': 'x'}, 'Labels': {'a': '1'}})
    wanted = v.wanted_state('local', None, None, current)
    assert wanted['options'] == {'o': 'x'} and wanted['labels'] == {'a': '1'}
    assert v.volume_differences(current, wanted) == []
    # and a missing volume has nothing to inherit
    assert v.wanted_state('local', None, None, {'exists': False})['labels'] == {}


def test_exact_comparison_removed_added_changed():
    current = v.normalize_volume({'Driver': 'local', 'Options': {'o': 'size=100m', 'type': 'tmpfs'},
                                  'Labels': {'keep': 'x', 'gone': 'y'}})
    wanted = v.wanted_state('other', {'o': 'size=200m', 'type': 'tmpfs'}, {'keep': 'x', 'new': 'z'}, current)
    diffs = v.volume_differences(current, wanted)
    assert [d['key'] for d in diffs] == ['driver', 'driver_options.o', 'labels.gone', 'labels.new']
    public = v.public_differences(diffs)
    assert public[2] == {'key': 'labels.gone', 'current': 'y', 'wanted': None}
    assert public[3] == {'key': 'labels.new', 'current': None, 'wanted': 'z'}


def test_empty_string_label_differs_from_absent_label():
    current = v.normalize_volume({'Driver': 'local', 'Labels': {'flag': ''}})
    wanted = v.wanted_state('local', None, {}, current)
    diffs = v.volume_differences(current, wanted)
    assert [d['key'] for d in diffs] == ['labels.flag']
    assert 'current \'\', requested not set' in v.describe_difference(diffs[0])


def test_reordered_labels_are_equal():
    current = v.normalize_volume({'Driver': 'local', 'Labels': {'a': '1', 'b': '2'}})
    assert v.volume_differences(current, v.wanted_state('local', None, {'b': '2', 'a': '1'}, current)) == []


def test_warning_names_every_key_and_the_data_loss():
    current = v.normalize_volume({'Driver': 'local', 'Options': {'o': 'size=1m'}, 'Labels': {'a': '1'}})
    wanted = v.wanted_state('local', {'o': 'size=2m'}, {}, current)
    text = v.recreate_warning('pg', v.volume_differences(current, wanted))
    assert 'driver_options.o' in text and 'labels.a' in text
    assert 'size=1m' in text and 'size=2m' in text
    assert 'recreate=options-changed' in text and 'ALL ITS DATA' in text


def test_describe_containers():
    text = v.describe_containers([{'name': 'web', 'state': 'running', 'running': True},
                                  {'name': 'old', 'state': 'exited', 'running': False}])
    assert text == 'web (running), old (exited)'


# --- volume_info helpers ------------------------------------------------------------------------------

CONTAINERS = [
    {'Id': 'a' * 64, 'Names': ['/web'], 'State': 'running',
     'Mounts': [{'Type': 'volume', 'Name': 'data', 'Destination': '/srv', 'RW': True},
                {'Type': 'bind', 'Source': '/etc', 'Destination': '/etc', 'RW': False},
                {'Type': 'volume', 'Name': 'conf', 'Destination': '/conf', 'RW': False}]},
    {'Id': 'b' * 64, 'Names': ['/backup'], 'State': 'exited',
     'Mounts': [{'Type': 'volume', 'Name': 'data', 'Destination': '/data', 'RW': False}]},
    {'Id': 'c' * 64, 'Names': None, 'State': 'created', 'Mounts': None},
]


def test_mounts_by_volume_one_pass():
    users = v.mounts_by_volume(CONTAINERS)
    assert sorted(users) == ['conf', 'data']
    assert [u['name'] for u in users['data']] == ['backup', 'web']
    backup = users['data'][0]
    assert backup == {'name': 'backup', 'id': 'b' * 64, 'running': False, 'state': 'exited',
                      'destination': '/data', 'read_only': True}
    assert users['conf'][0]['read_only'] and users['conf'][0]['running']


STATES = [('running', True), ('paused', True), ('restarting', True), ('exited', False), ('created', False),
          ('dead', False)]


@pytest.mark.parametrize('state, running', STATES)
def test_mounts_by_volume_paused_and_restarting_containers_hold_the_volume(state, running):
    users = v.mounts_by_volume([{'Id': 'd' * 64, 'Names': ['/db'], 'State': state,
                                 'Mounts': [{'Type': 'volume', 'Name': 'data', 'Destination': '/d', 'RW': True}]}])
    assert users['data'][0]['running'] is running
    assert users['data'][0]['state'] == state


def test_sizes_from_df_maps_unknown_to_none():
    df = {'Volumes': [{'Name': 'a', 'UsageData': {'Size': 10, 'RefCount': 1}},
                      {'Name': 'b', 'UsageData': {'Size': -1, 'RefCount': -1}},
                      {'Name': 'c'}]}
    assert v.sizes_from_df(df) == {'a': (10, 1), 'b': (None, None), 'c': (None, None)}
    assert v.sizes_from_df(None) == {}


class _Stat(object):
    f_frsize = 4096
    f_blocks = 1000
    f_bfree = 300    # root may still use 300 blocks
    f_bavail = 200   # others 200


def test_filesystem_usage_like_df():
    fs = v.filesystem_usage(_Stat(), is_mount=True)
    assert fs == {'size_bytes': 4096000, 'used_bytes': 700 * 4096, 'free_bytes': 200 * 4096,
                  'percent_used': round(100.0 * 700 / 900, 1), 'dedicated': True}


def test_filesystem_usage_empty_filesystem():
    class Empty(_Stat):
        f_blocks = f_bfree = f_bavail = 0
    assert v.filesystem_usage(Empty(), False)['percent_used'] == 0.0


def test_local_filesystem_usage(tmp_path):
    fs = v.local_filesystem_usage(str(tmp_path))
    st = os.statvfs(str(tmp_path))
    assert fs['size_bytes'] == st.f_blocks * st.f_frsize
    assert v.local_filesystem_usage(str(tmp_path / 'missing')) is None
    assert v.local_filesystem_usage(None) is None


def test_filesystem_of_a_volume_mounted_only_in_use(tmp_path):
    tmpfs_options = {'type': 'tmpfs', 'device': 'tmpfs'}
    # Not mounted now: its mountpoint is a directory of the Docker root, which says nothing about the volume.
    assert v.local_filesystem_usage(str(tmp_path), 'local', tmpfs_options) is None
    # A plain local volume shares that filesystem, and says so.
    assert v.local_filesystem_usage(str(tmp_path), 'local', {})['dedicated'] is False
    # Mounted (a mount point): its own filesystem.
    assert v.local_filesystem_usage('/proc', 'local', tmpfs_options)['dedicated'] is True


# --- prune --------------------------------------------------------------------------------------------

def test_api_version_tuple():
    assert v.api_version_tuple('1.41') == (1, 41)
    assert v.api_version_tuple('1.9') < v.api_version_tuple('1.41')
    assert v.api_version_tuple(None) == (0, 0)


@pytest.mark.parametrize('labels,expected', [
    ({'run': 'x'}, True),
    ({'run': 'x', 'keep': 'yes'}, True),      # only one label! expression matches: not kept back
    ({'run': 'x', 'keep': 'yes', 'pin': '1'}, False),  # matches all label! expressions: kept
    ({'run': 'y'}, False),
    ({}, False),
])
def test_label_filters_follow_the_engine(labels, expected):
    assert v.prune_filter_matches(labels, ['run=x'], ['keep', 'pin=1']) is expected


def test_label_filter_presence_and_value():
    assert v.prune_filter_matches({'a': ''}, ['a'], [])
    assert not v.prune_filter_matches({'a': ''}, ['a=1'], [])
    assert v.prune_filter_matches({'a': 'b=c'}, ['a=b=c'], [])
    assert not v.prune_filter_matches({'keep': '1'}, [], ['keep'])


def test_prune_settings_old_engine():
    api_filters, anonymous_only, error = v.prune_settings({'label': 'run=x', 'label!': ['keep']}, '1.41')
    assert error is None and anonymous_only is False
    assert api_filters == {'label': ['run=x'], 'label!': ['keep']}
    # all=true is what the old engine does anyway; it does not know the filter, so it is not sent
    api_filters, anonymous_only, error = v.prune_settings({'all': True}, '1.41')
    assert api_filters == {} and anonymous_only is False and error is None
    error = v.prune_settings({'all': False}, '1.41')[2]
    assert 'cannot prune only anonymous volumes' in error


def test_prune_settings_new_engine():
    assert v.prune_settings({}, '1.42') == ({}, True, None)
    assert v.prune_settings({'all': 'yes'}, '1.43') == ({'all': ['true']}, False, None)
    assert v.prune_settings({'all': False}, '1.45') == ({}, True, None)
    assert 'boolean' in v.prune_settings({'all': 'maybe'}, '1.45')[2]
    assert 'until' in v.prune_settings({'until': '24h'}, '1.45')[2]


VOLUMES = [
    {'Name': 'named', 'Driver': 'local', 'Labels': {'run': 'x'}, 'Options': None},
    {'Name': 'anon', 'Driver': 'local', 'Labels': {'run': 'x', v.ANONYMOUS_LABEL: ''}, 'Options': None},
    {'Name': 'tmpfs', 'Driver': 'local', 'Labels': {'run': 'x'}, 'Options': {'type': 'tmpfs'}},
    {'Name': 'plugin', 'Driver': 'rexray', 'Labels': {'run': 'x'}, 'Options': None},
    {'Name': 'used', 'Driver': 'local', 'Labels': {'run': 'x'}, 'Options': {}},
    {'Name': 'other', 'Driver': 'local', 'Labels': None, 'Options': None},
]


def test_prune_candidates_old_engine_semantics():
    names = v.prune_candidates(VOLUMES, {'used'}, {'label': ['run=x']}, anonymous_only=False)
    assert names == ['anon', 'named']


def test_prune_candidates_anonymous_only():
    assert v.prune_candidates(VOLUMES, set(), {'label': ['run=x']}, anonymous_only=True) == ['anon']


def test_prune_candidates_without_filters_still_skip_options_and_plugins():
    assert v.prune_candidates(VOLUMES, {'used'}, {}, False) == ['anon', 'named', 'other']


# --- filter values (volume_prune, volume_info) ----------------------------------------------------------

@pytest.mark.parametrize('value,expected', [
    ('keep=yes', ['keep=yes']),
    (['a', 'b=c'], ['a', 'b=c']),
    ({'keep': 'yes'}, ['keep=yes']),
    ({'keep': None, 'tier': 1}, ['keep', 'tier=1']),
])
def test_filter_values_accepted_shapes(value, expected):
    assert v.filter_values('label!', value) == expected


@pytest.mark.parametrize('value,message', [
    ([], 'is empty'),
    (None, 'is empty'),
    ('', 'is empty'),
    ({}, 'is empty'),
    ([''], 'non-empty strings'),
    ([{'keep': 'yes'}], 'non-empty strings'),
    ([1], 'quote it'),
    (5, 'not 5'),
    (True, 'not True'),
    ({'keep': True}, 'quote it'),
    ({'keep': 1.0}, 'quote it'),
    ({'a=b': 'c'}, 'not a label key'),
])
def test_filter_values_refused(value, message):
    with pytest.raises(ValueError, match=message):
        v.filter_values('label!', value)


def test_filter_values_dict_only_for_labels():
    with pytest.raises(ValueError, match='string or a list of strings, not'):
        v.filter_values('name', {'a': 'b'})


def test_prune_settings_refuse_wrong_shapes_instead_of_stringifying():
    # label! {keep: yes} once became the expression "{'keep': 'yes'}": the volumes to keep were pruned.
    assert v.prune_settings({'label': 'run=x', 'label!': {'keep': 'yes'}}, '1.41') == (
        {'label': ['run=x'], 'label!': ['keep=yes']}, False, None)
    # label [] once dropped the filter: every unused volume of the host matched.
    assert 'is empty' in v.prune_settings({'label': []}, '1.41')[2]
    assert 'is empty' in v.prune_settings({'label': None, 'all': True}, '1.45')[2]


def test_prune_settings_old_engine_needs_a_label_or_all():
    for filters in ({}, {'label!': 'keep'}):
        error = v.prune_settings(filters, '1.41')[2]
        assert 'named ones included' in error and 'filters.all' in error
    assert v.prune_settings({'all': True}, '1.41') == ({}, False, None)
    assert v.prune_settings({'label!': 'keep', 'all': 'yes'}, '1.41') == ({'label!': ['keep']}, False, None)
    # Newer engines prune only anonymous volumes without all: nothing to refuse.
    assert v.prune_settings({}, '1.42') == ({}, True, None)
