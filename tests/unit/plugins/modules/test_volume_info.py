# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_info asks the daemon for sizes once per run (GET /system/df is expensive), and
lists containers once, whatever the number of volumes."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from ansible_collections.volumeops.docker.plugins.modules import volume_info


class _Exit(Exception):
    pass


class FakeModule(object):
    check_mode = False

    def exit_json(self, **result):
        self.result = result
        raise _Exit()


class FakeAPI(object):
    def __init__(self, count):
        self.calls = []
        self.count = count

    def volumes(self, filters=None):
        self.calls.append(('volumes', filters))
        return {'Volumes': [{'Name': 'v%03d' % i, 'Driver': 'local', 'Mountpoint': '/nonexistent/v%03d' % i,
                             'Labels': None, 'Options': None, 'Scope': 'local', 'CreatedAt': 'now'}
                            for i in range(self.count)]}

    def containers(self, all=False):
        self.calls.append(('containers', all))
        return [{'Id': 'c1', 'Names': ['/web'], 'State': 'running',
                 'Mounts': [{'Type': 'volume', 'Name': 'v001', 'Destination': '/d', 'RW': True}]}]

    def df(self):
        self.calls.append(('df', None))
        return {'Volumes': [{'Name': 'v%03d' % i, 'UsageData': {'Size': i, 'RefCount': 0}}
                            for i in range(self.count)]}


class FakeClient(object):
    is_local = True

    def __init__(self, params, count=50):
        self.params = dict(dict(name=None, filters=None, usage=False), **params)
        self.api = FakeAPI(count)
        self.module = FakeModule()

    @contextmanager
    def errors(self, action):
        yield

    def list_volumes(self, filters=None):
        # The real client asks the local socket for /volumes, or the SDK; counted either way.
        return self.api.volumes(filters=filters)

    def list_containers(self, filters=None):
        # The real client asks the local socket directly or the SDK; the call is counted either way.
        assert filters is None
        return self.api.containers(all=True)

    def volume_disk_usage(self):
        # The real client asks the local socket for /system/df?type=volume, or the SDK; counted either way.
        return self.api.df()


def _run(client):
    with pytest.raises(_Exit):
        volume_info.VolumeInfoManager(client).run()
    return client.module.result


def test_usage_for_many_volumes_makes_one_df_and_one_container_call():
    client = FakeClient({'usage': True, 'filters': {'label': 'a', 'dangling': True}})
    result = _run(client)
    names = [c[0] for c in client.api.calls]
    assert names.count('df') == 1
    assert names.count('containers') == 1
    assert client.api.calls[0] == ('volumes', {'label': ['a'], 'dangling': ['true']})
    assert len(result['volumes']) == 50
    assert result['volumes'][7]['size_bytes'] == 7
    assert result['volumes'][1]['in_use_by'][0]['name'] == 'web'
    assert result['volumes'][0]['filesystem'] is None  # mountpoint not on this host


def test_no_df_without_usage():
    client = FakeClient({})
    result = _run(client)
    assert 'df' not in [c[0] for c in client.api.calls]
    assert 'size_bytes' not in result['volumes'][0]


def test_nothing_found_makes_no_further_calls():
    client = FakeClient({'usage': True}, count=0)
    result = _run(client)
    assert [c[0] for c in client.api.calls] == ['volumes']
    assert result['exists'] is False and result['volumes'] == []


def test_filters_of_the_wrong_shape_are_refused_before_any_call():
    params = dict(name=None, usage=False)
    assert volume_info.precheck(dict(params, filters={'label': {'app': 'web', 'tier': None}})) is None
    assert volume_info.api_filters({'label': {'app': 'web', 'tier': None}, 'dangling': True}) == {
        'label': ['app=web', 'tier'], 'dangling': ['true']}
    assert 'is empty' in volume_info.precheck(dict(params, filters={'label': []}))
    assert 'non-empty strings' in volume_info.precheck(dict(params, filters={'label': [['a']]}))
    assert 'boolean' in volume_info.precheck(dict(params, filters={'dangling': 'maybe'}))
    assert 'string or a list of strings' in volume_info.precheck(dict(params, filters={'driver': {'a': 'b'}}))
