# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_backup's "is the volume still as the walk saw it?" check after writing the archive."""

from __future__ import annotations

from ansible_collections.volumeops.docker.plugins.module_utils import _archive, _tree
from ansible_collections.volumeops.docker.plugins.modules import volume_backup


class _Manager(object):
    """The parts of BackupManager that still_as_walked uses; counts the full fingerprint walks."""

    def __init__(self):
        self.p = {'exclude': []}
        self.walks = 0

    def summary(self, src):
        self.walks += 1
        return _archive.tree_summary(src.root, with_change_token=True)


class _Source(object):
    def __init__(self, root):
        self.root = root


def test_recent_changes_are_rechecked_without_a_full_walk_and_still_seen(tmp_path, monkeypatch):
    # Files written just before the backup's walk (stop_containers stopped the writers a moment ago).
    (tmp_path / 'wal').write_text('checkpoint')
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'sub' / 'f').write_text('f')
    src = _Source(str(tmp_path))
    summary = _archive.tree_summary(src.root, with_change_token=True)
    assert not summary.change_token.settled
    manager = _Manager()
    assert volume_backup.BackupManager.still_as_walked(manager, src, summary)
    assert manager.walks == 0

    # A change that moves the ctime: seen by the listing.
    (tmp_path / 'sub' / 'f').write_text('ff')
    assert not volume_backup.BackupManager.still_as_walked(manager, src, summary)

    # Two changes within one clock tick keep the ctime: the listing matches, the recent entry's record does not.
    summary = _archive.tree_summary(src.root, with_change_token=True)
    same_listing = summary.change_token
    monkeypatch.setattr(_tree.ChangeToken, 'again', lambda self, root, exclude=None: same_listing)
    (tmp_path / 'wal').write_text('checkpoint, then more')
    manager = _Manager()
    assert not volume_backup.BackupManager.still_as_walked(manager, src, summary)
    assert manager.walks == 1  # the full walk decided
