# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures shared by the module unit tests."""

from __future__ import annotations

import os

import pytest

from ansible_collections.volumeops.docker.plugins.modules import volume_backup


class _Module(object):
    check_mode = False
    _diff = False

    def set_mode_if_different(self, path, mode, changed):
        os.chmod(path, int(mode, 8))
        return changed


class _Client(object):
    """The little of AnsibleDockerClient that BackupManager's archive writing touches."""

    def __init__(self, params):
        self.params = params
        self.module = _Module()


@pytest.fixture
def backup_manager(tmp_path):
    """A factory: volume_backup's BackupManager with default parameters (``dest`` made under ``tmp_path``)
    updated with the keyword arguments, on a fake client (no Docker)."""
    def make(**params):
        p = dict(dest=str(tmp_path / 'dest'), compression='none', compression_level=None, exclude=[],
                 consistency='strict', mode='0600', owner=None, group=None, path=None, stop_containers=False,
                 keep=None, force=False, on_error='stop', helper_image=None, data_path='auto')
        p.update(params)
        if not os.path.isdir(p['dest']):
            os.mkdir(p['dest'], 0o700)
        return volume_backup.BackupManager(_Client(p))
    return make
