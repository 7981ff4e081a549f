# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests for the tree walk and fingerprint (plugins/module_utils/_tree.py)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _tree


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / 'vol'
    (root / 'b' / 'c').mkdir(parents=True)
    (root / 'a.txt').write_bytes(b'hello')
    (root / 'b' / 'c' / 'deep').write_bytes(b'x' * 10)
    os.symlink('a.txt', root / 'link')
    os.link(root / 'a.txt', root / 'b' / 'hard')
    (root / os.fsdecode(b'bad-\xff-name')).write_bytes(b'')
    return root


def test_walk_order_is_deterministic_with_relative_bytes_paths(tree):
    # A directory's entries (sorted by bytes) come before the contents of its subdirectories.
    paths = [e.relpath for e in _tree.walk(str(tree))]
    assert paths == [b'.', b'./a.txt', b'./b', b'./bad-\xff-name', b'./link',
                     b'./b/c', b'./b/hard', b'./b/c/deep']


def test_walk_never_follows_symlinks(tree, tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'secret').write_bytes(b's')
    os.symlink(str(outside), tree / 'escape')
    paths = [e.relpath for e in _tree.walk(str(tree))]
    assert b'./escape' in paths
    assert not any(p.startswith(b'./escape/') for p in paths)


def test_exclude_matches_names_and_paths_and_prunes_dirs(tree):
    paths = [e.relpath for e in _tree.walk(str(tree), exclude=['b', '*.txt'])]
    assert paths == [b'.', b'./bad-\xff-name', b'./link']


def test_fingerprint_counts_and_hardlinks_once(tree):
    summary = _tree.fingerprint(str(tree))
    assert summary.entries == 8
    assert summary.bytes == 5 + 10 + 0  # a.txt and its hard link counted once
    assert summary.fingerprint.startswith('sha256:')


@pytest.mark.parametrize('change', ['mode', 'mtime', 'content_size', 'symlink', 'xattr', 'new_file', 'rename'])
def test_fingerprint_detects_each_kind_of_change(tree, change):
    before = _tree.fingerprint(str(tree)).fingerprint
    target = tree / 'b' / 'c' / 'deep'
    if change == 'mode':
        os.chmod(target, 0o4755)
    elif change == 'mtime':
        st = os.stat(target)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    elif change == 'content_size':
        target.write_bytes(b'y' * 11)
    elif change == 'symlink':
        os.unlink(tree / 'link')
        os.symlink('b', tree / 'link')
    elif change == 'xattr':
        os.setxattr(target, 'user.test', b'1')
    elif change == 'new_file':
        (tree / 'b' / 'new').write_bytes(b'')
    elif change == 'rename':
        os.rename(target, tree / 'b' / 'c' / 'deeper')
    assert _tree.fingerprint(str(tree)).fingerprint != before


def test_fingerprint_is_stable_and_ignores_atime(tree):
    first = _tree.fingerprint(str(tree)).fingerprint
    (tree / 'a.txt').read_bytes()
    st = os.stat(tree / 'a.txt')
    os.utime(tree / 'a.txt', ns=(st.st_atime_ns + 10**9, st.st_mtime_ns))
    assert _tree.fingerprint(str(tree)).fingerprint == first


def test_root_mtime_can_be_left_out(tree):
    with_mtime = _tree.fingerprint(str(tree)).fingerprint
    without = _tree.fingerprint(str(tree), include_root_mtime=False).fingerprint
    st = os.stat(tree)
    os.utime(tree, ns=(st.st_atime_ns, st.st_mtime_ns + 5))
    assert _tree.fingerprint(str(tree)).fingerprint != with_mtime
    assert _tree.fingerprint(str(tree), include_root_mtime=False).fingerprint == without


def test_listing_keys_and_records(tree):
    os.mkfifo(str(tree / 'fifo'))
    st = os.lstat(str(tree / 'a.txt'))
    found = _tree.listing(str(tree), skip_types=('p',))
    assert set(found) == {b'.', b'a.txt', b'b', b'bad-\xff-name', b'link', b'b/c', b'b/hard', b'b/c/deep'}
    assert found[b'a.txt'] == ('f', 5, st.st_mtime_ns, st.st_mode & 0o7777, st.st_uid, st.st_gid, b'')
    assert found[b'link'][0] == 'l' and found[b'link'][6] == b'a.txt'
    assert found[b'b'][:2] == ('d', 0)  # a directory's size is not compared
