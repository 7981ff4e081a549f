# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one metadata walk of a volume tree, and the tree fingerprint built on it.

Used by backup (idempotency: is the volume unchanged since the newest
archive?), restore (does the extracted tree equal the manifest?), transfer
(delta pass, verification) and permissions (which entries differ?).

Design choices, and why:
- Paths are bytes relative to the root (b'.' for the root itself): volume file
  names need not be valid UTF-8 and may contain newlines.
- lstat only; symlinks are never followed, and the walk never leaves the tree.
- Each directory's entries are visited in sorted (byte) order, then its subdirectories; the order is
  deterministic and the fingerprint can be hashed as a stream: memory stays
  bounded by the depth of the tree, not its size (a million files is fine).
- No content is read: the fingerprint covers path, type, size, mtime_ns,
  mode (permission bits incl. setuid/setgid/sticky), uid, gid, link target
  and extended attributes (which include POSIX ACLs and security.capability).
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import stat

FINGERPRINT_VERSION = 1

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, 'O_CLOEXEC', 0)

TYPE_CODES = (
    (stat.S_ISREG, 'f'), (stat.S_ISDIR, 'd'), (stat.S_ISLNK, 'l'), (stat.S_ISFIFO, 'p'),
    (stat.S_ISCHR, 'c'), (stat.S_ISBLK, 'b'), (stat.S_ISSOCK, 's'),
)


def type_code(st_mode):
    for test, code in TYPE_CODES:
        if test(st_mode):
            return code
    return '?'


class Entry(object):
    """One entry of the tree: its relative path (bytes), lstat result and absolute path (bytes)."""

    __slots__ = ('relpath', 'abspath', 'st')

    def __init__(self, relpath, abspath, st):
        self.relpath = relpath
        self.abspath = abspath
        self.st = st

    @property
    def type(self):
        return type_code(self.st.st_mode)


def _excluded(relpath, patterns):
    if not patterns:
        return False
    text = relpath.decode('utf-8', 'surrogateescape')
    if text.startswith('./'):
        text = text[2:]
    name = text.rsplit('/', 1)[-1]
    return any(fnmatch.fnmatchcase(text, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def walk(root, exclude=None, descend=None):
    """Yield an Entry for the root (relpath b'.') and every entry below it, depth first, sorted.

    ``exclude`` is a list of glob patterns matched against the relative path
    (without the leading './') and against the entry's name. An excluded
    directory is not descended into.
    ``descend``, if given, is called with the Entry of each directory below the
    root (the root itself is always listed); when it returns False the
    directory is yielded but not descended into. Callers use it to split a tree
    into subtrees walked separately (volume_permissions' parallel workers).
    """
    root_b = os.fsencode(root)
    yield Entry(b'.', root_b, os.lstat(root_b))
    stack = [(b'.', root_b)]
    lstat = os.lstat
    isdir = stat.S_ISDIR
    while stack:
        rel_dir, abs_dir = stack.pop()
        # Each directory is listed and its entries lstat-ed relative to one descriptor of it (fstatat):
        # no per-entry lookup of the whole absolute path, which is most of the cost on big trees.
        try:
            dir_fd = os.open(abs_dir, _DIR_FLAGS)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # vanished while walking; the caller's fingerprint will differ
                continue
            raise
        batch = []
        try:
            names = sorted(os.fsencode(n) for n in os.listdir(dir_fd))
            prefix = b'./' if rel_dir == b'.' else rel_dir + b'/'
            for name in names:
                rel = prefix + name
                if exclude and _excluded(rel, exclude):
                    continue
                try:
                    st = lstat(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                batch.append((rel, name, st))
        finally:
            os.close(dir_fd)
        abs_prefix = abs_dir + b'/'
        subdirs = []
        for rel, name, st in batch:
            entry = Entry(rel, abs_prefix + name, st)
            yield entry
            if isdir(st.st_mode) and (descend is None or descend(entry)):
                subdirs.append((rel, entry.abspath))
        # Reverse so that popping visits subdirectories in sorted order.
        stack.extend(reversed(subdirs))


def read_xattrs(abspath):
    """Extended attributes of the entry itself (never its symlink target), sorted, as [(name, value)]."""
    try:
        names = os.listxattr(abspath, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT):
            return []
        raise
    result = []
    for name in sorted(names):
        try:
            result.append((name, os.getxattr(abspath, name, follow_symlinks=False)))
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOENT):
                raise
    return result


def entry_record(entry, with_xattrs=True):
    """The fingerprinted properties of one entry, as bytes (one line, NUL-separated fields)."""
    st = entry.st
    code = type_code(st.st_mode)
    fields = [entry.relpath, code.encode(), b'%d' % (st.st_size if code == 'f' else 0),
              b'%d' % st.st_mtime_ns, b'%o' % stat.S_IMODE(st.st_mode), b'%d' % st.st_uid, b'%d' % st.st_gid]
    if code == 'l':
        fields.append(os.readlink(entry.abspath))
    elif code in ('c', 'b'):
        fields.append(b'%d,%d' % (os.major(st.st_rdev), os.minor(st.st_rdev)))
    else:
        fields.append(b'')
    if with_xattrs:
        for name, value in read_xattrs(entry.abspath):
            fields.append(os.fsencode(name) + b'=' + value.hex().encode())
    return b'\0'.join(fields)


def listing_record(entry):
    """(type, size, mtime_ns, mode, uid, gid, link target) of one entry: what a restore's diff compares."""
    st = entry.st
    code = type_code(st.st_mode)
    return (code, st.st_size if code == 'f' else 0, st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
            os.readlink(entry.abspath) if code == 'l' else b'')


def listing(root, skip_types=()):
    """{relative path (bytes, without './'; b'.' for the root): listing_record} of the tree at ``root``."""
    result = {}
    for entry in walk(root):
        record = listing_record(entry)
        if record[0] in skip_types:
            continue
        result[b'.' if entry.relpath == b'.' else entry.relpath[2:]] = record
    return result


class TreeSummary(object):
    """Result of one fingerprint walk."""

    __slots__ = ('fingerprint', 'entries', 'bytes')

    def __init__(self, fingerprint, entries, total_bytes):
        self.fingerprint = fingerprint
        self.entries = entries
        self.bytes = total_bytes

    def as_dict(self):
        return dict(fingerprint=self.fingerprint, entries=self.entries, bytes=self.bytes)


def fingerprint(root, exclude=None, include_root_mtime=True, skip_types=()):
    """Walk ``root`` once and return a TreeSummary.

    ``entries`` counts every entry including the root; ``bytes`` sums the
    apparent size of regular files (hard links counted once).
    ``include_root_mtime=False`` leaves the root's mtime out, for comparisons
    where the root directory itself is recreated (its other properties stay).
    ``skip_types`` is a collection of type codes (e.g. ``('s',)``) left out of
    the fingerprint and counts: archives cannot hold sockets, so the backup's
    manifest must not count them either.
    """
    return summarize(walk(root, exclude), include_root_mtime, skip_types)


def summarize(entries_iter, include_root_mtime=True, skip_types=()):
    """TreeSummary of the given walk entries (see fingerprint()); the one place the
    fingerprint is accumulated, so a filtered walk hashes exactly like a full one."""
    digest = hashlib.sha256(b'volumeops-tree-v%d\n' % FINGERPRINT_VERSION)
    entries = 0
    total = 0
    seen_inodes = set()
    for entry in entries_iter:
        if skip_types and type_code(entry.st.st_mode) in skip_types:
            continue
        record = entry_record(entry)
        if entry.relpath == b'.' and not include_root_mtime:
            parts = record.split(b'\0')
            parts[3] = b'-'
            record = b'\0'.join(parts)
        digest.update(record + b'\n')
        entries += 1
        st = entry.st
        if stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen_inodes:
                    continue
                seen_inodes.add(key)
            total += st.st_size
    return TreeSummary('sha256:' + digest.hexdigest(), entries, total)
