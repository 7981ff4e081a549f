# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_backup's safety net: an archive whose tar stream holds another number of members than its
manifest has entries is never kept (both data paths), whatever made tar and the walk disagree."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _archive
from ansible_collections.volumeops.docker.plugins.modules import volume_backup

pytestmark = pytest.mark.skipif(not shutil.which('tar'), reason='needs GNU tar (the test bootstrap installs it)')


@pytest.fixture
def volume(tmp_path):
    root = tmp_path / 'vol'
    (root / 'd').mkdir(parents=True)
    (root / 'd' / 'f1').write_bytes(b'data1')
    (root / '.hidden').write_bytes(b'h')
    return root


def _old_tar_exclusions(patterns):
    # GNU tar's own reading of the patterns, as before the fix: '.*' also matches the root '.'.
    return ['--exclude=' + p for p in patterns]


def test_hidden_entries_are_excluded_and_the_rest_is_archived(tmp_path, volume, backup_manager):
    manager = backup_manager(exclude=['.*'])
    src = volume_backup.Source('v', root=str(volume), data_path='local')
    summary = manager.summary(src)
    final, res = manager.write(src, summary)
    assert res['members'] == summary.entries == 3
    listing = subprocess.run(['tar', '-tf', final], stdout=subprocess.PIPE, check=True).stdout.split()
    assert listing == [b'.volumeops-manifest.json', b'./', b'./d/', b'./d/f1']


def test_local_archive_with_fewer_members_than_the_manifest_is_refused(tmp_path, volume, monkeypatch, backup_manager):
    monkeypatch.setattr(_archive, 'tar_exclude_options', _old_tar_exclusions)
    manager = backup_manager(exclude=['.*'])
    src = volume_backup.Source('v', root=str(volume), data_path='local')
    with pytest.raises(volume_backup.VolumeFailure, match=r'would hold 0 entries, but the metadata walk found 3'):
        manager.write(src, manager.summary(src))
    assert os.listdir(str(tmp_path / 'dest')) == []  # nothing under a final name, no temporary file left


class _Helper(object):
    """Stands in for the helper container: its 'container' runs tar_create_argv on a local directory."""

    def __init__(self, root):
        self.root = root

    def backup_chunks(self, volume, exclude=None):
        def runner(consumer):
            out = subprocess.run(_archive.tar_create_argv(self.root, exclude=exclude), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, check=False)
            for i in range(0, len(out.stdout), 65536):
                consumer(out.stdout[i:i + 65536])
            return out.returncode, b'', out.stderr.decode()
        return runner


@pytest.mark.parametrize('broken', [False, True])
def test_helper_stream_members_are_counted(tmp_path, volume, monkeypatch, broken, backup_manager):
    if broken:
        monkeypatch.setattr(_archive, 'tar_exclude_options', _old_tar_exclusions)
    manager = backup_manager(exclude=['.*'])
    src = volume_backup.Source('v', root=None, data_path='helper')
    local = volume_backup.Source('v', root=str(volume), data_path='local')
    monkeypatch.setattr(manager, 'helper', lambda s: _Helper(str(volume)))
    # The fingerprint walk in the helper is the local walk of the same tree.
    monkeypatch.setattr(manager, 'summary', lambda s: _archive.tree_summary(local.root, exclude=['.*']))
    summary = manager.summary(src)
    if broken:
        # tar's stream holds not even the root: refused, nothing kept.
        with pytest.raises(volume_backup.VolumeFailure, match=r'would hold 0 entries, but the metadata walk found 3'):
            manager.write(src, summary)
        assert os.listdir(str(tmp_path / 'dest')) == []
    else:
        final, res = manager.write(src, summary)
        assert res['members'] == 3 and os.path.exists(final)


@pytest.mark.parametrize('mode,owner,group,message', [
    ('u=rwz', None, None, 'must be in octal or symbolic form'),
    ('0x640', None, None, 'must be in octal or symbolic form'),
    ('0640', 'volumeops-no-such-user', None, "owner 'volumeops-no-such-user' is not known"),
    ('0640', None, 'volumeops-no-such-group', "group 'volumeops-no-such-group' is not known"),
])
def test_file_attributes_are_checked_before_the_backup(mode, owner, group, message):
    assert message in volume_backup.file_attributes_error(mode, owner, group)


@pytest.mark.parametrize('mode,owner,group', [('0640', None, None), ('u=rw,g=r,o=', 'root', 'root'), (0o600, '0', '0')])
def test_valid_file_attributes_pass(mode, owner, group):
    assert volume_backup.file_attributes_error(mode, owner, group) is None
