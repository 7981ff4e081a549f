# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests for the rename-based swap of the helper path (swap_in) and its crash recovery (recover_swaps)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _archive as A


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)


def _state(root):
    """{relative path: content or 'dir'} of a tree, markers included (so leftovers show)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = 'dir'
        for f in filenames:
            with open(os.path.join(dirpath, f)) as fh:
                out[os.path.relpath(os.path.join(dirpath, f), root)] = fh.read()
    return out


@pytest.fixture
def volume(tmp_path):
    root = tmp_path / 'vol'
    _write(str(root / 'old-a'), 'A')
    _write(str(root / 'shared' / 'f'), 'old f')
    _write(str(root / 'olddir' / 'deep' / 'g'), 'G')
    staging = root / (A.STAGING_MARKER + 'abc123')
    _write(str(staging / 'new-x'), 'X')
    _write(str(staging / 'shared' / 'f'), 'new f')
    os.utime(str(staging), ns=(1500000000123456789, 1600000000987654321))
    os.chmod(str(staging), 0o750)
    return str(root), str(staging)


def test_swap_in_replaces_exactly(volume):
    root, staging = volume
    moved = A.swap_in(root, staging)
    assert sorted(moved) == ['new-x', 'shared']
    assert _state(root) == {'new-x': 'X', 'shared': 'dir', 'shared/f': 'new f'}
    st = os.lstat(root)
    assert st.st_mtime_ns == 1600000000987654321
    assert oct(st.st_mode & 0o7777) == oct(0o750)


@pytest.mark.parametrize('fail_at', [1, 2, 3, 4, 5, 6])
def test_swap_in_failure_part_way_restores_old_content(volume, monkeypatch, fail_at):
    """A rename failing at any point of phase 1 (3 old entries), the ready rename, or phase 2 undoes everything."""
    root, staging = volume
    before_root = _state(root)
    real_rename = os.rename
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == fail_at:
            raise OSError(16, 'Device or resource busy (injected)', src)
        return real_rename(src, dst)
    monkeypatch.setattr(A.os, 'rename', flaky)
    with pytest.raises(OSError):
        A.swap_in(root, staging)
    monkeypatch.setattr(A.os, 'rename', real_rename)
    # Old content in place, staging intact (the caller removes it), no parked/ready directory left.
    assert _state(root) == before_root
    assert not [n for n in os.listdir(root) if n.startswith((A.OLD_MARKER, A.READY_MARKER))]


def test_recover_rolls_back_interrupted_phase_1(volume):
    root, staging = volume
    old = os.path.join(root, A.OLD_MARKER + 'abc123')
    os.mkdir(old)
    os.rename(os.path.join(root, 'old-a'), os.path.join(old, 'old-a'))  # killed after one entry
    actions = A.recover_swaps(root)
    assert _state(root) == {'old-a': 'A', 'shared': 'dir', 'shared/f': 'old f', 'olddir': 'dir',
                            'olddir/deep': 'dir', 'olddir/deep/g': 'G'}
    assert any('rolled back' in a for a in actions)


def test_recover_rolls_forward_interrupted_phase_2(volume):
    root, staging = volume
    ident = 'abc123'
    old = os.path.join(root, A.OLD_MARKER + ident)
    os.mkdir(old)
    for n in ('old-a', 'shared', 'olddir'):
        os.rename(os.path.join(root, n), os.path.join(old, n))
    ready = os.path.join(root, '%s%s.%d.%d' % (A.READY_MARKER, ident, 1500000000123456789, 1600000000987654321))
    os.rename(staging, ready)
    os.rename(os.path.join(ready, 'new-x'), os.path.join(root, 'new-x'))  # killed after one entry
    actions = A.recover_swaps(root)
    assert _state(root) == {'new-x': 'X', 'shared': 'dir', 'shared/f': 'new f'}
    assert os.lstat(root).st_mtime_ns == 1600000000987654321
    assert any('completed' in a for a in actions)


def test_recover_removes_leftovers(volume):
    root, staging = volume
    old = os.path.join(root, A.OLD_MARKER + 'zzz')  # old content of a swap that had completed
    _write(os.path.join(old, 'x'), 'stale')
    A.recover_swaps(root)
    assert _state(root) == {'old-a': 'A', 'shared': 'dir', 'shared/f': 'old f', 'olddir': 'dir',
                            'olddir/deep': 'dir', 'olddir/deep/g': 'G'}
    assert A.recover_swaps(root) == []


def test_recover_leaves_marker_named_symlinks_and_files_alone(tmp_path):
    """A symlink or file named like a swap leftover is not ours: never followed, moved or removed.

    Through a holder container's /proc/<pid>/root the recovery runs as root on the host, where an
    absolute symlink planted in the volume would resolve on the host: following one would move the
    host's files into the volume or delete them.
    """
    root = str(tmp_path / 'vol')
    outside = str(tmp_path / 'host')
    for d in ('ready', 'old', 'staging'):
        _write(os.path.join(outside, d, 'precious'), d)
    _write(os.path.join(root, 'data'), 'D')
    os.symlink(os.path.join(outside, 'ready'), os.path.join(root, A.READY_MARKER + 'a.1.2'))
    os.symlink(os.path.join(outside, 'old'), os.path.join(root, A.OLD_MARKER + 'b'))
    os.mkdir(os.path.join(root, A.STAGING_MARKER + 'b'))  # a real staging dir beside the planted "old" link
    os.symlink(os.path.join(outside, 'staging'), os.path.join(root, A.STAGING_MARKER + 'c'))
    _write(os.path.join(root, A.OLD_MARKER + 'd'), 'a user file')
    before_outside = _state(outside)
    actions = A.recover_swaps(root)
    assert _state(outside) == before_outside
    assert sorted(os.listdir(root)) == sorted(['data', A.READY_MARKER + 'a.1.2', A.OLD_MARKER + 'b',
                                               A.STAGING_MARKER + 'c', A.OLD_MARKER + 'd'])
    links = (A.READY_MARKER + 'a.1.2', A.OLD_MARKER + 'b', A.STAGING_MARKER + 'c')
    assert all(os.path.islink(os.path.join(root, n)) for n in links)
    assert actions == ['removed the staging directory %s' % (A.STAGING_MARKER + 'b')]


def test_helper_scripts_compile_and_run_locally(volume):
    """The scripts shipped into helper containers are assembled from source: they must compile, and the
    recover + finish(replace) scripts must do on a plain directory what the functions do."""
    import json
    import subprocess
    import sys
    from ansible_collections.volumeops.docker.plugins.module_utils import _helper as H
    for main, merge in ((H.FINGERPRINT_MAIN, False), (H.EXTRACT_MAIN, False), (H.FINISH_MAIN, True),
                        (H.RECOVER_MAIN, True)):
        compile(H._script(main, with_merge=merge), '<helper>', 'exec')
    root, staging = volume
    out = subprocess.run([sys.executable, '-c', H._script(H.FINISH_MAIN, with_merge=True), root, staging, 'replace',
                          json.dumps(list(A.SKIP_TYPES))], check=True, stdout=subprocess.PIPE).stdout
    assert json.loads(out.decode())['entries'] == 4  # root, new-x, shared, shared/f
    assert _state(root) == {'new-x': 'X', 'shared': 'dir', 'shared/f': 'new f'}
    os.mkdir(os.path.join(root, A.STAGING_MARKER + 'leftover'))
    out = subprocess.run([sys.executable, '-c', H._script(H.RECOVER_MAIN, with_merge=True), root, '[]',
                          json.dumps(list(A.SKIP_TYPES)), '2'], check=True, stdout=subprocess.PIPE).stdout
    data = json.loads(out.decode())
    assert data['entries'] == 4 and len(data['recovered']) == 1


# --- merge_into where the two sides disagree on the type (review finding 6)

def test_merge_replaces_a_file_or_symlink_where_the_archive_has_a_directory(tmp_path):
    target = str(tmp_path / 'vol')
    staging = str(tmp_path / 'staging')
    outside = str(tmp_path / 'outside')
    _write(os.path.join(outside, 'keep'), 'outside')
    _write(os.path.join(target, 'sub'), 'I am a file named sub')
    os.symlink(outside, os.path.join(target, 'link'))
    _write(os.path.join(target, 'keep.txt'), 'keep')
    _write(os.path.join(staging, 'sub', 'b.txt'), 'b')
    _write(os.path.join(staging, 'link', 'c.txt'), 'c')
    _write(os.path.join(staging, 'a.txt'), 'a')
    progress = []
    moved = A.merge_into(staging, target, progress)
    assert _state(target) == {'a.txt': 'a', 'keep.txt': 'keep', 'sub': 'dir', 'sub/b.txt': 'b', 'link': 'dir',
                              'link/c.txt': 'c'}
    assert not os.path.islink(os.path.join(target, 'link'))
    assert _state(outside) == {'keep': 'outside'}  # the symlink was removed, never followed
    assert moved == 3 and sorted(os.path.basename(p) for p in progress) == ['a.txt', 'link', 'sub']


def test_merge_failing_part_way_reports_what_it_changed(tmp_path, monkeypatch):
    target = str(tmp_path / 'vol')
    staging = str(tmp_path / 'staging')
    _write(os.path.join(target, 'keep.txt'), 'keep')
    for name in ('a', 'b', 'c'):
        _write(os.path.join(staging, name), name)
    real_rename = os.rename

    def flaky(src, dst):
        if dst.endswith('/b'):
            raise OSError(28, 'No space left on device (injected)', src)
        return real_rename(src, dst)
    monkeypatch.setattr(A.os, 'rename', flaky)
    progress = []
    with pytest.raises(OSError):
        A.merge_into(staging, target, progress)
    # b's failed rename changed nothing: only a counts
    assert [os.path.basename(p) for p in progress] == ['a']
    assert _state(target) == {'a': 'a', 'keep.txt': 'keep'}


def test_merge_failing_at_once_reports_nothing_changed_and_a_removal_as_a_change(tmp_path, monkeypatch):
    target = str(tmp_path / 'vol')
    staging = str(tmp_path / 'staging')
    _write(os.path.join(target, 'keep.txt'), 'keep')
    _write(os.path.join(target, 'd', 'old'), 'old')
    _write(os.path.join(staging, 'a'), 'a')
    _write(os.path.join(staging, 'd'), 'file where the volume has a directory')

    def cross_device(src, dst):
        raise OSError(18, 'Invalid cross-device link (injected)', src)
    monkeypatch.setattr(A.os, 'rename', cross_device)
    progress = []
    with pytest.raises(OSError):
        A.merge_into(staging, target, progress)
    assert progress == []  # a's rename failed first: nothing was changed
    assert _state(target) == {'d': 'dir', 'd/old': 'old', 'keep.txt': 'keep'}
    os.unlink(os.path.join(staging, 'a'))
    with pytest.raises(OSError):
        A.merge_into(staging, target, progress)
    # the directory d was removed to make room for the file before the rename failed: a change
    assert [os.path.basename(p) for p in progress] == ['d']
    assert _state(target) == {'keep.txt': 'keep'}


# --- leftovers beside _data (review findings 5, 7, 11)

def test_cleanup_rolls_back_an_exchange_interrupted_between_its_renames(tmp_path):
    parent = str(tmp_path)
    _write(os.path.join(parent, A.OLD_MARKER + '_data-4242', 'db'), 'the only copy')
    _write(os.path.join(parent, A.STAGING_MARKER + 'abc', 'db'), 'new, verified')
    actions, problems = A.cleanup_stale(parent, dry_run=True)
    assert len(actions) == 2 and problems == []
    assert not os.path.exists(os.path.join(parent, '_data'))  # dry run: nothing touched
    actions, problems = A.cleanup_stale(parent)
    assert _state(parent) == {'_data': 'dir', '_data/db': 'the only copy'}
    assert any('rolled back' in a for a in actions) and problems == []


def test_cleanup_removes_nothing_while_data_is_missing_and_unknown(tmp_path):
    parent = str(tmp_path)
    _write(os.path.join(parent, A.OLD_MARKER + '_data-1', 'db'), 'one')
    _write(os.path.join(parent, A.OLD_MARKER + '_data-2', 'db'), 'two')
    _write(os.path.join(parent, A.STAGING_MARKER + 'x', 'f'), 'f')
    before = _state(parent)
    actions, problems = A.cleanup_stale(parent)
    assert _state(parent) == before and actions == [] and len(problems) == 1


def test_cleanup_reports_what_it_cannot_remove_instead_of_raising(tmp_path, monkeypatch):
    parent = str(tmp_path)
    _write(os.path.join(parent, '_data', 'f'), 'live')
    _write(os.path.join(parent, A.STAGING_MARKER + 'a', 'locked'), 'x')
    _write(os.path.join(parent, A.OLD_MARKER + 'b', 'g'), 'y')

    def remove(path):
        if path.endswith('a'):
            raise PermissionError(1, 'Operation not permitted (injected)', 'locked')
        A.shutil.rmtree(path)
    monkeypatch.setattr(A, 'remove_tree', remove)
    actions, problems = A.cleanup_stale(parent)
    assert actions == ['removed %sb' % A.OLD_MARKER]
    assert len(problems) == 1 and 'Operation not permitted' in problems[0]
    assert sorted(os.listdir(parent)) == sorted(['_data', A.STAGING_MARKER + 'a'])


def test_volume_lock_is_exclusive_and_never_waits(tmp_path):
    parent = str(tmp_path)
    A.VolumeLock.probe(parent, 'v')  # no lock file: nobody holds it, and probing creates none
    assert not os.path.exists(os.path.join(parent, A.VOLUME_LOCK))
    lock = A.VolumeLock(parent, 'v')
    assert oct(os.stat(os.path.join(parent, A.VOLUME_LOCK)).st_mode & 0o777) == oct(0o600)
    with pytest.raises(A.VolumeBusy, match='Another restore or transfer of volume v is running'):
        A.VolumeLock(parent, 'v')
    with pytest.raises(A.VolumeBusy):
        A.VolumeLock.probe(parent, 'v')
    lock.release()
    A.VolumeLock(parent, 'v').release()
    A.VolumeLock.probe(parent, 'v')


def test_volume_lock_file_is_never_a_followed_symlink(tmp_path):
    parent = str(tmp_path)
    os.symlink(str(tmp_path / 'elsewhere'), os.path.join(parent, A.VOLUME_LOCK))
    with pytest.raises(OSError):
        A.VolumeLock(parent, 'v')
    assert not os.path.exists(str(tmp_path / 'elsewhere'))
