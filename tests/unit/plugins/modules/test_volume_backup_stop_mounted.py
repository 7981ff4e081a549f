# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_backup with data_path=local and stop_containers on a volume that is mounted only while a container uses
it: stopping the containers would unmount it (the backup would archive the empty directory below the mount), so
it is refused before anything is stopped; data_path=auto reads it through the helper container."""

from __future__ import annotations

import contextlib

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _helper
from ansible_collections.volumeops.docker.plugins.modules import volume_backup


class _Client(object):
    is_local = True

    def __init__(self, params, volumes):
        self.params = params
        self.volumes = volumes

    @contextlib.contextmanager
    def errors(self, what):
        yield

    def inspect_volume(self, name):
        return self.volumes.get(name)

    def fail(self, msg, **kwargs):
        raise AssertionError('task failed: %s' % msg)


class _Module(object):
    check_mode = False
    _diff = False


def _manager(tmp_path, volumes, **params):
    p = dict(dest=str(tmp_path / 'dest'), compression='none', compression_level=None, exclude=[],
             consistency='strict', mode='0600', owner=None, group=None, path=None, stop_containers=False,
             keep=None, force=False, on_error='stop', helper_image=None, data_path='auto')
    p.update(params)
    client = _Client(p, volumes)
    client.module = _Module()
    return volume_backup.BackupManager(client)


@pytest.mark.parametrize('options, stop, refused', [
    ({'type': 'none', 'o': 'bind', 'device': '/srv/data'}, True, True),
    ({'type': 'nfs', 'o': 'addr=10.0.0.1', 'device': ':/export'}, True, True),
    ({'type': 'tmpfs', 'device': 'tmpfs'}, True, True),
    ({'type': 'none', 'o': 'bind', 'device': '/srv/data'}, False, False),
    ({}, True, False),
])
def test_local_data_path_with_stop_containers_on_a_volume_its_containers_mount(tmp_path, monkeypatch, options, stop,
                                                                               refused):
    mountpoint = tmp_path / 'mp'
    mountpoint.mkdir()
    monkeypatch.setattr(_helper, 'is_mount_point', lambda path: True)  # mounted now, by a running container
    info = dict(Name='vol', Driver='local', Options=options, Mountpoint=str(mountpoint))
    manager = _manager(tmp_path, volumes={'vol': info}, data_path='local', stop_containers=stop)
    if refused:
        with pytest.raises(volume_backup.VolumeFailure, match=r'stop_containers would unmount it.*Nothing was '
                                                              r'stopped or written\. Use data_path=auto'):
            manager._volume_source('vol')
    else:
        assert manager._volume_source('vol').data_path == 'local'
    # data_path=auto reads such a volume through the helper container (which mounts it itself).
    auto = _manager(tmp_path, volumes={'vol': info}, data_path='auto', stop_containers=stop)._volume_source('vol')
    assert auto.data_path == ('helper' if options else 'local')
