# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests for the tree walk and fingerprint (plugins/module_utils/_tree.py)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _archive
from ansible_collections.volumeops.docker.plugins.module_utils import _tree

# Computed by the first implementation of the fingerprint for _frozen_tree() below.
FROZEN_FINGERPRINT = 'sha256:e9eff9dc5f56375ca69ff8396a2c941e828fd99a2eccafd472719bddadc6dce8'


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


def _frozen_tree(root):
    """A small tree whose every fingerprinted property is fixed (needs root for the owners)."""
    root.mkdir()
    (root / 'd').mkdir()
    (root / 'd' / 'f').write_bytes(b'content')
    (root / 'big').write_bytes(b'x' * 1000)
    os.symlink('d/f', root / 'ln')
    os.mkfifo(root / 'd' / 'p')
    os.setxattr(root / 'big', 'user.k', b'\x00v')
    modes = {'d': 0o2750, 'd/f': 0o4644, 'big': 0o600, 'd/p': 0o640, '.': 0o755}
    for rel, mode in modes.items():
        os.chmod(root / rel, mode)
    for i, rel in enumerate(['d/f', 'big', 'ln', 'd/p', 'd', '.']):
        os.lchown(root / rel, 1000 + i, 2000 + i)
        os.utime(root / rel, ns=(1, 1700000000123456789 + i), follow_symlinks=False)


@pytest.mark.skipif(os.geteuid() != 0, reason='setting owners needs root')
@pytest.mark.parametrize('skip_types', [(), ('s',), ('l',)])
def test_fingerprint_and_listing_in_one_walk_equal_the_two_walks(tree, skip_types, monkeypatch):
    import socket
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tree / 'sock'))  # a socket, left out with skip_types=('s',)
    try:
        summary, listed = _tree.fingerprint_and_listing(str(tree), skip_types)
        separate = _tree.fingerprint(str(tree), skip_types=skip_types)
        assert (summary.fingerprint, summary.entries, summary.bytes) == \
            (separate.fingerprint, separate.entries, separate.bytes)
        assert listed == _tree.listing(str(tree), skip_types)
        assert (b'sock' in listed) == ('s' not in skip_types) and (b'link' in listed) == ('l' not in skip_types)
        walks = []
        real_walk = _tree.walk
        monkeypatch.setattr(_tree, 'walk', lambda *a, **k: walks.append(a) or real_walk(*a, **k))
        _tree.fingerprint_and_listing(str(tree), skip_types)
        assert len(walks) == 1
    finally:
        sock.close()


def test_fingerprint_format_is_frozen(tmp_path):
    # Manifests of existing archives hold fingerprints: the record format and hashing must not drift.
    root = tmp_path / 'frozen'
    _frozen_tree(root)
    summary = _tree.fingerprint(str(root))
    assert (summary.fingerprint, summary.entries, summary.bytes) == (FROZEN_FINGERPRINT, 6, 1007)
    record = _tree.entry_record(next(e for e in _tree.walk(str(root)) if e.relpath == b'./big'))
    assert record == b'./big\0f\x001000\x001700000000123456790\x00600\x001001\x002001\x00\x00user.k=0076'


def test_change_token_walk_equals_the_fingerprint_walk_token(tree):
    summary = _tree.fingerprint(str(tree), with_change_token=True)
    token = _tree.change_token(str(tree))
    assert summary.change_token.digest == token.digest
    assert summary.change_token.max_ctime_ns == token.max_ctime_ns
    assert _tree.ChangeToken.from_dict(token.as_dict()).as_dict() == token.as_dict()
    assert _tree.ChangeToken.from_dict({'digest': 'x'}) is None
    assert _tree.ChangeToken.from_dict(None) is None


def test_change_token_is_settled_only_for_old_ctimes(tree):
    token = _tree.change_token(str(tree))
    assert not token.settled  # the tree was made just now: a change within one clock tick could hide
    old = _tree.ChangeToken(token.digest, token.max_ctime_ns, token.max_ctime_ns + _tree.CTIME_SETTLED_NS + 1)
    assert old.settled
    assert old.proves_unchanged(_tree.change_token(str(tree)))
    assert not token.proves_unchanged(_tree.change_token(str(tree)))  # equal, but not settled
    assert not old.proves_unchanged(None)


TOKEN_METHODS = {'walk': _tree.change_token, 'find': _tree.find_change_token}


@pytest.mark.parametrize('method', sorted(TOKEN_METHODS))
@pytest.mark.parametrize('change', ['mode', 'mtime_kept_content_same_size', 'xattr', 'owner', 'new_file',
                                    'rename', 'hard_link', 'symlink_retarget'])
def test_change_token_sees_every_change_even_when_mtime_is_put_back(tree, change, method):
    make = TOKEN_METHODS[method]
    before = make(str(tree))
    assert before.method == method and make(str(tree)).digest == before.digest
    time.sleep(0.05)  # more than one tick of the kernel's coarse clock
    target = tree / 'b' / 'c' / 'deep'
    st = os.lstat(target)
    if change == 'mode':
        os.chmod(target, 0o600)
    elif change == 'mtime_kept_content_same_size':
        target.write_bytes(b'y' * 10)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == 'xattr':
        os.setxattr(target, 'user.test', b'1')
    elif change == 'owner':
        os.chown(target, st.st_uid, st.st_gid)  # even a chown to the same owner moves ctime
    elif change == 'new_file':
        (tree / 'b' / 'new').write_bytes(b'')
    elif change == 'rename':
        os.rename(target, tree / 'b' / 'c' / 'deeper')
    elif change == 'hard_link':
        os.link(target, tree / 'deep2')
    elif change == 'symlink_retarget':
        os.unlink(tree / 'link')
        os.symlink('b', tree / 'link')
    after = make(str(tree))
    assert after.digest != before.digest
    assert after.max_ctime_ns > before.max_ctime_ns


def test_find_token_covers_the_walk_entries_with_their_newest_ctime(tree):
    os.mkfifo(tree / 'fifo')
    walked = _tree.change_token(str(tree))
    found = _tree.find_change_token(str(tree))
    assert found.method == 'find' and found.digest.startswith('sha256:') and found.digest != walked.digest
    assert found.max_ctime_ns == walked.max_ctime_ns  # same entries, nanosecond ctimes
    # Stored and read back; a token of the other method never proves anything.
    assert _tree.ChangeToken.from_dict(found.as_dict()).as_dict() == found.as_dict()
    settled_find = _tree.ChangeToken(found.digest, found.max_ctime_ns, found.max_ctime_ns + _tree.CTIME_SETTLED_NS + 1,
                                     method='find')
    assert settled_find.proves_unchanged(settled_find.again(str(tree)))
    assert not settled_find.proves_unchanged(_tree.ChangeToken(found.digest, 1, 2, method='walk'))
    assert settled_find.again(str(tree)).method == 'find'


def test_token_from_dict_of_older_and_unknown_methods():
    old = _tree.ChangeToken.from_dict({'digest': 'sha256:x', 'max_ctime_ns': 1, 'started_ns': 2})
    assert old.method == 'walk'  # stored before find tokens existed
    assert _tree.ChangeToken.from_dict({'digest': 'x', 'max_ctime_ns': 1, 'started_ns': 2, 'method': 'ls'}) is None


def _fake_find(tmp_path, monkeypatch, script):
    bindir = tmp_path / 'bin'
    bindir.mkdir(parents=True)
    (bindir / 'find').write_text('#!/bin/sh\n' + script + '\n')
    os.chmod(bindir / 'find', 0o755)
    monkeypatch.setenv('PATH', str(bindir))


@pytest.mark.parametrize('script', ['echo "find: unrecognized: -printf"; exit 1',  # busybox
                                    'printf "garbage"',  # not the expected records
                                    'printf "12 1700000000.5 \\0"; exit 1'])  # an error while listing
def test_find_token_is_none_when_find_is_not_gnu_find_or_fails(tree, tmp_path, monkeypatch, script):
    _fake_find(tmp_path, monkeypatch, script)
    assert _tree.find_change_token(str(tree)) is None


def test_fingerprint_with_token_of_a_small_tree_is_the_walks_own(tree, monkeypatch):
    def no_find(*args, **kwargs):
        raise AssertionError('find started for a tree of %d entries' % _tree.fingerprint(str(tree)).entries)
    monkeypatch.setattr(_tree, 'FindChangeToken', no_find)  # below FIND_TOKEN_MIN_ENTRIES: not worth a process
    summary = _tree.fingerprint(str(tree), with_change_token=True)
    plain = _tree.fingerprint(str(tree), with_change_token=True)
    assert (summary.fingerprint, summary.entries, summary.bytes) == (plain.fingerprint, plain.entries, plain.bytes)
    assert summary.change_token.method == 'walk' and summary.change_token.digest == plain.change_token.digest


def test_fingerprint_with_token_without_find_keeps_the_walks_token(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(_tree, 'FIND_TOKEN_MIN_ENTRIES', 2)
    monkeypatch.setenv('PATH', str(tmp_path / 'nothing-here'))
    summary = _tree.fingerprint(str(tree), with_change_token=True)
    plain = _tree.fingerprint(str(tree), with_change_token=True)
    assert summary.fingerprint == plain.fingerprint
    assert summary.change_token.method == 'walk' and summary.change_token.digest == plain.change_token.digest


def test_fingerprint_with_token_of_a_big_tree_uses_find_from_the_walks_start(tree, monkeypatch):
    monkeypatch.setattr(_tree, 'FIND_TOKEN_MIN_ENTRIES', 2)  # as if the tree were big
    before = time.time_ns()
    summary = _tree.fingerprint(str(tree), with_change_token=True)
    assert summary.fingerprint == _tree.fingerprint(str(tree)).fingerprint
    token = summary.change_token
    assert token.method == 'find' and token.digest == _tree.find_change_token(str(tree)).digest
    assert before <= token.started_ns <= time.time_ns()


@pytest.mark.parametrize('find_min', [2, 10 ** 6])
def test_token_started_at_a_given_earlier_time_is_settled_from_then_on(tree, monkeypatch, find_min):
    # volume_backup starts tar before its walk and gives tar's start: the token (walk's own or
    # find's) must judge settledness from that time, not from when the walk began.
    monkeypatch.setattr(_tree, 'FIND_TOKEN_MIN_ENTRIES', find_min)
    newest = _tree.change_token(str(tree)).max_ctime_ns
    late = _tree.fingerprint(str(tree), with_change_token=True,
                             started_ns=newest + _tree.CTIME_SETTLED_NS + 1).change_token
    early = _tree.fingerprint(str(tree), with_change_token=True, started_ns=newest + 1).change_token
    assert late.method == early.method == ('find' if find_min == 2 else 'walk')
    assert late.started_ns == newest + _tree.CTIME_SETTLED_NS + 1 and late.settled
    assert early.started_ns == newest + 1 and not early.settled
    assert late.digest == early.digest


def test_find_token_newest_ctime_by_number_when_widths_differ(tree, tmp_path, monkeypatch):
    # Byte order would take 999999999.5 (2001) for the newest; the numbers say 1000000000.25.
    _fake_find(tmp_path, monkeypatch, 'printf "999999999.5 11 a\\0001000000000.25 12 b\\000"')
    token = _tree.find_change_token(str(tree))
    assert token.max_ctime_ns == 1000000000250000000
    _fake_find(tmp_path / 'again', monkeypatch, 'printf "1700000000.5 11 a\\0001700000001.25 12 b\\000"')
    assert _tree.find_change_token(str(tree)).max_ctime_ns == 1700000001250000000
    _fake_find(tmp_path / 'odd-later', monkeypatch, 'printf "1000000000.25 12 b\\000999999999.5 11 a\\000"')
    assert _tree.find_change_token(str(tree)).max_ctime_ns == 1000000000250000000


def test_find_token_is_none_without_room_for_its_list(tree, monkeypatch):
    def no_room(*args, **kwargs):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(_tree.tempfile, 'TemporaryFile', no_room)
    assert _tree.find_change_token(str(tree)) is None
    monkeypatch.setattr(_tree, 'FIND_TOKEN_MIN_ENTRIES', 2)
    summary = _tree.fingerprint(str(tree), with_change_token=True)  # falls back to the walk's token
    assert summary.change_token.method == 'walk'
    assert summary.change_token.digest == _tree.change_token(str(tree)).digest


def test_find_token_of_a_symlinked_root_covers_the_tree_it_points_to(tree, tmp_path):
    link = tmp_path / 'root-link'
    os.symlink(str(tree), link)  # walk() opens the root, following it: so does find -H
    before = _tree.find_change_token(str(link))
    assert before is not None and before.max_ctime_ns == _tree.find_change_token(str(tree)).max_ctime_ns
    time.sleep(0.05)
    os.chmod(tree / 'b' / 'c' / 'deep', 0o600)
    assert _tree.find_change_token(str(link)).digest != before.digest


def test_unchanged_but_recent_needs_every_recent_entry_recorded_and_unchanged(tmp_path, monkeypatch):
    """The listing named a recent entry the walk did not record (each saw it at another moment), a record
    differs, the listings differ, or a set was too big to keep: no proof."""
    root = str(tmp_path)
    for name in ('a', 'b'):
        (tmp_path / name).write_text(name)
    now = {rel: _tree.current_record_digest(root, rel) for rel in (b'./a', b'./b')}

    def token(digest='sha256:x', method='find', recent=(b'./a', b'./b'), recorded=None):
        return _tree.ChangeToken(digest, 10, 5, method, recent=None if recent is None else frozenset(recent),
                                 recorded=dict(now) if recorded is None else recorded)
    same = token(recent=None, recorded={})
    assert _tree.unchanged_but_recent(token(), same, root)
    assert not _tree.unchanged_but_recent(token(recorded={b'./a': now[b'./a']}), same, root)
    assert not _tree.unchanged_but_recent(token(recorded={b'./a': now[b'./a'], b'./b': b'0' * 16}), same, root)
    assert not _tree.unchanged_but_recent(token(recent=None), same, root)
    assert not _tree.unchanged_but_recent(token(), token(digest='sha256:y'), root)
    assert not _tree.unchanged_but_recent(token(), token(method='walk'), root)
    (tmp_path / 'b').unlink()
    assert not _tree.unchanged_but_recent(token(), same, root)


def test_recent_paths_of_find_records():
    records = [b'1700000000.25 12 a b', b'1700000009.5 13 ', b'1600000000.0 14 old']
    assert sorted(_tree._recent_paths(records, 1700000000 * 10 ** 9)) == [b'.', b'./a b']


def test_walk_token_names_and_records_its_recent_entries(tmp_path):
    (tmp_path / 'new').write_text('x')
    summary = _tree.fingerprint(str(tmp_path), with_change_token=True, skip_types=('s',))
    token = summary.change_token
    assert not token.settled and token.method == 'walk'
    assert set(token.recent) == set(token.recorded) == {b'.', b'./new'}
    assert token.recorded[b'./new'] == _tree.current_record_digest(str(tmp_path), b'./new')
    assert 'recorded' not in token.as_dict() and 'recent' not in token.as_dict()


def test_change_hasher_saw_recent_as_soon_as_a_recent_entry_is_added(tree):
    entries = list(_tree.walk(str(tree)))
    newest = max(e.st.st_ctime_ns for e in entries)
    settled = _tree.ChangeHasher(started_ns=newest + _tree.CTIME_SETTLED_NS + 1)
    recent = _tree.ChangeHasher(started_ns=newest + _tree.CTIME_SETTLED_NS)
    for entry in entries:
        settled.add(entry)
        assert not settled.saw_recent
    assert settled.token().settled
    seen = []
    for entry in sorted(entries, key=lambda e: e.st.st_ctime_ns):
        recent.add(entry)
        seen.append(recent.saw_recent)
    assert seen[-1] and not recent.token().settled  # the same rule as the token's, judged while walking
    assert seen == sorted(seen)  # once seen, it stays


def _linked_pair(root, linked):
    """``root`` with files a and b of equal content and metadata, hard-linked or two separate inodes."""
    root.mkdir()
    (root / 'a').write_bytes(b'same')
    if linked:
        os.link(root / 'a', root / 'b')
    else:
        (root / 'b').write_bytes(b'same')
    for name in ('a', 'b', '.'):
        os.utime(root / name, ns=(1700000000 * 10 ** 9, 1700000000 * 10 ** 9))


def test_fingerprint_covers_hard_link_structure(tmp_path):
    # Two trees whose entries have the same metadata, one with a and b hard-linked, one with two files:
    # a copy that made or broke the link must not verify (a later write to a would change b, or not).
    linked, separate = tmp_path / 'linked', tmp_path / 'separate'
    _linked_pair(linked, True)
    _linked_pair(separate, False)
    assert _tree.fingerprint(str(linked)).fingerprint != _tree.fingerprint(str(separate)).fingerprint
    # Version 1 (archives made before) did not see the difference: comparisons with a stored v1 fingerprint
    # compute v1.
    assert (_tree.fingerprint(str(linked), version=1).fingerprint
            == _tree.fingerprint(str(separate), version=1).fingerprint)


def test_fingerprint_of_a_tree_without_hard_links_is_the_same_in_versions_1_and_2(tree):
    os.unlink(tree / 'b' / 'hard')
    assert _tree.fingerprint(str(tree), version=1).fingerprint == _tree.fingerprint(str(tree)).fingerprint
    # A file with another link outside the tree (nlink 2, one member walked) is hashed as a lone file.
    os.link(tree / 'a.txt', tree.parent / 'outside-link')
    assert _tree.fingerprint(str(tree), version=1).fingerprint == _tree.fingerprint(str(tree)).fingerprint


def test_find_token_stays_on_the_roots_filesystem(tree):
    # The walk (and tar, --one-file-system) do not enter a filesystem mounted below the root; neither may the
    # change token's find listing, or it would cover entries the fingerprint does not. /proc is another
    # filesystem than the tree's: a symlink is not followed, but a mount point would be entered.
    argv = []
    real_popen = _tree.subprocess.Popen

    def popen(args, **kwargs):
        argv.append(list(args))
        return real_popen(args, **kwargs)
    _tree.subprocess.Popen = popen
    try:
        token = _tree.FindChangeToken(str(tree)).result()
    finally:
        _tree.subprocess.Popen = real_popen
    assert token is not None
    assert '-xdev' in argv[0] and argv[0].index('-xdev') < argv[0].index('-printf')


# --- read-ahead in tar's order (ReadAhead) ---------------------------------------------------------

def _tar_member_order(root, exclude=None):
    """The members GNU tar archives, in its order (tar_create_argv: --sort=name), as absolute bytes paths."""
    argv = _archive.tar_create_argv(str(root), exclude=exclude)
    listing = subprocess.run(argv, stdout=subprocess.PIPE, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(listing), mode='r:', encoding='utf-8', errors='surrogateescape') as tf:
        names = [os.fsencode(m.name) for m in tf.getmembers()]
    base = os.fsencode(str(root))
    return [base + b'/' + n[2:] for n in names if n not in (b'.', b'./')]


def _mixed_tree(root):
    for d in ('a/x/deep', 'a/y', 'b', 'c d', 'skip/inner'):
        (root / d).mkdir(parents=True)
    for f in ('a/1', 'a/x/2', 'a/x/deep/3', 'a/y/4', 'a0', 'b/5', 'c d/6', 'z', 'skip/inner/7', 'a/x.log'):
        (root / f).write_bytes(f.encode() * 100)
    (root / os.fsdecode(b'a/\xff-name')).write_bytes(b'x')
    os.symlink('z', root / 'a/link')
    os.mkfifo(root / 'b/fifo')


def test_tar_order_is_gnu_tars_member_order(tmp_path):
    # The read-ahead must visit files in the order tar reads them, or it reads ahead what tar reads last.
    root = tmp_path / 'vol'
    root.mkdir()
    _mixed_tree(root)
    assert [p for p, _st in _tree.tar_order(str(root))] == _tar_member_order(root)
    # Excluded entries are left out as tar leaves them out (and excluded directories not entered).
    exclude = ['skip', '*.log']
    ordered = [p for p, _st in _tree.tar_order(str(root), exclude=exclude)]
    assert ordered == _tar_member_order(root, exclude=exclude)
    assert not any(b'/skip' in p or p.endswith(b'.log') for p in ordered)


def _pipe_tar(root, names=None):
    argv = _archive.tar_create_argv(str(root))
    if names is not None:
        argv = argv[:-1] + ['--no-recursion', '--null', '--verbatim-files-from', '--files-from=-']
    return subprocess.Popen(argv, stdin=subprocess.PIPE if names is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE)


def test_read_ahead_stays_within_its_window_of_tar_and_covers_every_file(tmp_path):
    root = tmp_path / 'vol'
    root.mkdir()
    size = 1 << 20
    for i in range(24):
        (root / ('f%02d' % i)).write_bytes(os.urandom(size))
    (root / 'empty').write_bytes(b'')
    window = 2 * size
    tar = _pipe_tar(root)
    ahead = _tree.ReadAhead(str(root), tar.pid, window=window).start()
    try:
        # Nobody reads tar's output yet: tar stops on its full pipe, and the read-ahead must wait.
        deadline = time.monotonic() + 5
        while ahead.advised_bytes < window and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        tar_read = _tree._read_chars(tar.pid)
        assert 0 < ahead.advised_bytes <= tar_read + window + size
        assert ahead.advised_bytes < 24 * size
        # As tar goes on, so does the read-ahead: it has covered every non-empty regular file, once,
        # by the time tar reads the last ones.
        out = 0
        while ahead.advised_bytes < 24 * size:
            # tar may not get ahead of the read-ahead (on a loaded machine its thread could lag behind).
            assert _wait_until(lambda: ahead.advised_bytes >= min(24 * size, out))
            chunk = tar.stdout.read(65536)
            assert chunk, 'tar ended before the read-ahead covered the files'
            out += len(chunk)
        assert ahead.advised_bytes == 24 * size
        out += len(tar.stdout.read())
        assert tar.wait() == 0 and out > 24 * size
        assert _wait_until(lambda: not ahead._thread.is_alive())
    finally:
        ahead.stop()
        tar.stdout.close()
    assert not ahead._thread.is_alive()


def test_read_ahead_of_a_name_list_and_its_stop(tmp_path):
    root = tmp_path / 'vol'
    root.mkdir()
    _mixed_tree(root)
    names = [b'./a/1', b'./b/fifo', b'./gone', b'./c d/6']
    tar = _pipe_tar(root, names)
    ahead = _tree.ReadAhead(str(root), tar.pid, names=names, window=1 << 30).start()
    try:
        deadline = time.monotonic() + 5
        while ahead._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        # The two regular files; the FIFO is never opened (it would block) and the missing name is skipped.
        assert ahead.advised_bytes == len(b'a/1') * 100 + len(b'c d/6') * 100
    finally:
        ahead.stop()
        tar.stdin.close()
        tar.stdout.read()
        tar.wait()
        tar.stdout.close()


def test_read_ahead_does_nothing_for_a_process_that_is_gone(tmp_path):
    root = tmp_path / 'vol'
    root.mkdir()
    (root / 'f').write_bytes(b'x' * 1000)
    proc = subprocess.Popen(['true'])
    proc.wait()
    ahead = _tree.ReadAhead(str(root), proc.pid).start()
    ahead.stop()
    assert ahead.advised_bytes == 0


def _blocked_tar(root):
    """A tar of ``root`` whose output nobody reads yet: it stops on its full pipe."""
    return _pipe_tar(root)


def _wait_until(pred, timeout=5):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)
    return pred()


def test_read_ahead_reads_uncached_files_into_the_page_cache(tmp_path):
    root = tmp_path / 'vol'
    root.mkdir()
    path = root / 'data'
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        if not _evicted(path):
            pytest.skip('this filesystem keeps the pages (tmpfs) or cannot tell (no RWF_NOWAIT)')
        tar = subprocess.Popen(['sleep', '30'])  # stands for a tar that has not read anything yet
        ahead = _tree.ReadAhead(str(root), tar.pid).start()
        try:
            assert _wait_until(lambda: _tree._first_page_cached(fd))
            # The thread counts a file after its fadvise returns, which may be after the page arrived.
            assert _wait_until(lambda: ahead.advised_bytes == 1 << 20), ahead.advised_bytes
        finally:
            ahead.stop()
            tar.kill()
            tar.wait()
    finally:
        os.close(fd)


def test_read_ahead_stops_when_the_files_are_cached_already(tmp_path):
    # Just written, so in the page cache: after one sample of files that all were, it stops (tar reading
    # from the cache is faster than the read-ahead's walk, which would only cost CPU).
    root = tmp_path / 'vol'
    root.mkdir()
    count = _tree._READ_AHEAD_SAMPLE_FILES * 2
    for i in range(count):
        (root / ('f%04d' % i)).write_bytes(b'x' * 100)
    probe = os.open(root / 'f0000', os.O_RDONLY)
    try:
        if not _tree._first_page_cached(probe):
            pytest.skip('cannot tell cached pages here (no RWF_NOWAIT)')
    finally:
        os.close(probe)
    tar = subprocess.Popen(['sleep', '30'])
    ahead = _tree.ReadAhead(str(root), tar.pid, window=1 << 30).start()
    try:
        assert _wait_until(lambda: not ahead._thread.is_alive())
        assert ahead.advised_bytes == _tree._READ_AHEAD_SAMPLE_FILES * 100
    finally:
        ahead.stop()
        tar.kill()
        tar.wait()


def _evicted(path):
    """Write ``path``'s pages back and drop them from the page cache; False when they stay (tmpfs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        evicted = not _tree._first_page_cached(fd)
        # That probe started the kernel's read-ahead of the file's start (a read that may not wait still
        # does): let it finish and drop those pages too.
        time.sleep(0.1)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return evicted
    finally:
        os.close(fd)


def test_read_ahead_advises_a_big_file_piece_by_piece_within_the_window(tmp_path):
    root = tmp_path / 'vol'
    root.mkdir()
    big = root / 'big'
    big.write_bytes(os.urandom(24 << 20))
    if not _evicted(big):
        pytest.skip('this filesystem keeps the pages (tmpfs) or cannot tell (no RWF_NOWAIT)')
    window = 3 << 20
    tar = subprocess.Popen(['sleep', '30'])  # stands for a tar that reads nothing meanwhile
    ahead = _tree.ReadAhead(str(root), tar.pid, window=window).start()
    try:
        base = _tree._read_chars(tar.pid)
        assert _wait_until(lambda: ahead.advised_bytes >= window)
        time.sleep(0.2)
        # Not the whole 24 MiB at once: at most the window beyond what "tar" read.
        assert window <= ahead.advised_bytes <= base + window
        assert ahead._thread.is_alive()
    finally:
        ahead.stop()
        tar.kill()
        tar.wait()
    assert not ahead._thread.is_alive()


def test_read_ahead_counts_only_the_data_of_a_sparse_file(tmp_path):
    root = tmp_path / 'vol'
    root.mkdir()
    sparse = root / 'sparse'
    with open(sparse, 'wb') as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(os.urandom(1 << 20))
    if os.stat(sparse).st_blocks * 512 >= 64 << 20:
        pytest.skip('this filesystem does not keep holes')
    _evicted(sparse)
    tar = subprocess.Popen(['sleep', '30'])
    # A window smaller than the hole: were the hole counted, the read-ahead would wait for "tar" forever.
    ahead = _tree.ReadAhead(str(root), tar.pid, window=8 << 20).start()
    try:
        assert _wait_until(lambda: not ahead._thread.is_alive())
        assert ahead.advised_bytes == 1 << 20
    finally:
        ahead.stop()
        tar.kill()
        tar.wait()
