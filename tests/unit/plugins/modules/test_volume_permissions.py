# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_permissions: the helper reason in the message, memory volumes refused, paths escaped in the diff."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from ansible_collections.volumeops.docker.plugins.modules import volume_permissions


class _Fail(Exception):
    pass


class FakeModule(object):
    check_mode = False
    _diff = True


class FakeAPI(object):
    def info(self):
        return {'SecurityOptions': []}


class FakeClient(object):
    is_local = True

    def __init__(self, containers=()):
        self.params = dict(volume='vol', path='.', owner='1000', group=None, mode=None, dir_mode=None,
                           file_mode=None, recurse=False, like_container=None, data_path='auto', helper_image=None,
                           diff_sample=20, workers=1)
        self.module = FakeModule()
        self.api = FakeAPI()
        self.containers = list(containers)

    @contextmanager
    def errors(self, action):
        yield

    def containers_using_volume(self, name):
        return self.containers

    def fail(self, msg, **kwargs):
        raise _Fail(msg)


BIND = {'Name': 'vol', 'Driver': 'local', 'Mountpoint': '/nonexistent',
        'Options': {'type': 'none', 'device': '/srv/x', 'o': 'bind'}}
TMPFS = {'Name': 'vol', 'Driver': 'local', 'Mountpoint': '/nonexistent', 'Options': {'type': 'tmpfs', 'device': 'tmpfs'}}


def test_the_helper_message_gives_the_real_reason():
    manager = volume_permissions.PermissionsManager(FakeClient())
    manager._helper_reason = 'data_path=helper'
    assert manager.choose_data_path(BIND) == 'helper'
    with pytest.raises(_Fail) as info:
        manager.run_helper(None)
    assert 'needs a helper container because it has driver options' in str(info.value)
    assert 'data_path=helper' not in str(info.value)


def test_a_memory_volume_no_running_container_mounts_is_refused():
    manager = volume_permissions.PermissionsManager(FakeClient([{'name': 'old', 'running': False}]))
    with pytest.raises(_Fail) as info:
        manager.refuse_unmounted_memory_volume(TMPFS)
    assert 'type=tmpfs' in str(info.value) and 'Nothing was changed' in str(info.value)


def test_a_memory_volume_a_running_container_mounts_and_other_volumes_are_accepted():
    manager = volume_permissions.PermissionsManager(FakeClient([{'name': 'web', 'running': True}]))
    manager.refuse_unmounted_memory_volume(TMPFS)
    manager = volume_permissions.PermissionsManager(FakeClient())
    manager.refuse_unmounted_memory_volume(BIND)


def test_control_characters_in_paths_do_not_break_the_diff():
    manager = volume_permissions.PermissionsManager(FakeClient())
    entry = dict(uid=0, gid=0, mode='0644')
    result = dict(target_path='.', changed_entries=1, examined=2,
                  changes=dict(owner=1, group=0, mode=0, sample_truncated=False,
                               sample=[dict(path='./odd\nname', before=entry, after=dict(entry, uid=1000))]))
    diff = manager._diff(result)
    assert diff['before'].splitlines()[1] == './odd\\nname 0:0 0644'
    assert diff['after'].splitlines()[1] == './odd\\nname 1000:0 0644'
    assert len(diff['after'].splitlines()) == 2


def test_a_nul_character_in_path_is_one_message():
    client = FakeClient()
    client.params['path'] = 'a\0b'
    with pytest.raises(_Fail, match='contains a NUL character'):
        volume_permissions.PermissionsParameters(client)
