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
- Standard library only, no import from the collection: _helper runs this module's source on its
  own inside helper containers (the data path for volumes not mounted on the host).
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import re
import stat
import subprocess
import tempfile
import threading
import time

# Version 2 adds the hard-link structure: a regular file that shares its inode with an entry walked
# before it gets the first such entry's path as one more field (``\0>path``). Nothing else changed,
# and the digest keeps version 1's header line, so a tree without hard links has the same fingerprint
# under both versions: archives and markers made before stay comparable. Comparisons with a stored
# fingerprint of version 1 compute version 1 (``version`` of fingerprint/summarize).
FINGERPRINT_VERSION = 2

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, 'O_CLOEXEC', 0)

TYPE_BY_FMT = {stat.S_IFREG: 'f', stat.S_IFDIR: 'd', stat.S_IFLNK: 'l', stat.S_IFIFO: 'p',
               stat.S_IFCHR: 'c', stat.S_IFBLK: 'b', stat.S_IFSOCK: 's'}

_XATTR_NONE = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT)

# A change token trusts ctime only for entries whose ctime lies this far before the walk that
# recorded it: the kernel stamps ctime from a coarse clock (one tick, a few ms), so an entry changed
# twice within one tick, once before and once after the walk saw it, would keep its ctime.
CTIME_SETTLED_NS = 2 * 10 ** 9
# At most this many recently changed entries are named in a token (ChangeToken.recent); beyond, none.
RECENT_MAX = 65536


def type_code(st_mode):
    return TYPE_BY_FMT.get(stat.S_IFMT(st_mode), '?')


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


# --- exclusion patterns ---
# The walk and GNU tar (see _archive.tar_create_argv) must leave out exactly the same entries: a
# manifest that counts an entry tar left out describes an archive that does not exist. So the
# patterns have one meaning, which both sides implement: ``*``, ``?`` and ``[...]`` never match a
# ``/``; a pattern without ``/`` matches the name of an entry at any depth; a pattern with ``/``
# matches the path relative to the root (a leading ``/`` or ``./`` is optional); a trailing ``/``
# is ignored; the root itself is never excluded. Syntax that GNU tar's fnmatch and Python's fnmatch
# read differently is refused (exclude_pattern_error).


def glob_tokens(pattern):
    """The tokens of a glob pattern: '*' (runs collapsed), '?', a bracket expression, or one literal character.

    Brackets are delimited as Python's fnmatch and GNU tar's fnmatch both do ('[' without a closing
    ']' is a literal; a ']' right after '[' or '[!' belongs to the set).
    """
    tokens = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == '*':
            if not tokens or tokens[-1] != '*':
                tokens.append('*')
        elif c == '[':
            j = i
            if j < n and pattern[j] == '!':
                j += 1
            if j < n and pattern[j] == ']':
                j += 1
            while j < n and pattern[j] != ']':
                j += 1
            if j >= n:
                tokens.append('[')  # unterminated: a literal '['
            else:
                tokens.append(pattern[i - 1:j + 1])
                i = j + 1
        else:
            tokens.append(c)
    return tokens


def exclude_pattern_error(pattern):
    """Why ``pattern`` cannot be an exclusion pattern, or None."""
    if not isinstance(pattern, str) or normalized_exclude(pattern)[1] in ('', '.'):
        return 'exclude pattern %r is empty or names the root itself, which is never excluded.' % (pattern,)
    if '\\' in pattern:
        return ('exclude pattern %r: a backslash is not supported (GNU tar reads it as an escape, the walk '
                'would not); use [*], [?] or [[] to match those characters literally.' % pattern)
    for token in glob_tokens(pattern):
        if len(token) > 1 and token.startswith('['):
            body = token[1:-1]
            if '/' in body:
                return 'exclude pattern %r: a bracket expression cannot match "/".' % pattern
            if body.startswith('^'):
                return 'exclude pattern %r: write [!...] to negate a bracket expression, not [^...].' % pattern
            if '[:' in body or '[=' in body or '[.' in body:
                return ('exclude pattern %r: character classes like [:alpha:] are not supported; list the '
                        'characters or a range.' % pattern)
    return None


def normalized_exclude(pattern):
    """(anchored, pattern) as matched: a pattern with '/' is anchored at the root (relative path),
    without its leading '/' or './' and trailing '/'; one without matches names at any depth."""
    pattern = pattern.rstrip('/')
    anchored = '/' in pattern
    while pattern.startswith('./') or pattern.startswith('/'):
        pattern = pattern[1:] if pattern.startswith('/') else pattern[2:]
    return anchored, pattern


def _glob_re(pattern):
    # One path component: fnmatch's '*' may then match anything, there is no '/' in what it sees.
    return re.compile(fnmatch.translate(pattern)).match


def exclude_matcher(patterns):
    """A function(relpath) -> True when the entry (walk style, b'./a/b') is excluded; None without patterns.

    The root (b'.') is never excluded."""
    names = []
    paths = []
    for pattern in patterns or ():
        anchored, pattern = normalized_exclude(pattern)
        if anchored:
            paths.append([_glob_re(part) for part in pattern.split('/')])
        else:
            names.append(_glob_re(pattern))
    if not names and not paths:
        return None

    def excluded(relpath):
        if relpath == b'.':
            return False
        text = relpath.decode('utf-8', 'surrogateescape')
        if text.startswith('./'):
            text = text[2:]
        name = text.rsplit('/', 1)[-1]
        if any(match(name) for match in names):
            return True
        if paths:
            parts = text.split('/')
            for pattern in paths:
                if len(pattern) == len(parts) and all(match(part) for match, part in zip(pattern, parts)):
                    return True
        return False
    return excluded


def walk(root, exclude=None, descend=None, one_file_system=True):
    """Yield an Entry for the root (relpath b'.') and every entry below it, depth first, sorted.

    ``exclude`` is a list of glob patterns (see exclude_matcher) matched against the relative
    path (without the leading './') and against the entry's name. An excluded
    directory is not descended into.
    ``descend``, if given, is called with the Entry of each directory below the
    root (the root itself is always listed); when it returns False the
    directory is yielded but not descended into. Callers use it to split a tree
    into subtrees walked separately (volume_permissions' parallel workers).
    ``one_file_system`` (the default): a directory on another filesystem than the root (a mount
    point below it) is yielded but not descended into, as GNU tar's ``--one-file-system`` does
    with the archives: the walk must see exactly what tar archives.
    """
    root_b = os.fsencode(root)
    root_st = os.lstat(root_b)
    yield Entry(b'.', root_b, root_st)
    root_dev = root_st.st_dev if one_file_system else None
    excluded = exclude_matcher(exclude)
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
                if excluded is not None and excluded(rel):
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
            if isdir(st.st_mode) and (root_dev is None or st.st_dev == root_dev) and (descend is None or descend(entry)):
                subdirs.append((rel, entry.abspath))
        # Reverse so that popping visits subdirectories in sorted order.
        stack.extend(reversed(subdirs))


def tar_order(root, exclude=None, one_file_system=True):
    """Yield (absolute path, lstat) of every entry below ``root`` in the order GNU tar's
    ``--sort=name`` archives them: depth first, a directory's entries sorted by bytes, each
    subdirectory entered where its name sorts (walk() lists a whole directory before entering any).
    Entries that vanish or cannot be listed are skipped; the caller only uses this to read ahead."""
    excluded = exclude_matcher(exclude)
    root_b = os.fsencode(root)
    root_dev = os.lstat(root_b).st_dev if one_file_system else None
    # One frame per directory being listed: its relative and absolute path, sorted names, next index.
    stack = [(b'.', root_b, None, 0)]
    while stack:
        rel_dir, abs_dir, names, index = stack.pop()
        if names is None:
            try:
                names = sorted(os.listdir(abs_dir))
            except OSError:
                continue
        while index < len(names):
            name = names[index]
            index += 1
            rel = (b'./' if rel_dir == b'.' else rel_dir + b'/') + name
            if excluded is not None and excluded(rel):
                continue
            path = abs_dir + b'/' + name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            yield path, st
            if stat.S_ISDIR(st.st_mode) and (root_dev is None or st.st_dev == root_dev):
                stack.append((rel_dir, abs_dir, names, index))
                stack.append((rel, path, None, 0))
                break


# Read-ahead: how far (bytes of file data) it may run ahead of tar, and over how many files it
# decides that the data is in the page cache already (none of them needed reading): it then stops,
# because tar reading from the cache is faster than the read-ahead's own walk.
READ_AHEAD_WINDOW = 64 * 1024 * 1024
_READ_AHEAD_SAMPLE_FILES = 256
# A big file is advised in pieces of this size, each within the window.
_READ_AHEAD_STEP = 8 * 1024 * 1024
# How long stop() waits for the thread.
READ_AHEAD_STOP_WAIT = 5
_READ_AHEAD_POLL = 0.005
_READ_AHEAD_FLAGS = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, 'O_CLOEXEC', 0)
                     | getattr(os, 'O_NOATIME', 0))


def _read_chars(pid):
    """Bytes process ``pid`` has read so far (``rchar`` of /proc/PID/io), None when unknown."""
    try:
        with open('/proc/%d/io' % pid, 'rb') as f:
            for line in f:
                if line.startswith(b'rchar:'):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class ReadAhead(object):
    """Asks the kernel to read the regular files below ``root`` into the page cache just before GNU
    tar (process ``pid``) archives them: ``posix_fadvise(WILLNEED)`` queues the reads and returns,
    nothing is copied.

    Why: tar reads one file after another and waits for each read, so on a cold cache the disk
    idles between its requests. With the next files' reads already queued, tar of a 1 GB tree on
    this project's VM read it in 1.7 s instead of 2.6-3.1 s, and a whole compress-and-extract
    pipeline took 3.5 s instead of 5.3 s.

    The files are visited in tar's order (tar_order) and the thread stays at most ``window`` bytes
    ahead of what tar has read (``rchar``), so on a tree larger than memory the pages read ahead
    are not evicted before tar gets to them; a big file is advised piece by piece. ``names``: tar
    archives only these relative paths (``--files-from``, in this order; ``exclude`` is not applied)
    instead of the tree. Best effort: a file that cannot be opened is passed over, any other error
    ends the read-ahead, never the archive; nothing is written or changed (O_NOATIME where permitted).
    """

    def __init__(self, root, pid, exclude=None, one_file_system=True, window=READ_AHEAD_WINDOW, names=None):
        if window <= 0:
            raise ValueError('the read-ahead window must be positive')
        self.root = root
        self.pid = pid
        self.exclude = exclude
        self.names = names
        self.one_file_system = one_file_system
        self.window = window
        self.advised_bytes = 0
        self._tar_done = 0  # what tar had read when last looked at
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='volumeops-read-ahead')
        self._thread.daemon = True

    def start(self):
        if hasattr(os, 'posix_fadvise') and _read_chars(self.pid) is not None:
            self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            # Within a few ms, unless a system call of it hangs (a dead network filesystem): then tar
            # hung on it too, and the thread (a daemon) must not keep the module from reporting that.
            self._thread.join(READ_AHEAD_STOP_WAIT)

    def _make_room(self, nbytes):
        """Block until advising ``nbytes`` more keeps within the window of what tar has read. tar's
        progress is read from /proc only when the window may be used up: reading it for every file
        cost more than the advice itself on small files."""
        while self.advised_bytes + nbytes - self._tar_done > self.window:
            done = _read_chars(self.pid)
            if done is None:  # tar has ended
                raise _ReadAheadDone()
            if done == self._tar_done and self._stop.wait(_READ_AHEAD_POLL):
                raise _ReadAheadDone()
            self._tar_done = done
        if self._stop.is_set():
            raise _ReadAheadDone()

    def _listed(self):
        root_b = os.fsencode(self.root)
        for name in self.names:
            path = root_b + b'/' + name
            try:
                yield path, os.lstat(path)
            except OSError:
                continue

    def _open(self, path):
        """A descriptor of the regular file at ``path``, or None (vanished, unreadable, replaced)."""
        try:
            try:
                fd = os.open(path, _READ_AHEAD_FLAGS)
            except PermissionError:  # O_NOATIME needs the file's owner (or CAP_FOWNER)
                fd = os.open(path, _READ_AHEAD_FLAGS & ~getattr(os, 'O_NOATIME', 0))
        except OSError:
            return None
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            regular = False
        if not regular:
            os.close(fd)
            return None
        return fd

    def _advise(self, fd, st):
        """Advise the file's data in steps of at most _READ_AHEAD_STEP, each within the window: a big
        file is not read ahead whole. Of a sparse file only the data regions (SEEK_DATA/SEEK_HOLE),
        which is all tar reads of it (``--sparse``) and all its rchar counts."""
        size = st.st_size
        regions = [(0, size)]
        if st.st_blocks * 512 < size:
            regions = _data_regions(fd, size)
        step = min(_READ_AHEAD_STEP, self.window)
        for offset, end in regions:
            while offset < end:
                n = min(end - offset, step)
                self._make_room(n)
                os.posix_fadvise(fd, offset, n, os.POSIX_FADV_WILLNEED)
                self.advised_bytes += n
                offset += n

    def _run(self):
        files = 0
        uncached = 0
        try:
            entries = (tar_order(self.root, self.exclude, self.one_file_system) if self.names is None
                       else self._listed())
            for path, st in entries:
                if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                    continue
                fd = self._open(path)
                if fd is None:
                    continue
                try:
                    if _first_page_cached(fd):
                        # Nothing to read, but tar reads it (its data, not its holes): keep in step.
                        data = min(st.st_size, st.st_blocks * 512)
                        self._make_room(data)
                        self.advised_bytes += data
                    else:
                        uncached += 1
                        self._advise(fd, st)
                finally:
                    os.close(fd)
                files += 1
                if files == _READ_AHEAD_SAMPLE_FILES:
                    if uncached == 0:
                        return  # all in the page cache: tar does not wait for the disk
                    files = uncached = 0
        except Exception:  # pylint: disable=broad-except
            return  # best effort (this includes _ReadAheadDone): tar reads the files anyway


def _data_regions(fd, size):
    """[(start, end)] of the data in a sparse file (SEEK_DATA/SEEK_HOLE); the whole file when unsupported."""
    regions = []
    offset = 0
    try:
        while offset < size:
            try:
                offset = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole after offset
                    break
                raise
            end = min(os.lseek(fd, offset, os.SEEK_HOLE), size)
            regions.append((offset, end))
            offset = end
    except (AttributeError, OSError):
        return [(0, size)]
    return regions


def _first_page_cached(fd):
    """Whether the file's first byte is in the page cache (a read that may not wait: RWF_NOWAIT).
    False when that cannot be told (no preadv2 or flag, a filesystem without support)."""
    try:
        return os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT) == 1
    except (AttributeError, OSError):
        return False


class _ReadAheadDone(Exception):
    """tar has ended, or the read-ahead was stopped."""


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


def entry_record(entry, code=None):
    """The fingerprinted properties of one entry, as bytes: one line of NUL-separated fields.

    path, type, size (regular files), mtime_ns, permission bits (octal), uid, gid, then the link
    target (symlinks) or major,minor (devices) or nothing, then one ``name=hexvalue`` field per
    extended attribute, sorted by name. ``code`` is the entry's type code when the caller has it.
    Hot path (once per entry of every walk): one formatting, and one listxattr for the many entries
    without extended attributes.
    """
    st = entry.st
    if code is None:
        code = type_code(st.st_mode)
    if code == 'l':
        extra = os.readlink(entry.abspath)
    elif code == 'c' or code == 'b':
        extra = b'%d,%d' % (os.major(st.st_rdev), os.minor(st.st_rdev))
    else:
        extra = b''
    record = b'%s\0%s\0%d\0%d\0%o\0%d\0%d\0%s' % (
        entry.relpath, code.encode(), st.st_size if code == 'f' else 0, st.st_mtime_ns, st.st_mode & 0o7777,
        st.st_uid, st.st_gid, extra)
    try:
        names = os.listxattr(entry.abspath, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _XATTR_NONE:
            return record
        names = True  # read_xattrs raises (or tolerates) it
    if names:
        record += b''.join(b'\0' + os.fsencode(name) + b'=' + value.hex().encode()
                           for name, value in read_xattrs(entry.abspath))
    return record


def change_record(entry):
    """What a change token covers of one entry: path, inode number, ctime_ns.

    The kernel sets ctime to the current time on every change of content, size,
    mode, owner, link count or extended attributes, and on utime(): no program
    can change a fingerprinted property and keep ctime (nor set ctime back).
    """
    st = entry.st
    return b'%s\0%d\0%d' % (entry.relpath, st.st_ino, st.st_ctime_ns)


def listing_record(entry):
    """(type, size, mtime_ns, mode, uid, gid, link target) of one entry: what a restore's diff compares."""
    st = entry.st
    code = type_code(st.st_mode)
    return (code, st.st_size if code == 'f' else 0, st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
            os.readlink(entry.abspath) if code == 'l' else b'')


def _listing_into(result, entries, skip_types):
    """Pass ``entries`` through, putting each one's listing_record into ``result`` (see listing())."""
    for entry in entries:
        record = listing_record(entry)
        if record[0] not in skip_types:
            result[b'.' if entry.relpath == b'.' else entry.relpath[2:]] = record
        yield entry


def listing(root, skip_types=()):
    """{relative path (bytes, without './'; b'.' for the root): listing_record} of the tree at ``root``."""
    result = {}
    for dummy in _listing_into(result, walk(root), skip_types):
        pass
    return result


def fingerprint_and_listing(root, skip_types=(), version=FINGERPRINT_VERSION):
    """(TreeSummary, listing) of the tree at ``root`` from ONE walk: equal to
    ``fingerprint(root, skip_types=skip_types, version=version)`` and ``listing(root, skip_types)``.
    A restore in diff mode needs both; walking twice would double its cost on a big volume."""
    result = {}
    return summarize(_listing_into(result, walk(root), skip_types), skip_types=skip_types, version=version), result


class TreeSummary(object):
    """Result of one fingerprint walk.

    ``change_token`` (when the walk made one) is a cheap proof of "nothing changed since": a
    later ``change_token()`` walk of the same tree on the same filesystem that gives the same
    digest, while the token is ``settled``, means the fingerprint is still this one.
    """

    __slots__ = ('fingerprint', 'entries', 'bytes', 'change_token')

    def __init__(self, fingerprint, entries, total_bytes, change_token=None):
        self.fingerprint = fingerprint
        self.entries = entries
        self.bytes = total_bytes
        self.change_token = change_token

    def as_dict(self):
        return dict(fingerprint=self.fingerprint, entries=self.entries, bytes=self.bytes)


class ChangeToken(object):
    """sha256 of every entry's (path, inode, ctime), the newest ctime seen, and when the walk began.

    ``method`` says how the entries were listed: ``walk`` (this module's walk, sorted) or ``find``
    (GNU find, directory order; see find_change_token). Only tokens of the same method compare.
    ``recent``: the relative paths (walk style, ``b'./a/b'``) of the entries whose ctime was within
    CTIME_SETTLED_NS of the start, when the listing named them (None: unknown, or more than RECENT_MAX).
    ``recorded``: {relative path: digest of its fingerprint record} of the recent entries as the walk
    that made the token saw them (ChangeHasher.recorded; None: not kept), and ``skip_types``: the entry
    types that walk left out of the fingerprint, so that a re-check records them alike. None of these is
    stored (as_dict): they serve a re-check in the same process (unchanged_but_recent).
    """

    __slots__ = ('digest', 'max_ctime_ns', 'started_ns', 'method', 'recent', 'recorded', 'skip_types')

    def __init__(self, digest, max_ctime_ns, started_ns, method='walk', recent=None, recorded=None, skip_types=()):
        self.digest = digest
        self.max_ctime_ns = max_ctime_ns
        self.started_ns = started_ns
        self.method = method
        self.recent = recent
        self.recorded = recorded
        self.skip_types = skip_types

    @property
    def settled(self):
        """True when no entry changed shortly before the walk (see CTIME_SETTLED_NS)."""
        return self.max_ctime_ns < self.started_ns - CTIME_SETTLED_NS

    def as_dict(self):
        return dict(digest=self.digest, max_ctime_ns=self.max_ctime_ns, started_ns=self.started_ns, method=self.method)

    @classmethod
    def from_dict(cls, data):
        """The token stored by as_dict(), or None when ``data`` is not one."""
        try:
            method = data.get('method', 'walk')  # tokens stored before there were two methods
            if method not in CHANGE_TOKEN_METHODS:
                return None
            return cls(str(data['digest']), int(data['max_ctime_ns']), int(data['started_ns']), method)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    def proves_unchanged(self, later):
        """True when ``later`` (a newer token of the same tree) shows that nothing fingerprinted changed."""
        return (later is not None and self.settled and later.method == self.method
                and later.digest == self.digest)

    def again(self, root, exclude=None):
        """A new token of the tree at ``root`` made the same way as this one (None when that failed)."""
        if self.method == 'find':
            return find_change_token(root)
        return change_token(root, exclude)

    def recheck(self, root, exclude=None):
        """How a new listing of ``root`` proves the tree still as the walk that made this token saw it:
        'change_token' (settled), 'change_token_and_records' (see unchanged_but_recent), or None when it
        cannot (then only a new fingerprint walk tells). Lists nothing when no proof is possible."""
        if not self.settled and self.recorded is None:
            return None
        later = self.again(root, exclude)
        if self.proves_unchanged(later):
            return 'change_token'
        if unchanged_but_recent(self, later, root):
            return 'change_token_and_records'
        return None


class _LineDigest(object):
    """'sha256:' digest of lines, each followed by a newline, after a ``head``.

    Lines are hashed in batches of 512: one hash update per batch instead of one per line, over
    the same bytes (a walk adds one line per entry, a million for a big volume).
    """

    def __init__(self, head):
        self._hash = hashlib.sha256(head)
        self._pending = []

    def add(self, line):
        self._pending.append(line)
        if len(self._pending) >= 512:
            self._flush()

    def _flush(self):
        if self._pending:
            self._pending.append(b'')
            self._hash.update(b'\n'.join(self._pending))
            self._pending = []

    def hexdigest(self):
        self._flush()
        return 'sha256:' + self._hash.hexdigest()


class FingerprintAccumulator(object):
    """The fingerprint, entry count and byte total of a walk, fed one record at a time.

    The one place they are summed: ``summarize`` and the transfer's one-walk scan both feed it,
    so every walk of the collection hashes the same way.
    """

    def __init__(self, version=FINGERPRINT_VERSION):
        self._digest = _LineDigest(b'volumeops-tree-v1\n')  # see FINGERPRINT_VERSION
        self.entries = 0
        self.bytes = 0
        self._links = version >= 2
        self._first_path = {}  # (st_dev, st_ino) -> relpath of the first walked entry of that inode

    def add(self, entry, code, record):
        """Account for one entry: its ``entry_record`` and type ``code``; returns the record as hashed.

        A hard link to a file walked before it is hashed with that file's path added (version 2), so
        that a link made or broken changes the fingerprint even when every member keeps its metadata;
        its bytes count once.
        """
        if code == 'f':
            st = entry.st
            first = None
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                first = self._first_path.get(key)
                if first is None:
                    self._first_path[key] = entry.relpath
            if first is None:
                self.bytes += st.st_size
            elif self._links:
                record += b'\0>' + first
        self._digest.add(record)
        self.entries += 1
        return record

    def summary(self, change_token=None):
        return TreeSummary(self._digest.hexdigest(), self.entries, self.bytes, change_token)


class ChangeHasher(object):
    """Accumulates a change token over the entries of a walk.

    Given the walk's ``root`` (a walk without exclusions), it starts GNU find beside the walk once the
    tree proves big (FIND_TOKEN_MIN_ENTRIES entries; a small tree's own token costs less than a
    process), with the walk's start as find's ``started_ns``: that token is then settled only when
    nothing changed shortly before or during either listing. ``token()`` gives find's token when it
    made one (a later ``again()`` lists it at a fraction of a walk's cost), else the walk's own.
    ``close()`` stops find when the walk fails. ``started_ns``: when the walk began, or an earlier time
    from which on the token must prove the tree unchanged (e.g. when a reader of the tree started
    before the walk; see ``settled``).
    """

    def __init__(self, root=None, keep_records=False, skip_types=(), started_ns=None):
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        self.recent_since_ns = self.started_ns - CTIME_SETTLED_NS  # a ctime from then on is recent
        self._digest = _LineDigest(b'volumeops-change-v1\n')
        self.max_ctime_ns = 0
        # keep_records: the walk passes every entry's record to recorded() too; None when not kept or
        # when more than RECENT_MAX entries were recent.
        self._recorded = {} if keep_records else None
        self._skip_types = tuple(skip_types)  # the types the walk passes to recorded() as None
        self._root = root  # None once find started (or when it must not)
        self._count = 0
        self._finder = None

    def add(self, entry):
        if entry.st.st_ctime_ns > self.max_ctime_ns:
            self.max_ctime_ns = entry.st.st_ctime_ns
        self._digest.add(change_record(entry))
        if self._root is not None:
            self._count += 1
            if self._count >= FIND_TOKEN_MIN_ENTRIES:
                self._finder = FindChangeToken(self._root, self.started_ns)
                self._root = None

    @property
    def saw_recent(self):
        """True once an entry added so far changed less than CTIME_SETTLED_NS before the start (not settled)."""
        return self.max_ctime_ns >= self.recent_since_ns

    def recorded(self, entry, record):
        """Keep the digest of ``record`` (None: an entry the fingerprint leaves out) of a recent entry."""
        if entry.st.st_ctime_ns >= self.recent_since_ns and self._recorded is not None:
            self._recorded[entry.relpath] = record_digest(record)
            if len(self._recorded) > RECENT_MAX:
                self._recorded = None

    def close(self):
        if self._finder is not None:
            self._finder.close()

    def token(self):
        found = self._finder.result() if self._finder is not None else None
        if found is None:
            # The walk's own listing: its recent entries are exactly the ones it recorded.
            recent = frozenset(self._recorded) if self._recorded is not None else None
            found = ChangeToken(self._digest.hexdigest(), self.max_ctime_ns, self.started_ns, recent=recent)
        found.recorded = self._recorded
        found.skip_types = self._skip_types
        return found


def change_token(root, exclude=None):
    """The ChangeToken of the tree at ``root``: lstat only, no extended attributes, no link targets.

    Same walk (and so the same entries) as ``fingerprint(root, exclude)``, at about half its cost.
    """
    hasher = ChangeHasher()
    for entry in walk(root, exclude):
        hasher.add(entry)
    return hasher.token()


CHANGE_TOKEN_METHODS = ('walk', 'find')

# GNU find lists a tree in C, faster than the walk above, and (into a file, so that it never waits
# for a reader) on the other CPU while this process walks the tree for the fingerprint.
# One record per entry: ctime (seconds.fraction), inode, path below the root ('' for the root).
FIND_TOKEN_FORMAT = '%C@ %i %P\\0'
_FIND_READ = 1 << 20
# A record whose ctime is not 10 digits, a dot and digits (e.g. before 2001 or not GNU find's output).
# Searched from each record's end (a literal NUL first: fast), the first record apart.
_ODD_CTIME = re.compile(br'\0(?!\d{10}\.\d+ |\Z)')
_CTIME_FIRST = re.compile(br'\d{10}\.\d+ ')


def _newest_ctime_ns(records):
    """The newest ctime (ns) of find records (see FIND_TOKEN_FORMAT); ValueError/IndexError if malformed."""
    newest = 0
    for record in records:
        seconds, dummy, rest = record.partition(b'.')
        fraction = rest.split(b' ', 1)[0]
        if not fraction.isdigit():
            raise ValueError(record)
        ns = int(seconds) * 1000000000 + int((fraction + b'000000000')[:9])
        if ns > newest:
            newest = ns
    return newest


def _recent_paths(records, since_ns):
    """Walk-style relative paths of the find records (FIND_TOKEN_FORMAT) whose ctime is ``since_ns`` or later."""
    for record in records:
        if _newest_ctime_ns([record]) >= since_ns:
            path = record.split(b' ', 2)[2]
            yield b'./' + path if path else b'.'


# The digest ChangeHasher.recorded keeps for an entry that the fingerprint leaves out (a socket).
SKIPPED_RECORD = b'skipped'


def record_digest(record):
    """16-byte digest of one fingerprint record (entry_record); SKIPPED_RECORD for None."""
    return SKIPPED_RECORD if record is None else hashlib.sha256(record).digest()[:16]


def current_record_digest(root, relpath, skip_types=()):
    """record_digest of the entry ``relpath`` (walk style) below ``root`` as it is now; None when gone."""
    path = os.fsencode(root) + relpath[1:]
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    code = TYPE_BY_FMT.get(stat.S_IFMT(st.st_mode), '?')
    return record_digest(None if code in skip_types else entry_record(Entry(relpath, path, st), code))


def unchanged_but_recent(before, later, root):
    """True when ``later`` lists the tree exactly as ``before`` did and every recently changed entry still
    has the record it had: the re-check for a token that is not settled.

    ``before.recent`` names the entries whose ctime was too close to the listing to prove anything (two
    changes within one clock tick keep the ctime). For every other entry an unchanged ctime does prove it
    unchanged. ``before.recorded`` holds the fingerprint records of the recent entries as the first walk
    saw them; they are read again now, leaving out the entry types that walk left out (``before.skip_types``).
    Comparing those records is what a whole fingerprint walk would do
    for them. No proof (False) when the listing named a recent entry that the walk did not record (one of
    them saw the entry after a change the other did not see), or when either set was too big to keep.
    """
    if later is None or later.method != before.method or later.digest != before.digest:
        return False
    recorded = before.recorded
    if before.recent is None or recorded is None or not before.recent <= recorded.keys():
        return False
    return all(current_record_digest(root, relpath, before.skip_types) == digest
               for relpath, digest in recorded.items())


class FindChangeToken(object):
    """A change token made by GNU find in a child process: start it, do other work, then ``result()``.

    Same coverage as change_token() without exclusions: every entry below the root, lstat only
    (find -H), never leaving the tree through symlinks. The entries come in directory order, which
    is the same while a directory is unchanged, and a changed directory changes the digest anyway.
    ``started_ns`` is taken before find starts; a caller that walks the tree at the same time gives
    the start of its own walk (``started_ns``), so that the token cannot be settled when anything
    changed shortly before or during either.
    """

    def __init__(self, root, started_ns=None):
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        self._proc = None
        self._out = None
        # -H: follow no symlink but the root itself, as walk() does (it opens the root to list it);
        # an absolute root cannot be taken for an option. -xdev: list no filesystem mounted below the
        # root, as walk() and tar (--one-file-system) see none.
        argv = ['find', '-H', os.path.abspath(os.fsdecode(root)), '-xdev', '-printf', FIND_TOKEN_FORMAT]
        try:
            # An unnamed file, not a pipe: find must not stop when a pipe is full while this process walks.
            self._out = tempfile.TemporaryFile()
            # Not _process.spawn: this module's source also runs on its own in helper containers (see the
            # module docstring). find's output goes to a file, which run_command cannot do.
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._out,  # pylint: disable=ansible-bad-function
                                          stderr=subprocess.DEVNULL)
        except OSError:
            pass  # no find on this host, or no room for its list: the caller walks instead

    def close(self):
        """Stop find (the caller failed before it wanted the result)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._out is not None:
            self._out.close()

    def result(self):
        """The ChangeToken, or None when find is missing, is not GNU find, or reported an error."""
        if self._proc is None:
            self.close()
            return None
        try:
            if self._proc.wait() != 0:
                return None
            out = self._out
            out.seek(0)
            digest = hashlib.sha256(b'volumeops-change-find-v1\n')  # find's output as it is
            newest = 0
            recent_since_ns = self.started_ns - CTIME_SETTLED_NS
            recent = set()  # None once more than RECENT_MAX
            rest = b''
            while True:
                chunk = out.read(_FIND_READ)
                if not chunk:
                    break
                digest.update(chunk)
                data = rest + chunk
                cut = data.rfind(b'\0') + 1
                rest = data[cut:]
                data = data[:cut]
                if data and (not _CTIME_FIRST.match(data) or _ODD_CTIME.search(data)):
                    # Seconds of another width (or not find's records): compare numbers, not bytes.
                    top = _newest_ctime_ns(data.split(b'\0')[:-1])
                else:
                    # Same-width ctimes first in each record: the greatest record has the newest one.
                    top = _newest_ctime_ns([max(data.split(b'\0')[:-1] or [b'0.0 '])])
                newest = max(newest, top)
                if top >= recent_since_ns and recent is not None:
                    # Rare (something changed just before or during the listing): name those entries.
                    recent.update(_recent_paths(data.split(b'\0')[:-1], recent_since_ns))
                    if len(recent) > RECENT_MAX:
                        recent = None
            if rest or newest == 0:
                return None
        except (IndexError, ValueError, OSError):
            return None  # not the expected output (not GNU find), or its list unreadable: no token
        finally:
            self._out.close()
        return ChangeToken('sha256:' + digest.hexdigest(), newest, self.started_ns, method='find',
                           recent=frozenset(recent) if recent is not None else None)


def find_change_token(root):
    """ChangeToken of the tree at ``root`` made by GNU find, or None (see FindChangeToken)."""
    return FindChangeToken(root).result()


# Below this many entries a walk's own token costs less than starting find (a fork and an exec).
FIND_TOKEN_MIN_ENTRIES = 2048


def fingerprint(root, exclude=None, include_root_mtime=True, skip_types=(), with_change_token=False, started_ns=None,
                version=FINGERPRINT_VERSION):
    """Walk ``root`` once and return a TreeSummary.

    ``entries`` counts every entry including the root; ``bytes`` sums the
    apparent size of regular files (hard links counted once).
    ``include_root_mtime=False`` leaves the root's mtime out, for comparisons
    where the root directory itself is recreated (its other properties stay).
    ``skip_types`` is a collection of type codes (e.g. ``('s',)``) left out of
    the fingerprint and counts: archives cannot hold sockets, so the backup's
    manifest must not count them either.
    ``with_change_token`` also makes the summary's ``change_token`` in the same walk (listed by GNU
    find beside it for a big tree without exclusions; see ChangeHasher), whose ``started_ns`` is
    ``started_ns`` when given (see ChangeHasher). ``version``: the FINGERPRINT_VERSION to compute, for a
    comparison with a fingerprint stored by an earlier version.
    """
    return summarize(walk(root, exclude), include_root_mtime, skip_types, with_change_token,
                     token_root=None if exclude else root, started_ns=started_ns, version=version)


def summarize(entries_iter, include_root_mtime=True, skip_types=(), with_change_token=False, token_root=None,
              started_ns=None, version=FINGERPRINT_VERSION):
    """TreeSummary of the given walk entries (see fingerprint()); a filtered walk hashes exactly
    like a full one (FingerprintAccumulator). ``token_root``: the root of an unfiltered walk, whose
    change token GNU find may make (ChangeHasher)."""
    changes = (ChangeHasher(token_root, keep_records=True, skip_types=skip_types, started_ns=started_ns)
               if with_change_token else None)
    fingerprint_sum = FingerprintAccumulator(version)
    try:
        for entry in entries_iter:
            if changes is not None:
                changes.add(entry)  # every walked entry, as change_token() sees them
            code = TYPE_BY_FMT.get(stat.S_IFMT(entry.st.st_mode), '?')
            if code in skip_types:
                if changes is not None:
                    changes.recorded(entry, None)
                continue
            record = entry_record(entry, code)
            if changes is not None:
                changes.recorded(entry, record)
            if entry.relpath == b'.' and not include_root_mtime:
                parts = record.split(b'\0')
                parts[3] = b'-'
                record = b'\0'.join(parts)
            fingerprint_sum.add(entry, code, record)
    except BaseException:
        if changes is not None:
            changes.close()
        raise
    return fingerprint_sum.summary(changes.token() if changes is not None else None)
