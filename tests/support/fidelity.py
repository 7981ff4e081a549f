# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fidelity oracle for volume data: build a tree with every hard case, digest it, compare digests.

Independent of the collection on purpose (it does not import plugins/module_utils/_tree.py):
a test that uses the code under test as its own oracle proves nothing.

Stdlib only, Python 3.8+ (written for 3.11), run as root (owners, capabilities, FIFOs).

Command line (python3 tests/support/fidelity.py ...)::

    fidelity.py build DIR [--no-special] [--skip KIND,...] [--devices]
    fidelity.py digest DIR [-o OUT.json]
    fidelity.py compare A.json B.json [--ignore PROP ...] [--ignore-path PATH ...]
    fidelity.py compare-dirs DIR_A DIR_B [--ignore PROP ...] [--ignore-path PATH ...]

``compare``/``compare-dirs`` print one line per difference (path, property, A value, B value)
and exit 1 on any difference, 0 when equal.

Python API: ``build(root, skip=(), devices=False)``, ``digest(root) -> dict``,
``compare(a, b, ignore=(), ignore_paths=()) -> list of difference strings``,
``compare_dirs(a, b, ...)``.

Digest format (JSON)::

    {"format": 1, "count": N, "digest": "<sha256 over the canonical entries>",
     "entries": {"<escaped relative path>": {property: value, ...}, ...}}

Paths are relative to the root ("." is the root itself); bytes outside printable ASCII and the
backslash are written as ``\\xNN`` (so non-UTF-8 names and names with newlines are unambiguous).
Properties per entry: type, mode (octal string incl. setuid/setgid/sticky), uid, gid, mtime_ns
(directories and symlinks too), size (files, symlinks), sha256 (files), target (symlinks),
hardlink (files with several names in the tree: the smallest path of the group, so the value is
the same for every member) and links (number of names in the tree), sparse (st_blocks*512 < size),
alloc (allocated bytes; informational, see IGNORED_BY_DEFAULT), xattrs (name -> hex value; POSIX
ACLs decoded to text as "acl:<name>"), rdev ("major:minor", devices).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys

FORMAT = 1

# Allocation varies between filesystems and with how a copy wrote the data; sparseness
# (allocated < apparent size) is what a copy must keep. Compare 'alloc' only on request.
IGNORED_BY_DEFAULT = ('alloc',)

SKIP_KINDS = ('fifo', 'xattr', 'acl', 'caps', 'sparse', 'owners', 'names')
# What --no-special skips: things some filesystems (NFS, SMB, FUSE, tmpfs) or tools cannot hold.
NO_SPECIAL = ('fifo', 'xattr', 'acl', 'caps', 'sparse')

BIG_ID = 1000480000  # OpenShift-style id, >= 2**24 (busybox tar rewrites these)
MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# path encoding


def escape(path):
    """Bytes path -> unambiguous printable text (printable ASCII kept, everything else \\xNN)."""
    out = []
    for byte in path:
        if 0x20 <= byte < 0x7f and byte != 0x5c:
            out.append(chr(byte))
        else:
            out.append('\\x%02x' % byte)
    return ''.join(out)


def unescape(text):
    """Inverse of escape()."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == '\\':
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        else:
            out.append(ord(text[i]))
            i += 1
    return bytes(out)


# --------------------------------------------------------------------------------------------
# build


def _data(seed, size):
    """Deterministic incompressible bytes (no zero runs, so no accidental hole detection)."""
    out = bytearray()
    counter = 0
    seed_b = seed.encode() if isinstance(seed, str) else seed
    while len(out) < size:
        out += hashlib.sha256(seed_b + counter.to_bytes(8, 'big')).digest()
        counter += 1
    return bytes(out[:size])


def _acl_xattr(entries):
    """POSIX ACL xattr value (version 2) from [(tag, perm, id)], as setfacl would write it."""
    value = struct.pack('<I', 2)
    for tag, perm, ident in entries:
        value += struct.pack('<HHI', tag, perm, ident)
    return value


ACL_TAGS = {0x01: 'user', 0x02: 'user', 0x04: 'group', 0x08: 'group', 0x10: 'mask', 0x20: 'other'}
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF


def decode_acl(value):
    """system.posix_acl_* xattr value -> 'user::rw-,user:1000:rw-,...' (order as stored)."""
    if len(value) < 4 or (len(value) - 4) % 8:
        return 'invalid:' + value.hex()
    version = struct.unpack_from('<I', value)[0]
    parts = [] if version == 2 else ['version=%d' % version]
    for off in range(4, len(value), 8):
        tag, perm, ident = struct.unpack_from('<HHI', value, off)
        name = ACL_TAGS.get(tag, 'tag%#x' % tag)
        qual = str(ident) if tag in (ACL_USER, ACL_GROUP) else ''
        rwx = ('r' if perm & 4 else '-') + ('w' if perm & 2 else '-') + ('x' if perm & 1 else '-')
        parts.append('%s:%s:%s' % (name, qual, rwx))
    return ','.join(parts)


# security.capability v2: magic|flags, then (permitted, inheritable) x 2 words.
CAP_NET_BIND_SERVICE = 10
VFS_CAP_REVISION_2 = 0x02000000
VFS_CAP_FLAGS_EFFECTIVE = 0x000001


def _cap_xattr_net_bind_service():
    return struct.pack('<IIIII', VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
                       1 << CAP_NET_BIND_SERVICE, 0, 0, 0)


class _Builder(object):
    def __init__(self, root, skip, devices):
        self.root = os.fsencode(root)
        self.skip = set(skip)
        self.devices = devices
        self.mtimes = []   # (relpath, is_dir) in creation order
        self.notes = []

    def p(self, rel):
        return os.path.join(self.root, rel)

    def want(self, kind):
        return kind not in self.skip

    # creators ---------------------------------------------------------------------------------
    def dir(self, rel, mode=0o755, uid=0, gid=0):
        path = self.p(rel)
        os.mkdir(path)
        self._own(path, uid, gid, mode)
        self.mtimes.append((rel, True))
        return path

    def file(self, rel, content=b'', mode=0o644, uid=0, gid=0):
        path = self.p(rel)
        with open(path, 'wb') as handle:
            handle.write(content)
        self._own(path, uid, gid, mode)
        self.mtimes.append((rel, False))
        return path

    def symlink(self, rel, target, uid=0, gid=0):
        path = self.p(rel)
        os.symlink(target, path)
        if self.want('owners'):
            os.lchown(path, uid, gid)
        self.mtimes.append((rel, False))
        return path

    def _own(self, path, uid, gid, mode):
        # chown first: it clears setuid/setgid bits and security.capability
        if self.want('owners'):
            os.chown(path, uid, gid, follow_symlinks=False)
        os.chmod(path, mode)

    def run(self, argv):
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)

    # the tree ---------------------------------------------------------------------------------
    def build(self):
        if not os.path.isdir(self.root):
            os.makedirs(self.root)
        if os.listdir(self.root):
            raise SystemExit('build: %s is not empty' % os.fsdecode(self.root))

        self.dir(b'data')
        self.file(b'data/hello.txt', b'hello fidelity\n')
        self.file(b'data/random.bin', _data('random', 300 * 1024 + 17), mode=0o600, uid=999, gid=999)
        self.file(b'data/empty', b'')
        self.file(b'data/.hidden', b'dot file\n', mode=0o640)
        self.file(b'data/no-newline', b'x')

        self.dir(b'modes')
        self.file(b'modes/setuid', b'#!/bin/sh\n', mode=0o4755)
        self.file(b'modes/setgid', b'#!/bin/sh\n', mode=0o2711, gid=999)
        self.file(b'modes/all-special', b'7777\n', mode=0o7777, uid=1000, gid=1000)
        self.file(b'modes/zero', b'no permissions\n', mode=0o000)
        self.file(b'modes/exec-only', b'', mode=0o111)
        self.dir(b'modes/sticky-dir', mode=0o1777)
        self.file(b'modes/sticky-dir/tmpfile', b'tmp\n', mode=0o666, uid=1000, gid=1000)
        self.dir(b'modes/setgid-dir', mode=0o2775, gid=999)
        self.file(b'modes/setgid-dir/child', b'child\n', gid=999)
        self.dir(b'modes/locked-dir', mode=0o000)
        self.file(b'modes/locked-dir/inside', b'behind a 0000 directory\n', mode=0o600)

        self.dir(b'owners')
        self.file(b'owners/app', b'app\n', mode=0o640, uid=1000, gid=1000)
        self.file(b'owners/postgres', b'pg\n', mode=0o600, uid=999, gid=999)
        self.file(b'owners/big-id', b'big\n', uid=BIG_ID, gid=BIG_ID)
        self.file(b'owners/big-uid-root-gid', b'big uid\n', uid=BIG_ID, gid=0)
        self.file(b'owners/nobody', b'nobody\n', uid=65534, gid=65534)
        self.file(b'owners/unmapped', b'no passwd entry\n', uid=4242, gid=4343)
        self.dir(b'owners/big-dir', mode=0o770, uid=BIG_ID, gid=BIG_ID)
        self.file(b'owners/big-dir/file', b'in big dir\n', mode=0o660, uid=BIG_ID, gid=BIG_ID)

        self.dir(b'links')
        self.symlink(b'links/relative', b'../data/hello.txt', uid=1000, gid=1000)
        self.symlink(b'links/absolute', b'/etc/passwd')
        self.symlink(b'links/dangling', b'../no/such/file', uid=BIG_ID, gid=999)
        self.symlink(b'links/dangling-absolute', b'/nonexistent/volumeops/target', uid=999, gid=999)
        self.symlink(b'links/to-dir', b'../data')
        self.symlink(b'links/long-target', b'../' + b'long-target-component/' * 8 + b'end', uid=65534, gid=65534)
        self.symlink(b'links/self', b'self')

        self.dir(b'hard', uid=999, gid=999)
        self.file(b'hard/a', _data('hardlink', 10000), mode=0o640, uid=999, gid=999)
        os.link(self.p(b'hard/a'), self.p(b'hard/b'))
        self.dir(b'hard/sub')
        os.link(self.p(b'hard/a'), self.p(b'hard/sub/c'))
        self.file(b'hard/pair-1', b'pair\n', mode=0o4750, uid=1000, gid=1000)
        os.link(self.p(b'hard/pair-1'), self.p(b'hard/pair-2'))
        self.mtimes += [(b'hard/b', False), (b'hard/sub/c', False), (b'hard/pair-2', False)]

        if self.want('sparse'):
            self.dir(b'sparse')
            path = self.file(b'sparse/sparse.img', b'', mode=0o600, uid=999, gid=999)
            with open(path, 'r+b') as handle:
                handle.truncate(64 * MIB)
                for offset in (0, 32 * MIB + 8192, 64 * MIB - 4096):
                    handle.seek(offset)
                    handle.write(_data('sparse%d' % offset, 4096))
            path = self.file(b'sparse/all-hole.img', b'', mode=0o644)
            with open(path, 'r+b') as handle:
                handle.truncate(16 * MIB)

        self.dir(b'empty')
        self.dir(b'empty/nested', mode=0o700, uid=1000, gid=1000)
        self.dir(b'empty/nested/deeper', mode=0o750)

        if self.want('fifo') or self.devices:
            self.dir(b'special')
        if self.want('fifo'):
            path = self.p(b'special/fifo')
            os.mkfifo(path)
            self._own(path, 999, 999, 0o640)
            self.mtimes.append((b'special/fifo', False))
        if self.devices:
            path = self.p(b'special/null-like')
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
            self._own(path, 0, 0, 0o600)
            path = self.p(b'special/block-like')
            os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(7, 200))
            self._own(path, 0, 6, 0o660)
            self.mtimes += [(b'special/null-like', False), (b'special/block-like', False)]

        if self.want('xattr'):
            self.dir(b'xattr')
            path = self.file(b'xattr/file', b'has xattrs\n', uid=1000, gid=1000)
            os.setxattr(path, b'user.comment', b'fidelity test')
            os.setxattr(path, b'user.binary', bytes(range(1, 256)))
            os.setxattr(path, b'trusted.volumeops', b'trusted namespace')
            path = self.dir(b'xattr/dir', mode=0o750)
            os.setxattr(path, b'user.dirattr', b'on a directory')

        if self.want('caps'):
            self.dir(b'caps')
            path = self.file(b'caps/net-bind', b'#!/bin/sh\n', mode=0o755, uid=1000, gid=1000)
            # after chown: chown clears security.capability
            if shutil.which('setcap'):
                self.run(['setcap', 'cap_net_bind_service+ep', path])
            else:
                self.notes.append('setcap missing: security.capability written as a raw v2 xattr')
                os.setxattr(path, b'security.capability', _cap_xattr_net_bind_service())

        if self.want('acl'):
            self.dir(b'acl')
            file_path = self.file(b'acl/file', b'acl\n', mode=0o640, uid=999, gid=999)
            dir_path = self.dir(b'acl/dir', mode=0o750, uid=999, gid=999)
            if shutil.which('setfacl'):
                self.run(['setfacl', '-m', 'u:1000:rw,g:65534:r,m::rw', file_path])
                self.run(['setfacl', '-m', 'u:1000:rwx,g:999:rx', dir_path])
                self.run(['setfacl', '-d', '-m', 'u::rwx,g::rx,o::-,u:1000:rwx,g:999:rx,m::rwx', dir_path])
            else:
                self.notes.append('setfacl missing: ACLs written as raw xattrs')
                os.setxattr(file_path, b'system.posix_acl_access', _acl_xattr([
                    (ACL_USER_OBJ, 6, ACL_UNDEFINED_ID), (ACL_USER, 6, 1000),
                    (ACL_GROUP_OBJ, 4, ACL_UNDEFINED_ID), (ACL_GROUP, 4, 65534),
                    (ACL_MASK, 6, ACL_UNDEFINED_ID), (ACL_OTHER, 0, ACL_UNDEFINED_ID)]))
                both = [(ACL_USER_OBJ, 7, ACL_UNDEFINED_ID), (ACL_USER, 7, 1000),
                        (ACL_GROUP_OBJ, 5, ACL_UNDEFINED_ID), (ACL_GROUP, 5, 999),
                        (ACL_MASK, 7, ACL_UNDEFINED_ID), (ACL_OTHER, 0, ACL_UNDEFINED_ID)]
                os.setxattr(dir_path, b'system.posix_acl_access', _acl_xattr(both))
                os.setxattr(dir_path, b'system.posix_acl_default', _acl_xattr(both))
            # created after the default ACL: inherits an access ACL from it
            path = self.p(b'acl/dir/inherited')
            with open(path, 'wb') as handle:
                handle.write(b'inherits the default ACL\n')
            os.chown(path, 999, 999)
            self.mtimes.append((b'acl/dir/inherited', False))

        if self.want('names'):
            self.dir(b'names')
            for name in (b'bad-\xff\xfe-utf8', b'new\nline', b'tab\tand space', u'\u00fcn\u00efc\u00f8d\u00e9'.encode(),
                         b'$(touch pwned)', b'-rf', b'*glob?[x]', b'back\\slash', b'quote\'"', b'.. dots ..'):
                self.file(b'names/' + name, b'name: ' + name + b'\n')
            self.file(b'names/' + b'n' * 250 + b'.255b', b'255-byte name\n')
            self.symlink(b'names/link-\xe9-latin1', b'bad-\xff\xfe-utf8')
            self.dir(b'names/dir-\x80\n')
            self.file(b'names/dir-\x80\n/inside', b'in a non-UTF-8 dir\n')

        # paths longer than 100 bytes (ustar limit) and longer than 255
        rel = b'long'
        self.dir(rel)
        for i in range(6):
            rel += b'/' + (b'directory-level-%d-' % i) + b'd' * 40
            self.dir(rel)
        self.file(rel + b'/' + b'f' * 120, b'deep file\n')
        os.link(self.p(rel + b'/' + b'f' * 120), self.p(b'long/hardlink-to-deep'))
        self.mtimes.append((b'long/hardlink-to-deep', False))
        self.symlink(b'long/symlink-to-deep', rel[len(b'long/'):] + b'/' + b'f' * 120)
        # './' + this directory + '/' is 100 bytes: the ustar name field of the file in it (a truncated copy of
        # its pax path) ends in '/', which a validator must not take for the member's name
        edge = b'long/' + b'e' * 92
        self.dir(edge)
        self.file(edge + b'/file-named-after-a-slash-at-byte-100', b'edge\n')

        self._set_mtimes()
        self._set_root()
        return self.notes

    def _set_mtimes(self):
        # Deterministic, distinct, sub-second. Non-directories first, then directories deepest
        # first: creating/renaming entries inside a directory bumps its mtime.
        files = [rel for rel, is_dir in self.mtimes if not is_dir]
        dirs = [rel for rel, is_dir in self.mtimes if is_dir]
        for i, rel in enumerate(files):
            ns = (1_500_000_000 + i * 3607) * 10**9 + (123_456_789 * (i + 1)) % 10**9
            os.utime(self.p(rel), ns=(ns, ns), follow_symlinks=False)
        for i, rel in enumerate(sorted(dirs, key=lambda r: (-r.count(b'/'), r))):
            ns = (1_600_000_000 + i * 7919) * 10**9 + (987_654_321 * (i + 1)) % 10**9 + 1
            os.utime(self.p(rel), ns=(ns, ns))

    def _set_root(self):
        # PostgreSQL-like volume root: 999:999 0700
        if self.want('owners'):
            os.chown(self.root, 999, 999)
        os.chmod(self.root, 0o700)
        ns = 1_700_000_000_123_456_789
        os.utime(self.root, ns=(ns, ns))


def build(root, skip=(), devices=False):
    """Create the hard-case tree in ``root`` (created if missing, must be empty). Returns notes."""
    unknown = set(skip) - set(SKIP_KINDS)
    if unknown:
        raise ValueError('unknown skip kinds: %s' % ', '.join(sorted(unknown)))
    return _Builder(root, skip, devices).build()


# --------------------------------------------------------------------------------------------
# digest

TYPES = ((stat.S_ISREG, 'file'), (stat.S_ISDIR, 'dir'), (stat.S_ISLNK, 'symlink'), (stat.S_ISFIFO, 'fifo'),
         (stat.S_ISCHR, 'chr'), (stat.S_ISBLK, 'blk'), (stat.S_ISSOCK, 'socket'))


def _type(mode):
    for test, name in TYPES:
        if test(mode):
            return name
    return 'unknown'


def _sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as handle:
        while True:
            chunk = handle.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def _xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            out[name] = 'unreadable:%s' % exc.strerror
            continue
        if name in ('system.posix_acl_access', 'system.posix_acl_default'):
            out[name] = 'acl:' + decode_acl(value)
        else:
            out[name] = value.hex()
    return out


def _walk(root):
    """(relpath bytes, abspath bytes, lstat) for the root and everything below; never follows links."""
    root_b = os.fsencode(root)
    yield b'.', root_b, os.lstat(root_b)
    stack = [(b'', root_b)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        with os.scandir(abs_dir) as it:
            names = sorted(e.name for e in it)
        subdirs = []
        for name in names:
            rel = rel_dir + b'/' + name if rel_dir else name
            abspath = os.path.join(abs_dir, name)
            st = os.lstat(abspath)
            yield rel, abspath, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((rel, abspath))
        stack.extend(reversed(subdirs))


def digest(root, content=True):
    """Every property of every entry below ``root`` (see module docstring) plus an overall digest."""
    entries = {}
    inodes = {}
    for rel, abspath, st in _walk(root):
        kind = _type(st.st_mode)
        rec = {
            'type': kind,
            'mode': '%04o' % stat.S_IMODE(st.st_mode),
            'uid': st.st_uid,
            'gid': st.st_gid,
            'mtime_ns': st.st_mtime_ns,
        }
        if kind == 'file':
            rec['size'] = st.st_size
            alloc = st.st_blocks * 512
            rec['alloc'] = alloc
            rec['sparse'] = alloc < st.st_size
            if content:
                rec['sha256'] = _sha256(abspath)
            if st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        elif kind == 'symlink':
            target = os.readlink(abspath)
            rec['target'] = escape(target)
            rec['size'] = st.st_size
        elif kind in ('chr', 'blk'):
            rec['rdev'] = '%d:%d' % (os.major(st.st_rdev), os.minor(st.st_rdev))
        xattrs = _xattrs(abspath)
        if xattrs:
            rec['xattrs'] = xattrs
        entries[escape(rel)] = rec
    for members in inodes.values():
        if len(members) > 1:
            first = escape(min(members))
            for rel in members:
                entries[escape(rel)]['hardlink'] = first
                entries[escape(rel)]['links'] = len(members)
    # the overall digest leaves out what compare() ignores by default
    canonical = json.dumps({path: {k: v for k, v in rec.items() if k not in IGNORED_BY_DEFAULT}
                            for path, rec in entries.items()}, sort_keys=True, separators=(',', ':')).encode()
    return {'format': FORMAT, 'root': os.fsdecode(root) if isinstance(root, bytes) else str(root),
            'count': len(entries), 'digest': hashlib.sha256(canonical).hexdigest(), 'entries': entries}


# --------------------------------------------------------------------------------------------
# compare


def _fmt(value):
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def compare(a, b, ignore=IGNORED_BY_DEFAULT, ignore_paths=()):
    """Differences between two digests, one string per (path, property). Empty list = equal."""
    ignore = set(ignore)
    ignore_paths = set(ignore_paths)
    ea, eb = a['entries'], b['entries']
    diffs = []
    for path in sorted(set(ea) | set(eb)):
        if path in ignore_paths:
            continue
        if path not in eb:
            diffs.append('%s: only in A (%s)' % (path, ea[path]['type']))
            continue
        if path not in ea:
            diffs.append('%s: only in B (%s)' % (path, eb[path]['type']))
            continue
        ra, rb = ea[path], eb[path]
        for prop in sorted(set(ra) | set(rb)):
            if prop in ignore:
                continue
            if prop == 'xattrs':
                xa, xb = ra.get('xattrs', {}), rb.get('xattrs', {})
                for name in sorted(set(xa) | set(xb)):
                    if 'xattr:' + name in ignore:
                        continue
                    if xa.get(name) != xb.get(name):
                        diffs.append('%s: xattr %s: %s != %s' % (
                            path, name, _fmt(xa.get(name, '<absent>')), _fmt(xb.get(name, '<absent>'))))
                continue
            va, vb = ra.get(prop, '<absent>'), rb.get(prop, '<absent>')
            if va != vb:
                diffs.append('%s: %s: %s != %s' % (path, prop, _fmt(va), _fmt(vb)))
    return diffs


def compare_dirs(dir_a, dir_b, ignore=IGNORED_BY_DEFAULT, ignore_paths=()):
    return compare(digest(dir_a), digest(dir_b), ignore=ignore, ignore_paths=ignore_paths)


# --------------------------------------------------------------------------------------------
# command line


def _load(path):
    with open(path) as handle:
        return json.load(handle)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='fidelity.py', description=__doc__.split('\n\n', maxsplit=1)[0])
    sub = parser.add_subparsers(dest='cmd', required=True)

    p_build = sub.add_parser('build', help='create the hard-case tree in DIR')
    p_build.add_argument('dir')
    p_build.add_argument('--no-special', action='store_true',
                         help='skip %s (things some filesystems cannot hold)' % ', '.join(NO_SPECIAL))
    p_build.add_argument('--skip', default='', help='comma-separated kinds to skip: %s' % ', '.join(SKIP_KINDS))
    p_build.add_argument('--devices', action='store_true', help='also create a char and a block device node')

    p_digest = sub.add_parser('digest', help='print the JSON digest of DIR')
    p_digest.add_argument('dir')
    p_digest.add_argument('-o', '--output', help='write to this file instead of stdout')
    p_digest.add_argument('--no-content', action='store_true', help='metadata only (no sha256 of contents)')

    for name, helptext in (('compare', 'compare two digest JSON files'), ('compare-dirs', 'digest and compare two dirs')):
        p_cmp = sub.add_parser(name, help=helptext)
        p_cmp.add_argument('a')
        p_cmp.add_argument('b')
        p_cmp.add_argument('--ignore', action='append', default=[],
                           help='property to ignore (repeatable; "xattr:NAME" for one xattr). '
                                'Default ignores: %s' % ', '.join(IGNORED_BY_DEFAULT))
        p_cmp.add_argument('--strict-alloc', action='store_true', help='also compare allocated bytes')
        p_cmp.add_argument('--ignore-path', action='append', default=[], help='escaped relative path to skip')

    args = parser.parse_args(argv)
    if args.cmd == 'build':
        skip = set(NO_SPECIAL) if args.no_special else set()
        skip |= {s for s in args.skip.split(',') if s}
        try:
            notes = build(args.dir, skip=skip, devices=args.devices)
        except ValueError as exc:
            parser.error(str(exc))
        for note in notes:
            print('note: ' + note, file=sys.stderr)
        return 0
    if args.cmd == 'digest':
        result = digest(args.dir, content=not args.no_content)
        text = json.dumps(result, indent=1, sort_keys=True)
        if args.output:
            with open(args.output, 'w') as handle:
                handle.write(text + '\n')
            print('%s entries, digest %s' % (result['count'], result['digest']))
        else:
            print(text)
        return 0
    ignore = set(args.ignore) | (set() if args.strict_alloc else set(IGNORED_BY_DEFAULT))
    if args.cmd == 'compare':
        a, b = _load(args.a), _load(args.b)
    else:
        a, b = digest(args.a), digest(args.b)
    diffs = compare(a, b, ignore=ignore, ignore_paths=args.ignore_path)
    for line in diffs:
        print(line)
    if diffs:
        print('%d difference(s)' % len(diffs), file=sys.stderr)
        return 1
    print('equal: %d entries, digest %s' % (a['count'], a['digest']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
