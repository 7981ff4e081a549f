# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Pure logic of the transfer: walk order key, delta planning, framing, command quoting, receiver bundle,
plus the receiver's untrusted-stream guards on a local directory."""

from __future__ import annotations

import io
import json
import os
import shlex
import socket
import subprocess
import sys
import tarfile
import time

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _archive, _transfer, _tree


def _tree_at(root, spec):
    for rel, kind in spec:
        path = os.path.join(root, rel)
        if kind == 'd':
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'w') as f:
                f.write(kind)


SPEC = [('a', 'd'), ('a/b', 'd'), ('a/b/c', 'x'), ('a/z', 'x'), ('a-b', 'd'), ('a-b/q', 'x'), ('b', 'x'),
        ('a.b', 'd'), ('a.b/x', 'x'), ('z', 'd'), ('z/a', 'd'), ('z/a/a', 'x'), (u'\u00e9', 'x')]


def test_walk_key_matches_walk_order(tmp_path):
    _tree_at(str(tmp_path), SPEC)
    paths = [e.relpath for e in _tree.walk(str(tmp_path))]
    assert paths[0] == b'.'
    assert sorted(paths, key=_transfer.walk_key) == paths


def _records(root):
    return [(p, d, c, e.st) for p, d, c, e in _transfer.iter_records(root)]


def _dest(root):
    return [(p, d, c) for p, d, c, dummy in _transfer.iter_records(root)]


def test_delta_identical_trees_sends_nothing(tmp_path):
    src = tmp_path / 'src'
    _tree_at(str(src), SPEC)
    plan = _transfer.compute_delta(_records(str(src)), _dest(str(src)))
    assert plan.send == [] and plan.delete == []
    assert plan.unchanged == len(_dest(str(src)))


def test_delta_changes_additions_deletions(tmp_path):
    src = tmp_path / 'src'
    dst = tmp_path / 'dst'
    _tree_at(str(src), SPEC)
    subprocess.run(['cp', '-a', str(src), str(dst)], check=True)
    # modify a file (size changes), add a dir with a file, delete a subtree, change a file into a dir
    with open(str(src / 'a' / 'z'), 'a') as f:
        f.write('more')
    os.makedirs(str(src / 'new' / 'deep'))
    (src / 'new' / 'deep' / 'f').write_text('n')
    subprocess.run(['rm', '-rf', str(src / 'z')], check=True)
    os.unlink(str(src / 'b'))
    os.mkdir(str(src / 'b'))
    plan = _transfer.compute_delta(_records(str(src)), _dest(str(dst)))
    send = set(plan.send)
    assert {b'./a/z', b'./new', b'./new/deep', b'./new/deep/f', b'./b'} <= send
    # parents of changed/deleted entries are re-sent for their mtimes
    assert b'./a' in send and b'.' in send
    # unchanged entries are not sent
    assert b'./a/b/c' not in send and b'./a-b/q' not in send
    # z/ is deleted once (top-most); the changed file and the retyped path are deleted first
    assert b'./z' in plan.delete and b'./z/a' not in plan.delete and b'./z/a/a' not in plan.delete
    assert b'./a/z' in plan.delete and b'./b' in plan.delete
    assert plan.send == sorted(plan.send, key=_transfer.walk_key)
    assert plan.send_bytes == len('xmore') + 1


def test_delta_hardlink_group_sent_together(tmp_path):
    src = tmp_path / 'src'
    dst = tmp_path / 'dst'
    _tree_at(str(src), [('d', 'd'), ('d/one', 'data')])
    subprocess.run(['cp', '-a', str(src), str(dst)], check=True)
    os.link(str(src / 'd' / 'one'), str(src / 'two'))  # a new link to an unchanged file
    plan = _transfer.compute_delta(_records(str(src)), _dest(str(dst)))
    assert b'./two' in plan.send and b'./d/one' in plan.send
    assert b'./d/one' in plan.delete
    assert plan.send_bytes == 4  # the data is counted once


def test_delta_rejects_unordered_destination_records():
    src = [(b'.', b'0' * 16, 'd', None)]
    dst = [(b'.', b'0' * 16, 'd'), (b'./b', b'1' * 16, 'f'), (b'./a', b'1' * 16, 'f')]
    with pytest.raises(_transfer.TransferError):
        _transfer.compute_delta(iter(src), iter(dst))


def test_topmost():
    paths = [b'./a', b'./a/b', b'./a/b/c', b'./b', b'./c/d', b'./c/d/e']
    assert _transfer._topmost(sorted(paths, key=_transfer.walk_key)) == [b'./a', b'./b', b'./c/d']


def test_records_and_paths_roundtrip():
    recs = [(b'./a\nb', b'\x00' * 16, 'f'), (b'./\xff\xfe', b'\x01' * 16, 'l'), (b'.', b'\x02' * 16, 'd')]
    assert _transfer.decode_records(_transfer.encode_records(recs)) == recs
    paths = [b'./x y', b'./\n', b'./-rf']
    assert _transfer.decode_paths(_transfer.encode_paths(paths)) == paths


def test_frames_roundtrip_and_eof():
    buf = io.BytesIO()
    w = _transfer.FrameIO(None, buf.write)
    w.send_json(b'H', {'a': 1})
    w.send(b'D', b'x' * 70000)
    w.send(b'K')
    w.send(b'!', b'{"msg": "boom"}')
    r = _transfer.FrameIO(io.BytesIO(buf.getvalue()).read, None)
    kind, payload = r.recv_expect(b'H')
    assert _transfer._json(payload) == {'a': 1}
    kind, payload = r.recv_expect(b'D')
    assert payload == b'x' * 70000
    with pytest.raises(_transfer.TransferError, match='boom'):
        r.recv_expect(b'F')  # the keepalive is skipped, the error frame raises with its message
    with pytest.raises(_transfer.ConnectionLost):
        r.recv()


class _PacketChannel(object):
    """Stands in for a paramiko channel (no SSH here): send() takes at most ``packet`` bytes a call,
    like paramiko does for the peer's packet size, and keeps what it was given."""

    def __init__(self, packet):
        self.packet = packet
        self.received = bytearray()
        self.given = []

    def send(self, data):
        self.given.append(data)
        n = min(len(data), self.packet)
        self.received += data[:n]
        return n


@pytest.mark.parametrize('size', [0, 1, 32768, 32769, 1024 * 1024 + 7])
def test_channel_sendall_sends_everything_in_order_without_copies(size):
    data = os.urandom(size)
    chan = _PacketChannel(32768)
    w = _transfer.FrameIO(None, _transfer.channel_sendall(chan))
    w.send(b'D', data)
    r = _transfer.FrameIO(io.BytesIO(bytes(chan.received)).read, None)
    assert r.recv_expect(b'D') == (b'D', data)
    assert w.sent == len(chan.received)
    # Every call got a view of the caller's bytes, none a sliced copy of the rest.
    assert chan.given and all(isinstance(g, memoryview) for g in chan.given)
    assert len(chan.given) == 1 + -(-size // 32768)  # the frame header, then one call per packet


def test_channel_sendall_stops_when_the_channel_takes_nothing():
    class Closed(object):
        calls = 0

        def send(self, data):
            self.calls += 1
            return 0  # paramiko: closed while waiting for window space, or EOF sent
    chan = Closed()
    with pytest.raises(_transfer.ConnectionLost, match='closed'):
        _transfer.channel_sendall(chan)(b'data')
    assert chan.calls == 1


def test_send_without_delay_switches_nagle_off_on_tcp_and_leaves_other_sockets():
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    left, right = socket.socketpair()  # AF_UNIX: no such option, and no error either
    try:
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        _transfer._send_without_delay(client)
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        _transfer._send_without_delay(left)
    finally:
        for s in (client, listener, left, right):
            s.close()


def test_remote_command_is_fully_quoted():
    cmd = _transfer.build_remote_command("/opt/my python/bin/python3; rm -rf /", 1234)
    argv = shlex.split(cmd)
    assert argv == ["/opt/my python/bin/python3; rm -rf /", '-c', _transfer.BOOTSTRAP, '1234', 'receiver']
    with pytest.raises(ValueError):
        _transfer.build_remote_command('/usr/bin/python3', '12; reboot')


@pytest.mark.parametrize('mid,ok', [('pg-2025.01_x', True), ('', False), ('../x', False), ('-x', False),
                                    ('a b', False), ('a' * 65, False), (u'\u00e9t\u00e9', False)])
def test_migration_id(mid, ok):
    assert (_transfer.check_migration_id(mid) is None) == ok


def test_receiver_program_runs_standalone(tmp_path):
    """The shipped bundle imports without Ansible or the collection installed (fresh interpreter, -I)."""
    program = _transfer.receiver_program(entry='receiver_main')
    program = program.replace(b"_install().receiver_main()", b"print(_install().walk_key(b'./a/b'))")
    script = tmp_path / 'prog.py'
    script.write_bytes(program)
    out = subprocess.run([sys.executable, '-I', str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=str(tmp_path), check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == b"((b'a',), b'b')"


def test_content_digest_sees_same_size_same_mtime_edit(tmp_path):
    f = tmp_path / 'f'
    f.write_bytes(b'aaaa')
    st = os.stat(str(f))
    dst = os.stat(str(tmp_path))
    before = _transfer.content_digest(str(tmp_path))
    fp_before = _tree.fingerprint(str(tmp_path)).fingerprint
    f.write_bytes(b'bbbb')
    os.utime(str(f), ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(str(tmp_path), ns=(dst.st_atime_ns, dst.st_mtime_ns))
    assert _tree.fingerprint(str(tmp_path)).fingerprint == fp_before
    assert _transfer.content_digest(str(tmp_path)) != before


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tf:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == 'f':
                info.size = 1
                tf.addfile(info, io.BytesIO(b'x'))
                continue
            info.type = {'d': tarfile.DIRTYPE, 'l': tarfile.SYMTYPE, 'h': tarfile.LNKTYPE}[kind]
            info.linkname = target or ''
            tf.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize('members', [
    [('.', 'd', None), ('../evil', 'f', None)],
    [('.', 'd', None), ('/tmp/evil', 'f', None)],
    [('.', 'd', None), ('l', 'l', '/tmp'), ('l/evil', 'f', None)],
    [('.', 'd', None), ('h', 'h', '/etc/passwd')],
])
def test_extract_frames_refuses_hostile_streams(tmp_path, members):
    dest = tmp_path / 'staging'
    dest.mkdir()
    with pytest.raises(_archive.StreamRejected):
        _transfer.extract_frames(iter([_tar(members)]), 'none', str(dest))
    assert not os.path.exists('/tmp/evil')


def test_extract_frames_truncated_stream(tmp_path):
    dest = tmp_path / 'staging'
    dest.mkdir()
    data = _tar([('.', 'd', None), ('a', 'f', None), ('b', 'f', None)])
    cut = data[:512 * 6]  # stops at a member boundary, no end-of-archive marker
    with pytest.raises(_archive.StreamRejected, match='truncated'):
        _transfer.extract_frames(iter([cut]), 'none', str(dest))


@pytest.mark.skipif(os.geteuid() != 0, reason='extraction keeps owners: needs root')
def test_on_disk_guard_refuses_existing_symlink_parent(tmp_path):
    """Delta onto an existing tree: a symlink already on disk must not be written through."""
    dest = tmp_path / 'staging'
    outside = tmp_path / 'outside'
    dest.mkdir()
    outside.mkdir()
    os.symlink(str(outside), str(dest / 'link'))
    data = _tar([('.', 'd', None), ('link/evil', 'f', None)])
    with pytest.raises(_archive.StreamRejected, match='through the existing'):
        _transfer.extract_frames(iter([data]), 'none', str(dest), on_member=_transfer.OnDiskGuard(str(dest)))
    assert os.listdir(str(outside)) == []


def test_safe_delete_never_follows_symlinks(tmp_path):
    root = tmp_path / 'root'
    outside = tmp_path / 'outside'
    root.mkdir()
    outside.mkdir()
    (outside / 'keep').write_text('k')
    os.symlink(str(outside), str(root / 'link'))
    assert _transfer.safe_delete(str(root), b'./link/keep') is False
    assert (outside / 'keep').exists()
    assert _transfer.safe_delete(str(root), b'./link') is True  # removes the link itself, not the target
    assert (outside / 'keep').exists() and not os.path.lexists(str(root / 'link'))
    with pytest.raises(_archive.StreamRejected):
        _transfer.safe_delete(str(root), b'../outside/keep')
    with pytest.raises(_transfer.TransferError):
        _transfer.safe_delete(str(root), b'.')


# --- one walk per tree: records, fingerprint and content digest together -----------------------------

def _rich_tree(root):
    """Every entry type the fingerprint knows, hard links, an xattr and an ACL where supported."""
    import socket
    import stat as stat_
    _tree_at(root, SPEC)
    os.symlink('a/b/c', os.path.join(root, 'link'))
    os.symlink('/nowhere', os.path.join(root, 'a', 'dangling'))
    os.mkfifo(os.path.join(root, 'fifo'))
    os.link(os.path.join(root, 'b'), os.path.join(root, 'a', 'b-hardlink'))
    with open(os.path.join(root, 'empty'), 'w'):
        pass
    os.chmod(os.path.join(root, 'empty'), 0o4755)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.path.join(root, 'a', 'sock'))  # skipped: archives cannot hold sockets
    sock.close()
    if os.geteuid() == 0:
        os.mknod(os.path.join(root, 'null'), 0o600 | stat_.S_IFCHR, os.makedev(1, 3))
        os.lchown(os.path.join(root, 'link'), 1000, 1001)
    try:
        os.setxattr(os.path.join(root, 'a', 'z'), 'user.volumeops', b'\x00v\xff')
    except OSError:
        pass
    subprocess.run(['setfacl', '-m', 'u:999:r', os.path.join(root, 'b')], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize('exclude', [None, ['a.b'], ['*.txt', 'z']])
def test_tree_scan_is_one_walk_equal_to_fingerprint_records_and_content(tmp_path, exclude):
    import hashlib
    root = str(tmp_path / 'tree')
    os.mkdir(root)
    _rich_tree(root)
    scan = _transfer.TreeScan(root, exclude, content=True)
    got = list(scan)
    entries = [e for e in _tree.walk(root, exclude) if _tree.type_code(e.st.st_mode) not in _archive.SKIP_TYPES]
    assert [g[0] for g in got] == [e.relpath for e in entries]
    fingerprinted = _tree.FingerprintAccumulator()
    for (relpath, digest, code, entry), ref in zip(got, entries):
        record = _tree.entry_record(ref)
        assert _tree.entry_record(entry, code) == record
        # The digest is of the record as fingerprinted: a hard link's carries its first path too.
        hashed = fingerprinted.add(ref, code, record)
        assert digest == hashlib.sha256(hashed).digest()[:16]
        assert code == _tree.type_code(ref.st.st_mode)
    assert any(g[1] != hashlib.sha256(_tree.entry_record(g[3])).digest()[:16] for g in got)  # b-hardlink's
    assert scan.summary.as_dict() == _archive.tree_summary(root, exclude=exclude).as_dict()
    assert scan.content == _transfer.content_digest(root, exclude)
    assert _transfer.TreeScan(root, exclude).run().as_dict() == scan.summary.as_dict()
    assert _transfer.TreeScan(root, exclude).content is None


def test_tree_scan_sees_xattr_changes(tmp_path):
    root = str(tmp_path)
    (tmp_path / 'f').write_text('x')
    before = _transfer.TreeScan(root).run().fingerprint
    try:
        os.setxattr(str(tmp_path / 'f'), 'user.k', b'v')
    except OSError:
        pytest.skip('no user xattrs on this filesystem')
    os.utime(root, ns=(os.stat(root).st_atime_ns, os.stat(root).st_mtime_ns))
    after = _transfer.TreeScan(root).run().fingerprint
    assert after != before
    assert after == _archive.tree_summary(root).fingerprint


def test_delta_counts_removed_apart_from_replaced(tmp_path):
    src = tmp_path / 'src'
    dst = tmp_path / 'dst'
    _tree_at(str(src), SPEC)
    subprocess.run(['cp', '-a', str(src), str(dst)], check=True)
    # in-place edits only (the directories' mtimes do not change): nothing is deleted
    for rel in ('a/z', 'a/b/c'):
        with open(str(src / rel), 'r+') as f:
            f.write('Y')
    plan = _transfer.compute_delta(_records(str(src)), _dest(str(dst)))
    assert plan.removed == []
    assert plan.replaced == 2
    assert set(plan.delete) == {b'./a/z', b'./a/b/c'}  # removed before re-sending, but not "deleted"
    # now also remove a subtree and retype a file into a directory
    subprocess.run(['rm', '-rf', str(src / 'z')], check=True)
    os.unlink(str(src / 'b'))
    os.mkdir(str(src / 'b'))
    plan = _transfer.compute_delta(_records(str(src)), _dest(str(dst)))
    assert plan.removed == [b'./z']           # top-most path the source no longer has
    assert b'./z' in plan.delete and b'./b' in plan.delete
    assert b'./b' in plan.send and b'./b' not in plan.removed
    # a/z, a/b/c, b (retyped) and the root (its mtime changed with the removals)
    assert plan.replaced == 4


def test_delta_hardlink_partner_counts_as_replaced(tmp_path):
    src = tmp_path / 'src'
    dst = tmp_path / 'dst'
    _tree_at(str(src), [('d', 'd'), ('d/one', 'data'), ('two', 'x')])
    os.unlink(str(src / 'two'))
    os.link(str(src / 'd' / 'one'), str(src / 'two'))
    subprocess.run(['cp', '-a', str(src), str(dst)], check=True)
    st = os.stat(str(src / 'two'))
    os.chmod(str(src / 'two'), 0o600)  # one inode, both names change
    os.utime(str(src / 'two'), ns=(st.st_atime_ns, st.st_mtime_ns))
    plan = _transfer.compute_delta(_records(str(src)), _dest(str(dst)))
    assert {b'./d/one', b'./two'} <= set(plan.send)
    assert plan.removed == [] and plan.replaced == 2


def test_prefetch_keeps_order_with_interleaved_pulls():
    pre = _transfer._Prefetch(iter(range(100)), cap=10)
    assert pre.pull(4) and list(pre.buffer) == [0, 1, 2, 3]
    out = []
    it = iter(pre)
    for dummy in range(6):
        out.append(next(it))
    assert pre.pull(3)                         # walk ahead while "waiting"
    assert list(pre.buffer) == [6, 7, 8]
    assert pre.pull(50) and len(pre.buffer) == 10   # never beyond the cap
    assert not pre.pull(1)
    out.extend(it)
    assert out == list(range(100))
    full = _transfer._Prefetch(iter(range(1000)), cap=8)
    while full.pull(3):
        pass
    assert len(full.buffer) == 8                # bounded: stops at the cap
    assert list(full) == list(range(1000))
    short = _transfer._Prefetch(iter(range(5)), cap=100)
    assert not short.pull(10) and short.done
    assert list(short) == list(range(5))


def test_source_read_errors_are_reported_as_such(tmp_path):
    scan = _transfer.TreeScan(str(tmp_path / 'missing'))
    with pytest.raises(_transfer.TransferError, match='Reading the source volume failed'):
        list(_transfer.Sender._source_records(scan))


def test_docker_access_needs_the_hosts_own_unix_socket(tmp_path):
    # The receiver writes the volume through its mountpoint: a daemon reached over TCP or SSH is refused
    # up front; a socket that does not answer gives a clear message naming it.
    for host in ('tcp://127.0.0.1:2375', 'ssh://root@elsewhere'):
        with pytest.raises(_transfer.TransferError, match='local unix socket'):
            _transfer.DockerAccess(host)
    access = _transfer.DockerAccess('unix://%s' % (tmp_path / 'missing.sock'))
    with pytest.raises(_transfer.TransferError, match='cannot reach the Docker daemon at unix://.*missing.sock'):
        access.inspect('vol')


def _settled(summary):
    """The summary with its change token as if the first walk began well after the newest ctime."""
    token = summary.change_token
    summary.change_token = _tree.ChangeToken(token.digest, token.max_ctime_ns,
                                             token.max_ctime_ns + _tree.CTIME_SETTLED_NS + 1, token.method)
    return summary


@pytest.mark.parametrize('verify, size', [('metadata', 'small'), ('metadata', 'big'), ('content', 'small')])
def test_source_recheck_after_streaming(tmp_path, monkeypatch, verify, size):
    # After streaming, the sender proves the source unchanged with a change token (verify=metadata,
    # settled token) or walks it again; any change made after the first walk must show up either way.
    # A big tree's token is listed by find beside the first walk, a small one's by the walk itself.
    if size == 'big':
        monkeypatch.setattr(_tree, 'FIND_TOKEN_MIN_ENTRIES', 2)
    root = str(tmp_path / 'src')
    os.mkdir(root)
    _rich_tree(root)
    sender = _transfer.Sender({'verify': verify}, root)
    scan = _transfer.TreeScan(root, with_change_token=True)
    first = _settled(scan.run())
    assert first.change_token.method == ('find' if size == 'big' else 'walk')
    assert first.as_dict() == _transfer.TreeScan(root).run().as_dict()  # the token changes no figure

    after, first_content = sender._source_after(scan, None)
    content = first_content
    if verify == 'metadata':
        assert sender.unchanged_proof == 'change_token' and after is first and content is None
    else:
        assert sender.unchanged_proof == 'fingerprint' and content == _transfer.content_digest(root)
        assert after.fingerprint == first.fingerprint

    # Same size, mtime put back: no fingerprinted property changes, only the ctime does. The token no
    # longer matches, so the source is walked again (content is verify=content's business).
    path = os.path.join(root, 'b')
    st = os.lstat(path)
    with open(path, 'r+b') as f:
        f.write(b'X')
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after, content = sender._source_after(scan, None)
    assert sender.unchanged_proof == 'fingerprint'
    assert after.fingerprint == first.fingerprint
    if verify == 'content':
        assert content == _transfer.content_digest(root) != first_content  # the edit is seen

    os.chmod(path, 0o600)
    after, content = sender._source_after(scan, None)
    assert sender.unchanged_proof == 'fingerprint'
    assert after.fingerprint != first.fingerprint
    assert after.as_dict() == _transfer.TreeScan(root).run().as_dict()


@pytest.mark.parametrize('size', ['small', 'big'])
def test_source_recheck_of_an_unsettled_token(tmp_path, monkeypatch, size):
    """Entries changed just before the first walk (a final pass right after the application stopped): the
    token alone proves nothing for them, the listing plus their records does; any change still shows."""
    if size == 'big':
        monkeypatch.setattr(_tree, 'FIND_TOKEN_MIN_ENTRIES', 2)  # listed by GNU find beside the walk
    root = str(tmp_path / 'src')
    os.mkdir(root)
    _rich_tree(root)
    (tmp_path / 'src' / 'fresh').write_text('x')  # written just now
    sender = _transfer.Sender({'verify': 'metadata'}, root)
    scan = _transfer.TreeScan(root, with_change_token=True)
    first = scan.run()
    token = first.change_token
    assert not token.settled and token.method == ('find' if size == 'big' else 'walk')
    assert b'./fresh' in token.recent and b'./fresh' in token.recorded
    assert set(token.recent) <= set(token.recorded)
    after, dummy = sender._source_after(scan, None)
    assert sender.unchanged_proof == 'change_token_and_records' and after is first

    # A change moves the ctime: the listing differs, the source is walked again and the change is seen.
    os.chmod(os.path.join(root, 'fresh'), 0o600)
    after, dummy = sender._source_after(scan, None)
    assert sender.unchanged_proof == 'fingerprint' and after.fingerprint != first.fingerprint

    # Two changes within one clock tick keep the ctime: the listing matches, the records must not.
    scan = _transfer.TreeScan(root, with_change_token=True)
    first = scan.run()
    same_listing = first.change_token
    monkeypatch.setattr(_tree.ChangeToken, 'again', lambda self, root, exclude=None: same_listing)
    with open(os.path.join(root, 'fresh'), 'a') as f:
        f.write('more')
    after, dummy = sender._source_after(scan, None)
    assert sender.unchanged_proof == 'fingerprint' and after.fingerprint != first.fingerprint


def _spill_of(root, settled=True):
    spill = _transfer.RecordSpill()
    if settled:  # as if the tree had been written well before the walk
        spill.started_ns += 10 * _tree.CTIME_SETTLED_NS
    scan = _transfer.TreeScan(root, spill=spill)
    return spill, scan.run()


def test_record_spill_rescan_equals_a_full_walk(tmp_path):
    root = str(tmp_path / 'tree')
    os.mkdir(root)
    _rich_tree(root)
    spill, first = _spill_of(root)
    assert spill.usable and spill.kept == first.entries
    assert _transfer.TreeScan(root, reuse=spill).run().as_dict() == first.as_dict() == _archive.tree_summary(root).as_dict()
    assert spill.reused == spill.kept
    assert _transfer.TreeScan(root, reuse=spill).run().as_dict() == first.as_dict()  # readable again from the start
    assert spill.reused == spill.kept
    spill.close()


def test_record_spill_rereads_every_changed_entry(tmp_path):
    # What a delta does to the destination's tree between its base walk and its verification: every change
    # must reach the fingerprint (a reused stale record would hide it), in any position of the walk order.
    root = str(tmp_path / 'tree')
    os.mkdir(root)
    _rich_tree(root)
    spill, first = _spill_of(root)

    def p(*parts):
        return os.path.join(root, *parts)

    os.chmod(p('a', 'z'), 0o640)                              # mode
    st = os.lstat(p('z', 'a', 'a'))
    os.utime(p('z', 'a', 'a'), ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # sub-second mtime only
    os.unlink(p('a-b', 'q'))                                  # removed in the middle of the order
    os.unlink(p('b'))                                         # replaced by a directory (new inode, new type)
    os.mkdir(p('b'))
    with open(p('a', 'a0'), 'w') as f:                        # added before existing siblings
        f.write('new')
    with open(p('zz'), 'w') as f:                             # added after everything
        f.write('new')
    try:
        os.setxattr(p('a.b', 'x'), 'user.k', b'v')             # xattr only
    except OSError:
        pass
    rescanned = _transfer.TreeScan(root, reuse=spill).run()
    full = _transfer.TreeScan(root).run()
    assert rescanned.as_dict() == full.as_dict()
    assert rescanned.fingerprint != first.fingerprint
    spill.close()


def test_record_spill_keeps_nothing_changed_just_before_the_walk(tmp_path):
    root = str(tmp_path)
    (tmp_path / 'f').write_text('x')
    spill, first = _spill_of(root, settled=False)
    assert spill.usable and spill.kept == 0  # written just now: a same-tick change could keep its ctime
    assert _transfer.TreeScan(root, reuse=spill).run().as_dict() == first.as_dict()
    spill.close()


def test_marker_writes_reach_the_disk(tmp_path, monkeypatch):
    """A destination turns 'staging' before anything moves: the marker must be on disk by then (file and
    directory fsync), or a crash could leave an emptied _data under a marker that still says complete."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, 'fsync', lambda fd: synced.append(fd) or real_fsync(fd))
    path = str(tmp_path / '.volumeops-migration.json')
    _transfer.write_marker(path, {'state': 'staging', 'n': 1})
    assert len(synced) == 2
    assert _transfer.read_marker(path) == {'state': 'staging', 'n': 1}
    assert os.listdir(str(tmp_path)) == ['.volumeops-migration.json']  # replaced by rename, no temp file left


SYNC_FAILURES = [(5, 'Writing the transferred data to disk on the destination failed'), (28, 'Destination disk full')]


@pytest.mark.parametrize('err, words', SYNC_FAILURES)
def test_receiver_reports_a_failed_sync_as_not_complete(tmp_path, monkeypatch, err, words):
    # A write error at sync time (EIO) or a full disk cannot be produced on demand here: the sync is
    # replaced by one that fails as the kernel would report it.
    def failing(path):
        raise OSError(err, os.strerror(err), path)
    monkeypatch.setattr(_archive, 'sync_filesystem', failing)
    rec = _transfer.Receiver(None)
    rec.staging = str(tmp_path / 'staging')
    rec.data_dir = str(tmp_path / '_data')
    rec.end_info = {}  # the stream was read to its end: nothing to drain
    with pytest.raises(_transfer.TransferError) as info:
        rec._sync_staging()
    assert words in str(info.value) and 'not complete' in str(info.value)


NFS = {'type': 'nfs', 'o': 'addr=10.0.0.1', 'device': ':/export'}


@pytest.mark.parametrize('driver, options, image, refusal', [
    ('local', {}, None, None), (None, None, None, None), ('local', {'o': 'uid=1000'}, None, None),
    ('local', {}, 'img', None),
    # mounted only while a container uses it: written through a holder container of the helper image
    ('local', NFS, None, 'set helper_image'), ('local', NFS, 'img', None),
    ('local', {'device': '/dev/sdb1'}, None, 'set helper_image'), ('local', {'device': '/dev/sdb1'}, 'img', None),
    # a tmpfs forgets its content when the holder stops: never, with or without an image
    ('local', {'type': 'tmpfs', 'device': 'tmpfs'}, None, 'is a tmpfs'),
    ('local', {'type': 'tmpfs', 'device': 'tmpfs'}, 'img', 'is a tmpfs'),
    ('rexray', {}, None, 'cannot be written by volume_transfer'),
    ('rexray', {}, 'img', 'cannot be written by volume_transfer'),
])
def test_unwritable_volume_error(driver, options, image, refusal):
    err = _transfer.unwritable_volume_error('vol', driver, options, image)
    if refusal is None:
        assert err is None
    else:
        assert 'vol' in err and refusal in err


def test_holder_containers_do_not_count_as_users_of_the_volume(monkeypatch):
    answers = [{'Names': ['/app'], 'Mounts': [{'Name': 'v'}], 'Labels': {}},
               {'Names': ['/volumeops-holder-1'], 'Mounts': [{'Name': 'v'}],
                'Labels': {_transfer.HOLDER_LABEL: '123'}}]
    monkeypatch.setattr(_transfer._engine_http, 'request', lambda *a, **k: (200, answers))
    assert _transfer.DockerAccess(None).running_users('v') == ['app']


def test_receiver_refuses_a_volume_it_cannot_write_before_creating_it():
    created = []

    class Docker(object):
        def create(self, *args):
            created.append(args)

        def inspect(self, name):
            return None
    receiver = _transfer.Receiver(io_=None)
    receiver.hello = {'dest_volume': 'nfsvol', 'dest_driver': 'local', 'migration_id': 'm1',
                      'dest_driver_options': {'type': 'nfs', 'device': ':/export', 'o': 'addr=10.0.0.1'}}
    receiver.docker = Docker()
    with pytest.raises(_transfer.TransferError, match='set helper_image'):
        receiver._ensure_volume(None)
    assert created == []


def _held_receiver(root, mid='m1'):
    """A receiver writing a mounted volume (held by a holder container): ``root`` stands in for the mount."""
    receiver = _transfer.Receiver(io_=None)
    receiver.hello = {'dest_volume': 'v', 'migration_id': mid}
    receiver.held = True
    receiver.data_dir = str(root)
    receiver.volume_fs = str(root)
    receiver.staging = os.path.join(str(root), _transfer.INCOMING_PREFIX + mid)
    return receiver


def test_held_volume_walks_leave_out_only_the_receivers_own_directories(tmp_path):
    root = tmp_path / 'mount'
    root.mkdir()
    receiver = _held_receiver(root)
    os.mkdir(receiver.staging)
    os.mkdir(str(root / (_archive.OLD_MARKER + 'x')))
    assert receiver._data_empty()
    os.symlink('/etc', str(root / (_archive.OLD_MARKER + 'y')))  # a link of such a name is data, not ours
    assert not receiver._data_empty()
    os.unlink(str(root / (_archive.OLD_MARKER + 'y')))
    (root / 'data').write_text('x')
    assert not receiver._data_empty()
    exclude = receiver._data_exclude(receiver.data_dir)
    assert [e.relpath for e in _tree.walk(receiver.data_dir, exclude)] == [b'.', b'./data']
    assert receiver._data_exclude(receiver.staging) is None  # the staging tree is walked whole


def test_held_volume_delta_base_keeps_the_roots_metadata(tmp_path):
    """The delta's base records described the volume root: the staging root takes its owner, mode and times."""
    root = tmp_path / 'mount'
    root.mkdir()
    (root / 'a').write_text('a')
    (root / 'd').mkdir()
    (root / 'd' / 'b').write_text('b')
    os.chmod(str(root), 0o751)
    os.utime(str(root), ns=(1000000001, 2000000002))
    before = os.lstat(str(root))
    receiver = _held_receiver(root)
    receiver._park_data_in_staging()
    st = os.lstat(receiver.staging)
    assert sorted(os.listdir(receiver.staging)) == ['a', 'd']
    assert sorted(os.listdir(str(root))) == [os.path.basename(receiver.staging)]
    assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == (
        before.st_mode, before.st_uid, before.st_gid, before.st_mtime_ns)


def test_held_volume_swap_and_recovery_of_an_interrupted_swap(tmp_path, monkeypatch):
    root = tmp_path / 'mount'
    root.mkdir()
    (root / 'old').write_text('old')
    receiver = _held_receiver(root)
    os.mkdir(receiver.staging)
    with open(os.path.join(receiver.staging, 'new'), 'w') as f:
        f.write('new')
    os.utime(receiver.staging, ns=(5, 6000000007))
    receiver._swap_in()
    assert sorted(os.listdir(str(root))) == ['new']
    assert os.lstat(str(root)).st_mtime_ns == 6000000007

    # Killed in phase 2 of the next swap (after the ready rename): the next receiver rolls forward.
    receiver2 = _held_receiver(root, 'm2')
    os.mkdir(receiver2.staging)
    for name in ('x', 'y'):
        with open(os.path.join(receiver2.staging, name), 'w') as f:
            f.write(name)
    pid = os.fork()
    if pid == 0:  # the child is killed (os._exit: no rollback runs) after moving one entry up
        real_rename = os.rename

        def killed_after_first_move(src, dst):
            real_rename(src, dst)
            if os.path.basename(os.path.dirname(src)).startswith(_archive.READY_MARKER):
                os._exit(9)
        os.rename = killed_after_first_move
        try:
            receiver2._swap_in()
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] >> 8 == 9
    assert sorted(n for n in os.listdir(str(root)) if not n.startswith('.')) == ['x']  # half swapped
    receiver2.marker_path = str(tmp_path / 'marker.json')
    receiver2._recover_swap()
    assert sorted(os.listdir(str(root))) == ['x', 'y']


def test_held_volume_symlink_at_the_staging_name_is_not_taken_for_the_staged_tree(tmp_path, monkeypatch):
    """In a mounted volume the staging name is writable by containers. A symlink planted there (to a host
    directory: /proc/<pid>/root resolves absolute links on the host) must not become the delta's base,
    or tar -C would extract through it; the pass then starts over and removes only the link."""
    vdir = tmp_path / 'volumes' / 'v'
    (vdir / '_data').mkdir(parents=True)
    mount = tmp_path / 'mount'
    mount.mkdir()
    host_dir = tmp_path / 'host-etc'
    host_dir.mkdir()
    (host_dir / 'passwd').write_text('root:x:0:0')
    os.symlink(str(host_dir), str(mount / (_transfer.INCOMING_PREFIX + 'm1')))
    _transfer.write_marker(str(vdir / _transfer.MARKER_NAME), dict(migration_id='m1', state='staging'))

    class Docker(object):
        kind = 'socket'

        def __init__(self, host):
            pass

        def inspect(self, name):
            return {'Name': name, 'Driver': 'local', 'Mountpoint': str(vdir / '_data'),
                    'Options': {'type': 'none', 'device': '/srv/x', 'o': 'bind'}}

        def hold(self, name, image, read_only=False):
            return str(mount)

        def running_users(self, name):
            return []
    monkeypatch.setattr(_transfer, 'DockerAccess', Docker)
    receiver = _transfer.Receiver(io_=None)
    receiver.hello = {'dest_volume': 'vol1', 'migration_id': 'm1', 'dest_helper_image': 'img', 'pass_': 'delta'}
    state, dummy = receiver._state()
    assert receiver.held
    assert receiver.base != 'staging'
    assert receiver.walk_root != receiver.staging
    _archive.remove_tree(receiver.staging)  # what the pass does before it makes its own staging directory
    assert not os.path.lexists(receiver.staging)
    assert (host_dir / 'passwd').read_text() == 'root:x:0:0'


def test_holder_path_refuses_a_symlink_in_the_image(tmp_path, monkeypatch):
    """/proc/<pid>/root/volumeops -> /etc in a hostile image would resolve on this host: refused."""
    fake_proc = tmp_path / 'proc'
    (fake_proc / '42' / 'root').mkdir(parents=True)
    (tmp_path / 'elsewhere' / 'vol').mkdir(parents=True)
    os.symlink(str(tmp_path / 'elsewhere'), str(fake_proc / '42' / 'root' / 'volumeops'))
    answers = {'/containers/create': (201, {'Id': 'c1'}), '/containers/c1/start': (204, None),
               '/containers/c1/json': (200, {'State': {'Pid': 42}}), '/containers/json': (200, [])}
    monkeypatch.setattr(_transfer._engine_http, 'request', lambda sock, method, path, *a, **k: answers[path])
    real_join = os.path.join
    monkeypatch.setattr(_transfer.os.path, 'join', lambda a, *rest: real_join(
        a.replace('/proc/42', str(fake_proc / '42')) if a.startswith('/proc/42') else a, *rest))
    docker = _transfer.DockerAccess(None)
    with pytest.raises(_transfer.TransferError, match='not reachable through the holder'):
        docker.hold('v', 'img')
    assert docker.holders == ['c1']  # removed by release()


def test_holders_of_dead_receivers_are_removed_live_ones_kept(monkeypatch):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    listed = [{'Id': 'stale', 'Labels': {_transfer.HOLDER_LABEL: str(dead.pid)}},
              {'Id': 'live', 'Labels': {_transfer.HOLDER_LABEL: str(os.getpid())}}]
    deleted = []

    def request(sock, method, path, query=None, document=None):
        if method == 'DELETE':
            deleted.append(path)
            return 204, None
        assert json.loads(query['filters']) == {'label': [_transfer.HOLDER_LABEL]}
        return 200, listed
    monkeypatch.setattr(_transfer._engine_http, 'request', request)
    _transfer.DockerAccess(None)._remove_stale_holders()
    assert deleted == ['/containers/stale']


def test_source_root_never_reads_the_empty_directory_of_a_mounted_volume(tmp_path):
    held = []

    class Docker(object):
        def hold(self, name, image, read_only=False):
            held.append((name, image, read_only))
            return '/proc/1/root/volumeops/vol'
    plain = {'Name': 'p', 'Driver': 'local', 'Options': None, 'Mountpoint': str(tmp_path)}
    assert _transfer.source_root(Docker(), plain, None) == str(tmp_path)
    assert _transfer.source_root(Docker(), plain, 'img') == str(tmp_path)  # no holder for a plain volume
    nfs = {'Name': 'n', 'Driver': 'local', 'Options': {'type': 'nfs', 'device': ':/x'}, 'Mountpoint': str(tmp_path)}
    other = {'Name': 'o', 'Driver': 'rexray', 'Options': {}, 'Mountpoint': str(tmp_path)}
    for info in (nfs, other):
        with pytest.raises(_transfer.TransferError, match='mounted only while a container uses it'):
            _transfer.source_root(Docker(), info, None)
        assert _transfer.source_root(Docker(), info, 'img') == '/proc/1/root/volumeops/vol'
    assert held == [('n', 'img', True), ('o', 'img', True)]  # read-only holders


# -- SourceStream: the source's tar | compressor, read ahead while a full pass walks and waits ---------------

def _source_tree(root, random_mb=0):
    _tree_at(str(root), SPEC)
    if random_mb:
        with open(os.path.join(str(root), 'big.bin'), 'wb') as f:
            f.write(os.urandom(random_mb * 1024 * 1024))


def _members(data, compression):
    if compression == 'zstd':
        data = subprocess.run(['zstd', '-dc'], input=data, stdout=subprocess.PIPE, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data), mode='r:') as tar:
        return sorted(m.name for m in tar.getmembers())


@pytest.mark.parametrize('compression', ['zstd', 'none'])
def test_source_stream_held_output_is_the_whole_archive(tmp_path, compression):
    src = tmp_path / 'src'
    _source_tree(src, random_mb=3)
    plain = _transfer.SourceStream(str(src), [], compression, 1)
    try:
        expected = b''.join(plain.chunks())
        assert plain.finish(True) == dict(tar_rc=0, error=None, warning=None)
    finally:
        plain.close()
    held = _transfer.SourceStream(str(src), [], compression, 1, hold=_transfer.EARLY_HOLD)
    try:
        deadline = time.monotonic() + 10
        while not held.held and time.monotonic() < deadline:
            time.sleep(0.05)  # the holder reads ahead meanwhile
        assert len(held.held) > 0
        got = b''.join(held.chunks())
        assert held.finish(True)['error'] is None
    finally:
        held.close()
    # The same tree, every member once, in the same order as without holding.
    assert _members(got, compression) == _members(expected, compression)
    assert './big.bin' in _members(got, compression)
    if compression == 'none':
        assert got == expected  # tar's output is deterministic for an unchanged tree


def test_source_stream_holds_at_most_its_cap(tmp_path):
    src = tmp_path / 'src'
    _source_tree(src, random_mb=8)
    cap = 256 * 1024
    stream = _transfer.SourceStream(str(src), [], 'none', None, hold=cap)
    try:
        deadline = time.monotonic() + 10
        while sum(len(c) for c in stream.held) < cap and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # had the holder not stopped at its cap, it would read on meanwhile
        held = sum(len(c) for c in stream.held)
        assert cap <= held < cap + _transfer.CHUNK
        assert stream.tar.poll() is None  # tar waits on its full pipe
        total = sum(len(c) for c in stream.chunks())
        assert total > 8 * 1024 * 1024
        assert stream.finish(True)['tar_rc'] == 0
    finally:
        stream.close()


def test_source_stream_closed_unread_kills_the_pipeline(tmp_path):
    src = tmp_path / 'src'
    _source_tree(src, random_mb=8)
    stream = _transfer.SourceStream(str(src), [], 'zstd', 1, hold=256 * 1024)
    time.sleep(0.3)
    procs = list(stream.procs)
    assert len(procs) == 2 and all(p.poll() is None for p in procs)  # tar and zstd wait on the full pipe
    stream.close()
    assert all(p.returncode is not None for p in procs)
    assert [p.returncode for p in procs] != [0, 0]  # killed, not finished
    assert len(stream.held) == 0 and stream.holder is None
    stream.close()  # again: nothing left to do


def test_source_stream_reports_tar_failure(tmp_path):
    stream = _transfer.SourceStream(str(tmp_path / 'missing'), [], 'zstd', 1, hold=_transfer.EARLY_HOLD)
    try:
        for dummy in stream.chunks():
            pass
        info = stream.finish(True)
    finally:
        stream.close()
    assert info['error'] and info['error'].startswith('tar failed on the source (exit 2)')


def test_delta_sends_a_hard_link_made_or_broken_without_other_changes(tmp_path):
    # The review's case: ``cp -p a b.tmp; mv b.tmp b`` breaks a link, ``ln -f c d`` joins two files; no
    # member's own size, mtime, mode or owner changes. Both must be sent (and deleted first), or the
    # destination keeps the old link structure and still verifies.
    src = tmp_path / 'src'
    dst = tmp_path / 'dst'
    _tree_at(str(src), [('a', 'shared'), ('c', 'x'), ('d', 'x')])
    os.link(str(src / 'a'), str(src / 'b'))
    stamp = (1700000000 * 10 ** 9, 1700000000 * 10 ** 9)
    for name in ('a', 'c', 'd', '.'):
        os.utime(str(src / name), ns=stamp)
    subprocess.run(['cp', '-a', str(src), str(dst)], check=True)
    assert _transfer.compute_delta(_records(str(src)), _dest(str(dst))).send == []
    subprocess.run(['cp', '-p', str(src / 'a'), str(src / 'b.tmp')], check=True)
    os.rename(str(src / 'b.tmp'), str(src / 'b'))
    os.unlink(str(src / 'd'))
    os.link(str(src / 'c'), str(src / 'd'))
    os.utime(str(src), ns=stamp)
    plan = _transfer.compute_delta(_records(str(src)), _dest(str(dst)))
    assert b'./b' in plan.send and b'./b' in plan.delete  # now a file of its own
    assert b'./a' not in plan.send  # unchanged, and no longer linked to anything sent
    assert b'./c' in plan.send and b'./d' in plan.send  # the new group, sent together
    assert b'./c' in plan.delete and b'./d' in plan.delete
    src_summary = _transfer.TreeScan(str(src)).run()
    assert src_summary.fingerprint != _transfer.TreeScan(str(dst)).run().fingerprint
