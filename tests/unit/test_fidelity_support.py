# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests of the fidelity oracle (tests/support/fidelity.py) itself.

A GNU tar full-fidelity copy of the hard-case tree must compare equal, and every single-property
change must be detected: an oracle that cannot fail proves nothing.
Needs root (owners, capabilities) and GNU tar; runs on the host filesystem (tmp_path).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    'volumeops_fidelity', str(Path(__file__).resolve().parents[1] / 'support' / 'fidelity.py'))
fidelity = importlib.util.module_from_spec(_SPEC)
sys.modules['volumeops_fidelity'] = fidelity
_SPEC.loader.exec_module(fidelity)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='needs root (owners, capabilities, FIFOs)'),
    pytest.mark.skipif(shutil.which('tar') is None, reason='needs GNU tar'),
]

TAR_CREATE = ['tar', '--format=posix', '--xattrs', '--xattrs-include=*', '--acls', '--sparse', '--numeric-owner']
TAR_EXTRACT = ['tar', '-xpf', '-', '--xattrs', '--xattrs-include=*', '--acls', '--numeric-owner']


def tar_copy(src, dst):
    os.makedirs(dst)
    create = subprocess.Popen(TAR_CREATE + ['-C', str(src), '-cf', '-', '.'], stdout=subprocess.PIPE)
    extract = subprocess.run(TAR_EXTRACT + ['-C', str(dst)], stdin=create.stdout, capture_output=True, check=False)
    create.stdout.close()
    assert create.wait() == 0
    assert extract.returncode == 0, extract.stderr


@pytest.fixture(scope='module')
def original(tmp_path_factory):
    root = tmp_path_factory.mktemp('fidelity') / 'src'
    fidelity.build(str(root))
    return root, fidelity.digest(str(root))


@pytest.fixture
def copy(original, tmp_path):
    dst = tmp_path / 'dst'
    tar_copy(original[0], dst)
    return dst


def b(path):
    return path if isinstance(path, bytes) else os.fsencode(str(path))


@contextlib.contextmanager
def parent_mtime_kept(path):
    """Changing a directory's entries bumps its mtime; put it back so only the intended property differs."""
    parent = os.path.dirname(b(path))
    st = os.lstat(parent)
    yield
    os.utime(parent, ns=(st.st_atime_ns, st.st_mtime_ns))


def diffs_after(original, copy):
    return fidelity.compare(original[1], fidelity.digest(str(copy)))


# --------------------------------------------------------------------------------------------
# the tree has every hard case


def test_build_creates_every_hard_case(original):
    entries = original[1]['entries']
    root = entries['.']
    assert (root['uid'], root['gid'], root['mode']) == (999, 999, '0700')
    types = {rec['type'] for rec in entries.values()}
    assert types == {'dir', 'file', 'symlink', 'fifo'}
    modes = {rec['mode'] for rec in entries.values()}
    assert {'4755', '2711', '1777', '2775', '7777', '0000'} <= modes
    assert any(rec['uid'] >= 2 ** 24 for rec in entries.values())
    assert any(rec['gid'] >= 2 ** 24 for rec in entries.values())
    # sub-second mtimes on files, directories and symlinks
    for kind in ('file', 'dir', 'symlink'):
        assert any(rec['mtime_ns'] % 10 ** 9 for rec in entries.values() if rec['type'] == kind), kind
    targets = {rec['target'] for rec in entries.values() if rec['type'] == 'symlink'}
    assert '/etc/passwd' in targets and '../no/such/file' in targets
    dangling = entries['links/dangling']
    assert (dangling['uid'], dangling['gid']) == (fidelity.BIG_ID, 999)
    assert entries['hard/b']['hardlink'] == entries['hard/sub/c']['hardlink'] == 'hard/a'
    assert entries['hard/a']['links'] == 3
    sparse = entries['sparse/sparse.img']
    assert sparse['size'] == 64 * 1024 * 1024 and sparse['sparse'] and sparse['alloc'] < 64 * 1024
    assert entries['empty/nested/deeper']['type'] == 'dir'
    assert entries['special/fifo']['type'] == 'fifo'
    xattrs = entries['xattr/file']['xattrs']
    assert {'user.comment', 'user.binary', 'trusted.volumeops'} <= set(xattrs)
    assert entries['caps/net-bind']['xattrs']['security.capability']
    assert entries['caps/net-bind']['uid'] == 1000  # capability survived the chown
    assert 'user:1000:rw-' in entries['acl/file']['xattrs']['system.posix_acl_access']
    assert 'system.posix_acl_default' in entries['acl/dir']['xattrs']
    assert 'names/bad-\\xff\\xfe-utf8' in entries
    assert 'names/new\\x0aline' in entries
    assert any(len(fidelity.unescape(p).rsplit(b'/', 1)[-1]) == 255 for p in entries)
    assert max(len(fidelity.unescape(p)) for p in entries) > 255


def test_build_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / 'x').write_bytes(b'')
    with pytest.raises(SystemExit):
        fidelity.build(str(tmp_path))


def test_no_special_skips_what_some_filesystems_cannot_hold(tmp_path):
    assert fidelity.main(['build', '--no-special', str(tmp_path / 't')]) == 0
    entries = fidelity.digest(str(tmp_path / 't'))['entries']
    assert not any(rec['type'] == 'fifo' for rec in entries.values())
    assert not any(rec.get('xattrs') for rec in entries.values())
    assert not any(rec.get('sparse') for rec in entries.values())
    assert entries['owners/big-id']['uid'] == fidelity.BIG_ID


def test_devices_option_adds_device_nodes(tmp_path):
    fidelity.build(str(tmp_path / 't'), skip=fidelity.SKIP_KINDS, devices=True)
    entries = fidelity.digest(str(tmp_path / 't'))['entries']
    assert entries['special/null-like']['type'] == 'chr'
    assert entries['special/null-like']['rdev'] == '1:3'
    assert entries['special/block-like']['rdev'] == '7:200'


def test_digest_is_deterministic(original):
    again = fidelity.digest(str(original[0]))
    assert again['digest'] == original[1]['digest']
    assert again['entries'] == original[1]['entries']


def test_escape_round_trips_any_bytes():
    raw = bytes(range(256))
    text = fidelity.escape(raw)
    assert text.isprintable() and '\n' not in text
    assert fidelity.unescape(text) == raw
    assert fidelity.escape(b'a\\b') == 'a\\x5cb'


# --------------------------------------------------------------------------------------------
# a full-fidelity copy is equal ...


def test_gnu_tar_full_fidelity_copy_compares_equal(original, copy):
    copied = fidelity.digest(str(copy))
    assert fidelity.compare(original[1], copied) == []
    assert copied['digest'] == original[1]['digest']


def test_cli_compare_and_compare_dirs(original, copy, tmp_path, capsys):
    a, c = tmp_path / 'a.json', tmp_path / 'c.json'
    assert fidelity.main(['digest', str(original[0]), '-o', str(a)]) == 0
    assert fidelity.main(['digest', str(copy), '-o', str(c)]) == 0
    assert json.loads(a.read_text())['digest'] == original[1]['digest']
    assert fidelity.main(['compare', str(a), str(c)]) == 0
    assert fidelity.main(['compare-dirs', str(original[0]), str(copy)]) == 0
    os.chown(b(copy / 'owners' / 'app'), 1001, 1000)
    capsys.readouterr()
    assert fidelity.main(['compare-dirs', str(original[0]), str(copy)]) == 1
    assert capsys.readouterr().out.splitlines()[0] == 'owners/app: uid: 1000 != 1001'
    assert fidelity.main(['compare-dirs', '--ignore', 'uid', str(original[0]), str(copy)]) == 0


# --------------------------------------------------------------------------------------------
# ... and every single-property change is caught


def _chmod(copy):
    os.chmod(b(copy / 'modes' / 'setuid'), 0o755)
    return ['modes/setuid: mode: 4755 != 0755']


def _sticky(copy):
    os.chmod(b(copy / 'modes' / 'sticky-dir'), 0o777)
    return ['modes/sticky-dir: mode: 1777 != 0777']


def _chown_big_id(copy):
    # what busybox tar does to ids >= 2^24
    os.chown(b(copy / 'owners' / 'big-id'), 10624256, fidelity.BIG_ID)
    return ['owners/big-id: uid: 1000480000 != 10624256']


def _chgrp(copy):
    os.chown(b(copy / 'owners' / 'postgres'), 999, 101)
    return ['owners/postgres: gid: 999 != 101']


def _root_owner_mode(copy):
    # what the documented `tar ... /dbdata` + `--strip 1` recipe does to a PostgreSQL volume root
    st = os.lstat(b(copy))
    os.chown(b(copy), 0, 0)
    os.chmod(b(copy), 0o755)
    os.utime(b(copy), ns=(st.st_atime_ns, st.st_mtime_ns))
    return ['.: gid: 999 != 0', '.: mode: 0700 != 0755', '.: uid: 999 != 0']


def _lchown_symlink(copy):
    os.lchown(b(copy / 'links' / 'dangling'), 0, 0)
    return ['links/dangling: gid: 999 != 0', 'links/dangling: uid: 1000480000 != 0']


def _subsecond_mtime(copy):
    path = b(copy / 'data' / 'hello.txt')
    st = os.lstat(path)
    whole = st.st_mtime_ns // 10 ** 9 * 10 ** 9   # what a whole-second archive format keeps
    os.utime(path, ns=(whole, whole))
    return ['data/hello.txt: mtime_ns: %d != %d' % (st.st_mtime_ns, whole)]


def _dir_mtime(copy):
    path = b(copy / 'empty' / 'nested')
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    return ['empty/nested: mtime_ns: %d != %d' % (st.st_mtime_ns, st.st_mtime_ns + 1)]


def _symlink_mtime(copy):
    path = b(copy / 'links' / 'relative')
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 500), follow_symlinks=False)
    return ['links/relative: mtime_ns: %d != %d' % (st.st_mtime_ns, st.st_mtime_ns + 500)]


def _xattr_value(copy):
    os.setxattr(b(copy / 'xattr' / 'file'), b'user.comment', b'fidelity tesT')
    return ['xattr/file: xattr user.comment: %s != %s' % (b'fidelity test'.hex(), b'fidelity tesT'.hex())]


def _xattr_trusted_lost(copy):
    os.removexattr(b(copy / 'xattr' / 'file'), b'trusted.volumeops')
    return ['xattr/file: xattr trusted.volumeops: %s != <absent>' % b'trusted namespace'.hex()]


def _xattr_added(copy):
    os.setxattr(b(copy / 'data' / 'hello.txt'), b'user.extra', b'1')
    return ['data/hello.txt: xattr user.extra: <absent> != 31']


def _capability_lost(copy):
    # what a chown after the xattrs does
    path = b(copy / 'caps' / 'net-bind')
    os.chown(path, 1000, 1000)
    return ['caps/net-bind: xattr security.capability: 0100000200040000000000000000000000000000 != <absent>']


def _acl_entry_removed(copy):
    subprocess.run(['setfacl', '-x', 'u:1000', os.fsdecode(b(copy / 'acl' / 'file'))], check=True)
    # setfacl recomputes the mask, which is mirrored in the group mode bits
    return None


def _default_acl_removed(copy):
    subprocess.run(['setfacl', '-k', os.fsdecode(b(copy / 'acl' / 'dir'))], check=True)
    return ['acl/dir: xattr system.posix_acl_default: '
            'acl:user::rwx,user:1000:rwx,group::r-x,group:999:r-x,mask::rwx,other::--- != <absent>']


def _symlink_target(copy):
    path = b(copy / 'links' / 'relative')
    st = os.lstat(path)
    with parent_mtime_kept(path):
        os.unlink(path)
        os.symlink(b'../data/hello.txX', path)
    os.lchown(path, st.st_uid, st.st_gid)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return ['links/relative: target: ../data/hello.txt != ../data/hello.txX']


def _symlink_followed(copy):
    # a copy that followed the symlink: a regular file with the target's content
    path = b(copy / 'links' / 'relative')
    with parent_mtime_kept(path):
        os.unlink(path)
        shutil.copy2(b(copy / 'data' / 'hello.txt'), path)
    return None


def _break_hardlink(copy):
    # what `rsync -a` without -H does: same content and metadata, separate inode
    path = b(copy / 'hard' / 'b')
    tmp = path + b'.tmp'
    with parent_mtime_kept(path):
        shutil.copy2(path, tmp)
        st = os.lstat(path)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.rename(tmp, path)
    return ['hard/a: links: 3 != 2', 'hard/b: hardlink: hard/a != <absent>', 'hard/b: links: 3 != <absent>',
            'hard/sub/c: links: 3 != 2']


def _densify_sparse(copy):
    path = b(copy / 'sparse' / 'sparse.img')
    st = os.lstat(path)
    with parent_mtime_kept(path):
        subprocess.run(['cp', '--sparse=never', '--preserve=all', path, path + b'.dense'], check=True)
        os.rename(path + b'.dense', path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return ['sparse/sparse.img: sparse: true != false']


def _content_same_size_same_mtime(copy):
    path = b(copy / 'data' / 'random.bin')
    st = os.lstat(path)
    with open(path, 'r+b') as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return None


def _fifo_became_file(copy):
    path = b(copy / 'special' / 'fifo')
    st = os.lstat(path)
    with parent_mtime_kept(path):
        os.unlink(path)
        open(path, 'wb').close()
    os.chown(path, st.st_uid, st.st_gid)
    os.chmod(path, 0o640)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return None


def _entry_missing(copy):
    path = b(copy / 'empty' / 'nested' / 'deeper')
    with parent_mtime_kept(path):
        os.rmdir(path)
    return ['empty/nested/deeper: only in A (dir)']


def _entry_extra(copy):
    path = b(copy / 'empty' / 'nested' / 'new')
    with parent_mtime_kept(path):
        os.mkdir(path)
    return ['empty/nested/new: only in B (dir)']


def _non_utf8_name_mangled(copy):
    # what a tool that decodes names as UTF-8 with replacement does
    src = b(copy / 'names') + b'/bad-\xff\xfe-utf8'
    with parent_mtime_kept(src):
        os.rename(src, b(copy / 'names') + u'/bad-\ufffd\ufffd-utf8'.encode())
    return None


MUTATIONS = {
    'mode bit (setuid)': (_chmod, 'modes/setuid', 'mode'),
    'sticky bit': (_sticky, 'modes/sticky-dir', 'mode'),
    'uid >= 2^24': (_chown_big_id, 'owners/big-id', 'uid'),
    'gid': (_chgrp, 'owners/postgres', 'gid'),
    'root owner and mode': (_root_owner_mode, '.', 'mode'),
    'symlink owner': (_lchown_symlink, 'links/dangling', 'uid'),
    'sub-second file mtime': (_subsecond_mtime, 'data/hello.txt', 'mtime_ns'),
    'directory mtime': (_dir_mtime, 'empty/nested', 'mtime_ns'),
    'symlink mtime': (_symlink_mtime, 'links/relative', 'mtime_ns'),
    'xattr value': (_xattr_value, 'xattr/file', 'xattr user.comment'),
    'trusted xattr lost': (_xattr_trusted_lost, 'xattr/file', 'xattr trusted.volumeops'),
    'xattr added': (_xattr_added, 'data/hello.txt', 'xattr user.extra'),
    'capability lost': (_capability_lost, 'caps/net-bind', 'xattr security.capability'),
    'ACL entry removed': (_acl_entry_removed, 'acl/file', 'xattr system.posix_acl_access'),
    'default ACL removed': (_default_acl_removed, 'acl/dir', 'xattr system.posix_acl_default'),
    'symlink target': (_symlink_target, 'links/relative', 'target'),
    'symlink followed': (_symlink_followed, 'links/relative', 'type'),
    'hard link broken': (_break_hardlink, 'hard/b', 'hardlink'),
    'sparseness lost': (_densify_sparse, 'sparse/sparse.img', 'sparse'),
    'content (same size, same mtime)': (_content_same_size_same_mtime, 'data/random.bin', 'sha256'),
    'FIFO became a file': (_fifo_became_file, 'special/fifo', 'type'),
    'entry missing': (_entry_missing, 'empty/nested/deeper', 'only in A'),
    'entry extra': (_entry_extra, 'empty/nested/new', 'only in B'),
    'non-UTF-8 name mangled': (_non_utf8_name_mangled, 'names/bad-\\xff\\xfe-utf8', 'only in A'),
}


@pytest.mark.parametrize('name', sorted(MUTATIONS))
def test_compare_detects_each_kind_of_change(name, original, copy):
    mutate, path, prop = MUTATIONS[name]
    assert diffs_after(original, copy) == []  # precondition: equal before the change
    expected = mutate(copy)
    diffs = diffs_after(original, copy)
    assert diffs, '%s not detected' % name
    assert any(d.startswith('%s: %s' % (path, prop)) for d in diffs), diffs
    if expected is not None:
        assert diffs == expected
    # the overall digest changes too, and the CLI exits 1
    assert fidelity.digest(str(copy))['digest'] != original[1]['digest']
    assert fidelity.main(['compare-dirs', str(original[0]), str(copy)]) == 1


def test_ignore_options(original, copy):
    _subsecond_mtime(copy)
    _xattr_added(copy)
    after = fidelity.digest(str(copy))
    assert len(fidelity.compare(original[1], after)) == 2
    assert fidelity.compare(original[1], after, ignore=('mtime_ns', 'xattr:user.extra')) == []
    assert fidelity.compare(original[1], after, ignore_paths=('data/hello.txt',)) == []


def test_alloc_is_informational_unless_strict(original, copy, tmp_path):
    # a copy that allocates a partial block more or less is still sparse and equal
    after = json.loads(json.dumps(original[1]))
    after['entries']['sparse/sparse.img']['alloc'] += 4096
    assert fidelity.compare(original[1], after) == []
    assert fidelity.compare(original[1], after, ignore=()) != []
