# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Host-to-host volume transfer: the sender (source host) and the receiver (destination host).

One module holds both sides so that the code exists once:

- The SENDER runs inside the ``volume_transfer`` module on the source host. It
  opens an SSH connection to the destination with paramiko (host key pinned,
  never auto-accepted), starts ``<dest_python> -c <bootstrap> <N>`` there and
  writes N bytes of receiver source to its stdin: this file plus ``_tree.py`` and
  ``_archive.py``, read from the module's own payload (the collection is not
  installed on the destination). Then both sides talk in frames over the same
  channel (see ``FrameIO``).
- The RECEIVER (``receiver_main``) runs on the destination under ``dest_python``,
  standard library only (docker SDK optional). It writes only below the
  destination volume's directory: the staging tree
  ``<volume dir>/.volumeops-incoming-<migration_id>`` and the marker
  ``<volume dir>/.volumeops-migration.json``.

The data is GNU tar's pax stream with the same full-fidelity flags as backups
(``_archive.tar_create_argv``), compressed with zstd on the source, framed,
and on the destination decompressed, validated header by header as untrusted
(``_archive.TarStreamValidator``) and extracted by GNU tar into the staging
tree. Nothing is staged as a full archive on disk and every buffer has a fixed
size. After the stream the destination checks entry count and tree fingerprint
(and with ``verify=content`` a digest of every file's content) against the
source's, and only then swaps the staging tree into ``_data`` (atomic
``renameat2(RENAME_EXCHANGE)``) and marks the marker ``complete``.

Protocol (each frame: 1 byte kind, 4 bytes big-endian length, payload):
  S->D  H hello(json, sent as soon as the receiver is started)
  D->S  S state(json), then at once E records batch (delta) ..., e end(json: fingerprint summary of
        the delta's base or of the complete volume, running containers using the volume)
  S->D  P prepare(json: source summary) or Q quit (nothing to do, check mode, refusal)
  D->S  R ready(json)
  S->D  X deletions batch, D data chunk ..., Z end of data(json), V source verification(json)
  D->S  K keepalive (while verifying, or waiting for the volume's lock), F final result(json), ! error(json)
  S->D  k keepalive, every KEEPALIVE_SECONDS from the hello on: a receiver that hears nothing for
        RECEIVER_IDLE_SECONDS while waiting for a frame ends (ConnectionLost), which frees the volume's lock.
        Without it a receiver whose source vanished silently (a link down: no FIN, no RST) would wait on
        its stdin, holding the lock, until sshd noticed, which can take hours.

Each tree is walked once to compare and once to verify: the sender walks the source (records and
fingerprint in the same walk, ``TreeScan``) while the SSH connection opens and the receiver walks
the destination, so both walks overlap; after the data, the source re-check and the destination's
verification walk run in parallel too.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from urllib.parse import quote

from ansible_collections.volumeops.docker.plugins.module_utils import _process
from ansible_collections.volumeops.docker.plugins.module_utils import _tree
from ansible_collections.volumeops.docker.plugins.module_utils import _engine_http
from ansible_collections.volumeops.docker.plugins.module_utils import _archive

PROTOCOL_VERSION = 2
CHUNK = 1024 * 1024          # bytes read from the compressor per data frame
MAX_FRAME = 16 * 1024 * 1024
KEEPALIVE_SECONDS = 5
RECEIVER_IDLE_SECONDS = 30
# A receiver that finds the volume locked waits this long by default (volume_transfer's lock_wait; it
# sends K frames meanwhile) before it refuses: the holder may be the receiver of a pass whose connection
# just died, which ends within RECEIVER_IDLE_SECONDS.
LOCK_WAIT_SECONDS = RECEIVER_IDLE_SECONDS + 15
RECORD_BATCH = 128 * 1024    # bytes of path records per frame (small enough to overlap walk, transfer and merge)
PREFETCH_ENTRIES = 65536     # source records walked ahead while waiting for the destination (~30 MB at most)
EARLY_HOLD = _archive.HEAD_WAIT_MAX  # compressed bytes a full pass reads ahead before the destination may get them
MARKER_NAME = '.volumeops-migration.json'
INCOMING_PREFIX = '.volumeops-incoming-'
STAGED_RECORDS_NAME = '.volumeops-staged-records'  # beside the marker: StagedRecordsWriter
STAGED_RECORDS_VERSION = 1
HOLDER_LABEL = 'io.volumeops.holder'  # value: the pid of the receiver or sender that holds the volume
HOLDER_MOUNT = '/volumeops/vol'
HOLDER_COMMAND = ('/usr/bin/python3', '-c', 'import time\nwhile True: time.sleep(3600)')
# A mounted volume's root holds the receiver's staging tree and restore-style swap directories
# beside the data: the walks of its data leave them out.
OWN_NAMES = (INCOMING_PREFIX, _archive.STAGING_MARKER, _archive.OLD_MARKER, _archive.READY_MARKER)
SKIP_TYPES = _archive.SKIP_TYPES
# SSH tuning: large windows so the sender is not throttled by window updates;
# AES-GCM first (hardware AES through OpenSSL, no separate MAC pass).
WINDOW_SIZE = 64 * 1024 * 1024
MAX_PACKET = 256 * 1024
PREFERRED_CIPHERS = ('aes128-gcm@openssh.com', 'aes256-gcm@openssh.com', 'aes128-ctr', 'aes256-ctr')
BOOTSTRAP = 'import sys;exec(compile(sys.stdin.buffer.read(int(sys.argv[1])),"volumeops-receiver","exec"))'
MODULE_UTILS = 'ansible_collections.volumeops.docker.plugins.module_utils'
BUNDLED = ('_tree', '_process', '_engine_http', '_archive', '_transfer')  # in import order


class TransferError(Exception):
    """A user-facing failure; ``str(exc)`` is the whole message."""


class ConnectionLost(TransferError):
    pass


class StaleStagedRecords(TransferError):
    """The destination planned a delta on records its previous pass kept, and they no longer described the
    staged tree: its verification found a difference (run_transfer repeats the pass on a walk)."""


# --- framing -------------------------------------------------------------------------------------

_HDR = struct.Struct('>cI')


class FrameIO(object):
    """Length-prefixed frames over any byte pipe (paramiko channel, stdin/stdout).

    ``read(n)`` returns up to n bytes (b'' at EOF); ``write(data)`` writes all of it.
    Writes are serialized by a lock (the receiver's keepalive thread writes too).
    """

    def __init__(self, read, write, flush=None):
        self._read = read
        self._write = write
        self._flush = flush
        self._lock = threading.Lock()
        self.sent = 0
        self.received = 0
        self.waiting_since = None  # time.monotonic() while blocked reading (ReceiverIdleWatch)

    def send(self, kind, payload=b''):
        if len(payload) > MAX_FRAME:
            raise TransferError('internal error: frame too large')
        with self._lock:
            self._write(_HDR.pack(kind, len(payload)))
            if payload:
                self._write(payload)
            if self._flush is not None:
                self._flush()
            self.sent += _HDR.size + len(payload)

    def send_json(self, kind, obj):
        self.send(kind, json.dumps(obj, sort_keys=True).encode('utf-8'))

    def _read_exact(self, n):
        parts = []
        while n:
            self.waiting_since = time.monotonic()
            try:
                data = self._read(min(n, CHUNK))
            finally:
                self.waiting_since = None
            if not data:
                raise ConnectionLost('the connection closed in the middle of the transfer')
            parts.append(data)
            n -= len(data)
        return b''.join(parts)

    def recv(self):
        """The next frame (kind, payload); the sender's keepalives (k) are skipped here, wherever they come."""
        while True:
            head = self._read_exact(_HDR.size)
            kind, length = _HDR.unpack(head)
            if length > MAX_FRAME:
                raise TransferError('protocol error: oversized frame (%d bytes)' % length)
            payload = self._read_exact(length) if length else b''
            self.received += _HDR.size + length
            if kind != b'k':
                return kind, payload

    def recv_expect(self, *kinds):
        while True:
            kind, payload = self.recv()
            if kind == b'K':
                continue
            if kind == b'!':
                raise TransferError(_json(payload).get('msg') or 'the other side failed')
            if kind not in kinds:
                raise TransferError('protocol error: unexpected frame %r (expected %r)' % (kind, kinds))
            return kind, payload


class ReceiverIdleWatch(object):
    """Ends the receiver (ConnectionLost in its main thread) when a read waits longer than ``limit`` seconds.

    The sender sends a k frame every KEEPALIVE_SECONDS, so a read that waits much longer means the
    source is gone. A thread watches ``io_.waiting_since``; it interrupts the main thread's blocked read
    with SIGALRM (signal.pthread_kill, so that the signal reaches that thread), whose handler raises only
    while the main thread is still waiting: a read that returned meanwhile is left alone.
    """

    def __init__(self, io_, limit=RECEIVER_IDLE_SECONDS):
        import signal
        self.io = io_
        self.limit = limit
        self._signal = signal
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
        self._thread = threading.Thread(target=self._watch)
        self._thread.daemon = True
        self._thread.start()

    def _idle(self):
        since = self.io.waiting_since
        return since is not None and time.monotonic() - since > self.limit

    def _on_alarm(self, signum, frame):
        if self._idle():
            raise ConnectionLost('no frame from the source for %d s (the connection is gone)' % self.limit)

    def _watch(self):
        while not self._stop.wait(1):
            if self._idle():
                self._signal.pthread_kill(self._main, self._signal.SIGALRM)

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._signal.signal(self._signal.SIGALRM, self._previous)


def keepalive(io_, kind, seconds):
    """Send ``kind`` frames on ``io_`` every ``seconds`` from a thread; returns ``stop(wait=True)``.

    A failed send ends the thread quietly: the connection is gone or closed, which the caller's own
    reads and writes report."""
    stopped = threading.Event()

    def beat():
        while not stopped.wait(seconds):
            try:
                io_.send(kind)
            except Exception:
                return
    thread = threading.Thread(target=beat)
    thread.daemon = True
    thread.start()

    def stop(wait=True):
        stopped.set()
        if wait:
            thread.join()
    return stop


def _json(payload):
    try:
        return json.loads(payload.decode('utf-8'))
    except (ValueError, UnicodeDecodeError):
        raise TransferError('protocol error: invalid JSON frame')


def encode_paths(paths):
    """NUL-terminated paths (bytes) as one payload."""
    return b''.join(p + b'\0' for p in paths)


def decode_paths(payload):
    return payload.split(b'\0')[:-1]


def encode_records(records):
    """[(relpath, digest16, type code)] -> payload: digest(16) + type(1) + relpath + NUL, repeated."""
    return b''.join(d + t.encode('ascii') + p + b'\0' for p, d, t in records)


def decode_records(payload):
    out = []
    append = out.append
    find = payload.index
    codes = _RECORD_CODES
    pos = 0
    n = len(payload)
    try:
        while pos < n:
            end = find(b'\0', pos + 17)
            append((payload[pos + 17:end], payload[pos:pos + 16], codes[payload[pos + 16]]))
            pos = end + 1
    except (KeyError, ValueError):
        raise TransferError('protocol error: a malformed record from the destination')
    return out


_RECORD_CODES = dict((ord(c), c) for c in 'fdlpcbs?')


# --- pure logic: walk order, records, delta ------------------------------------------------------

def walk_key(relpath):
    """Sort key equal to the order in which ``_tree.walk`` yields entries.

    walk yields the root, then pops directories in depth-first preorder (names
    sorted as bytes) and yields each popped directory's children sorted. So an
    entry's position is (components of its parent, its name), compared
    lexicographically; the root (b'.') comes first.
    """
    if relpath == b'.':
        return ((), b'')
    if relpath.startswith(b'./'):
        relpath = relpath[2:]
    parts = relpath.split(b'/')
    return (tuple(parts[:-1]), parts[-1])


class TreeScan(object):
    """ONE walk of a tree (``_tree.walk``) giving both its per-entry records and its fingerprint.

    Iterating yields ``(relpath, digest16, type code, entry)`` in walk order (sockets skipped, as
    archives cannot hold them); once exhausted, ``summary`` equals ``_archive.tree_summary(root,
    exclude)`` (same records, same hash, same counts) and, with ``content=True``, ``content``
    equals ``content_digest(root, exclude)``. A delta pass used to walk each tree two or three times
    (records, then fingerprint, then content digest); this walks it once per use.
    """

    def __init__(self, root, exclude=None, content=False, with_change_token=False, spill=None, reuse=None,
                 started_ns=None):
        self.root = root
        self.started_ns = started_ns  # the change token's start, when reading began before this walk
        self.exclude = exclude
        self.content = None
        self.summary = None
        self._want_content = content
        self._want_token = with_change_token
        self.changes = None  # the change token's ChangeHasher while walking (with_change_token)
        self._spill = spill  # a RecordSpill keeping this walk's records (a later walk's ``reuse``, the next pass's)
        self._reuse = reuse  # a RecordSpill of an earlier walk: its records of unchanged entries are taken as they are

    def __iter__(self):
        fingerprint_sum = _tree.FingerprintAccumulator()
        # Without exclusions, GNU find makes the token of a big tree on the other CPU meanwhile: the
        # re-check after the stream (_source_after) is then a find too, faster than a walk.
        changes = (_tree.ChangeHasher(None if self.exclude else self.root, keep_records=True, skip_types=SKIP_TYPES,
                                      started_ns=self.started_ns)
                   if self._want_token else None)
        self.changes = changes
        content = hashlib.sha256(b'volumeops-content-v1\n') if self._want_content else None
        content_cache = {}
        buf = bytearray(CHUNK) if content is not None else None
        type_by_fmt = _tree.TYPE_BY_FMT
        sha256 = hashlib.sha256
        reuse = self._reuse
        if reuse is not None:
            reuse.rewind()
        try:
            for entry in _tree.walk(self.root, self.exclude):
                if changes is not None:
                    changes.add(entry)  # every walked entry, as _tree.change_token() sees them
                code = type_by_fmt.get(stat.S_IFMT(entry.st.st_mode), '?')
                if code in SKIP_TYPES:
                    if changes is not None:
                        changes.recorded(entry, None)  # in the listing, not in the fingerprint
                    continue
                if code == 'f' and content is not None:
                    content.update(entry.relpath + b'\0' + _file_hash(entry, content_cache, buf) + b'\n')
                record = reuse.record_for(entry) if reuse is not None else None
                if record is None:
                    record = _tree.entry_record(entry, code)
                if changes is not None:
                    changes.recorded(entry, record)
                # The delta compares the record as fingerprinted: with a hard link's first path, so that a
                # link made or broken is sent again even when no member's own metadata changed.
                hashed = fingerprint_sum.add(entry, code, record)
                digest = sha256(hashed).digest()[:16]  # _tree.record_digest, inlined
                if self._spill is not None:
                    self._spill.add(entry, code, record, digest)
                yield entry.relpath, digest, code, entry
        except BaseException:
            if changes is not None:
                changes.close()
            raise
        self.summary = fingerprint_sum.summary(changes.token() if changes is not None else None)
        if self._spill is not None:
            self._spill.finish()
        if content is not None:
            self.content = 'sha256:' + content.hexdigest()

    def run(self):
        """Walk to the end; returns the summary."""
        for dummy in self:
            pass
        return self.summary


class RecordSpill(object):
    """The records of one walk, kept in walk order in an unnamed temporary file.

    A later TreeScan of the same tree given it as ``reuse`` computes records again only for entries
    that changed in between. The destination of a delta uses this: its verification walk after the
    delta re-reads the extended attributes and link targets only of what the delta touched.

    A kept record is reused only while the entry's inode number and ctime are unchanged, and only when
    that ctime was already CTIME_SETTLED_NS older than the start of the first walk. The reasoning is
    _tree.ChangeToken's: the kernel moves ctime on every change of a fingerprinted property, and ctime
    cannot be set back. Entries changed shortly before the walk are written but marked unsettled, and
    never reused (``kept`` counts the settled ones). If the file cannot be written (a full /tmp), the
    spill is dropped and the full walk decides.

    Per entry: a HEAD, the path, and the record without its first field (the path again). The same
    format serves StagedRecordsWriter, which keeps a verification walk's records for the next pass.
    """

    HEAD = struct.Struct('>IIQqB16s1s')  # path length, rest's length, inode, ctime_ns, settled, digest, type code

    def __init__(self, kept_file=None, body_end=None):
        self.started_ns = time.time_ns()
        self.kept = 0
        self.reused = 0
        self.body_end = body_end  # bytes of entries in the file, known once the walk finished
        self._size = 0
        self._pending = []
        self._kept_iter = None
        self._cur = None
        self._file = kept_file if kept_file is not None else self._open()

    def _open(self):
        try:
            return tempfile.TemporaryFile(prefix='volumeops-records-')
        except OSError:
            return None

    @property
    def usable(self):
        return self._file is not None and self.body_end is not None

    def add(self, entry, code, record, digest):
        """Keep one entry as the walk yields it (TreeScan's ``spill``)."""
        if self._file is None:
            return
        relpath = entry.relpath
        head = len(relpath) + 1
        if record[:head] != relpath + b'\0':  # entry_record starts with the path and a NUL
            self.discard()
            return
        st = entry.st
        settled = st.st_ctime_ns < self.started_ns - _tree.CTIME_SETTLED_NS
        self.kept += settled
        self._pending.append(self.HEAD.pack(len(relpath), len(record) - head, st.st_ino, st.st_ctime_ns, settled,
                                            digest, code.encode('ascii')) + relpath + record[head:])
        if len(self._pending) >= 1024:
            self._flush()

    def _flush(self):
        data = b''.join(self._pending)
        self._pending = []
        try:
            self._file.write(data)
        except OSError:
            self.discard()
            return
        self._size += len(data)
        self._written(data)

    def _written(self, data):
        """What was just written (StagedRecordsWriter checksums it)."""

    def finish(self):
        """The walk ended: the spill can be read (usable)."""
        if self._file is not None:
            self._flush()
        if self._file is not None:
            try:
                self._file.flush()
                self.body_end = self._size
            except OSError:
                self.discard()

    def _entries(self):
        """(relpath, inode, ctime_ns, settled, digest, type code, record without its path) of every entry."""
        f = self._file
        f.seek(0)
        read = f.read
        size = self.HEAD.size
        unpack = self.HEAD.unpack
        left = self.body_end
        while left >= size:
            path_len, rest_len, ino, ctime_ns, settled, digest, code = unpack(read(size))
            body = read(path_len + rest_len)
            left -= size + path_len + rest_len
            yield body[:path_len], ino, ctime_ns, settled, digest, code, body[path_len:]

    def __iter__(self):
        """(relpath, inode, ctime_ns, record) of the settled entries, in walk order, from the first one."""
        for relpath, ino, ctime_ns, settled, dummy, dummy, rest in self._entries():
            if settled:
                yield relpath, ino, ctime_ns, relpath + b'\0' + rest

    def rewind(self):
        """Start a walk that reuses the kept records (``record_for``), from the first one."""
        self.reused = 0
        self._kept_iter = iter(self)
        self._cur = next(self._kept_iter, None)

    def record_for(self, entry):
        """The kept record of ``entry`` when its inode and ctime did not change, else None.

        Entries come in walk order, as they were kept: one merge pass over both. Kept records of
        entries removed since are skipped.
        """
        cur = self._cur
        relpath = entry.relpath
        if cur is not None and cur[0] != relpath:
            key = walk_key(relpath)
            while cur is not None and walk_key(cur[0]) < key:
                cur = next(self._kept_iter, None)
        record = None
        if cur is not None and cur[0] == relpath:
            if cur[1] == entry.st.st_ino and cur[2] == entry.st.st_ctime_ns:
                record = cur[3]
                self.reused += 1
            cur = next(self._kept_iter, None)
        self._cur = cur
        return record

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self):
        """Drop what was kept (a write failed, or nothing is to be kept)."""
        self.close()


class StagedRecordsWriter(RecordSpill):
    """Keeps the records of a verification walk of a staged tree for the next pass (``StagedRecords``).

    A two-phase migration's final delta runs during the application's downtime. Its destination
    side used to walk the whole staged tree before the delta could be planned (a sixth of a 1 GB
    final delta's time), although the warm pass before it had just walked that same tree to verify
    it. The receiver of a pass that leaves the tree staged (``finalize: false``) therefore keeps
    that walk's records beside the volume's marker, and the next pass plans on them instead of
    walking again. They describe the tree only while nothing else writes into it; the next
    pass's verification walks the whole tree again (what the delta is checked by), and when it
    finds a difference the pass is repeated on a fresh walk (``run_transfer``).

    Written as it walks (RecordSpill's format), into ``<path>.tmp`` (0600, beside the marker, on the
    volume directory's filesystem), then renamed; after the entries a JSON trailer, its length and
    the sha256 of all that, so a file cut short by a crash is recognised and ignored. About 150
    bytes per entry. A write error drops it (the next pass walks).
    """

    TAIL = struct.Struct('>Q')  # trailer length

    def __init__(self, path):
        self.path = path
        self.tmp = path + '.tmp'
        self.root = None  # [inode, ctime_ns, mtime_ns] of the tree's root as walked
        self._hash = hashlib.sha256()
        RecordSpill.__init__(self)

    def _open(self):
        try:
            _archive.remove_tree(self.tmp)  # a killed writer's (the volume's lock is held: no other is writing)
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            return os.fdopen(fd, 'wb')
        except OSError:
            return None

    def add(self, entry, code, record, digest):
        if entry.relpath == b'.':
            st = entry.st
            self.root = [st.st_ino, st.st_ctime_ns, st.st_mtime_ns]
        RecordSpill.add(self, entry, code, record, digest)

    def _written(self, data):
        self._hash.update(data)

    def commit(self, **trailer):
        """Put the records under their name (True), or drop them (False: the next pass walks)."""
        self.finish()
        if not self.usable or self.root is None:
            self.discard()
            return False
        tail = json.dumps(dict(trailer, version=STAGED_RECORDS_VERSION, root=self.root,
                               fingerprint_version=_tree.FINGERPRINT_VERSION), sort_keys=True).encode('utf-8')
        tail += self.TAIL.pack(len(tail))
        self._hash.update(tail)
        try:
            self._file.write(tail + self._hash.digest())
            self.close()
            os.rename(self.tmp, self.path)
        except OSError:
            self.discard()
            return False
        return True

    def discard(self):
        try:
            self.close()
        except OSError:
            pass
        try:
            _archive.remove_tree(self.tmp)
        except OSError:
            pass  # the next writer removes it first


class StagedRecords(RecordSpill):
    """The records a StagedRecordsWriter kept of a staged tree, when they still describe it.

    ``records()`` gives what the destination sends for a delta's plan (path, digest, type code), in
    walk order; as a RecordSpill (``reuse`` of the verification walk) it gives the records of the
    entries whose ctime had settled, as a base walk's spill would.
    """

    def __init__(self, f, body_end, trailer):
        RecordSpill.__init__(self, kept_file=f, body_end=body_end)
        self.summary = trailer['summary']

    @classmethod
    def load(cls, path, migration_id, fingerprint, root_st):
        """The records at ``path`` if they are whole and describe this tree, else None.

        Whole: the checksum over all of it matches. This tree: kept by this migration for the staged
        tree whose fingerprint the marker records (``fingerprint``), with the root as it is now
        (``root_st``, an lstat): entries added, removed or renamed at the top change its ctime.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        f = os.fdopen(fd, 'rb')
        try:
            st = os.fstat(fd)
            tail_size = StagedRecordsWriter.TAIL.size + 32
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077 \
                    or st.st_size < tail_size:
                raise ValueError('not a file this receiver wrote')
            h = hashlib.sha256()
            left = st.st_size - 32
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise ValueError('shorter than it was')
                h.update(chunk)
                left -= len(chunk)
            if f.read(32) != h.digest():
                raise ValueError('checksum')
            f.seek(st.st_size - tail_size)
            trailer_len = StagedRecordsWriter.TAIL.unpack(f.read(StagedRecordsWriter.TAIL.size))[0]
            body_end = st.st_size - tail_size - trailer_len
            if body_end < 0:
                raise ValueError('trailer length')
            f.seek(body_end)
            trailer = json.loads(f.read(trailer_len).decode('utf-8'))
            if (trailer.get('version') != STAGED_RECORDS_VERSION or trailer.get('migration_id') != migration_id
                    or trailer.get('fingerprint_version') != _tree.FINGERPRINT_VERSION or not fingerprint
                    or (trailer.get('summary') or {}).get('fingerprint') != fingerprint
                    or trailer.get('root') != [root_st.st_ino, root_st.st_ctime_ns, root_st.st_mtime_ns]):
                raise ValueError('another tree')
        except (OSError, ValueError, AttributeError, struct.error):
            f.close()
            return None
        return cls(f, body_end, trailer)

    def records(self):
        """(relpath, digest, type code) of every entry, in walk order."""
        for relpath, dummy, dummy, dummy, digest, code, dummy in self._entries():
            yield relpath, digest, code.decode('ascii')


def run_transfer(new_sender, warn):
    """``new_sender(fresh_base).run()``; once more with a walk of the destination after StaleStagedRecords.

    A delta onto a staged tree is planned on the records the previous pass kept of it. Something that
    wrote into the staged tree since (it is no volume a container mounts, but root can write anywhere)
    makes them wrong, which the pass's verification walk finds: the pass is then repeated with the
    destination walked first, which sends whatever differs. Nothing is declared verified on the way.
    """
    started = time.time()
    try:
        return new_sender(False).run()
    except StaleStagedRecords:
        pass
    result = new_sender(True).run()
    warn('The staged tree on the destination had changed since the previous pass, so the records that pass kept of '
         'it no longer described it; the pass was repeated on a fresh walk of the destination (verified: %s).'
         % bool(result.get('verified')))
    result['dest_records_rewalked'] = True
    result['duration'] = round(time.time() - started, 3)
    return result


def _file_hash(entry, cache, buf):
    """Hex sha256 of a regular file's content (hard-linked inodes hashed once)."""
    st = entry.st
    key = (st.st_dev, st.st_ino)
    hexd = cache.get(key)
    if hexd is not None:
        return hexd
    h = hashlib.sha256()
    view = memoryview(buf)
    fd = os.open(entry.abspath, os.O_RDONLY | getattr(os, 'O_NOFOLLOW', 0))
    try:
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            h.update(view[:n])
    finally:
        os.close(fd)
    hexd = h.hexdigest().encode()
    if st.st_nlink > 1:
        cache[key] = hexd
    return hexd


def iter_records(root, exclude=None):
    """(relpath, digest, type code, entry) for every entry of the tree, in walk order, sockets skipped."""
    return iter(TreeScan(root, exclude))


def parent_of(relpath):
    if relpath == b'.':
        return None
    head = relpath.rsplit(b'/', 1)[0]
    return head if head != relpath else b'.'


class DeltaPlan(object):
    """What a delta pass sends and deletes. Paths are relative (b'./x/y', b'.' for the root)."""

    def __init__(self):
        self.send = []        # entries to archive (--no-recursion), walk order
        self.delete = []      # paths the destination removes before extracting (top-most only)
        self.removed = []     # of those, the ones the source no longer has (not sent again), walk order
        self.replaced = 0     # entries the destination holds in another version that are sent again
        self.send_bytes = 0   # apparent size of the regular files to send
        self.unchanged = 0


def compute_delta(source_records, dest_records):
    """Merge-join two record streams in walk order into a DeltaPlan.

    ``source_records`` yields (relpath, digest, type_code, st or None);
    ``dest_records`` yields (relpath, digest, type_code).
    Memory is proportional to what changed (plus the source's directory paths), not to the tree
    size: both streams are in walk order (``walk_key``), so one pass suffices. Rules:
    - only on the source: send it;
    - on both sides with another digest: send it again (``replaced``); when it is not a directory
      on both sides, delete it on the destination first (GNU tar then creates it fresh; also
      covers type changes);
    - only on the destination: delete (``removed``);
    - the parent directory of anything sent or deleted is sent too, so its
      mtime (which the destination's changes disturb) is set again by tar;
    - every path of a hard-link group with a member to send is sent (and
      deleted first), so the links are recreated as links.
    """
    plan = DeltaPlan()
    send = {}
    delete = set()
    replaced = set()
    src_dirs = set()
    link_groups = {}  # (dev, ino) -> [relpath] for regular files with nlink > 1
    dst_iter = iter(dest_records)
    dst = next(dst_iter, None)
    # The destination's records must come in walk order. Where a record's path equals the source's
    # current one, the source's own order proves it (the common case: one comparison per entry); the
    # order is computed (walk_key) only where the streams are not aligned, an addition or a deletion.
    last_dst = None  # path of the destination record consumed last

    def ordered(key, prev_key):
        if prev_key is not None and key <= prev_key:
            raise TransferError('protocol error: destination records are not in walk order')
        return key

    def advance_dst(prev_key):
        """The next destination record and its key, checked to come after ``prev_key``."""
        item = next(dst_iter, None)
        if item is None:
            return None, None
        return item, ordered(walk_key(item[0]), prev_key)

    def resume_dst():
        """The current destination record's key, checked to come after the one consumed last."""
        return ordered(walk_key(dst[0]), walk_key(last_dst) if last_dst is not None else None)

    unchanged = 0
    for relpath, digest, code, st in source_records:
        if code == 'd':
            src_dirs.add(relpath)
        elif code == 'f' and st is not None and st.st_nlink > 1:
            link_groups.setdefault((st.st_dev, st.st_ino), []).append(relpath)
        if dst is not None and dst[0] != relpath:
            key = walk_key(relpath)
            dst_key = resume_dst()
            while dst is not None and dst_key < key:
                delete.add(dst[0])
                last_dst = dst[0]
                dst, dst_key = advance_dst(dst_key)
        if dst is not None and dst[0] == relpath:
            if dst[1] != digest:
                send[relpath] = (code, st)
                replaced.add(relpath)
                if code != 'd' or dst[2] != 'd':
                    delete.add(relpath)
            else:
                unchanged += 1
            last_dst = relpath
            dst = next(dst_iter, None)
        else:
            send[relpath] = (code, st)
    plan.unchanged = unchanged
    if dst is not None:
        dst_key = resume_dst()
        while dst is not None:
            delete.add(dst[0])
            dst, dst_key = advance_dst(dst_key)
    # Entries only on the destination: everything deleted that is not sent again.
    removed = [p for p in delete if p not in send]
    for members in link_groups.values():
        if any(p in send for p in members):
            for p in members:
                if p not in send:
                    send[p] = ('f', None)
                    replaced.add(p)
                delete.add(p)
    # Parents of whatever changes on the destination, when they exist on the source.
    for relpath in list(send) + list(delete):
        parent = parent_of(relpath)
        if parent is not None and parent not in send and parent in src_dirs:
            send[parent] = ('d', None)
    seen_inodes = set()
    for relpath, (code, st) in send.items():
        if code == 'f' and st is not None:
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen_inodes:
                    continue
                seen_inodes.add((st.st_dev, st.st_ino))
            plan.send_bytes += st.st_size
    # A deleted directory removes its subtree: only the top-most deletions are needed.
    plan.delete = _topmost(sorted(delete, key=walk_key))
    top = set(plan.delete)
    plan.removed = [p for p in sorted(removed, key=walk_key) if p in top]
    plan.replaced = len(replaced)
    plan.send = sorted(send, key=walk_key)
    return plan


def _topmost(paths):
    """Drop paths below another path of the list (``paths`` sorted in walk order)."""
    chosen = set()
    out = []
    for p in paths:
        parent = parent_of(p)
        covered = False
        while parent is not None and parent != b'.':
            if parent in chosen:
                covered = True
                break
            parent = parent_of(parent)
        if not covered:
            chosen.add(p)
            out.append(p)
    return out


def content_digest(root, exclude=None):
    """sha256 over (path, sha256 of content) of every regular file in walk order.

    Catches edits that keep size and mtime, which the metadata fingerprint cannot.
    """
    outer = hashlib.sha256(b'volumeops-content-v1\n')
    cache = {}
    buf = bytearray(CHUNK)
    for entry in _tree.walk(root, exclude):
        st = entry.st
        if not stat.S_ISREG(st.st_mode):
            continue
        hexd = _file_hash(entry, cache, buf)
        outer.update(entry.relpath + b'\0' + hexd + b'\n')
    return 'sha256:' + outer.hexdigest()


def check_migration_id(mid):
    if not isinstance(mid, str) or not mid or len(mid) > 64 or \
            any(not (c.isalnum() and c.isascii() or c in '_.-') for c in mid) or mid[0] in '.-':
        return ('Invalid migration_id %r: use 1-64 characters of letters, digits, "_", "." and "-", '
                'not starting with "." or "-".' % (mid,))
    return None


# --- shipping the receiver -----------------------------------------------------------------------

def existing_volume_overrides(vol, driver, options, labels):
    """What of the requested driver, driver options and labels an existing volume (``vol``, its inspect
    document) does not have: they are used only when the transfer creates the volume. An empty list when it
    has them all (or none were asked for: the default driver ``local`` counts as not asked for)."""
    found = []
    if driver and driver != 'local' and vol.get('Driver') != driver:
        found.append('its driver is %s, not %s' % (vol.get('Driver'), driver))
    if options and dict((str(k), str(v)) for k, v in options.items()) != (vol.get('Options') or {}):
        found.append('its driver options are %s, not %s'
                     % (json.dumps(vol.get('Options') or {}, sort_keys=True), json.dumps(options, sort_keys=True)))
    have = vol.get('Labels') or {}
    missing = sorted(k for k, v in (labels or {}).items() if have.get(k) != str(v))
    if missing:
        found.append('it lacks the label(s) %s as asked' % ', '.join(missing))
    return found


def unwritable_volume_error(name, driver, options, helper_image=None):
    """Why the receiver cannot write a volume of this driver and these options, or None.

    A plain local volume is written in its _data directory on the host. A local volume with mount
    options has its filesystem mounted only while a container uses it: the receiver keeps it mounted
    with a holder container of ``helper_image`` and writes through that container's view of the
    mount. A tmpfs volume loses its content when the last container stops, and another driver's data
    has no place on the host the receiver can keep its state in: both are refused.
    """
    if not _archive.mounted_only_in_use(driver, options):
        return None
    options = options or {}
    what = 'Destination volume %s (driver %s, options %s)' % (name, driver or 'local', json.dumps(options, sort_keys=True))
    if _archive.is_mounted_volume(driver, options) and options.get('type') == 'tmpfs':
        return ('%s is a tmpfs: its content is gone when no container uses it. Refusing to transfer data '
                'into it.' % what)
    if _archive.is_mounted_volume(driver, options):
        if helper_image:
            return None
        return ('%s is mounted only while a container uses it: set helper_image (migrate_helper_image in '
                'the migrate role) to a local image with /usr/bin/python3 on the destination, whose container '
                'keeps it mounted while the transfer writes (never pulled).' % what)
    return ('%s cannot be written by volume_transfer: it writes only into local volumes (plain, or with mount '
            'options such as NFS and a helper image); another driver\'s data is not reachable on the host. Move '
            'the data with volume_backup and volume_restore (whose helper container path writes such volumes).'
            % what)


def source_root(docker_access, info, helper_image):
    """The directory the sender reads source volume ``info`` from (holding it mounted when needed).

    A plain local volume is read in its _data directory. Any other volume (mount options such as NFS,
    another driver) is mounted only while a container uses it: its _data directory is then an empty
    directory, which must never be sent as the volume's content. It is read through a holder container
    of ``helper_image`` (``docker_access.release()`` removes it).
    """
    name, driver, options = info.get('Name'), info.get('Driver') or 'local', info.get('Options') or {}
    if not _archive.mounted_only_in_use(driver, options):
        root = info.get('Mountpoint')
        if not root or not os.path.isdir(root):
            raise TransferError('The mountpoint %r of source volume %s is not a directory on the source host.'
                                % (root, name))
        return root
    if not helper_image:
        raise TransferError('Source volume %s (driver %s, options %s) is mounted only while a container uses it; '
                            'its directory on the host does not show its data otherwise. Set helper_image '
                            '(migrate_helper_image in the migrate role) to a local image on the source with '
                            '/usr/bin/python3 (never pulled), whose container keeps it mounted while it is read.'
                            % (name, driver, json.dumps(options, sort_keys=True)))
    return docker_access.hold(name, helper_image, read_only=True)


def build_remote_command(dest_python, source_length, mode='receiver'):
    """The command line executed on the destination; every argument shell-quoted."""
    import shlex
    return ' '.join(shlex.quote(a) for a in (dest_python, '-c', BOOTSTRAP, str(int(source_length)), mode))


def _module_source(name):
    full = MODULE_UTILS + '.' + name
    mod = sys.modules.get(full)
    if mod is None:
        __import__(full)
        mod = sys.modules[full]
    loader = getattr(mod, '__loader__', None)
    src = None
    if loader is not None and hasattr(loader, 'get_source'):
        try:
            src = loader.get_source(full)
        except Exception:
            src = None
    if src is None:
        src = getattr(mod, '__volumeops_source__', None)
    if src is None:
        with open(mod.__file__, 'rb') as f:
            src = f.read().decode('utf-8')
    if isinstance(src, bytes):
        src = src.decode('utf-8')
    return src


def receiver_program(entry='receiver_main'):
    """Self-contained Python source: registers the bundled modules under their own names, runs ``entry``."""
    sources = dict((name, _module_source(name)) for name in BUNDLED)
    lines = [
        'import sys, types',
        'SOURCES = %r' % (sources,),
        'def _install():',
        '    pkg = None',
        '    parts = %r.split(".")' % MODULE_UTILS,
        '    for i in range(1, len(parts) + 1):',
        '        name = ".".join(parts[:i])',
        '        if name not in sys.modules:',
        '            m = types.ModuleType(name)',
        '            m.__path__ = []',
        '            sys.modules[name] = m',
        '            if pkg is not None:',
        '                setattr(pkg, parts[i - 1], m)',
        '        pkg = sys.modules[name]',
        '    for short in %r:' % (BUNDLED,),
        '        full = %r + "." + short' % MODULE_UTILS,
        '        m = types.ModuleType(full)',
        '        m.__file__ = "<volumeops-receiver %s>" % short',
        '        m.__volumeops_source__ = SOURCES[short]',
        '        sys.modules[full] = m',
        '        setattr(pkg, short, m)',
        '        exec(compile(SOURCES[short], m.__file__, "exec"), m.__dict__)',
        '    return sys.modules[%r + "._transfer"]' % MODULE_UTILS,
        '_install().%s()' % entry,
    ]
    return ('\n'.join(lines) + '\n').encode('utf-8')


# --- SSH (sender side) ---------------------------------------------------------------------------

def parse_host_key(line):
    """'<type> <base64> [comment]' -> paramiko PKey; raises TransferError."""
    import paramiko
    from paramiko.hostkeys import HostKeyEntry
    text = (line or '').strip()
    try:
        entry = HostKeyEntry.from_line('pinned ' + text)
    except Exception as exc:
        entry = None
        err = exc
    else:
        err = None
    if entry is None or entry.key is None:
        raise TransferError('dest_host_key %r is not a public host key in "<type> <base64>" form '
                            '(e.g. "ssh-ed25519 AAAA..."): %s' % (text[:60], err or 'unknown key type'))
    if not isinstance(entry.key, paramiko.PKey):
        raise TransferError('dest_host_key is not a public key.')
    return entry.key


def load_private_key(path=None, content=None, passphrase=None):
    import paramiko
    classes = [getattr(paramiko, n) for n in ('Ed25519Key', 'ECDSAKey', 'RSAKey', 'DSSKey') if hasattr(paramiko, n)]
    if path:
        try:
            with open(path, 'r') as f:
                content = f.read()
        except OSError as exc:
            raise TransferError('Cannot read private_key %s: %s' % (path, exc.strerror or exc))
    errors = []
    for cls in classes:
        try:
            return cls.from_private_key(io.StringIO(content), password=passphrase)
        except paramiko.PasswordRequiredException:
            raise TransferError('The private key is encrypted; give a key without passphrase for the migration.')
        except Exception as exc:  # paramiko raises several kinds for "not this type"
            errors.append(str(exc))
    raise TransferError('The private key (%s) is not a supported OpenSSH/PEM private key.'
                        % ('private_key ' + path if path else 'private_key_content'))


def channel_sendall(chan):
    """``chan.sendall`` without its copies: a function that sends all of ``data`` on the paramiko channel.

    paramiko's own sendall sends a packet (at most the peer's packet size: 32 KB for OpenSSH's sshd)
    and then slices the rest of the bytes, which copies it: a 1 MB data frame was copied about 16
    times over, half of the sender's CPU for the stream (375 MB sent: 1.2-1.3 s against 0.65 s with
    this). Slices of a memoryview copy nothing; paramiko takes any bytes-like object. paramiko's send
    returns 0 when the channel closed while it waited for window space, or after an EOF was sent on
    it (where its own sendall would call it forever): that is an error at once here.
    """
    send = chan.send

    def sendall(data):
        view = memoryview(data)
        while view:
            sent = send(view)
            if not sent:
                raise ConnectionLost('the SSH channel to the destination was closed')
            view = view[sent:]
    return sendall


def _fingerprint_key(key):
    import base64
    return 'SHA256:' + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip('=')


def ssh_connect(host, port, user, host_key, pkey, timeout):
    """Open an SSH connection with the destination's host key pinned (RejectPolicy)."""
    import paramiko
    client = paramiko.SSHClient()
    name = host if int(port) == 22 else '[%s]:%d' % (host, int(port))
    client.get_host_keys().add(name, host_key.get_name(), host_key)
    if host_key.get_name() == 'ssh-rsa':
        for alias in ('rsa-sha2-512', 'rsa-sha2-256'):
            client.get_host_keys().add(name, alias, host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())

    def transport_factory(sock, **kwargs):
        t = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET, **kwargs)
        opts = t.get_security_options()
        available = list(opts.ciphers)
        opts.ciphers = [c for c in PREFERRED_CIPHERS if c in available] + \
            [c for c in available if c not in PREFERRED_CIPHERS]
        return t
    where = '%s@%s:%s' % (user, host, port)
    try:
        client.connect(host, port=int(port), username=user, pkey=pkey, look_for_keys=False, allow_agent=False,
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                       transport_factory=transport_factory)
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise TransferError('Host key mismatch for %s: the server presented %s key %s but dest_host_key pins %s. '
                            'Refusing to connect (possible man-in-the-middle, or the pinned key is wrong).'
                            % (where, exc.key.get_name(), _fingerprint_key(exc.key), _fingerprint_key(host_key)))
    except paramiko.AuthenticationException as exc:
        client.close()
        raise TransferError('Authentication to %s failed with the migration key (%s): is its public key in '
                            '~%s/.ssh/authorized_keys on the destination?' % (where, exc, user))
    except paramiko.SSHException as exc:
        client.close()
        text = str(exc)
        if 'not found in known_hosts' in text:
            text = ('the server offered no %s host key; it presented another key type than the pinned '
                    'dest_host_key' % host_key.get_name())
        raise TransferError('SSH connection to %s failed: %s' % (where, text))
    except (socket.timeout, TimeoutError):
        client.close()
        raise TransferError('Destination %s is unreachable: connection timed out after %ss.' % (where, timeout))
    except (OSError, paramiko.ssh_exception.NoValidConnectionsError) as exc:
        client.close()
        raise TransferError('Destination %s is unreachable: %s' % (where, getattr(exc, 'strerror', None) or exc))
    t = client.get_transport()
    t.set_keepalive(15)
    _abort_on_dead_peer(t.sock, max(30, int(timeout) * 3))
    _send_without_delay(t.sock)
    return client


def ssh_session_error(exc, params, prefix=''):
    """A TransferError for paramiko's errors after the handshake (an SSHException), else None.

    sshd may refuse a session channel ("administratively prohibited", MaxSessions) or the exec request, and
    paramiko then raises ChannelException or SSHException, which are no OSError: without this they end the
    module in a traceback. ``prefix`` selects the relay's source parameters (``relay_source_``); the
    destination's (``dest_``) by default.
    """
    try:
        import paramiko
    except ImportError:
        return None
    if not isinstance(exc, paramiko.SSHException):
        return None
    prefix = prefix or 'dest_'
    where = '%s@%s:%s' % (params.get(prefix + 'user') or 'root', params.get(prefix + 'host'),
                          params.get(prefix + 'port') or 22)
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, paramiko.ChannelException):
        text = '%s (SSH channel open failure %s)' % (exc.text or text, exc.code)
    return TransferError('SSH session to %s failed after the connection was made: %s. Does its sshd allow a session '
                         'and command execution for this user (MaxSessions, ForceCommand, authorized_keys options)? '
                         'Nothing was started there.' % (where, text))


def _abort_on_dead_peer(sock, seconds):
    """Let the kernel abort the connection when sent data stays unacknowledged for ``seconds``.

    A link that dies silently (no RST) otherwise leaves paramiko's packet writer retrying its
    write forever: the channel timeout only covers waiting for window space, not a blocked socket.
    With TCP_USER_TIMEOUT (Linux) the write fails with ETIMEDOUT, paramiko closes the transport
    and the pass fails with the lost-connection message. The 15 s SSH keepalive makes an idle
    connection send data too, so a dead peer is noticed while waiting for the receiver as well.
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, 'TCP_USER_TIMEOUT', 18), int(seconds * 1000))
    except (OSError, AttributeError, ValueError):
        pass  # not Linux, or not a TCP socket: the channel timeouts still apply


def _send_without_delay(sock):
    """Switch off Nagle's algorithm (TCP_NODELAY) on the socket of a transfer's SSH connection.

    With Nagle, a TCP segment smaller than the maximum waits until the peer acknowledges what was
    sent before it, and the peer delays that acknowledgement (up to 40 ms on Linux) hoping to send
    it with a reply that cannot come before it has the rest. The protocol's frames go out as two
    writes (header, payload), each its own SSH packet: each small exchange (the prepare frame of a
    pass, among others) waited about 40 ms, 7% of a final delta pass of 1 GB. The stream gained more
    than those exchanges explain: every SSH packet ends in a partial segment, which Nagle holds back
    whenever the sender pauses (for window space, whose 2 MB the destination's sshd grants back as it
    reads, or for the compressor) until the destination acknowledges the data before it. A cold full
    pass of 1 GB on the bench: 0.3-0.8 s less.
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a proxy command's pipe): nothing to switch off


# --- sender ---------------------------------------------------------------------------------------

class _Connector(threading.Thread):
    """Opens the connection and sends the hello in the background (``Sender._open``).

    ``ready`` is set once the hello is sent or the attempt failed; ``wait()`` re-raises its error.
    """

    def __init__(self, sender):
        threading.Thread.__init__(self)
        self.daemon = True
        self.sender = sender
        self.ready = threading.Event()
        self.error = None

    def run(self):
        try:
            self.sender._open()
            self.sender.io.send_json(b'H', self.sender._hello())
            self.sender._start_keepalive()
        except BaseException as exc:  # handed to the main thread by wait()
            self.error = exc
        finally:
            self.ready.set()

    def wait(self):
        self.ready.wait()
        if self.error is not None:
            error = self.error
            if isinstance(error, TransferError):
                raise error
            if isinstance(error, (ConnectionLost, socket.timeout, EOFError, OSError)):
                raise TransferError(self.sender._remote_failure(error))
            session_error = ssh_session_error(error, self.sender.p)
            if session_error is not None:
                raise session_error
            raise error


class _Prefetch(object):
    """Iterate ``iterator`` in order, letting the caller walk it ahead into a buffer while it waits.

    The source walk feeds the merge with the destination's records, which arrive over the network:
    whenever the destination has nothing ready yet (connection being opened, receiver starting,
    walking), ``pull`` advances the source walk instead of blocking, so the two walks overlap. The
    buffer holds at most ``cap`` entries (bounded memory).
    """

    def __init__(self, iterator, cap):
        self.iterator = iter(iterator)
        self.buffer = collections.deque()
        self.cap = cap
        self.done = False

    def pull(self, count=256):
        """Walk up to ``count`` entries ahead. False when there is nothing more to do (end or buffer full)."""
        buffer = self.buffer
        count = min(count, self.cap - len(buffer))
        if self.done or count <= 0:
            return False
        for dummy in range(count):
            item = next(self.iterator, _END)
            if item is _END:
                self.done = True
                return False
            buffer.append(item)
        return True

    def __iter__(self):
        buffer = self.buffer
        iterator = self.iterator
        while True:
            if buffer:
                yield buffer.popleft()
            elif self.done:
                return
            else:
                item = next(iterator, _END)
                if item is _END:
                    self.done = True
                    return
                yield item


_END = object()


class SourceStream(object):
    """The source's ``tar [| compressor]`` pipeline; ``chunks()`` yields its output in CHUNK pieces.

    ``names``: archive only these paths (a delta's, fed to tar on stdin); None: the whole tree.
    ``hold``: a thread reads the output ahead into memory until ``chunks()`` is first iterated, at
    most ``hold`` bytes (then the pipeline waits on its full pipe). A full pass starts the pipeline
    this way before it walks the source and before the destination has answered (Sender.run), so
    tar and the compressor work meanwhile; nothing reaches the destination before the pass's checks
    passed. When they fail, ``close()`` kills the pipeline and drops what was held.
    """

    def __init__(self, root, exclude, compression, level, names=None, hold=0):
        if names is None:
            tar_argv = _archive.tar_create_argv(root, exclude=exclude)
            stdin = subprocess.DEVNULL
        else:
            base = _archive.tar_create_argv(root)
            if base[-1] != '.':
                raise TransferError('internal error: unexpected tar command line')
            tar_argv = base[:-1] + ['--no-recursion', '--null', '--verbatim-files-from', '--files-from=-']
            stdin = subprocess.PIPE
        self.comp_argv = _archive.compressor_argv(compression, level)
        self.tar_err = tempfile.TemporaryFile()
        self.comp_err = tempfile.TemporaryFile()
        self.procs = []
        self.comp = None
        self.feeder = None
        self.held = collections.deque()
        self.holder = None
        self.hold_error = None
        self.closed = False
        self._release = threading.Event()
        self.ahead = None
        try:
            if self.comp_argv is None:
                self.tar = _process.spawn(tar_argv, stdin=stdin, stdout=subprocess.PIPE, stderr=self.tar_err)
                self.procs.append(self.tar)
                self.out = self.tar.stdout
            else:
                rfd, wfd = os.pipe()
                try:
                    self.tar = _process.spawn(tar_argv, stdin=stdin, stdout=wfd, stderr=self.tar_err)
                    self.procs.append(self.tar)
                finally:
                    os.close(wfd)
                try:
                    self.comp = _process.spawn(self.comp_argv, stdin=rfd, stdout=subprocess.PIPE,
                                               stderr=self.comp_err)
                    self.procs.append(self.comp)
                finally:
                    os.close(rfd)
                self.out = self.comp.stdout
            self.ahead = _tree.ReadAhead(root, self.tar.pid, exclude=exclude, names=names).start()
            if names is not None:
                self.feeder = threading.Thread(target=_archive._feed,
                                               args=((n + b'\0' for n in names), self.tar.stdin, []))
                self.feeder.daemon = True
                self.feeder.start()
            if hold:
                self.holder = threading.Thread(target=self._hold, args=(hold,))
                self.holder.daemon = True
                self.holder.start()
        except BaseException:
            self.close()
            raise

    def _hold(self, cap):
        size = 0
        read = self.out.read
        try:
            while not self._release.is_set():
                if size >= cap:
                    self._release.wait()
                    return
                chunk = read(CHUNK)
                if not chunk:
                    return
                self.held.append(chunk)
                size += len(chunk)
        except (OSError, ValueError) as exc:  # re-raised by chunks(), in the sender's thread
            self.hold_error = exc

    def _stop_holding(self):
        if self.holder is not None:
            self._release.set()
            self.holder.join()
            self.holder = None

    def _stop_reading_ahead(self):
        if self.ahead is not None:
            self.ahead.stop()
            self.ahead = None

    def chunks(self):
        if self.holder is not None:
            self._stop_holding()
            if self.hold_error is not None:
                raise self.hold_error
            held = self.held
            while held:
                yield held.popleft()
        read = self.out.read
        while True:
            chunk = read(CHUNK)
            if not chunk:
                return
            yield chunk

    def finish(self, finalize):
        """Wait for the pipeline (its output read to the end); dict(tar_rc, error, warning)."""
        self._stop_reading_ahead()
        if self.feeder is not None:
            self.feeder.join()
        rc_tar = self.tar.wait()
        rc_comp = self.comp.wait() if self.comp is not None else 0
        info = dict(tar_rc=rc_tar, error=None, warning=None)
        tar_text = _archive._stderr_text(self.tar_err)
        if rc_comp != 0:
            info['error'] = '%s failed on the source (exit %d): %s' % (
                self.comp_argv[0], rc_comp, _archive._stderr_text(self.comp_err))
        elif rc_tar == 1:
            msg = ('Files changed on the source while they were read (tar exit 1): %s' % tar_text)
            if finalize:
                info['error'] = msg + ' Stop the writers (containers) before the final pass.'
            else:
                info['warning'] = msg + ' (tolerated in a warm pass with finalize=false; the final pass fixes it)'
        elif rc_tar != 0:
            info['error'] = 'tar failed on the source (exit %d): %s' % (rc_tar, tar_text)
        return info

    def close(self):
        """Kill what still runs, drop what was held, release the files. Safe to call again."""
        if self.closed:
            return
        self.closed = True
        self._stop_reading_ahead()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        self._stop_holding()  # the killed pipeline's output ends: the holder's read returns
        self.held.clear()
        for proc in self.procs:
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
        if self.feeder is not None:
            self.feeder.join()
        self.tar_err.close()
        self.comp_err.close()


class Sender(object):
    """Runs on the source host. ``params`` is the module's parameter dict."""

    def __init__(self, params, source_root, volume_info=None, check_mode=False, diff=False, warn=None):
        self.p = params
        # The parameters' defaults, resolved once (a relayed sender gets a plain dict without them).
        self.pass_ = params.get('pass') or 'full'
        self.verify = params.get('verify') or 'metadata'
        self.compression = params.get('compression') or 'zstd'
        self.root = source_root
        self.volume_info = volume_info or {}
        self.check_mode = check_mode
        self.diff = diff
        self.warn = warn or (lambda msg: None)
        self.client = None
        self.channel = None
        self.io = None
        self.stderr_chunks = []
        self.prefetch = None
        self.unchanged_proof = None
        self.early_stream = None  # a full pass's SourceStream, started before the walk
        self._keepalive_stop = None  # set by _start_keepalive once the hello is sent
        self.streamed_beside_walk = False

    # connection -------------------------------------------------------------
    def _open(self):
        p = self.p
        host_key = parse_host_key(p['dest_host_key'])
        pkey = load_private_key(p.get('private_key'), p.get('private_key_content'))
        timeout = p.get('timeout') or 30
        self.client = ssh_connect(p['dest_host'], p.get('dest_port') or 22, p.get('dest_user') or 'root',
                                  host_key, pkey, timeout)
        program = receiver_program()
        transport = self.client.get_transport()
        chan = transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET)
        chan.settimeout(max(60, timeout * 2))
        chan.exec_command(build_remote_command(p.get('dest_python') or '/usr/bin/python3', len(program)))
        sendall = channel_sendall(chan)
        sendall(program)
        self.channel = chan
        self.io = FrameIO(chan.recv, sendall)

    def _remote_failure(self, exc):
        """Best explanation after the channel broke: the receiver's error frame, its stderr or exit status."""
        msg = None
        chan = self.channel
        if chan is not None:
            try:
                chan.settimeout(5)
                while True:
                    kind, payload = self.io.recv()
                    if kind == b'!':
                        msg = _json(payload).get('msg')
                        break
            except Exception:
                pass
            try:
                err = b''
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                err = err.decode('utf-8', 'replace').strip()
            except Exception:
                err = ''
            if msg is None and err:
                if 'No such file or directory' in err or 'not found' in err:
                    msg = ('The receiver could not start on the destination (dest_python=%s): %s'
                           % (self.p.get('dest_python'), err[-500:]))
                else:
                    msg = 'The receiver on the destination failed: %s' % err[-1500:]
        if msg is None:
            # EOFError and some socket errors carry no text: their kind is the reason then.
            reason = str(exc).strip() or ('the connection was closed' if isinstance(exc, EOFError)
                                          else type(exc).__name__)
            msg = ('Connection to the destination %s was lost in the middle of the transfer (%s). The destination '
                   'volume is not marked complete; rerun to finish.' % (self.p['dest_host'], reason))
        return msg

    def _start_keepalive(self):
        """Send a k frame every KEEPALIVE_SECONDS until close() (see ReceiverIdleWatch)."""
        self._keepalive_stop = keepalive(self.io, b'k', KEEPALIVE_SECONDS)

    def close(self):
        if self._keepalive_stop is not None:
            self._keepalive_stop(wait=False)  # its send may block on a dead connection: never wait for it
        try:
            if self.early_stream is not None:
                self.early_stream.close()  # started, never sent: a check failed or the pass ended early
        finally:
            try:
                if self.channel is not None:
                    self.channel.close()
            finally:
                if self.client is not None:
                    self.client.close()

    # main ------------------------------------------------------------------
    def run(self):
        started = time.time()
        p = self.p
        exclude = p.get('exclude') or []
        # The connection (SSH handshake, shipping and starting the receiver, which then inspects the
        # destination and starts walking it) is opened in a thread while this thread walks the source:
        # the two walks run at the same time on their two hosts instead of one after the other.
        connector = _Connector(self)
        connector.start()
        try:
            started_ns = time.time_ns()
            if self.pass_ == 'full' and not self.check_mode:
                # A full pass sends the whole tree whatever the walk finds, unless the destination turns
                # out complete already or a check fails: start tar and the compressor now, beside the walk
                # and the connection. Their output waits in memory (SourceStream) until the checks in
                # _run passed, and is dropped when one fails or when the overlap cannot be proven
                # harmless (_early_stream_sound): then the stream starts after the walk, as before.
                self.early_stream = SourceStream(self.root, exclude, self.compression, p.get('compression_level'),
                                                 hold=EARLY_HOLD)
            # The token lets the re-check after streaming be a cheap lstat walk (_source_after). It starts
            # when reading began (tar's start for a full pass), so that it covers all the reading.
            scan = TreeScan(self.root, exclude, with_change_token=self.verify == 'metadata',
                            started_ns=started_ns)
            source = None
            if self.pass_ == 'delta':
                # Records are consumed by the merge with the destination's records, which needs the
                # connection: walk ahead into a bounded buffer until it is up.
                source = _Prefetch(self._source_records(scan), PREFETCH_ENTRIES)
                while not connector.ready.is_set() and source.pull():
                    pass
            else:
                for dummy in self._source_records(scan):
                    if connector.error is not None:
                        break  # report the connection failure now, not after the whole walk
                    if self.early_stream is not None and scan.changes is not None and scan.changes.saw_recent:
                        self._drop_early_stream()  # it will not be sent: stop it using the CPU now
                if self.early_stream is not None and not self._early_stream_sound(scan):
                    self._drop_early_stream()
            connector.wait()
            self.prefetch = source
            try:
                return self._run(scan, source, exclude, started)
            except (ConnectionLost, socket.timeout, EOFError, OSError) as exc:
                raise TransferError(self._remote_failure(exc))
            except TransferError:
                raise
            except Exception as exc:
                if self.channel is not None and (self.channel.closed or ssh_session_error(exc, p) is not None):
                    # paramiko's own errors on the open channel (an SSHException is no OSError).
                    raise TransferError(self._remote_failure(exc))
                raise
        finally:
            connector.join()
            self.close()

    def _early_stream_sound(self, scan):
        """Whether what tar read while the source was walked may be sent (see run).

        tar may read an entry before the walk sees it. Changed in between, it would reach the
        destination in its old state while the walk's fingerprint has the new one. With verify=content
        the content digests compared at the end catch that (the pass fails, nothing is declared
        verified). With verify=metadata an edit that keeps size and mtime would go unnoticed, so the
        walk's change token, started before tar, must be settled: every entry's ctime lies at least
        CTIME_SETTLED_NS before tar started, so nothing changed from then on until the walk saw it
        (and the re-check after the stream covers the time after the walk, as before).
        """
        if scan.summary is None:
            return False  # the walk did not finish (the connection failed meanwhile)
        if self.verify == 'content':
            return True
        token = scan.summary.change_token
        return token is not None and token.settled

    def _drop_early_stream(self):
        self.early_stream.close()
        self.early_stream = None

    def _hello(self):
        p = self.p
        return dict(
            protocol=PROTOCOL_VERSION, migration_id=p['migration_id'], dest_volume=p['dest_volume'],
            dest_docker_host=p.get('dest_docker_host'), dest_driver=p.get('dest_driver'),
            dest_helper_image=p.get('helper_image'),
            dest_driver_options=p.get('dest_driver_options') or {}, dest_labels=p.get('dest_labels') or {},
            existing=p.get('existing') or 'fail', check_mode=self.check_mode, pass_=self.pass_,
            fresh_base=bool(p.get('_fresh_base')),
            finalize=bool(p.get('finalize', True)), verify=self.verify,
            compression=self.compression, allow_devices=bool(p.get('allow_devices')),
            source=dict(volume=p.get('volume'), host=os.uname()[1]),
            lock_wait=p.get('lock_wait', LOCK_WAIT_SECONDS),
            source_volume=dict(driver=self.volume_info.get('Driver'), labels=self.volume_info.get('Labels') or {},
                               options=self.volume_info.get('Options') or {}),
        )

    def _run(self, scan, source, exclude, started):
        p = self.p
        io_ = self.io
        pass_ = self.pass_
        self._idle()
        dummy, payload = io_.recv_expect(b'S')
        state = _json(payload)
        if state.get('conflict'):
            io_.send(b'Q')
            raise TransferError(state['conflict'])
        plan = None
        self.dest_end = None
        if pass_ == 'delta':
            # One streaming merge of both walks; the destination's records arrive while it walks.
            plan = compute_delta(source, self._dest_records())
        else:
            dummy, payload = io_.recv_expect(b'e')
            self.dest_end = _json(payload)
        end = self.dest_end or {}
        summary = scan.summary
        result = dict(changed=False, bytes=summary.bytes, entries=summary.entries, bytes_sent=0,
                      source_fingerprint=summary.fingerprint, dest_fingerprint=None, verified=False,
                      deleted=0, replaced=0, sent_entries=0, dest_state=None, dest_volume=p['dest_volume'],
                      migration_id=p['migration_id'], mb_per_s=0.0, duration=0.0, streamed_beside_walk=False)
        result['dest_state_before'] = state.get('marker_state')
        result['dest_exists'] = state.get('exists')
        dest_summary = end.get('summary')
        complete_match = bool(state.get('complete') and dest_summary
                              and dest_summary.get('fingerprint') == summary.fingerprint
                              and dest_summary.get('entries') == summary.entries)
        if complete_match and self.verify == 'content':
            # Equal metadata does not prove equal content (an edit that kept size and mtime, corruption):
            # verify=content compares both sides' content digests before calling it verified.
            complete_match = self._complete_content_matches(result, exclude)
        if complete_match:
            io_.send(b'Q')
            result.update(dest_fingerprint=dest_summary['fingerprint'], verified=True, dest_state='complete')
            result['duration'] = round(time.time() - started, 3)
            if self.diff:
                result['diff'] = dict(before=self._diff_text(state), after=self._diff_text(state))
            return result
        if end.get('conflict'):
            io_.send(b'Q')
            since = end.get('complete_source') or {}
            if since.get('fingerprint') == summary.fingerprint and since.get('entries') == summary.entries:
                # The migration completed and the source is as it was then: nothing to do. The destination was
                # written since (the application runs there now); that is not this migration's to undo.
                self.warn('Destination volume %s was completed by migration %s and written since (the application '
                          'runs there now); the source is unchanged since then, so nothing was copied.'
                          % (p['dest_volume'], p['migration_id']))
                result.update(dest_state='complete', dest_changed_since_complete=True,
                              dest_fingerprint=(dest_summary or {}).get('fingerprint'))
                result['duration'] = round(time.time() - started, 3)
                return result
            raise TransferError(end['conflict'])
        if end.get('in_use'):
            io_.send(b'Q')
            raise TransferError('Destination volume %s is in use by running container(s) %s on the destination; '
                                'stop them first.' % (p['dest_volume'], ', '.join(sorted(end['in_use']))))
        if plan is not None:
            send_bytes = plan.send_bytes
            result['sent_entries'] = len(plan.send)
            result['deleted'] = len(plan.removed)
            result['replaced'] = plan.replaced
        else:
            send_bytes = summary.bytes
            result['sent_entries'] = summary.entries
        free = state.get('free_bytes')
        if free is not None and free < int(send_bytes * 1.1):
            io_.send(b'Q')
            raise TransferError('Not enough free space on the destination: %d bytes free in %s, %d needed '
                                '(1.1 x %d bytes to send). Nothing was changed on the destination.'
                                % (free, state.get('volume_dir') or 'the volume directory',
                                   int(send_bytes * 1.1), send_bytes))
        if self.diff:
            after = dict(state, marker_state='complete' if p.get('finalize', True) else 'staging')
            result['diff'] = dict(before=self._diff_text(state), after=self._diff_text(after, plan, summary))
        if self.check_mode:
            io_.send(b'Q')
            result['changed'] = True
            result['dest_state'] = state.get('marker_state')
            result['would_send_bytes'] = send_bytes
            result['duration'] = round(time.time() - started, 3)
            if plan is not None:
                result['sample_sent'] = [_show(x) for x in plan.send[:20]]
                result['sample_deleted'] = [_show(x) for x in plan.removed[:20]]
            return result
        io_.send_json(b'P', dict(pass_=pass_, source=summary.as_dict()))
        io_.recv_expect(b'R')
        if plan is not None:
            for i in range(0, len(plan.delete), 4096):
                io_.send(b'X', encode_paths(plan.delete[i:i + 4096]))
        tar_info = self._stream(exclude, plan)
        io_.send_json(b'Z', tar_info)
        if tar_info['error']:
            # The destination discards the stream and keeps the volume not complete.
            self._final(allow_error=True)
            raise TransferError(tar_info['error'])
        after, source_content = self._source_after(scan, exclude)
        if source_content is not None:
            result['content_digest'] = source_content
        result['source_recheck'] = self.unchanged_proof
        result['streamed_beside_walk'] = self.streamed_beside_walk
        io_.send_json(b'V', dict(content_digest=source_content, fingerprint=after.fingerprint,
                                 entries=after.entries, bytes=after.bytes))
        final = self._final()
        duration = time.time() - started
        result['dest_records_reused'] = final.get('records_reused') or 0
        result['dest_records_kept'] = bool(final.get('base_kept'))
        result.update(changed=True, bytes_sent=io_.sent, dest_fingerprint=final.get('dest_fingerprint'),
                      verified=bool(final.get('verified')), dest_state=final.get('dest_state'),
                      duration=round(duration, 3), source_fingerprint=after.fingerprint,
                      entries=after.entries, bytes=after.bytes)
        moved = after.bytes if pass_ == 'full' else send_bytes
        result['mb_per_s'] = round(moved / 1e6 / duration, 1) if duration > 0 else 0.0
        if final.get('warnings'):
            for w in final['warnings']:
                self.warn(w)
        if tar_info.get('warning'):
            self.warn(tar_info['warning'])
        return result

    def _complete_content_matches(self, result, exclude):
        """verify=content on a complete destination whose metadata equals the source's: compare content digests.

        Both sides read their data at the same time (C frame). Equal: True (nothing to send). Different: the
        destination is not overwritten unless ``existing: replace`` with a full pass (False: the pass goes on);
        a delta could not repair it (it picks entries by their metadata, which is equal), so it refuses too.
        """
        self.io.send(b'C')
        try:
            source_content = content_digest(self.root, exclude)
        except OSError as exc:
            raise TransferError(_archive.describe_os_error(exc, 'Reading the source volume'))
        dummy, payload = self.io.recv_expect(b'c')
        dest_content = _json(payload).get('content_digest')
        result['content_digest'] = source_content
        if dest_content == source_content:
            return True
        if self.pass_ == 'full' and self.p.get('existing') == 'replace':
            return False
        self.io.send(b'Q')
        raise TransferError(
            'Destination volume %s is complete for migration %r and its metadata (fingerprint %s) equals the '
            'source\'s, but its content digest %s differs from the source\'s %s: a file\'s content changed on one '
            'side while its size and mtime stayed the same (an edit with the mtime restored, or corruption). '
            'Nothing was changed. To copy the source over the destination again, rerun with pass: full and '
            'existing: replace.' % (self.p['dest_volume'], self.p['migration_id'],
                                    self.dest_end['summary']['fingerprint'], dest_content, source_content))

    def _source_after(self, scan, exclude):
        """(summary, content digest or None) of the source after streaming.

        Re-checked in parallel with the destination's verification walk: a source changed during
        the pass must not be declared verified. With verify=metadata, a change token (inodes and
        ctimes only, listed by GNU find or walked) that matches the first walk's settled token proves the tree
        is still as first walked, so that walk's summary holds. When some entries had changed within
        seconds of the first walk (a final pass right after the application stopped), the same listing
        plus the fingerprint records of just those entries prove it (_tree.unchanged_but_recent).
        Otherwise, and with verify=content, one full walk gives the fingerprint and the content digest.
        """
        want_content = self.verify == 'content'
        before = scan.summary.change_token
        if not want_content and before is not None:
            try:
                proof = before.recheck(self.root, exclude)
            except OSError as exc:
                raise TransferError(_archive.describe_os_error(exc, 'Reading the source volume'))
            if proof is not None:
                self.unchanged_proof = proof
                return scan.summary, None
        after_scan = TreeScan(self.root, exclude, content=want_content)
        for dummy in self._source_records(after_scan):
            pass
        self.unchanged_proof = 'fingerprint'
        return after_scan.summary, after_scan.content

    def _final(self, allow_error=False):
        dummy, payload = self.io.recv_expect(b'F')
        final = _json(payload)
        if not final.get('ok') and not allow_error:
            if final.get('kept_base_mismatch'):
                raise StaleStagedRecords(final.get('msg'))
            raise TransferError(final.get('msg') or 'the destination did not accept the transfer')
        return final

    def _diff_text(self, state, plan=None, summary=None):
        lines = ['volume: %s' % self.p['dest_volume'], 'exists: %s' % state.get('exists'),
                 'migration: %s' % (state.get('marker_migration_id') or '-'),
                 'state: %s' % (state.get('marker_state') or '-')]
        if plan is not None:
            lines.append('send: %d entries, %d bytes' % (len(plan.send), plan.send_bytes))
            lines.append('delete: %d paths' % len(plan.removed))
            lines.append('replace: %d entries' % plan.replaced)
        elif summary is not None:
            lines.append('send: %d entries, %d bytes' % (summary.entries, summary.bytes))
        return '\n'.join(lines) + '\n'

    @staticmethod
    def _source_records(scan):
        # An error reading the source is reported as such, not as a lost connection (the walk runs
        # while frames are being exchanged).
        try:
            for relpath, digest, code, entry in scan:
                yield relpath, digest, code, entry.st
        except OSError as exc:
            raise TransferError(_archive.describe_os_error(exc, 'Reading the source volume'))

    def _idle(self):
        """Until the destination has sent something, walk the source ahead (delta) instead of blocking."""
        source = self.prefetch
        if source is None:
            return
        ready = self.channel.recv_ready
        while not ready() and source.pull():
            pass

    def _dest_records(self):
        """The destination's records (E frames) until its end frame, whose JSON is kept in ``dest_end``."""
        while True:
            self._idle()
            kind, payload = self.io.recv_expect(b'E', b'e')
            if kind == b'e':
                self.dest_end = _json(payload)
                return
            yield from decode_records(payload)

    def _stream(self, exclude, plan):
        """tar -> [zstd] -> frames on the channel. Returns dict(tar_rc, error, warning)."""
        p = self.p
        stream, self.early_stream = self.early_stream, None
        if stream is None:
            stream = SourceStream(self.root, exclude, self.compression, p.get('compression_level'),
                                  names=plan.send if plan is not None else None)
        else:
            self.streamed_beside_walk = True
        try:
            send = self.io.send
            for chunk in stream.chunks():
                send(b'D', chunk)
            return stream.finish(p.get('finalize', True))
        finally:
            stream.close()


def _show(path):
    text = path.decode('utf-8', 'backslashreplace')
    return text[2:] if text.startswith('./') else text


# --- relay through the controller ----------------------------------------------------------------

class Relay(object):
    """Relay mode: the module runs on the controller, the SAME sender code runs on the source.

    The controller opens SSH to the source (its host key pinned too), asks the source's sshd
    for a remote port forward on the source's 127.0.0.1 (``request_port_forward``), and runs
    ``sender_main`` there (shipped like the receiver). The sender connects to that forwarded
    port as if it were the destination: every connection is relayed by the controller to
    ``dest_host:dest_port``. The destination's host key is still pinned by the sender end to end
    (the controller only relays the encrypted SSH session). Slower: the data crosses the
    controller's network twice.
    """

    def __init__(self, params, check_mode=False, diff=False):
        self.p = params
        self.check_mode = check_mode
        self.diff = diff
        self.errors = []

    def _forward(self, channel, origin, server):
        p = self.p

        def pump(src_recv, dst_send, closer):
            try:
                while True:
                    data = src_recv(CHUNK)
                    if not data:
                        break
                    dst_send(data)
            except Exception:
                pass
            finally:
                closer()

        try:
            sock = socket.create_connection((p['dest_host'], int(p.get('dest_port') or 22)),
                                            timeout=p.get('timeout') or 30)
            _send_without_delay(sock)
            sock.settimeout(None)
        except OSError as exc:
            self.errors.append('the controller cannot reach the destination %s:%s: %s'
                               % (p['dest_host'], p.get('dest_port') or 22, exc))
            channel.close()
            return

        def close_both():
            for obj in (channel, sock):
                try:
                    obj.close()
                except Exception:
                    pass
        for args in ((channel.recv, sock.sendall, close_both), (sock.recv, channel_sendall(channel), close_both)):
            t = threading.Thread(target=pump, args=args)
            t.daemon = True
            t.start()

    def run(self):
        p = self.p
        host_key = parse_host_key(p['relay_source_host_key'])
        pkey = load_private_key(p.get('relay_source_private_key'), p.get('relay_source_private_key_content'))
        timeout = p.get('timeout') or 30
        client = ssh_connect(p['relay_source_host'], p.get('relay_source_port') or 22,
                             p.get('relay_source_user') or 'root', host_key, pkey, timeout)
        try:
            transport = client.get_transport()
            try:
                port = transport.request_port_forward('127.0.0.1', 0, handler=self._forward)
            except Exception as exc:
                raise TransferError('The source host refused a remote port forward for the relay (%s); its sshd '
                                    'needs AllowTcpForwarding yes (or remote).' % exc)
            program = receiver_program(entry='sender_main')
            try:
                chan = transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET)
                chan.exec_command(build_remote_command(p.get('relay_source_python') or '/usr/bin/python3',
                                                       len(program), mode='sender'))
            except Exception as exc:
                error = ssh_session_error(exc, p, prefix='relay_source_')
                if error is None:
                    raise
                raise error
            sendall = channel_sendall(chan)
            sendall(program)
            sender_params = dict((k, v) for k, v in p.items() if not k.startswith('relay_'))
            sender_params.update(dest_host='127.0.0.1', dest_port=port, _check_mode=self.check_mode,
                                 _diff=self.diff)
            payload = json.dumps(sender_params).encode('utf-8')
            sendall(b'%d\n' % len(payload) + payload)
            chan.shutdown_write()
            out = []
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                out.append(data)
            err = b''
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            status = chan.recv_exit_status()
        finally:
            client.close()
        text = b''.join(out).decode('utf-8', 'replace').strip()
        try:
            answer = json.loads(text.splitlines()[-1]) if text else None
        except ValueError:
            answer = None
        if answer is None:
            raise TransferError('The relayed sender on the source %s failed (exit %s): %s'
                                % (p['relay_source_host'], status, (err.decode('utf-8', 'replace') or text)[-1500:]))
        if not answer.get('ok'):
            msg = answer.get('msg') or 'the relayed sender failed'
            if self.errors:
                msg += ' (relay: %s)' % '; '.join(self.errors)
            raise TransferError(msg)
        return answer['result']


def source_in_use_message(volume, running):
    """The refusal of source_in_use=fail: running containers use the source volume."""
    return ('Container(s) %s still run or were started again and use source volume %s (a restart policy, supervisor '
            'or orchestrator?). Refusing to copy a volume that is being written to (source_in_use=fail); nothing was '
            'sent.' % (', '.join(sorted(running)), volume))


def sender_main():
    """Entry point on the source host in relay mode: parameters on stdin, one JSON answer line on stdout."""
    stdin = sys.stdin.buffer
    length = int(stdin.readline())
    params = json.loads(stdin.read(length).decode('utf-8'))
    warnings = []
    try:
        docker_access = DockerAccess(params.get('docker_host'))
        info = docker_access.inspect(params['volume'])
        if info is None:
            raise TransferError('Source volume %s does not exist on the source host (it is never created by '
                                'volume_transfer).' % params['volume'])
        if params.get('source_in_use') == 'fail':
            running = docker_access.running_users(params['volume'])
            if running:
                raise TransferError(source_in_use_message(params['volume'], running))
        try:
            # Only checked here: the sender needs it on the source, and a clear message beats an ImportError.
            import paramiko  # noqa: F401  pylint: disable=unused-import
        except ImportError:
            raise TransferError('paramiko is not importable by the Python on the source host (relay_source_python).')
        try:
            root = source_root(docker_access, info, params.get('helper_image'))
            result = run_transfer(
                lambda fresh: Sender(dict(params, _fresh_base=fresh), root, volume_info=info,
                                     check_mode=params.get('_check_mode'), diff=params.get('_diff'),
                                     warn=warnings.append),
                warnings.append)
        finally:
            docker_access.release()
        result['warnings'] = warnings
        answer = dict(ok=True, result=result)
    except TransferError as exc:
        answer = dict(ok=False, msg=str(exc))
    except Exception as exc:
        import traceback
        answer = dict(ok=False, msg='Unexpected error in the relayed sender on the source: %s: %s\n%s'
                      % (exc.__class__.__name__, exc, traceback.format_exc()))
    sys.stdout.write(json.dumps(answer) + '\n')
    sys.stdout.flush()


# --- receiver (destination host; standard library only) ------------------------------------------

class DockerAccess(object):
    """Find/create a volume through the host's own Docker daemon, on its unix socket.

    Direct requests (``_engine_http``), standard library only: the receiver (and the relayed
    sender) start without importing the docker SDK, about 0.1 s, and the destination needs neither
    the SDK nor the docker CLI. The daemon must be local anyway: the receiver writes into the
    volume's mountpoint itself.
    """

    kind = 'docker socket'

    def __init__(self, docker_host):
        self.holders = []
        self.host = docker_host or 'unix:///var/run/docker.sock'
        self.socket = _engine_http.unix_socket_path(self.host)
        if self.socket is None:
            raise TransferError('The Docker daemon must be reached on its local unix socket (unix://...), not %s: '
                                'the volume is written through its mountpoint on this host.' % self.host)

    def _request(self, what, method, path, query=None, document=None, ok=(200,)):
        """One direct request; (status, document) for the accepted statuses, TransferError otherwise."""
        try:
            status, answer = _engine_http.request(self.socket, method, path, query, document)
        except (OSError, _engine_http.EngineAnswerError) as exc:
            raise TransferError('%s failed: cannot reach the Docker daemon at %s (%s).' % (what, self.host, exc))
        if status not in ok:
            raise TransferError('%s failed: %s' % (what, _engine_http.error_text(status, answer)))
        return status, answer

    def inspect(self, name):
        """The volume's inspect dict, or None when it does not exist."""
        status, answer = self._request('Inspecting volume %s' % name, 'GET', '/volumes/' + quote(name, safe=''),
                                       ok=(200, 404))
        return None if status == 404 else answer

    def create(self, name, driver, options, labels):
        return self._request('Creating volume %s' % name, 'POST', '/volumes/create',
                             document=dict(Name=name, Driver=driver or 'local', DriverOpts=options or {},
                                           Labels=labels or {}), ok=(200, 201))[1]

    def running_users(self, name):
        """Names of the running containers that mount the volume (holder containers left out)."""
        found = self._request('Listing the containers using %s' % name, 'GET', '/containers/json',
                              query=dict(filters=json.dumps({'volume': [name]})))[1] or []
        return [(c.get('Names') or ['?'])[0].lstrip('/') for c in found
                if any(m.get('Name') == name for m in c.get('Mounts') or [])
                and HOLDER_LABEL not in (c.get('Labels') or {})]

    def hold(self, name, image, read_only=False):
        """Keep volume ``name`` mounted by a holder container of ``image``; returns the mount as seen from here.

        A volume with mount options (NFS, ...) is mounted only while a container uses it. The holder runs
        nothing but a sleep; the receiver (or the sender) reaches the data through ``/proc/<holder pid>/root``,
        which shows the holder's mount whatever mount namespace the daemon runs in. Holders whose process
        died are removed first (the label names the process).
        """
        self._remove_stale_holders()
        document = dict(Image=image, Cmd=list(HOLDER_COMMAND), Entrypoint=[], User='0:0', NetworkDisabled=True,
                        Labels={HOLDER_LABEL: str(os.getpid())},
                        HostConfig=dict(Binds=['%s:%s%s' % (name, HOLDER_MOUNT, ':ro' if read_only else '')],
                                        NetworkMode='none'))
        what = 'Starting a holder container of %s for volume %s' % (image, name)
        status, answer = self._request(what, 'POST', '/containers/create',
                                       dict(name='volumeops-holder-%s' % uuid.uuid4().hex[:12]), document, ok=(201, 404))
        if status == 404:
            raise TransferError('%s failed: the image is not on this host, and it is never pulled (load it '
                                'there, or name a local image with /usr/bin/python3).' % what)
        cid = answer['Id']
        self.holders.append(cid)
        self._request(what, 'POST', '/containers/%s/start' % cid, ok=(204, 304))
        info = self._request(what, 'GET', '/containers/%s/json' % cid)[1]
        pid = (info.get('State') or {}).get('Pid')
        root = '/proc/%s/root' % pid
        # Each component a real directory: a symlink in the image (say /volumeops -> /etc) would resolve
        # against this host's root, not the container's.
        for part in HOLDER_MOUNT.strip('/').split('/'):
            root = os.path.join(root, part)
            try:
                st = os.lstat(root)
            except OSError:
                st = None
            if not pid or st is None or not stat.S_ISDIR(st.st_mode):
                raise TransferError('%s failed: the volume is not reachable through the holder (%s is not a '
                                    'directory).' % (what, root))
        return root

    def release(self):
        for cid in self.holders:
            try:
                self._request('Removing the holder container', 'DELETE', '/containers/' + cid,
                              query=dict(force='true'), ok=(204, 404))
            except TransferError:
                pass  # labelled: the next receiver on this host removes it
        self.holders = []

    def _remove_stale_holders(self):
        found = self._request('Listing holder containers', 'GET', '/containers/json',
                              query=dict(all='true', filters=json.dumps({'label': [HOLDER_LABEL]})))[1] or []
        for c in found:
            owner = (c.get('Labels') or {}).get(HOLDER_LABEL, '')
            if owner.isdigit() and not os.path.exists('/proc/%s' % owner):
                self._request('Removing a stale holder container', 'DELETE', '/containers/' + c['Id'],
                              query=dict(force='true'), ok=(204, 404))


def read_marker(path):
    try:
        with open(path, 'rb') as f:
            data = json.loads(f.read().decode('utf-8'))
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, OSError):
        return {'state': 'unreadable'}


def write_marker(path, data):
    tmp = path + '.tmp-%d' % os.getpid()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, 'wb') as f:
        f.write(json.dumps(data, sort_keys=True, indent=1).encode('utf-8') + b'\n')
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    _archive.fsync_dir(os.path.dirname(path))


def marker_other_source(marker, source):
    """How a marker names its source when that is not ``source`` (the hello's volume and host), else None.

    The migration_id alone does not make a complete destination this transfer's: one id given to several
    source volumes (or a wrong dest_volume) would otherwise let one source replace another's completed copy.
    Markers written before they named their source (no such field) are taken as this transfer's, as before.
    """
    source = source or {}
    for key, field in (('volume', 'source_volume'), ('host', 'source_host')):
        recorded = marker.get(field)
        if recorded is not None and recorded != source.get(key):
            return 'source volume %s on host %s' % (marker.get('source_volume') or '?', marker.get('source_host') or '?')
    return None


def marker_dest_changed(marker, summary):
    """Whether ``summary`` (``as_dict()`` of the volume's data now) differs from what a complete marker recorded.

    Only what the marker recorded is compared: markers of older versions hold only ``dest_fingerprint`` (or
    nothing, then nothing can be told: False, as before), and a fingerprint of another FINGERPRINT_VERSION
    (the marker's ``fingerprint_version``, 1 when absent) hashes other records, so it proves nothing either.
    """
    if summary is None:
        return False
    if marker.get('fingerprint_version', 1) != _tree.FINGERPRINT_VERSION:
        return False
    recorded = marker.get('dest_summary')
    if not isinstance(recorded, dict):
        recorded = {'fingerprint': marker['dest_fingerprint']} if marker.get('dest_fingerprint') else {}
    return any(key in summary and summary[key] != value for key, value in recorded.items())


def _is_empty_dir(path):
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except FileNotFoundError:
        return True


def safe_delete(root, relpath):
    """Remove ``relpath`` (b'./x/y') below ``root`` without following any symlink; missing is fine."""
    norm = _archive.normalize_member_path(relpath)
    if norm == b'.':
        raise TransferError('protocol error: refusing to delete the volume root')
    root_b = os.fsencode(root)
    parts = norm.split(b'/')
    cur = root_b
    for part in parts[:-1]:
        cur = cur + b'/' + part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False  # below a symlink or file: nothing of ours to delete there
    target = cur + b'/' + parts[-1]
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(target)
    else:
        os.unlink(target)
    return True


class OnDiskGuard(object):
    """Per-member check against the tree being extracted into (delta onto an existing tree).

    Refuses a member whose parent path on disk is a symlink or not a directory
    (GNU tar would write through it, CVE-2025-45582), and clears the xattrs of an
    existing directory that the stream carries again (tar only adds xattrs, so a
    removed ACL would otherwise survive).
    """

    def __init__(self, root):
        self.root = os.fsencode(root)
        self.ok_dirs = set([b'.'])

    def __call__(self, member):
        path = member.path
        if path == b'.':
            parents = []
        else:
            parts = path.split(b'/')
            parents = [b'/'.join(parts[:i]) for i in range(1, len(parts))]
        for parent in parents:
            if parent in self.ok_dirs:
                continue
            try:
                st = os.lstat(self.root + b'/' + parent)
            except FileNotFoundError:
                self.ok_dirs.add(parent)  # created by this stream (validated) later on
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise _archive.StreamRejected('Refusing stream: member %s would be written through the existing '
                                              'non-directory %s on the destination.'
                                              % (_archive.shown(path), _archive.shown(parent)))
            self.ok_dirs.add(parent)
        abspath = self.root if path == b'.' else self.root + b'/' + path
        try:
            st = os.lstat(abspath)
        except FileNotFoundError:
            return
        if member.type == 'd':
            if not stat.S_ISDIR(st.st_mode):
                raise _archive.StreamRejected('Refusing stream: directory member %s exists on the destination as '
                                              'a non-directory that was not deleted first.' % _archive.shown(path))
            for name, dummy in _tree.read_xattrs(abspath):
                try:
                    os.removexattr(abspath, name, follow_symlinks=False)
                except OSError:
                    pass
            self.ok_dirs.add(path)
        elif stat.S_ISDIR(st.st_mode):
            raise _archive.StreamRejected('Refusing stream: member %s would replace an existing directory.'
                                          % _archive.shown(path))


def tar_extract_argv(dest):
    """GNU tar extraction for the staging tree.

    Unlike a restore into a fresh directory, the staging root and (delta) its
    directories exist: ``--no-overwrite-dir`` would keep their old owner/mode,
    so it is not used; directory metadata is applied after their content.
    """
    argv = [a for a in _archive.tar_extract_argv(dest) if a != '--no-overwrite-dir']
    return argv


class Receiver(object):
    def __init__(self, io_):
        self.io = io_
        self.hello = None
        self.procs = []
        self.marker_path = None
        self.staging = None
        self.data_dir = None
        self.warnings = []
        self.base = None
        self.walk_root = None
        self.spill = None
        self.docker = None
        self.held = False  # a volume with mount options, written through a holder container
        self.volume_fs = None  # a directory on the filesystem that holds the staging tree
        self.complete_marker = None  # this migration's 'complete' marker, checked against _data after its walk
        self.end_conflict = None  # why the pass must not go on, found by the walk (_send_records)
        self.lock = None  # the volume's lock (_archive.VolumeLock), held until the receiver ends
        self.marker = None  # the volume's marker as _state read it
        self.base_kept = False  # the delta's base records are the ones the previous pass kept (StagedRecords)

    # helpers ---------------------------------------------------------------
    def _marker(self, state, **extra):
        h = self.hello
        data = dict(migration_id=h['migration_id'], state=state, volume=h['dest_volume'],
                    source_fingerprint=h['source']['fingerprint'], source_entries=h['source']['entries'],
                    source_bytes=h['source']['bytes'], source_volume=h['source'].get('volume'),
                    source_host=h['source'].get('host'), timestamp=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
        data.update(extra)
        write_marker(self.marker_path, data)

    def _state(self):
        """Inspect the destination (read-only) and choose what a delta would build on (``self.base``).

        ``self.base`` is 'staging' (this migration's staged tree), 'data' (this migration's
        completed ``_data``, or an empty ``_data``) or None (nothing usable: a delta sends everything).
        ``self.walk_root`` is the directory whose records/fingerprint the sender needs, if any.
        """
        h = self.hello
        mid_err = check_migration_id(h.get('migration_id'))
        if mid_err:
            raise TransferError(mid_err)
        name = h.get('dest_volume')
        if not isinstance(name, str) or not re.match(r'^[a-zA-Z0-9][a-zA-Z0-9_.-]+$', name):
            raise TransferError('Invalid destination volume name %r.' % (name,))
        self.docker = DockerAccess(h.get('dest_docker_host'))
        vol = self.docker.inspect(h['dest_volume'])
        state = dict(exists=vol is not None, docker_access=self.docker.kind, marker_state=None,
                     marker_migration_id=None, complete=False, conflict=None, free_bytes=None, base=None)
        self.base = None
        self.walk_root = None
        if vol is None:
            parent = '/var/lib/docker/volumes'
            try:
                # A volume created with mount options gets its space from its own filesystem, which is
                # not mounted before it exists: measured by the extraction itself (disk-full handling).
                if not _archive.is_mounted_volume(h.get('dest_driver'), h.get('dest_driver_options')):
                    st = os.statvfs(parent)
                    state['free_bytes'] = st.f_bavail * st.f_frsize
            except OSError:
                pass
            return state, None
        self._set_paths(vol)
        state['volume_dir'] = self._where()
        st = os.statvfs(self.volume_fs)
        state['free_bytes'] = st.f_bavail * st.f_frsize
        marker = self.marker = read_marker(self.marker_path)
        ours = marker is not None and marker.get('migration_id') == h['migration_id']
        if marker is not None:
            state['marker_state'] = marker.get('state')
            state['marker_migration_id'] = marker.get('migration_id')
        # A completed copy of another source under the same migration_id is not ours to overwrite.
        other_source = ours and marker.get('state') == 'complete' and marker_other_source(marker, h.get('source'))
        if other_source:
            ours = False
        # Whether this migration already completed here: the sender compares the fingerprint of _data
        # (computed below, in the same walk as the delta's records) with the source's.
        state['complete'] = bool(ours and marker.get('state') == 'complete' and os.path.isdir(self.data_dir))
        empty = not ours and self._data_empty()  # one listing (a mounted volume's may be remote)
        # lstat: in a mounted volume the staging name is inside what containers can write, and a symlink
        # put there is not this migration's staged tree (tar -C would write where it points, on this host).
        if ours and marker.get('state') == 'staging' and _archive.is_real_dir(self.staging):
            self.base = 'staging'
        elif self.held and ours and marker.get('state') == 'swapping':
            # Interrupted during a swap of entries: the volume's root may hold part of either tree.
            self.base = None
        elif ours or empty:
            # Our complete (or interrupted 'swapping': the staging path is then not trustworthy)
            # data, or nothing: _data becomes the base.
            self.base = 'data'
        if not ours and not empty and h.get('existing') != 'replace':
            other = ('migration %r' % marker.get('migration_id')) if marker and marker.get('migration_id') \
                else 'data that is not from this migration'
            if other_source:
                src = h.get('source') or {}
                other = ('the completed copy of migration %r from %s, not from this transfer\'s source volume %s on '
                         'host %s' % (marker.get('migration_id'), other_source, src.get('volume'), src.get('host')))
            state['conflict'] = ('Destination volume %s already exists and holds %s. Refusing to overwrite it; use '
                                 "existing: replace to replace its content (explicit opt-in), or another dest_volume."
                                 % (h['dest_volume'], other))
            users = self.docker.running_users(h['dest_volume'])
            if users:
                state['conflict'] = ('Destination volume %s is in use by running container(s) %s on the '
                                     'destination; stop them first.' % (h['dest_volume'], ', '.join(sorted(users))))
            return state, vol
        state['base'] = self.base
        if state['complete'] and h.get('existing') != 'replace':
            # Whether the application wrote to it since it completed: known after the walk of _data.
            self.complete_marker = marker
        if h.get('pass_') == 'delta':
            self.walk_root = {'staging': self.staging, 'data': self.data_dir}.get(self.base)
        elif state['complete']:
            self.walk_root = self.data_dir
        return state, vol

    def _set_paths(self, vol):
        mp = vol.get('Mountpoint')
        image = self.hello.get('dest_helper_image')
        err = unwritable_volume_error(vol.get('Name'), vol.get('Driver'), vol.get('Options'), image)
        if err:
            raise TransferError(err)
        if not mp or not os.path.isdir(mp) or os.path.basename(mp) != '_data':
            raise TransferError('Destination volume %s (mountpoint %s) has no data directory on this host; '
                                'volume_transfer writes into local volumes only.' % (vol.get('Name'), mp))
        vdir = os.path.dirname(mp)
        self._lock(vdir)
        # The marker lives in the volume's directory on the host's disk, beside _data, for both kinds.
        self.marker_path = os.path.join(vdir, MARKER_NAME)
        incoming = INCOMING_PREFIX + self.hello['migration_id']
        if _archive.is_mounted_volume(vol.get('Driver'), vol.get('Options')):
            # The staging tree lives inside the mounted filesystem (the swap renames within it).
            self.held = True
            self.data_dir = self.docker.hold(vol['Name'], image)
            self.staging = os.path.join(self.data_dir, incoming)
            self.volume_fs = self.data_dir
        else:
            self.data_dir = mp
            self.staging = os.path.join(vdir, incoming)
            self.volume_fs = vdir

    def _lock(self, vdir):
        """Hold the volume's lock until the receiver ends (check mode only probes it: it writes nothing).

        Taken before the marker is read: a second receiver for the same volume would otherwise remove the
        first one's staging tree under it, or the first would swap in the second's partial tree.
        """
        if self.lock is not None:
            return
        name = self.hello['dest_volume']
        wait = self.hello.get('lock_wait', LOCK_WAIT_SECONDS)
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    if self.hello.get('check_mode'):
                        _archive.VolumeLock.probe(vdir, name)  # refuses as a real run would, creates nothing
                    else:
                        self.lock = _archive.VolumeLock(vdir, name)
                    break
                except _archive.VolumeBusy as exc:
                    # The holder may be the receiver of a pass whose connection just died: it ends within
                    # RECEIVER_IDLE_SECONDS. Wait for it, keeping the sender's reads alive.
                    if time.monotonic() >= deadline:
                        raise TransferError('%s (waited %d s for it)' % (exc, wait))
                    self.io.send(b'K')
                    time.sleep(1)
        except OSError as exc:
            raise TransferError('Cannot lock destination volume %s (%s): %s'
                                % (name, os.path.join(vdir, _archive.VOLUME_LOCK), exc.strerror or exc))

    def _where(self):
        """The filesystem that holds the volume, for messages."""
        if self.held:
            return 'the filesystem mounted for volume %s' % self.hello['dest_volume']
        return self.volume_fs

    def _data_exclude(self, root):
        """What a walk of ``root`` leaves out: the receiver's own directories in a mounted volume's root."""
        if self.held and root == self.data_dir:
            return [prefix + '*' for prefix in OWN_NAMES]
        return None

    def _data_empty(self):
        if not self.held:
            return _is_empty_dir(self.data_dir)
        # Only real directories of the receiver's names are its own (a symlink or file of such a name is data).
        return all(n.startswith(OWN_NAMES) and _archive.is_real_dir(os.path.join(self.data_dir, n))
                   for n in os.listdir(self.data_dir))

    def _park_data_in_staging(self):
        """A mounted volume's root cannot be renamed: its entries move into the staging tree one by one.

        The staging root takes the volume root's metadata as the records sent described it.
        """
        st = os.lstat(self.data_dir)
        os.mkdir(self.staging, 0o700)
        for name in sorted(os.listdir(self.data_dir)):
            if not name.startswith(OWN_NAMES):
                os.rename(os.path.join(self.data_dir, name), os.path.join(self.staging, name))
        _archive.copy_dir_metadata(self.data_dir, self.staging, st)

    def _swap_in(self):
        """Make the verified staging tree the volume's content."""
        if not self.held:
            _archive.exchange_dirs(self.staging, self.data_dir)
            _archive.remove_tree(self.staging)
            return
        # The restore's entry-by-entry swap (and its recovery, _recover_swap) inside the mounted filesystem.
        staged = os.path.join(self.data_dir, _archive.STAGING_MARKER + self.hello['migration_id'])
        os.rename(self.staging, staged)
        _archive.swap_in(self.data_dir, staged)
        _archive.fsync_dir(self.data_dir)  # the renames are on disk before the marker says complete

    def _ensure_volume(self, vol):
        h = self.hello
        if vol is not None:
            ignored = existing_volume_overrides(vol, h.get('dest_driver'), h.get('dest_driver_options'),
                                                h.get('dest_labels'))
            if ignored:
                self.warnings.append('Destination volume %s exists already: %s, which apply only to a volume the '
                                     'transfer creates (recreate the volume to change them).'
                                     % (h['dest_volume'], '; '.join(ignored)))
        if vol is None:
            labels = dict(h.get('dest_labels') or {})
            driver = h.get('dest_driver') or 'local'
            options = h.get('dest_driver_options') or {}
            src = h.get('source_volume') or {}
            if not h.get('dest_labels'):
                labels = dict(src.get('labels') or {})
            err = unwritable_volume_error(h['dest_volume'], driver, options, h.get('dest_helper_image'))
            if err:
                raise TransferError(err)  # before creating it: no empty volume is left behind
            self.docker.create(h['dest_volume'], driver, options, labels)
            vol = self.docker.inspect(h['dest_volume'])
            if vol is None:
                raise TransferError('The destination volume %s could not be created.' % h['dest_volume'])
            self._set_paths(vol)  # takes the lock
            # _state saw no volume, unlocked: another run may have created and written it since (creating an
            # existing volume changes nothing). What this pass was planned on no longer holds.
            if read_marker(self.marker_path) is not None or not self._data_empty():
                raise TransferError('Destination volume %s was created and written by another transfer or restore '
                                    'while this one was starting; nothing was changed. Rerun to look at it again.'
                                    % h['dest_volume'])
        return vol

    def _recover_swap(self):
        """A crash between exchange and marker update leaves marker 'swapping': the staging path then holds
        the old content (or the new one, if the crash was before the exchange): neither is a trustworthy base.
        In a mounted volume, an interrupted entry-by-entry swap is first rolled back or forward."""
        if self.held:
            _archive.recover_swaps(self.data_dir)
        marker = read_marker(self.marker_path)
        if marker and marker.get('state') == 'swapping' and marker.get('migration_id') == self.hello['migration_id']:
            _archive.remove_tree(self.staging)

    def _send_records(self, root, records):
        """Walk ``root`` once: its records as E frames (``records``), then the end frame with its summary.

        The destination's running containers are listed (docker) in parallel with the walk.
        """
        users = []

        def list_users():
            try:
                users.extend(self.docker.running_users(self.hello['dest_volume']))
            except Exception as exc:  # reported by the end frame
                users_error.append(exc)
        users_error = []
        lister = None
        if self.data_dir is not None:
            lister = threading.Thread(target=list_users)
            lister.daemon = True
            lister.start()
        summary = None
        kept = self._staged_records() if records and root is not None and root == self.staging else None
        if kept is not None:
            # No walk: the records the previous pass kept of this staged tree (StagedRecordsWriter).
            self.base_kept = True
            self._warm_inode_cache(root)
            self._send_record_frames(kept.records())
            summary = kept.summary
            if self.hello.get('verify') != 'content':
                self.spill = kept
            else:
                kept.close()
        elif root is not None and os.path.isdir(root):
            # A delta's base walk keeps its records: the verification after the delta then re-reads only
            # what changed (TreeScan reuse). verify=content reads every file again anyway.
            if records and self.hello.get('verify') != 'content':
                self.spill = RecordSpill()
            scan = TreeScan(root, exclude=self._data_exclude(root), spill=self.spill)
            if records:
                self._send_record_frames((relpath, digest, code) for relpath, digest, code, dummy in scan)
            else:
                done = self._keepalive()  # only the fingerprint: no frame until the end of the walk
                try:
                    scan.run()
                finally:
                    done()
            summary = scan.summary.as_dict()
        if lister is not None:
            lister.join()
        if users_error:
            raise users_error[0]
        if self.complete_marker is not None and marker_dest_changed(self.complete_marker, summary):
            self.end_conflict = (
                'Destination volume %s changed after migration %r completed there (its data no longer has the '
                'fingerprint recorded at completion, %s; now %s): the application wrote to it on the destination. '
                'Refusing to overwrite it with the source\'s data; nothing was changed. Use existing: replace to '
                'replace it anyway (explicit opt-in), or another dest_volume or migration_id.'
                % (self.hello['dest_volume'], self.hello['migration_id'],
                   self.complete_marker.get('dest_fingerprint'), summary.get('fingerprint')))
        end = dict(summary=summary, in_use=users, conflict=self.end_conflict)
        if self.end_conflict is not None:
            # What the source was when this migration completed: the sender tells "the source has not changed
            # since" (the migration is done; the destination's later history is the application's) from "both
            # changed" (a conflict).
            end['complete_source'] = dict(fingerprint=self.complete_marker.get('source_fingerprint'),
                                          entries=self.complete_marker.get('source_entries'))
        self.io.send_json(b'e', end)

    def _send_record_frames(self, records):
        """(relpath, digest, type code) records as E frames of about RECORD_BATCH bytes."""
        batch = []
        size = 0
        for record in records:
            batch.append(record)
            size += len(record[0]) + 18
            if size >= RECORD_BATCH:
                self.io.send(b'E', encode_records(batch))
                batch = []
                size = 0
        if batch:
            self.io.send(b'E', encode_records(batch))

    def _warm_inode_cache(self, root):
        """lstat every entry of ``root`` with GNU find, in the background, output discarded.

        Without its base walk, the destination would first read the tree's inodes in the verification
        walk after the delta: from disk when they are not cached (a final delta long after the warm
        pass), where the base walk used to read them while the source was walked. find reads them
        meanwhile, on another CPU; when they are cached it costs little. Missing find: nothing is done.
        """
        try:
            self.procs.append(_process.spawn(['find', root, '-xdev', '-printf', '%C@\\n'], stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        except OSError:
            pass

    def _staged_records_path(self):
        return os.path.join(os.path.dirname(self.marker_path), STAGED_RECORDS_NAME)

    def _staged_records(self):
        """The records kept by the previous pass of this staged tree (StagedRecords), or None: walk it.

        Not in check mode (its prediction reads the tree itself), nor when the sender asks for a walk
        (``fresh_base``: the kept records did not describe the tree in the pass before).
        """
        h = self.hello
        if h.get('check_mode') or h.get('fresh_base') or self.marker is None:
            return None
        try:
            root_st = os.lstat(self.staging)
        except OSError:
            return None
        return StagedRecords.load(self._staged_records_path(), h['migration_id'],
                                  self.marker.get('staged_fingerprint'), root_st)

    def _drop_staged_records(self):
        """Before anything in the volume changes: kept records describe the staged tree only until then."""
        if self.marker_path is not None:
            path = self._staged_records_path()
            _archive.remove_tree(path)
            _archive.remove_tree(path + '.tmp')

    def _send_content_digest(self):
        """The content digest of the complete ``_data`` (C frame: verify=content found its metadata equal)."""
        if self.walk_root is None or self.walk_root != self.data_dir:
            raise TransferError('protocol error: content digest asked of a destination that is not complete')
        done = self._keepalive()
        try:
            digest = content_digest(self.data_dir, self._data_exclude(self.data_dir))
        finally:
            done()
        self.io.send_json(b'c', dict(content_digest=digest))

    # main ------------------------------------------------------------------
    def run(self):
        kind, payload = self.io.recv_expect(b'H')
        self.hello = h = _json(payload)
        if h.get('protocol') != PROTOCOL_VERSION:
            raise TransferError('protocol version mismatch (source %r, receiver %r)'
                                % (h.get('protocol'), PROTOCOL_VERSION))
        state, vol = self._state()
        self.io.send_json(b'S', state)
        if state.get('conflict'):
            self.io.recv_expect(b'Q')
            return
        # Right away, while the sender walks the source: the records of the delta's base (or, for a
        # complete destination, only its fingerprint), read-only, also in check mode.
        self._send_records(self.walk_root, h.get('pass_') == 'delta')
        while True:
            kind, payload = self.io.recv_expect(b'P', b'Q', b'C')
            if kind != b'C':
                break
            self._send_content_digest()
        if kind == b'Q':
            return
        if self.end_conflict:
            raise TransferError(self.end_conflict)  # the sender quits on it; never write past it
        if h.get('check_mode'):
            raise TransferError('protocol error: prepare frame in check mode')
        prep = _json(payload)
        src = prep.get('source') or {}
        h['source'].update(fingerprint=src.get('fingerprint'), entries=src.get('entries'), bytes=src.get('bytes'))
        self._drop_staged_records()
        vol = self._ensure_volume(vol)
        self._recover_swap()
        if h.get('pass_') == 'delta':
            # Onto this migration's staged tree the marker says 'staging' already: it is not rewritten
            # (one durable write less before the delta starts); the end of the pass rewrites it.
            if self.base != 'staging':
                _archive.remove_tree(self.staging)
                self._marker('staging')
                if self.base == 'data' and self.held:
                    self._park_data_in_staging()
                elif self.base == 'data':
                    # The records sent describe _data: it becomes the staging tree. The volume stops
                    # looking complete before anything moves.
                    os.rename(self.data_dir, self.staging)
                    os.mkdir(self.data_dir, 0o755)
                else:
                    os.mkdir(self.staging, 0o700)
            self.io.send_json(b'R', dict(base=self.base is not None))
            while True:
                kind, payload = self.io.recv_expect(b'X', b'D', b'Z')
                if kind != b'X':
                    break
                for rel in decode_paths(payload):
                    safe_delete(self.staging, rel)
            first = (kind, payload)
            guard = OnDiskGuard(self.staging)
        else:
            self._marker('staging')
            _archive.remove_tree(self.staging)
            os.mkdir(self.staging, 0o700)
            self.io.send_json(b'R', dict(base=False))
            first = None
            guard = None
        tar_info = self._extract(first, guard)
        if tar_info.get('error'):
            self.io.send_json(b'F', dict(ok=False, msg=tar_info['error'], dest_state='staging'))
            return
        self._verify_and_finish()

    def _frames(self, first):
        """Data payloads until the Z frame (its JSON kept in self.end_info)."""
        pending = first
        while True:
            if pending is not None:
                kind, payload = pending
                pending = None
            else:
                kind, payload = self.io.recv_expect(b'D', b'Z')
            if kind == b'Z':
                self.end_info = _json(payload)
                return
            yield payload

    def _extract(self, first, guard):
        h = self.hello
        self.end_info = None
        frames = self._frames(first)
        # Every pass ends with the tree synced to disk (_verify_and_finish): writing it back while it
        # arrives leaves that sync little to wait for.
        writeback = _archive.EarlyWriteback.for_tree(self.staging)
        frames = writeback.counted(frames)
        try:
            extract_frames(frames, h.get('compression') or 'zstd', self.staging,
                           allow_devices=bool(h.get('allow_devices')), on_member=guard)
        except _archive.StreamRejected as exc:
            self._drain()
            raise TransferError(str(exc) + ' Nothing was written outside the staging directory; the destination '
                                'volume is not complete.')
        except _archive.ArchiveError as exc:
            self._drain()
            text = str(exc)
            if 'No space left on device' in text:
                raise TransferError(self._disk_full())
            raise TransferError('Extraction on the destination failed: %s' % text)
        finally:
            # After an error, the extraction's own error is the one to report.
            error = writeback.stop()
        if error is not None:
            raise TransferError(self._not_written(error))
        return self.end_info or {}

    def _disk_full(self):
        return ('Destination disk full: no space left on the device holding %s. The destination volume is not '
                'complete (staging kept for a rerun after freeing space).' % self._where())

    def _not_written(self, exc):
        self._drain()
        if exc.errno == errno.ENOSPC:
            return self._disk_full()
        return ('Writing the transferred data to disk on the destination failed: %s. The destination volume is not '
                'complete.' % (exc.strerror or exc))

    def _sync_staging(self):
        try:
            _archive.sync_filesystem(self.staging)
        except OSError as exc:
            raise TransferError(self._not_written(exc))

    def _drain(self):
        """Read and discard the rest of the stream so the sender sees our error frame, not a broken pipe."""
        if self.end_info is not None:
            return
        try:
            while True:
                kind, dummy = self.io.recv()
                if kind == b'Z':
                    return
        except Exception:
            return

    def _keepalive(self):
        """Send K frames every 5 s (long walks without other frames) until the returned function is called."""
        return keepalive(self.io, b'K', KEEPALIVE_SECONDS)

    def _verify_and_finish(self):
        h = self.hello
        done = self._keepalive()
        try:
            # The one re-walk of the extracted tree: fingerprint and (verify=content) content digest together.
            # A delta with verify=metadata reuses its base walk's records of what the delta did not touch.
            reuse = self.spill if self.spill is not None and self.spill.usable else None
            # A pass that leaves the tree staged keeps this walk's records for the next pass, which then
            # plans without walking the tree first (StagedRecordsWriter).
            keep = None if h.get('finalize', True) else StagedRecordsWriter(self._staged_records_path())
            scan = TreeScan(self.staging, content=h.get('verify') == 'content', reuse=reuse, spill=keep)
            # A final pass: the tree is on disk before it is swapped in and marked complete, so a power loss
            # after that cannot leave a "complete" volume of empty files (delayed allocation) while the role
            # goes on to remove the source. A warm pass writes its data back too, while the application
            # still runs: otherwise the final pass, during the downtime, would wait for the whole warm
            # copy's dirty pages, not only for what changed. The sync waits on the disk while the walk
            # uses the CPU.
            try:
                summary = _archive.run_beside(self._sync_staging, scan.run)
            except BaseException:
                if keep is not None:
                    keep.discard()
                raise
            if keep is not None:
                # Before the marker names this fingerprint as the staged one (StagedRecords.load checks both).
                keep.commit(migration_id=h['migration_id'], summary=summary.as_dict())
            dest_content = scan.content
            reused = reuse.reused if reuse is not None else 0
            if self.spill is not None:
                self.spill.close()
        finally:
            done()
        dummy, payload = self.io.recv_expect(b'V')
        src = _json(payload)
        problems = []
        if summary.entries != src.get('entries'):
            problems.append('%d entries on the destination, %d on the source' % (summary.entries, src.get('entries')))
        if summary.fingerprint != src.get('fingerprint'):
            problems.append('tree fingerprint %s differs from the source\'s %s' % (
                summary.fingerprint, src.get('fingerprint')))
        if dest_content is not None and dest_content != src.get('content_digest'):
            problems.append('content digest %s differs from the source\'s %s' % (
                dest_content, src.get('content_digest')))
        verified = not problems
        result = dict(ok=True, verified=verified, dest_fingerprint=summary.fingerprint, entries=summary.entries,
                      content_digest=dest_content, dest_state='staging', warnings=self.warnings,
                      records_reused=reused, base_kept=self.base_kept)
        if not h.get('finalize', True):
            self.hello['source']['fingerprint'] = src.get('fingerprint')
            self._marker('staging', staged_fingerprint=summary.fingerprint)
            self.io.send_json(b'F', result)
            return
        if problems:
            hint = 'Was the source modified during the final pass?'
            if h.get('pass_') == 'delta' and len(problems) == 1 and dest_content is not None \
                    and dest_content != src.get('content_digest'):
                # Metadata equal, content not: a delta picks entries by metadata only, so a file edited with
                # its size and mtime kept was never sent, and every rerun of the delta would fail the same way.
                hint = ('A delta sends only entries whose metadata (type, size, mtime, mode, owner, link target, '
                        'xattrs) changed: a file whose content changed while its size and mtime stayed the same is '
                        'not sent again, and rerunning the delta fails the same way. Run this pass with pass: full, '
                        'which copies everything again (or, if the source was written during the pass, stop its '
                        'writers first).')
            result.update(ok=False, msg='Verification failed on the destination: %s. The destination volume is not '
                          'marked complete (data left staged). %s' % ('; '.join(problems), hint))
            # Planned on kept records that a change since the previous pass made wrong: worth a pass on a walk.
            result['kept_base_mismatch'] = self.base_kept and (
                summary.entries != src.get('entries') or summary.fingerprint != src.get('fingerprint'))
            self.io.send_json(b'F', result)
            return
        self.hello['source']['fingerprint'] = src.get('fingerprint')
        self._marker('swapping')
        self._swap_in()
        # What the data was at completion: a later run that finds it changed refuses to overwrite it.
        self._marker('complete', dest_fingerprint=summary.fingerprint, dest_summary=summary.as_dict(),
                     fingerprint_version=_tree.FINGERPRINT_VERSION)
        result['dest_state'] = 'complete'
        self.io.send_json(b'F', result)

    def cleanup(self):
        try:
            if self.spill is not None:
                self.spill.close()
            if self.docker is not None:
                self.docker.release()
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
        finally:
            if self.lock is not None:
                self.lock.release()  # last: nothing of this receiver touches the volume any more
                self.lock = None


def extract_frames(chunks, compression, dest, allow_devices=False, on_member=None):
    """chunks -> [zstd -d] -> TarStreamValidator -> GNU tar -x into ``dest``. Raises ArchiveError/StreamRejected.

    ``_archive.extract_stream`` with ``tar_extract_argv`` above (the staging root exists) and
    no manifest member (the manifest travels in the protocol).
    """
    result = _archive.extract_stream(chunks, compression, dest, allow_devices=allow_devices, on_member=on_member,
                                     require_manifest=False, strip_manifest=False, tar_argv=tar_extract_argv(dest),
                                     digest=False)
    return dict(entries=result['entries'])


def receiver_main():
    """Entry point on the destination: frames on stdin/stdout, errors as an error frame + exit 1."""
    os.umask(0o077)
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    io_ = FrameIO(stdin.read1 if hasattr(stdin, 'read1') else stdin.read, stdout.write, stdout.flush)
    rec = Receiver(io_)
    code = 0
    watch = ReceiverIdleWatch(io_)
    try:
        rec.run()
    except (ConnectionLost, BrokenPipeError) as exc:
        sys.stderr.write('volumeops receiver: connection lost: %s; destination left not complete\n' % exc)
        code = 3
    except TransferError as exc:
        code = 1
        try:
            io_.send_json(b'!', dict(msg=str(exc)))
        except Exception:
            sys.stderr.write('volumeops receiver: %s\n' % exc)
    except OSError as exc:
        code = 1
        if exc.errno == errno.ENOSPC:
            msg = ('Destination disk full (%s). The destination volume is not complete.' % exc)
        else:
            msg = 'The receiver failed on the destination: %s' % exc
        try:
            io_.send_json(b'!', dict(msg=msg))
        except Exception:
            sys.stderr.write('volumeops receiver: %s\n' % msg)
    except Exception as exc:
        import traceback
        code = 1
        msg = 'Unexpected receiver error on the destination: %s: %s' % (exc.__class__.__name__, exc)
        sys.stderr.write(traceback.format_exc())
        try:
            io_.send_json(b'!', dict(msg=msg))
        except Exception:
            pass
    finally:
        watch.stop()
        rec.cleanup()
    sys.stdout.flush()
    raise SystemExit(code)
