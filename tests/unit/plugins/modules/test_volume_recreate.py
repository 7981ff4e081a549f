# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume with recreate: driver options the local driver refuses never cost the volume, and a create that fails
after the removal is reported as a change, naming the removal and the daemon's reason."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from ansible_collections.volumeops.docker.plugins.modules import volume


class _Exit(Exception):
    pass


class FakeModule(object):
    _diff = False

    def __init__(self, check_mode=False):
        self.check_mode = check_mode
        self.warnings = []

    def exit_json(self, **result):
        self.result = dict(result, failed=False)
        raise _Exit()

    def fail_json(self, **result):
        self.result = dict(result, failed=True)
        raise _Exit()

    def warn(self, msg):
        self.warnings.append(msg)


class FakeAPI(object):
    def __init__(self, refuse=()):
        self.calls = []
        self.refuse = refuse

    def create_volume(self, name, driver=None, driver_opts=None, labels=None):
        self.calls.append(('create', name, driver_opts))
        for key in self.refuse:
            if key in (driver_opts or {}):
                raise RuntimeError('create %s: quota size requested but no quota support' % name)

    def remove_volume(self, name):
        self.calls.append(('remove', name))


class FakeClient(object):
    def __init__(self, params, check_mode=False, refuse=()):
        self.params = dict(dict(name='data', state='present', driver='local', driver_options=None, labels=None,
                                recreate='options-changed'), **params)
        self.module = FakeModule(check_mode)
        self.api = FakeAPI(refuse)

    @contextmanager
    def errors(self, action):
        yield

    def inspect_volume(self, name):
        return {'Name': name, 'Driver': 'local', 'Options': {'type': 'tmpfs', 'device': 'tmpfs'}, 'Labels': None}

    def containers_using_volume(self, name):
        return []

    def fail(self, msg, **kwargs):
        self.module.fail_json(msg=msg, **kwargs)


def run(client):
    with pytest.raises(_Exit):
        volume.VolumeManager(client).run()
    return client.module.result


@pytest.mark.parametrize('options, words', [
    ({'sise': '100m'}, ["unknown option(s) 'sise'"]),
    ({'o': 'size=1m'}, ["option 'o' needs 'device' and 'type' too"]),
    ({'type': 'tmpfs'}, ["option 'type' needs 'device' too"]),
])
def test_precheck_refuses_what_the_local_driver_refuses(options, words):
    error = volume.precheck(dict(name='data', state='present', driver='local', driver_options=options, labels=None))
    assert error and 'Nothing was changed' in error
    for word in words:
        assert word in error


def test_precheck_leaves_other_drivers_and_absent_alone():
    assert volume.precheck(dict(name='data', state='present', driver='nfsplugin', driver_options={'sise': '1'},
                                labels=None)) is None
    assert volume.precheck(dict(name='data', state='absent', driver='local', driver_options={'sise': '1'},
                                labels=None)) is None
    assert volume.precheck(dict(name='data', state='present', driver='local',
                                driver_options={'type': 'tmpfs', 'device': 'tmpfs', 'o': 'size=1m', 'size': '1m'},
                                labels=None)) is None


def test_a_refused_test_create_leaves_the_volume_alone():
    client = FakeClient(dict(driver_options={'type': 'tmpfs', 'device': 'tmpfs', 'size': '1m'}), refuse=('size',))
    result = run(client)
    assert result['failed'] and not result.get('changed')
    assert 'data was not touched' in result['msg'] and 'no quota support' in result['msg']
    assert ('remove', 'data') not in client.api.calls
    assert [c[0] for c in client.api.calls] == ['create']  # the probe only


def test_the_probe_is_removed_and_the_volume_recreated():
    client = FakeClient(dict(driver_options={'type': 'tmpfs', 'device': 'tmpfs', 'o': 'size=1m'}))
    result = run(client)
    assert not result['failed'] and result['changed']
    probe = client.api.calls[0][1]
    assert probe.startswith('data-volumeops-probe-')
    assert client.api.calls[1] == ('remove', probe)
    wanted = {'type': 'tmpfs', 'device': 'tmpfs', 'o': 'size=1m'}
    assert client.api.calls[2:] == [('remove', 'data'), ('create', 'data', wanted)]


def test_no_probe_for_a_plugin_driver_and_a_failed_create_after_removal_is_a_change():
    client = FakeClient(dict(driver='plug', driver_options={'size': '1m'}), refuse=('size',))
    client.api.info = lambda: {'Plugins': {'Volume': ['local', 'plug']}}
    client.inspect_volume = lambda name: {'Name': name, 'Driver': 'plug', 'Options': None, 'Labels': None}
    result = run(client)
    assert [c[0] for c in client.api.calls] == ['remove', 'create']
    assert result['failed'] and result['changed'] is True
    assert 'data was REMOVED, with all its data, but could not be created again' in result['msg']
    assert 'no quota support' in result['msg']
    assert result['actions'] == ['Removed volume data', 'Could not create volume data again']


def test_check_mode_makes_no_probe():
    client = FakeClient(dict(driver_options={'type': 'tmpfs', 'device': 'tmpfs', 'size': '1m'}), check_mode=True,
                        refuse=('size',))
    result = run(client)
    assert result['changed'] and client.api.calls == []
