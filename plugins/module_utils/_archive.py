# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The archive format and the reusable stream pieces of the collection.

Used by volume_backup, volume_restore, backup_info and the transfer code
(host-to-host migration streams the same format).

The archive
-----------
A pax (POSIX.1-2001) tar stream written by GNU tar with full-fidelity flags
(see ``tar_create_argv``), optionally compressed with zstd or gzip. The FIRST
member is ``.volumeops-manifest.json`` (a regular file written by this module,
see ``manifest_member``): GNU tar can list and extract it in an emergency, and
``volume_restore`` strips it so it is never written into the volume. The
rest of the stream is GNU tar's output of ``-C <root> .``, so the volume root's
own owner, mode, mtime, xattrs and ACLs travel in the ``./`` entry.
The manifest may be compressed on its own (a separate zstd frame or gzip
member, see ``write_compressed_stream``'s deferred head): decompressed, the
stream is the same.

Next to ``<volume>_<UTC timestamp>.tar.zst`` live two sidecars:
``<archive>.sha256`` (``sha256sum -c`` format, hash of the compressed bytes)
and ``<archive>.manifest.json`` (a copy of the manifest for backup_info and
idempotency without decompressing anything). The in-stream manifest is
authoritative for restore.

Reusable pieces (all argument lists, never a shell):
- ``tar_create_argv`` / ``tar_extract_argv``: the GNU tar command lines.
- ``compressor_argv`` / ``decompressor_argv``: zstd / gzip / none.
- ``write_compressed_stream``: producer (argv or chunk iterator) -> compressor
  -> file object, sha256 of the compressed bytes, every exit status checked.
- ``TarStreamValidator``: streaming parser of an untrusted tar stream; refuses
  traversal, writes through links, devices; strips and returns the manifest.
- ``extract_stream``: compressed source -> hash -> decompressor -> validator ->
  GNU tar -x into a directory, every exit status checked.
- ``new_staging_dir`` / ``exchange_dirs`` / ``remove_tree`` / ``verify_tree``:
  staging + verify + atomic swap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import errno
import fnmatch
import hashlib
import json
import os
import re
import select
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading

from ansible_collections.volumeops.docker.plugins.module_utils import _process
from ansible_collections.volumeops.docker.plugins.module_utils import _tree

FORMAT_VERSION = 1
COLLECTION_VERSION = '0.1.0'
MANIFEST_MEMBER = '.volumeops-manifest.json'
CHUNK = 1024 * 1024
TMP_MARKER = '.volumeops-tmp-'
STAGING_MARKER = '.volumeops-staging-'
OLD_MARKER = '.volumeops-old-'
READY_MARKER = '.volumeops-ready-'
# Archives cannot hold sockets (GNU tar skips them), so they are left out of
# every fingerprint that is compared with an archive's manifest.
SKIP_TYPES = ('s',)

EXTENSIONS = {'zstd': '.tar.zst', 'gzip': '.tar.gz', 'none': '.tar'}
ARCHIVE_RE = re.compile(r'^(?P<volume>[a-zA-Z0-9][a-zA-Z0-9_.-]+)_(?P<ts>\d{8}T\d{6}(?:\.\d{1,6})?Z)'
                        r'(?P<ext>\.tar(?:\.zst|\.gz)?)$')


class ArchiveError(Exception):
    """A user-facing failure; ``str(exc)`` is the message."""


# --- naming ------------------------------------------------------------------------------------

def utc_timestamp(when=None):
    """UTC timestamp used in archive names, microseconds included so forced runs never collide."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    return when.strftime('%Y%m%dT%H%M%S.%fZ')


def archive_name(volume, compression, when=None):
    """``<volume>_<UTC timestamp><ext>``, e.g. ``db_20250101T120000.000000Z.tar.zst``."""
    return '%s_%s%s' % (volume, utc_timestamp(when), EXTENSIONS[compression])


def parse_archive_name(name):
    """dict(volume, timestamp, created (ISO 8601), compression) for an archive file name, or None."""
    m = ARCHIVE_RE.match(name)
    if not m:
        return None
    ts = m.group('ts')
    fmt = '%Y%m%dT%H%M%S.%fZ' if '.' in ts else '%Y%m%dT%H%M%SZ'
    try:
        created = datetime.datetime.strptime(ts, fmt).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    compression = {'.tar.zst': 'zstd', '.tar.gz': 'gzip', '.tar': 'none'}[m.group('ext')]
    return dict(volume=m.group('volume'), timestamp=ts, created=created.isoformat(),
                epoch=created.timestamp(), compression=compression)


def list_archives(directory, volume=None):
    """Archives in ``directory`` (optionally of one volume), oldest first, as dicts with ``path``.

    Only files whose name parses as an archive name count; temporary files and
    sidecars are ignored. A missing directory gives an empty list.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    result = []
    for name in names:
        info = parse_archive_name(name)
        if info is None or (volume is not None and info['volume'] != volume):
            continue
        info['path'] = os.path.join(directory, name)
        info['name'] = name
        result.append(info)
    result.sort(key=lambda i: (i['epoch'], i['name']))
    return result


def paired_archive_manifest(path):
    """The manifest copy of the archive at ``path`` when both its sidecars are there, else None: an archive
    whose write was cut short, or one copied in by hand. Says nothing about the archive file itself (see
    ``archive_size_problem``)."""
    if not os.path.exists(path + '.sha256'):
        return None
    return read_sidecar_manifest(path)


def archive_size_problem(path, manifest):
    """Why the archive file at ``path`` is not the one its sidecar ``manifest`` describes, or None.

    One ``stat``, no read: the sidecar manifest records the archive's size (``archive_size``); a manifest
    written before that field existed only requires a non-empty file (the manifest member alone is more
    than that). Finds an archive truncated or emptied after it was written (a copy cut short, a disk
    error, a file overwritten by hand) whose sidecars were kept; a same-size corruption needs the
    checksum (``backup_info`` with ``verify``).
    """
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        return 'it cannot be read: %s' % (exc.strerror or exc)
    expected = manifest.get('archive_size')
    if isinstance(expected, int) and not isinstance(expected, bool):
        if size != expected:
            return 'it is %d bytes, its manifest says %d' % (size, expected)
    elif size == 0:
        return 'it is empty (0 bytes)'
    return None


def whole_archive_manifest(path):
    """The manifest copy of the archive at ``path`` when the archive is whole (both sidecars there, and the
    file of the size its manifest records: ``archive_size_problem``), else None: an archive whose write was
    cut short, one copied in by hand, one truncated since."""
    manifest = paired_archive_manifest(path)
    if manifest is None or archive_size_problem(path, manifest) is not None:
        return None
    return manifest


def manifest_source(manifest):
    """The source an archive was made from, from its manifest: ``(kind, where, host)``.

    ``('volume', <volume name>, host)`` or ``('path', <real path of the directory>, host)``. Archives of
    different sources may share a name (``/srv/app1/data`` and ``/srv/app2/data`` are both ``data``; a
    volume on two hosts writing to one shared ``dest``): the unchanged check and retention must only
    ever compare an archive with archives of its own source. Manifests written before ``source_kind``
    was recorded: a path backup recorded the path as given in ``source_path`` (its real path on this
    host stands in), any other archive is of a volume.
    """
    kind = manifest.get('source_kind')
    if kind is None:
        kind = 'path' if manifest.get('source_path') else 'volume'
    if kind == 'path':
        where = manifest.get('source_real_path')
        if where is None and isinstance(manifest.get('source_path'), str):
            where = os.path.realpath(manifest['source_path'])
    else:
        where = manifest.get('volume')
    return kind, where, manifest.get('source_host')


def describe_source(source):
    kind, where, host = source
    return '%s %s on host %s' % ('the directory' if kind == 'path' else 'the volume', where, host)


def complete_archives(archives, volume, source=None, damaged=None):
    """Those of ``archives`` (``list_archives`` entries, oldest first) that are whole archives of ``volume``.

    Whole, and the manifest copy names ``volume``: anything else (an archive copied in by hand, one whose
    write was cut short, one truncated since it was written, a name that only looks like this volume's) is
    never counted nor chosen by retention.
    ``source`` (see ``manifest_source``): only archives of that source count.
    ``damaged``: a list that gets ``(info, problem)`` for each archive of ``volume`` (and ``source``) with
    both sidecars whose file is not of the size its manifest records (``archive_size_problem``).
    """
    result = []
    for info in archives:
        if info['volume'] != volume:
            continue
        manifest = paired_archive_manifest(info['path'])
        if manifest is None or manifest.get('volume') != volume or (
                source is not None and manifest_source(manifest) != source):
            continue
        problem = archive_size_problem(info['path'], manifest)
        if problem is None:
            result.append(info)
        elif damaged is not None:
            damaged.append((info, problem))
    return result


def expired_archives(archives, keep, current=None):
    """Which of ``archives`` (oldest first) retention deletes so that ``keep`` archives remain.

    ``current`` (this run's archive: written, about to be written, or the unchanged one found) always
    stays and counts as one of the ``keep``, wherever its time stamp sorts: a clock set back must not
    make a run delete the archive it has just written.
    """
    others = [info for info in archives if info['path'] != current]
    return others[:max(0, len(others) - (keep - 1))]


def remove_archive(path):
    """Delete an archive, then its sidecars: a run cut short in between leaves only sidecars of an archive
    that does not exist, which ``cleanup_stale_temp`` removes, never an archive without its checksum."""
    for name in (path,) + sidecar_paths(path):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def compression_from_path(path):
    """Compression guessed from the file name, else from the magic bytes."""
    if path.endswith('.zst'):
        return 'zstd'
    if path.endswith('.gz') or path.endswith('.tgz'):
        return 'gzip'
    if path.endswith('.tar'):
        return 'none'
    with open(path, 'rb') as f:
        magic = f.read(4)
    if magic == b'\x28\xb5\x2f\xfd':
        return 'zstd'
    if magic[:2] == b'\x1f\x8b':
        return 'gzip'
    return 'none'


def sidecar_paths(archive):
    return archive + '.sha256', archive + '.manifest.json'


def read_sidecar_sha256(archive):
    """The hex digest from ``<archive>.sha256``, or None when the file is missing."""
    path = archive + '.sha256'
    try:
        with open(path, 'r') as f:
            text = f.read()
    except FileNotFoundError:
        return None
    m = re.match(r'^([0-9a-fA-F]{64}) [ *]', text)  # sha256sum -c takes either case
    if not m:
        raise ArchiveError('Checksum file %s is not in sha256sum format.' % path)
    return m.group(1).lower()


def read_sidecar_manifest(archive):
    """The manifest copy next to the archive, or None when missing or unreadable."""
    try:
        with open(archive + '.manifest.json', 'rb') as f:
            return parse_manifest(f.read())
    except (FileNotFoundError, ArchiveError):
        return None


# --- manifest ----------------------------------------------------------------------------------

def build_manifest(volume, summary, driver=None, driver_options=None, labels=None, source_host=None,
                   compression=None, exclude=None, consistency='strict', created=None, extra=None):
    """The manifest dict. ``summary`` is a ``_tree.TreeSummary`` of the archived tree."""
    manifest = dict(
        format='volumeops-archive', format_version=FORMAT_VERSION,
        collection='volumeops.docker', collection_version=COLLECTION_VERSION,
        volume=volume, driver=driver, driver_options=driver_options or {}, labels=labels or {},
        source_host=source_host or os.uname()[1],
        created=created or datetime.datetime.now(datetime.timezone.utc).isoformat(),
        compression=compression, exclude=list(exclude or []), consistency=consistency,
        entries=summary.entries, bytes=summary.bytes, fingerprint=summary.fingerprint,
        fingerprint_version=_tree.FINGERPRINT_VERSION, skip_types=list(SKIP_TYPES),
    )
    manifest.update(extra or {})
    return manifest


def manifest_bytes(manifest):
    return json.dumps(manifest, sort_keys=True, indent=1).encode('utf-8') + b'\n'


def parse_manifest(data):
    """Parse and check a manifest (bytes). Raises ArchiveError."""
    try:
        manifest = json.loads(data.decode('utf-8'))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchiveError('The archive manifest is not valid JSON: %s' % exc)
    if not isinstance(manifest, dict) or manifest.get('format') != 'volumeops-archive':
        raise ArchiveError('The archive manifest is not a volumeops archive manifest.')
    if manifest.get('format_version') != FORMAT_VERSION:
        raise ArchiveError('Archive format version %r is not supported (this collection reads version %d).'
                           % (manifest.get('format_version'), FORMAT_VERSION))
    for key, kind in (('volume', str), ('entries', int), ('bytes', int), ('fingerprint', str)):
        if not isinstance(manifest.get(key), kind):
            raise ArchiveError('The archive manifest lacks a valid %r field.' % key)
    return manifest


def manifest_member(manifest, mtime=None):
    """The manifest as the first tar member: header(s) + data, padded, WITHOUT end-of-archive.

    GNU tar's own output (which ends the archive) is appended to these bytes.
    """
    data = manifest_bytes(manifest)
    info = tarfile.TarInfo(MANIFEST_MEMBER)
    info.size = len(data)
    info.mode = 0o600
    info.mtime = int(mtime if mtime is not None else 0)
    info.type = tarfile.REGTYPE
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    pad = (512 - len(data) % 512) % 512
    return header + data + b'\0' * pad


# --- command lines ---------------------------------------------------------------------------

# Deterministic pax headers: no PIDs in extended header names, no atime/ctime.
PAX_OPTION = '--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime'


def tar_exclude_options(patterns):
    """GNU tar options that leave out exactly what ``_tree.walk(exclude=patterns)`` leaves out.

    The walk's meaning (see ``_tree.exclude_matcher``): ``*``/``?``/``[...]`` never match ``/``;
    a pattern without ``/`` matches an entry's name at any depth; one with ``/`` the relative path;
    the root is never excluded. GNU tar's defaults differ (wildcards match ``/``, and the root's
    name ``.`` is tested too: ``.*`` would leave out the whole tree), hence per pattern:

    - with ``/``: ``--anchored --no-wildcards-match-slash --exclude=./<pattern>``;
    - without: ``--no-anchored --no-wildcards-match-slash``, so that tar tests the pattern against
      the last name of the path only, except that it also tests the root ``.``. A pattern that can
      match ``.`` is at most one single-character token ``T`` among ``*`` (``.*``, ``*.*``, ``?``,
      ``*``): it is rewritten into patterns that match the same names except ``.`` (names of two
      or more characters: ``T?*``, ``?*T``, ``?*T*``/``T?*``, ``??*``; and one-character names
      with ``--anchored --wildcards-match-slash --exclude=*/T``, which needs a ``/`` before the
      name and so never matches ``.``).
    """
    options = ['--wildcards']
    for pattern in patterns or []:
        anchored, pattern = _tree.normalized_exclude(pattern)
        if anchored:
            options += ['--anchored', '--no-wildcards-match-slash', '--exclude=./' + pattern]
            continue
        if not fnmatch.fnmatchcase('.', pattern):
            options += ['--no-anchored', '--no-wildcards-match-slash', '--exclude=' + pattern]
            continue
        tokens = _tree.glob_tokens(pattern)
        chars = [t for t in tokens if t != '*']
        if not chars:  # '*': every name
            names, single = ['??*'], '?'
        else:
            (token,) = chars  # matches '.': exactly one single-character token (see above)
            before, after = tokens[0] == '*', tokens[-1] == '*'
            if before and after:
                names = ['?*' + token + '*', token + '?*']
            elif after:
                names = [token + '?*']
            elif before:
                names = ['?*' + token]
            else:
                names = []
            single = token
        for name in names:
            options += ['--no-anchored', '--no-wildcards-match-slash', '--exclude=' + name]
        options += ['--anchored', '--wildcards-match-slash', '--exclude=*/' + single]
    return options


def tar_create_argv(root, exclude=None, tar='tar', one_file_system=True, index_fd=None):
    """GNU tar command line writing the tree at ``root`` to stdout, full fidelity, sorted.

    ``-C root .`` makes the root itself the ``./`` entry (its owner and mode travel).
    ``exclude``: see ``tar_exclude_options``. ``one_file_system``: directories on another
    filesystem than their parent are archived empty (``_tree.walk`` does not enter them either).
    ``index_fd``: a descriptor (inherited by tar, see TarMemberCount) to which tar writes one line per
    archived member.
    """
    argv = [tar, '--create', '--file=-', '--format=posix', PAX_OPTION, '--xattrs', '--xattrs-include=*',
            '--acls', '--sparse', '--numeric-owner', '--sort=name']
    if one_file_system:
        argv.append('--one-file-system')
    if exclude:
        argv += tar_exclude_options(exclude)
    if index_fd is not None:
        # --verbose lists each member as it is archived, into the index file instead of stdout (the
        # archive). Escape quoting keeps a name with a newline on one line.
        argv += ['--verbose', '--quoting-style=escape', '--index-file=/proc/self/fd/%d' % index_fd]
    argv += ['--directory', root, '.']
    return argv


def tar_extract_argv(dest, tar='tar'):
    """GNU tar command line extracting a (validated) stream from stdin into ``dest``.

    Owners numeric and kept (``--same-owner``), all permission bits kept (``-p``),
    xattrs of every namespace and ACLs restored; GNU tar applies directory
    metadata after the directory's content.
    """
    return [tar, '--extract', '--file=-', '--preserve-permissions', '--same-owner', '--numeric-owner',
            '--xattrs', '--xattrs-include=*', '--acls', '--delay-directory-restore',
            '--directory', dest]


def compressor_argv(compression, level=None, zstd='zstd', gzip='gzip'):
    """Compressor reading stdin, writing stdout; None for ``none``."""
    if compression == 'zstd':
        argv = [zstd, '-q', '-T0', '-c']
        if level is not None:
            argv.insert(1, '-%d' % level)
            if level > 19:
                argv.insert(1, '--ultra')
        return argv
    if compression == 'gzip':
        return [gzip, '-c', '-n'] + (['-%d' % level] if level is not None else [])
    return None


def decompressor_argv(compression, zstd='zstd', gzip='gzip'):
    if compression == 'zstd':
        return [zstd, '-q', '-d', '-c']
    if compression == 'gzip':
        return [gzip, '-d', '-c']
    return None


def check_tools(compression, need_tar=True):
    """Names of missing host tools for the local data path."""
    missing = []
    if need_tar:
        tar = shutil.which('tar')
        if not tar:
            missing.append('GNU tar')
        else:
            out = _process.output([tar, '--version'])[1]
            if b'GNU tar' not in out:
                missing.append('GNU tar (the tar on PATH is not GNU tar)')
    if compression == 'zstd' and not shutil.which('zstd'):
        missing.append('zstd')
    if compression == 'gzip' and not shutil.which('gzip'):
        missing.append('gzip')
    return missing


# --- pipelines ---------------------------------------------------------------------------------

def widen_pipe(f, size=CHUNK):
    """Give a pipe a larger kernel buffer (Linux F_SETPIPE_SZ); best effort.

    With the default 64 KiB the stages of decompressor -> validator -> tar run
    in lockstep; a bigger buffer lets each run ahead while another is busy.
    """
    try:
        import fcntl
        fcntl.fcntl(f.fileno(), getattr(fcntl, 'F_SETPIPE_SZ', 1031), size)
    except (OSError, ValueError, ImportError):
        pass


def run_beside(background, foreground):
    """Run ``background()`` in a thread while ``foreground()`` runs here; return foreground's result.

    For two steps that are both needed and independent, one waiting on the
    disk (an fsync), the other on the CPU (a metadata walk). The thread is
    always joined before returning; its exception, if any, is raised here.
    """
    box = {}

    def target():
        try:
            background()
        except BaseException as exc:  # pylint: disable=broad-except; re-raised in the caller's thread
            box['error'] = exc

    thread = threading.Thread(target=target)
    thread.start()
    try:
        result = foreground()
    finally:
        thread.join()
    if 'error' in box:
        raise box['error']
    return result


WRITEBACK_EVERY = 32 * 1024 * 1024

# Extracted trees (restore, transfer) are written back every this many bytes of the compressed
# stream (about three times as much on disk): one syncfs per step, not per file.
TREE_WRITEBACK_EVERY = 256 * 1024 * 1024


_LIBC_FUNCTIONS = {}


def _libc_function(name, *argtypes):
    """The C library's ``name`` (returning int, errno kept), or None where it has none; looked up once."""
    if name not in _LIBC_FUNCTIONS:
        try:
            fn = getattr(ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True), name)
            fn.argtypes = list(argtypes)
            fn.restype = ctypes.c_int
        except (OSError, AttributeError):
            fn = None
        _LIBC_FUNCTIONS[name] = fn
    return _LIBC_FUNCTIONS[name]


def sync_filesystem(path):
    """Write everything of the filesystem holding ``path`` to disk (syncfs(2)); raise OSError on failure.

    A restored or transferred tree is made durable this way before it replaces the old content or
    is marked complete: otherwise a power loss shortly after could leave a complete-looking volume
    of empty files (delayed allocation) while the old content is already gone. One syncfs instead
    of an fsync per file. Without syncfs (not Linux/glibc), sync(2): the same, for every filesystem.
    """
    fn = _libc_function('syncfs', ctypes.c_int)
    if fn is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


class EarlyWriteback(object):
    """Have the kernel write data to disk while it is still being produced.

    ``sync`` is called in a background thread every ``every`` bytes the caller
    reports (``wrote``); ``flush``, when given, first, in the caller's thread
    (data still in a Python buffer must reach the kernel before it can be
    written back).

    An archive must be fsynced before it gets its final name, and an extracted
    tree synced before it replaces the old content. Left to the kernel, a
    machine with plenty of memory keeps all of it dirty in the page cache
    until that final sync, which then waits for all of it (about 0.5 s per
    300 MB here). Syncing as the data comes moves that wait into the time the
    compressor or the extraction runs anyway, and the final sync finds little
    left to write. Requests are coalesced: while one sync runs, further ones
    are not queued.

    An error of a background sync is re-raised by ``finish()``: the kernel
    reports a writeback error only once per descriptor, so the caller's final
    sync might no longer see it. ``stop()``/``finish()`` wait for a running sync
    and serve one requested before them, but start no other: every caller syncs
    once more itself (a tree beside its verification walk, an archive before its
    rename), and a last background sync only made it wait for the disk first
    (about 60 ms after a 1 GB transfer on the bench).
    """

    def __init__(self, sync, flush=None, every=WRITEBACK_EVERY):
        self._sync = sync
        self._flush = flush
        self._every = every
        self._pending = 0
        self._requested = False  # a sync was asked for since the last one started
        self._wake = threading.Event()
        self._stopping = False
        self._error = None
        self._thread = None

    @classmethod
    def for_file(cls, f, every=WRITEBACK_EVERY):
        """fdatasync of the binary file object ``f`` (its Python buffer flushed first)."""
        return cls(lambda: os.fdatasync(f.fileno()), flush=f.flush, every=every)

    @classmethod
    def for_tree(cls, path, every=TREE_WRITEBACK_EVERY):
        """syncfs of the filesystem holding directory ``path`` (a tree being extracted into it)."""
        return cls(lambda: sync_filesystem(path), every=every)

    def wrote(self, count):
        """Account for ``count`` bytes just written (or passed on to the writer)."""
        self._pending += count
        if self._pending < self._every or self._error is not None:
            return
        self._pending = 0
        if self._flush is not None:
            self._flush()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run)
            self._thread.daemon = True
            self._thread.start()
        self._requested = True
        self._wake.set()

    def counted(self, chunks):
        """Generator: ``chunks`` unchanged, each accounted for by ``wrote``."""
        for chunk in chunks:
            self.wrote(len(chunk))
            yield chunk

    def _run(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            stopping = self._stopping  # read before syncing: a request made before finish() is served
            if self._requested:
                self._requested = False
                try:
                    self._sync()
                except OSError as exc:
                    self._error = exc
                    return
            if stopping:
                return

    def stop(self):
        """Stop the thread; return the OSError a background sync met, or None."""
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
            self._thread = None
        return self._error

    def finish(self):
        """``stop()``, raising the OSError a background sync met, if any."""
        error = self.stop()
        if error is not None:
            raise error


def _pipe_at_eof(f):
    """True when the writer of pipe ``f`` has closed it and nothing is left to read (never blocks)."""
    try:
        os.set_blocking(f.fileno(), False)
        return os.read(f.fileno(), 1) == b''
    except (BlockingIOError, OSError, ValueError):
        return False


def _stderr_text(f):
    f.seek(0)
    text = f.read().decode('utf-8', 'replace').strip()
    return text[-4000:]


def _feed(source, dest_pipe, errors, hasher=None):
    """Thread body: copy chunks of ``source`` to ``dest_pipe`` (optionally hashing), then close it."""
    try:
        for chunk in source:
            if hasher is not None:
                hasher.update(chunk)
            dest_pipe.write(chunk)
    except BrokenPipeError:
        pass  # the reader died; its exit status tells why
    except Exception as exc:  # reported by the caller
        errors.append(exc)
    finally:
        try:
            dest_pipe.close()
        except OSError:
            pass


# How much of the stream may wait in memory while a deferred head is made (write_compressed_stream):
# beyond it the producer waits too (a full pipe), so memory stays bounded on any tree.
HEAD_WAIT_MAX = 32 * 1024 * 1024


class HeadDeclined(Exception):
    """Raised by a deferred head's maker: write no archive after all (see write_compressed_stream).

    Nothing has reached the output file then; the caller decides what happens instead.
    """


class _HeadBeside(object):
    """A stream's first member, made in a thread while the rest of the stream is produced.

    The stream's first chunks wait here (at most HEAD_WAIT_MAX bytes, then the caller's next
    ``take`` waits for the head) so that the output file gets the head first. The head is
    compressed on its own (zstd and gzip decompress concatenated frames/members as one stream).
    """

    def __init__(self, make_head, comp_argv):
        self._box = {}
        self._held = []
        self._held_size = 0
        self._released = False
        self._thread = threading.Thread(target=self._run, args=(make_head, comp_argv))
        self._thread.daemon = True
        self._thread.start()

    def _run(self, make_head, comp_argv):
        try:
            head = make_head()
            if comp_argv is not None:
                rc, out, err = _process.output(comp_argv, stdin_data=head)
                if rc != 0:
                    raise ArchiveError('%s failed (exit %s): %s' % (comp_argv[0], rc, err.decode('utf-8', 'replace').strip()))
                head = out
            self._box['head'] = head
        except BaseException as exc:  # pylint: disable=broad-except; re-raised in the caller's thread
            self._box['error'] = exc

    def take(self, chunk):
        """The chunks to write now, in order: none while the head is not ready, else the head and all held."""
        if self._released:
            return (chunk,)
        if chunk:
            self._held.append(chunk)
        self._held_size += len(chunk)
        if self._thread.is_alive() and self._held_size < HEAD_WAIT_MAX:
            return ()
        return self.release()

    def release(self):
        """Wait for the head; return it and the held chunks (raises what the head's maker raised)."""
        if self._released:
            return ()
        self._thread.join()
        if 'error' in self._box:
            raise self._box['error']
        self._released = True
        chunks, self._held = [self._box['head']] + self._held, []
        return chunks

    @property
    def pending(self):
        return not self._released

    def join(self):
        self._thread.join()


class TarMemberCount(object):
    """Counts the members GNU tar archives, from the index it writes to ``fd`` (``tar_create_argv(index_fd=fd)``,
    one line per member): an unnamed temporary file, counted once tar ended.

    The backup's safety net: an archive must hold as many members as its manifest has entries
    (the walk's count), or tar left out what the manifest promises. No second read of the data (the
    stream goes from tar to the compressor without passing through this process). A file, not a
    pipe: tar writes (and flushes) one line per member, and a reader woken up for each of them
    slowed a backup of 100,000 small files by a third; into a file it costs nothing measurable.
    Give ``fd`` to tar with ``pass_fds`` (it is not inherited otherwise); ``result()`` after tar ended.
    """

    def __init__(self):
        self._file = tempfile.TemporaryFile()
        self.fd = self._file.fileno()

    def result(self):
        """The number of members tar listed (call once tar has ended); closes the file."""
        try:
            self._file.seek(0)
            return sum(chunk.count(b'\n') for chunk in file_chunks(self._file))
        finally:
            self._file.close()


def write_compressed_stream(out, compression, level=None, head=b'', producer_argv=None, producer_chunks=None,
                            producer_cwd=None, producer_pass_fds=(), read_ahead=None):
    """Write ``head`` + the producer's output, compressed, to the binary file object ``out``.

    The producer is either a command (``producer_argv``; its stdout goes straight
    into the compressor, no Python in that byte path) or an iterable of byte
    chunks (``producer_chunks``; e.g. a helper container's stdout).
    ``head`` may also be a function (with ``producer_argv`` only) that makes it while the producer
    already runs: it runs in a thread, the stream's first compressed bytes wait in memory
    (HEAD_WAIT_MAX) until it returns, and the head is compressed on its own and written first. When
    it raises (e.g. HeadDeclined), nothing has been written to ``out`` and that exception is raised
    here once the processes are stopped.
    The compressed bytes are hashed while being written, and written back to
    disk as they come (EarlyWriteback): the caller's final fsync is short.

    ``producer_pass_fds``: descriptors the producer inherits (e.g. TarMemberCount.fd).
    ``read_ahead``: dict(root, exclude) when the producer is ``tar_create_argv``'s tar of that tree:
    the files are read ahead of it (_tree.ReadAhead) while it runs.

    Returns dict(sha256, size, producer_rc, producer_stderr, compressor_rc,
    compressor_stderr). The caller decides what a non-zero producer status
    means (GNU tar exits 1 when a file changed while being read); a failing
    compressor or a write error raises ArchiveError / OSError.
    """
    hasher = hashlib.sha256()
    size = 0
    comp_argv = compressor_argv(compression, level)
    prod_err = tempfile.TemporaryFile()
    comp_err = tempfile.TemporaryFile()
    procs = []
    feed_errors = []
    threads = []
    writeback = EarlyWriteback.for_file(out)
    beside = None
    ahead = None
    if callable(head):
        if producer_argv is None:
            raise ValueError('a deferred head needs producer_argv')
        beside = _HeadBeside(head, comp_argv)
        head = b''

    def emit(chunk):
        nonlocal size
        hasher.update(chunk)
        out.write(chunk)
        size += len(chunk)
        writeback.wrote(len(chunk))

    def pipe_chunks(f):
        # While a deferred head is pending, take what the pipe holds (read1) instead of waiting for a
        # whole CHUNK, and look at the head every 50 ms even when the pipe is quiet (an empty chunk):
        # a declined head then stops the producer at once, even a slow one.
        while True:
            if beside is not None and beside.pending:
                if not select.select([f], [], [], 0.05)[0]:
                    yield b''
                    continue
                chunk = f.read1(CHUNK)
            else:
                chunk = f.read(CHUNK)
            if not chunk:
                return
            yield chunk

    def emit_all(chunks):
        for chunk in chunks:
            if beside is None:
                emit(chunk)
            else:
                for piece in beside.take(chunk):
                    emit(piece)
        if beside is not None:
            for piece in beside.release():  # a stream shorter than the wait, or an empty one
                emit(piece)

    def spawn_producer(stdout):
        # First in procs: on an error it is stopped before the compressor.
        nonlocal ahead
        proc = _process.spawn(producer_argv, stdout=stdout, stderr=prod_err, cwd=producer_cwd,
                              pass_fds=producer_pass_fds)
        procs.insert(0, proc)
        if read_ahead is not None:
            ahead = _tree.ReadAhead(pid=proc.pid, **read_ahead).start()
        return proc

    try:
        if comp_argv is None:
            if head:
                emit(head)
            if producer_argv is not None:
                prod = spawn_producer(subprocess.PIPE)
                widen_pipe(prod.stdout)
                source = pipe_chunks(prod.stdout)
            else:
                prod = None
                source = producer_chunks
            emit_all(source)
            comp = None
        else:
            rfd, wfd = os.pipe()
            wpipe = os.fdopen(wfd, 'wb', buffering=0)
            widen_pipe(wpipe)  # producer -> compressor; measured: less time in pipe wake-ups
            try:
                comp = _process.spawn(comp_argv, stdin=rfd, stdout=subprocess.PIPE, stderr=comp_err)
            except BaseException:
                wpipe.close()
                raise
            finally:
                os.close(rfd)
            procs.append(comp)
            widen_pipe(comp.stdout)  # compressor -> this process
            if producer_argv is not None:
                if head:
                    # Head first (small; a thread so a full pipe cannot block us), then the producer
                    # writes into the same pipe: tar stdout -> compressor stdin, no Python in between.
                    head_pipe = os.fdopen(os.dup(wfd), 'wb', buffering=0)
                    t = threading.Thread(target=_feed, args=([head], head_pipe, feed_errors))
                    t.start()
                    t.join()
                prod = spawn_producer(wpipe)
                wpipe.close()
            else:
                prod = None
                chunks = _chain([head], producer_chunks)
                t = threading.Thread(target=_feed, args=(chunks, wpipe, feed_errors))
                t.daemon = True
                t.start()
                threads.append(t)
            emit_all(pipe_chunks(comp.stdout))
        for t in threads:
            t.join()
        writeback.finish()
        result = dict(sha256=hasher.hexdigest(), size=size, producer_rc=None, producer_stderr='',
                      compressor_rc=None, compressor_stderr='')
        if prod is not None:
            result['producer_rc'] = prod.wait()
            result['producer_stderr'] = _stderr_text(prod_err)
        if comp is not None:
            result['compressor_rc'] = comp.wait()
            result['compressor_stderr'] = _stderr_text(comp_err)
            if result['compressor_rc'] != 0:
                raise ArchiveError('%s failed (exit %s): %s' % (comp_argv[0], result['compressor_rc'],
                                                                result['compressor_stderr']))
        if feed_errors:
            raise feed_errors[0]
        return result
    finally:
        writeback.stop()  # after an error, the stream's own error is the one to report
        if ahead is not None:
            ahead.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()
        if beside is not None:
            beside.join()  # the head's maker may be walking the tree the caller turns to next
        prod_err.close()
        comp_err.close()


def _chain(*iterables):
    for it in iterables:
        yield from it


def file_chunks(f, size=CHUNK):
    """Iterate a binary file object in large chunks."""
    return iter(lambda: f.read(size), b'')


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in file_chunks(f):
            h.update(chunk)
    return h.hexdigest()


# --- untrusted stream validation ---------------------------------------------------------------

SPLICE = hasattr(os, 'splice')  # Python >= 3.10 on Linux
# TarStreamValidator.pump: read size, and the member data size from which the rest goes by splice.
PUMP_READ = 128 * 1024
SPLICE_MIN = 64 * 1024


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class StreamRejected(ArchiveError):
    """The stream is not acceptable (hostile, corrupt, truncated)."""


ALLOWED_TYPES = {
    b'0': 'f', b'\0': 'f', b'7': 'f', b'1': 'h', b'2': 'l', b'3': 'c', b'4': 'b', b'5': 'd', b'6': 'p',
}
META_TYPES = (b'x', b'g', b'L', b'K')


def _nul_terminated(field):
    i = field.find(b'\0')
    return field if i < 0 else field[:i]


def _octal(field, what):
    field = field.rstrip(b' \0')
    if not field:
        return 0
    if field[0] & 0x80:  # base-256 (GNU); only for big numbers
        value = int.from_bytes(field, 'big') & ~(0x80 << (8 * (len(field) - 1)))
        return value
    try:
        return int(field.strip(), 8)
    except ValueError:
        raise StreamRejected('Corrupt tar header: invalid %s field %s.' % (what, shown(field)))


def _pax_int(pax, key):
    try:
        return int(pax[key])
    except ValueError:
        raise StreamRejected('Corrupt pax %s record.' % key.decode('ascii'))


def shown(path):
    """A member path (bytes) for a message: quoted text, undecodable bytes and control characters escaped."""
    if isinstance(path, bytes):
        path = path.decode('utf-8', 'backslashreplace')
    return "'%s'" % ''.join(c if c.isprintable() else repr(c)[1:-1] for c in path)


def normalize_member_path(raw):
    """Normalize a member name (bytes) to a relative path without ``./``; raise StreamRejected if unsafe.

    Returns b'.' for the root entry.
    """
    if b'\0' in raw:
        raise StreamRejected('Refusing archive: member name contains a NUL byte.')
    if raw.startswith(b'/'):
        raise StreamRejected('Refusing archive: absolute member path %s.' % shown(raw))
    parts = [p for p in raw.split(b'/') if p not in (b'', b'.')]
    if b'..' in parts:
        raise StreamRejected('Refusing archive: member path %s contains "..".' % shown(raw))
    return b'/'.join(parts) if parts else b'.'


def _parse_pax(data):
    records = {}
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos:pos + 1] == b'\0':
            break
        sp = data.find(b' ', pos)
        if sp < 0:
            raise StreamRejected('Corrupt pax header record.')
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise StreamRejected('Corrupt pax header record length.')
        if length <= 0 or pos + length > n:
            raise StreamRejected('Corrupt pax header record length.')
        record = data[sp + 1:pos + length]
        if not record.endswith(b'\n') or b'=' not in record:
            raise StreamRejected('Corrupt pax header record.')
        key, value = record[:-1].split(b'=', 1)
        records[key] = value
        pos += length
    return records


class Member(object):
    """One accepted member, as reported to ``on_member``."""

    __slots__ = ('path', 'type', 'size', 'linkname', 'mode', 'uid', 'gid', 'mtime', 'rdev')

    def __init__(self, path, type, size, linkname, mode, uid, gid, mtime, rdev=None):  # pylint: disable=redefined-builtin
        self.path = path
        self.type = type
        self.size = size
        self.linkname = linkname
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.rdev = rdev


class TarStreamValidator(object):
    """Streaming validator of an untrusted tar stream (pax/ustar/GNU long names).

    ``feed(data)`` returns the bytes to pass on to GNU tar (the manifest member,
    when first, is removed and parsed into ``self.manifest``); ``finish()``
    checks the stream ended properly (end-of-archive marker present).
    Rejects: absolute paths, ``..``, duplicate members, members below a
    symlink or hard link of the archive, hard links to paths that are not
    earlier non-directory members, symlink/hardlink names that are unsafe,
    device nodes unless ``allow_devices``, unknown member types, non-zero sizes
    on entries that carry no data (a parser differential between this parser
    and GNU tar would let a member through unchecked), corrupt checksums.

    ``on_member(member)`` is called for each member (used for diff listings).
    """

    def __init__(self, allow_devices=False, strip_manifest=True, on_member=None, require_manifest=True):
        self.allow_devices = allow_devices
        self.strip_manifest = strip_manifest
        self.require_manifest = require_manifest
        self.on_member = on_member
        self.manifest = None
        self.entries = 0
        self.ended = False
        self._buf = bytearray()
        self._state = 'header'
        self._remaining = 0  # data bytes (incl. padding) of the current member still to pass
        self._forward = True
        self._meta = None  # ('x'|'g'|'L'|'K'|'manifest', bytearray, needed)
        self._pax = {}
        self._longname = None
        self._longlink = None
        self._pending_meta = set()  # kinds of extended headers (x, L, K) read since the last real header
        self._zero_blocks = 0
        self._seen = {}  # normalized path -> type code
        self._links = set()  # paths that are symlinks or hard links
        self._first = True
        # Parent directories whose every ancestor was found safe (no link, no non-directory), and all
        # their ancestors: a member below a known safe directory needs no walk up its path. A later
        # non-directory member at one of those paths clears both (see _accepted).
        self._safe_dirs = set()
        self._safe_ancestors = set()

    # -- helpers
    def _check_parents(self, path):
        if path == b'.':
            return
        parent = path.rpartition(b'/')[0]
        if parent in self._safe_dirs:
            return
        parts = path.split(b'/')
        for i in range(1, len(parts)):
            prefix = b'/'.join(parts[:i])
            if prefix in self._links:
                raise StreamRejected('Refusing archive: member %s would be written through the link %s.'
                                     % (shown(path), shown(prefix)))
            kind = self._seen.get(prefix)
            if kind is not None and kind != 'd':
                raise StreamRejected('Refusing archive: member %s is below the non-directory %s.'
                                     % (shown(path), shown(prefix)))
        self._safe_dirs.add(parent)
        while parent and parent not in self._safe_ancestors:
            self._safe_ancestors.add(parent)
            parent = parent.rpartition(b'/')[0]

    def _accepted(self, path, kind):
        """Record an accepted member; a non-directory at a known safe path voids what was known safe."""
        self._seen[path] = kind
        if kind != 'd' and path in self._safe_ancestors:
            self._safe_dirs.clear()
            self._safe_ancestors.clear()

    def _header(self, block):
        if block == b'\0' * 512:
            self._zero_blocks += 1
            if self._zero_blocks >= 2:
                self.ended = True
                self._state = 'end'
            return
        if self._zero_blocks:
            raise StreamRejected('Corrupt archive: a lone zero block inside the stream.')
        chksum = _octal(block[148:156], 'checksum')
        unsigned = sum(block) - sum(block[148:156]) + 256  # the checksum field counts as 8 spaces
        if chksum != unsigned:
            # Some old tars summed signed chars: each byte > 127 counts 256 less. Only computed when
            # needed (a per-byte Python loop on every header was most of the validator's time).
            high = sum(1 for b in block[:148] if b > 127) + sum(1 for b in block[156:] if b > 127)
            if chksum != unsigned - 256 * high:
                raise StreamRejected('Corrupt archive: tar header checksum mismatch.')
        typeflag = block[156:157]
        size = _octal(block[124:136], 'size')
        if typeflag in META_TYPES:
            if size > 16 * 1024 * 1024:
                raise StreamRejected('Refusing archive: oversized extended header (%d bytes).' % size)
            if typeflag in self._pending_meta:
                # GNU tar keeps only the last header of a kind where this parser would have to guess
                # (it merged pax records): a size in the first one would count here and not for tar, and
                # the bytes tar then reads as headers would never be checked. GNU tar never writes two.
                raise StreamRejected('Refusing archive: two extended headers of type %s before one member.'
                                     % shown(typeflag))
            if typeflag != b'g':
                self._pending_meta.add(typeflag)
            self._meta = (typeflag, bytearray(), size)
            self._remaining = size + (-size % 512)
            self._state = 'meta'
            self._forward = True
            return
        if typeflag not in ALLOWED_TYPES:
            raise StreamRejected('Refusing archive: unsupported member type %s.' % shown(typeflag))
        kind = ALLOWED_TYPES[typeflag]
        pax = self._pax
        self._pax = {}
        self._pending_meta.clear()
        if b'size' in pax:
            size = _pax_int(pax, b'size')
        name = _nul_terminated(block[0:100])
        magic = block[257:263]
        if magic in (b'ustar\x0000', b'ustar\0'):
            prefix = _nul_terminated(block[345:500])
            if prefix:
                name = prefix + b'/' + name
        candidates = [name]
        if self._longname is not None:
            candidates.append(self._longname)
        if b'path' in pax:
            candidates.append(pax[b'path'])
        if b'GNU.sparse.name' in pax:
            candidates.append(pax[b'GNU.sparse.name'])
        is_sparse = b'GNU.sparse.major' in pax or b'GNU.sparse.map' in pax or b'GNU.sparse.size' in pax
        self._longname = None
        if kind != 'd' and candidates[-1].endswith(b'/'):
            # GNU tar extracts a file member whose (effective) name ends in "/" as a directory and then reads
            # the member's "data" as further headers, which this parser would skip as file content: members
            # hidden there would escape every check. GNU tar never writes such a name for a non-directory.
            # Only the effective name counts: with a pax path or a GNU long name, the ustar name field holds
            # a truncated copy, which may end in "/" (GNU tar itself writes such headers for long paths).
            raise StreamRejected('Refusing archive: member %s of type %r has a directory name (ends in "/").'
                                 % (shown(candidates[-1]), kind))
        # Validate every name a tar implementation might use.
        norm = [normalize_member_path(c) for c in candidates]
        path = norm[-1]  # the effective name is the last candidate
        if is_sparse and kind != 'f':
            raise StreamRejected('Refusing archive: sparse header on a non-file member.')
        if b'GNU.sparse.name' not in pax and is_sparse:
            raise StreamRejected('Refusing archive: unsupported sparse format.')
        link = _nul_terminated(block[157:257])
        if self._longlink is not None:
            link = self._longlink
        if b'linkpath' in pax:
            link = pax[b'linkpath']
        self._longlink = None

        data_size = size if kind == 'f' else 0
        if kind != 'f' and size != 0:
            raise StreamRejected('Refusing archive: member %s of type %r declares %d data bytes.'
                                 % (shown(path), kind, size))

        if self._first and self.strip_manifest:
            self._first = False
            if path == MANIFEST_MEMBER.encode() and kind == 'f':
                if size > 16 * 1024 * 1024:
                    raise StreamRejected('Refusing archive: oversized manifest.')
                self._meta = ('manifest', bytearray(), size)
                self._remaining = size + (-size % 512)
                self._state = 'meta'
                self._forward = False
                return
            if self.require_manifest:
                raise StreamRejected('Not a volumeops archive: the first member is not %s.' % MANIFEST_MEMBER)
        self._first = False

        for p in norm:
            self._check_parents(p)
        if path in self._seen:
            raise StreamRejected('Refusing archive: duplicate member %s.' % shown(path))
        if path == b'.' and kind != 'd':
            raise StreamRejected('Refusing archive: the root entry is not a directory.')
        if kind in ('c', 'b') and not self.allow_devices:
            raise StreamRejected('Refusing archive: device node %s (set allow_devices: true to restore devices).'
                                 % shown(path))
        if kind == 'h':
            try:
                target = normalize_member_path(link)
            except StreamRejected:
                raise StreamRejected('Refusing archive: hard link %s points outside the archive (%s).'
                                     % (shown(path), shown(link)))
            self._check_parents(target)
            tkind = self._seen.get(target)
            if tkind is None:
                raise StreamRejected('Refusing archive: hard link %s points to %s, which is not an earlier member.'
                                     % (shown(path), shown(link)))
            if tkind == 'd':
                raise StreamRejected('Refusing archive: hard link %s points to a directory.' % shown(path))
            self._links.add(path)
        elif kind == 'l':
            if b'\0' in link:
                raise StreamRejected('Refusing archive: symlink target contains NUL.')
            self._links.add(path)
        self._accepted(path, kind)
        self.entries += 1
        if self.on_member is not None:
            # Owner, mode and times are only parsed for a listener: they decide nothing here, and GNU tar
            # rejects malformed ones itself.
            self.on_member(Member(
                path, kind, size, link, _octal(block[100:108], 'mode'),
                _pax_int(pax, b'uid') if b'uid' in pax else _octal(block[108:116], 'uid'),
                _pax_int(pax, b'gid') if b'gid' in pax else _octal(block[116:124], 'gid'),
                pax.get(b'mtime', b'%d' % _octal(block[136:148], 'mtime')),
                (_octal(block[329:337], 'devmajor'), _octal(block[337:345], 'devminor')) if kind in ('c', 'b') else None))
        self._remaining = data_size + (-data_size % 512)
        self._forward = True
        self._state = 'data' if self._remaining else 'header'

    def _finish_meta(self):
        kind, data, size = self._meta
        data = bytes(data[:size])
        self._meta = None
        if kind == b'x':
            self._pax = _parse_pax(data)  # the only one before its member (see _header)
        elif kind == b'g':
            # GNU tar applies global records to every later member, where they change how a member is
            # read (size, sparse maps) or where it goes (path, linkpath), or its owner and times. GNU tar
            # itself never writes a global header: accept only comments rather than model all of that.
            g = _parse_pax(data)
            other = sorted(k for k in g if k != b'comment')
            if other:
                raise StreamRejected('Refusing archive: a global pax header with the record %s (volumeops '
                                     'archives have none; it would change how every later member is read).'
                                     % shown(other[0]))
        elif kind == b'L':
            self._longname = _nul_terminated(data)
        elif kind == b'K':
            self._longlink = _nul_terminated(data)
        elif kind == 'manifest':
            self.manifest = parse_manifest(data)

    def feed(self, data):
        """Consume ``data``; return the bytes to forward to the extracting tar."""
        out = []
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        # Member data is forwarded as views of the buffer (one copy, in the final join), not sliced copies.
        view = memoryview(buf)
        piece = None
        try:
            while pos < n:
                if self._state == 'end':
                    rest = bytes(view[pos:])
                    if rest.count(0) != len(rest):
                        raise StreamRejected('Refusing archive: data after the end-of-archive marker.')
                    out.append(rest)
                    pos = n
                    break
                if self._state in ('data', 'meta'):
                    take = min(self._remaining, n - pos)
                    piece = view[pos:pos + take]
                    if self._state == 'meta':
                        self._meta[1].extend(piece)
                    if self._forward:
                        out.append(piece)
                    pos += take
                    self._remaining -= take
                    if self._remaining == 0:
                        if self._state == 'meta':
                            self._finish_meta()
                        self._state = 'header'
                        self._forward = True
                    continue
                # header
                if n - pos < 512:
                    break
                block = bytes(view[pos:pos + 512])
                pos += 512
                self._header(block)
                if self._state == 'meta' and not self._forward:
                    continue  # the manifest member's header is swallowed, never extracted
                out.append(block)
            result = b''.join(out)
        finally:
            # Every slice of the view must be gone before the buffer can shrink.
            del out, piece
            view.release()
        del buf[:pos]
        return result

    def pump(self, src_fd, dst_fd):
        """Validate the plain tar stream read from ``src_fd`` and pass it on to ``dst_fd``; then finish().

        The stream is read in blocks of up to PUMP_READ bytes and each block goes
        through ``feed`` (the same checks, many small members per call). When a
        member's data is longer than what is buffered, the rest of it moves from
        one pipe to the other with splice(2), inside the kernel: the contents of
        big files never enter Python, and small members cost one Python call per
        block, not several per member. Both descriptors must be pipes (blocking).
        """
        while True:
            if self._state == 'data' and self._remaining >= SPLICE_MIN and not self._buf:
                # feed() leaves nothing buffered while inside member data: the rest is all in the pipe.
                left = self._remaining
                while left:
                    moved = os.splice(src_fd, dst_fd, left)
                    if moved == 0:
                        raise StreamRejected('Refusing archive: the stream ends inside a member\'s data '
                                             '(truncated).')
                    left -= moved
                self._remaining = 0
                self._state = 'header'
                continue
            data = os.read(src_fd, PUMP_READ)
            if not data:
                break
            out = self.feed(data)
            if out:
                _write_all(dst_fd, out)
        self.finish()

    def finish(self):
        if self._buf and not self.ended:
            raise StreamRejected('Refusing archive: the stream ends in the middle of a tar block (truncated).')
        if not self.ended:
            raise StreamRejected('Refusing archive: the stream ends without the end-of-archive marker '
                                 '(truncated, possibly at a file boundary).')
        if self.require_manifest and self.manifest is None:
            raise StreamRejected('Not a volumeops archive: no manifest member.')


class DecompressedPipe(object):
    """Context manager: the decompressor's stdout (a pipe, binary file object), fed from ``source_chunks``.

    The compressed bytes are written to the decompressor by a thread (hashed as
    they pass when ``hasher`` is given). Leaving the block normally, after the
    pipe was read to its end, checks the decompressor's exit status and raises
    StreamRejected for a corrupt or truncated stream; leaving it by an
    exception stops the decompressor. (A class, not a generator: it is used
    inside generators, whose early close must still run the cleanup.)
    """

    def __init__(self, source_chunks, compression, hasher=None):
        self.argv = decompressor_argv(compression)
        self.source_chunks = source_chunks
        self.hasher = hasher
        self.feed_errors = []
        self.err = None
        self.proc = None
        self.feeder = None

    def __enter__(self):
        self.err = tempfile.TemporaryFile()
        try:
            self.proc = _process.spawn(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        except Exception:
            self.err.close()
            raise
        widen_pipe(self.proc.stdin)
        widen_pipe(self.proc.stdout)
        self.feeder = threading.Thread(target=_feed, args=(self.source_chunks, self.proc.stdin, self.feed_errors,
                                                           self.hasher))
        self.feeder.daemon = True
        self.feeder.start()
        return self.proc.stdout

    def _failed(self, rc):
        return StreamRejected('The archive is corrupt or truncated: %s failed (exit %d): %s'
                              % (self.argv[0], rc, _stderr_text(self.err)))

    def __exit__(self, exc_type, exc, tb):
        dec = self.proc
        try:
            if exc_type is None:
                self.feeder.join()
                rc = dec.wait()
                if self.feed_errors:
                    raise self.feed_errors[0]
                if rc != 0:
                    raise self._failed(rc)
            elif issubclass(exc_type, StreamRejected) and _pipe_at_eof(dec.stdout):
                # The reader saw the stream stop early. When that is because the decompressor failed
                # (corrupt data), its own message says more than "truncated". Only then is its output
                # at EOF; a stream refused for its content leaves the decompressor running.
                try:
                    rc = dec.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    rc = None
                if rc:
                    raise self._failed(rc)
        finally:
            if dec.poll() is None:
                dec.kill()
            dec.wait()
            dec.stdout.close()
            self.err.close()
        return False


def plain_stream(source_chunks, compression, hasher=None):
    """Generator: decompressed bytes of ``source_chunks`` (hashed as they pass when ``hasher`` is given).

    Raises StreamRejected at the end when the decompressor reports a corrupt or
    truncated stream (its exit status is always checked).
    """
    if decompressor_argv(compression) is None:
        for c in source_chunks:
            if hasher is not None:
                hasher.update(c)
            yield c
        return
    with DecompressedPipe(source_chunks, compression, hasher) as plain:
        yield from file_chunks(plain)


def validated_stream(plain_chunks, validator):
    """Generator: the bytes to give GNU tar, each header checked by ``validator`` first.

    ``validator.finish()`` runs at the end, so a consumer that exhausts the
    generator without an exception has seen a complete, acceptable stream.
    """
    for chunk in plain_chunks:
        out = validator.feed(chunk)
        if out:
            yield out
    validator.finish()


def extract_stream(source_chunks, compression, dest, allow_devices=False, on_member=None, tar='tar',
                   require_manifest=True, strip_manifest=True, tar_argv=None, digest=True):
    """Hash, decompress, validate and extract an archive into the existing directory ``dest``.

    ``source_chunks`` yields the compressed bytes (e.g. ``file_chunks(f)`` or a
    network stream); they are hashed as they pass. The decompressed stream is
    validated by ``TarStreamValidator`` before GNU tar sees each header; member
    data goes from the decompressor to tar by splice(2) where available.
    ``tar_argv`` replaces the default ``tar_extract_argv(dest)`` (the transfer's
    staging extraction). ``strip_manifest``/``require_manifest`` are passed to
    the validator (a transfer stream carries no manifest member); ``digest``
    False skips hashing (sha256 None) where the protocol checks content itself.
    Raises StreamRejected / ArchiveError; the caller removes ``dest`` on error.
    Returns dict(sha256, manifest, entries, tar_warnings).
    """
    hasher = hashlib.sha256() if digest else None
    validator = TarStreamValidator(allow_devices=allow_devices, on_member=on_member,
                                   require_manifest=require_manifest, strip_manifest=strip_manifest)
    tar_err = tempfile.TemporaryFile()
    tar_proc = _process.spawn(tar_argv or tar_extract_argv(dest, tar=tar), stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=tar_err)
    widen_pipe(tar_proc.stdin)
    stream = None
    try:
        try:
            if decompressor_argv(compression) is not None and SPLICE:
                with DecompressedPipe(source_chunks, compression, hasher) as plain:
                    validator.pump(plain.fileno(), tar_proc.stdin.fileno())
            else:
                stream = validated_stream(plain_stream(source_chunks, compression, hasher), validator)
                for out in stream:
                    tar_proc.stdin.write(out)
            tar_proc.stdin.close()
        except BrokenPipeError:
            raise ArchiveError('tar stopped reading the stream: %s' % _stderr_text(tar_err))
        rc_tar = tar_proc.wait()
        if rc_tar != 0:
            raise ArchiveError('tar failed to extract (exit %d): %s' % (rc_tar, _stderr_text(tar_err)))
        return dict(sha256=hasher.hexdigest() if hasher is not None else None, manifest=validator.manifest,
                    entries=validator.entries, tar_warnings=_stderr_text(tar_err))
    finally:
        if stream is not None:
            stream.close()  # stops the decompressor when we leave early
        if tar_proc.poll() is None:
            tar_proc.kill()  # stop before the caller removes the staging directory
        tar_proc.wait()
        try:
            tar_proc.stdin.close()
        except OSError:
            pass
        tar_err.close()


def list_stream(source_chunks, compression, allow_devices=True, on_member=None):
    """Read and validate an archive without extracting; return dict(sha256, manifest, entries)."""
    hasher = hashlib.sha256()
    validator = TarStreamValidator(allow_devices=allow_devices, on_member=on_member)
    for _chunk in validated_stream(plain_stream(source_chunks, compression, hasher), validator):
        pass
    return dict(sha256=hasher.hexdigest(), manifest=validator.manifest, entries=validator.entries)


def read_stream_manifest(path, compression=None):
    """The in-stream manifest of the archive file at ``path`` (reads only the start of the stream)."""
    compression = compression or compression_from_path(path)
    validator = TarStreamValidator(allow_devices=True)
    with open(path, 'rb') as f:
        gen = plain_stream(file_chunks(f, 65536), compression)
        try:
            for chunk in gen:
                validator.feed(chunk)
                if validator.manifest is not None or validator.entries:
                    break
        finally:
            gen.close()
    if validator.manifest is None:
        raise StreamRejected('Not a volumeops archive: %s has no manifest member.' % path)
    return validator.manifest


# --- staging, verification, swap -----------------------------------------------------------------

def new_staging_dir(parent):
    """Create ``<parent>/.volumeops-staging-<random>`` (0700) and return its path."""
    return tempfile.mkdtemp(prefix=STAGING_MARKER, dir=parent)


def remove_tree(path):
    """Remove a tree we created (staging or old content); missing is fine."""
    if path and os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


VOLUME_LOCK = '.volumeops.lock'


class VolumeBusy(ArchiveError):
    """Another restore or transfer of the volume holds its lock."""


class VolumeLock(object):
    """The per-volume lock: flock on ``<volume_dir>/.volumeops.lock`` (the directory holding ``_data``).

    Taken at once or not at all (raises VolumeBusy); callers decide about waiting: a restore does not (the
    holder may be a restore that takes an hour), the transfer receiver retries for ``lock_wait`` seconds (the
    holder may be the receiver of a pass whose connection just died, which ends within 30 s). The file is
    kept (unlinking a lock file lets a waiter lock a file nobody else can see); opened with O_NOFOLLOW and
    0600. ``create=False`` only probes: None when there is no lock
    file (nobody can hold it), so check mode writes nothing. Held until ``release()`` or the process ends.
    """

    def __init__(self, volume_dir, volume=None, create=True):
        import fcntl
        self.path = os.path.join(volume_dir, VOLUME_LOCK)
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        self.fd = os.open(self.path, flags, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise VolumeBusy('Another restore or transfer of volume %s is running (it holds %s); run this one '
                             'when it has finished. Nothing was changed.'
                             % (volume or os.path.basename(volume_dir), self.path))
        except BaseException:
            os.close(self.fd)
            self.fd = None
            raise

    @classmethod
    def probe(cls, volume_dir, volume=None):
        """Raise VolumeBusy when another run holds the lock; creates nothing (check mode)."""
        try:
            cls(volume_dir, volume, create=False).release()
        except FileNotFoundError:
            pass

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def parked_prefix(name):
    """Name prefix under which exchange_dirs' two-rename fallback parks directory ``name`` (its pid follows);
    cleanup_stale rolls such a directory back when ``name`` is missing."""
    return OLD_MARKER + name + '-'


def cleanup_stale(parent, markers=(STAGING_MARKER, OLD_MARKER), data='_data', dry_run=False):
    """Resolve what interrupted runs left beside ``<parent>/<data>`` (our marker names only).

    Call only while holding ``VolumeLock(parent)``: a restore running at the same time keeps its
    staging directory here too. Returns (actions, problems): what was done (with ``dry_run``: what
    would be done, nothing touched), and what could not be removed. A removal that fails is a
    problem to report, never an exception: the leftovers of an earlier run must not stop this one
    (a later run tries again).

    ``<data>`` missing while a real directory ``.volumeops-old-<data>-<pid>`` exists means that
    exchange_dirs' fallback (two renames) was interrupted between its renames: that directory holds
    the volume's only copy of its content. It is renamed back (the restore is rolled back), never
    removed; while ``<data>`` is missing nothing is removed at all.
    """
    actions, problems = [], []
    try:
        names = sorted(os.listdir(parent))
    except FileNotFoundError:
        return actions, problems
    data_path = os.path.join(parent, data)
    if not os.path.lexists(data_path):
        parked = [n for n in names if n.startswith(parked_prefix(data)) and is_real_dir(os.path.join(parent, n))]
        if len(parked) != 1:
            if parked:
                problems.append('%s is missing and several directories may hold its content (%s): left as they '
                                'are.' % (data_path, ', '.join(parked)))
            return actions, problems
        try:
            if not dry_run:
                os.rename(os.path.join(parent, parked[0]), data_path)
        except OSError as exc:
            problems.append('Could not move %s back to %s: %s' % (parked[0], data_path, exc))
            return actions, problems
        actions.append('%s %s back to %s (a swap interrupted between its two renames: rolled back)'
                       % ('would move' if dry_run else 'moved', parked[0], data))
        names.remove(parked[0])
    for name in names:
        if not name.startswith(markers):
            continue
        path = os.path.join(parent, name)
        if dry_run:
            actions.append('would remove %s' % name)
            continue
        try:
            remove_tree(path)
        except OSError as exc:
            problems.append('Could not remove %s, left by an interrupted or failed restore: %s' % (path, exc))
            continue
        actions.append('removed %s' % name)
    return actions, problems


def tree_summary(root, exclude=None, with_change_token=False, started_ns=None, version=_tree.FINGERPRINT_VERSION):
    """The fingerprint used for manifests and comparisons (sockets left out)."""
    return _tree.fingerprint(root, exclude=exclude, skip_types=SKIP_TYPES, with_change_token=with_change_token,
                             started_ns=started_ns, version=version)


def manifest_fingerprint_version(manifest):
    """The FINGERPRINT_VERSION the manifest's fingerprint was computed with (1 before it was recorded)."""
    try:
        return int(manifest.get('fingerprint_version') or 1)
    except (TypeError, ValueError):
        return 1


def subset_summary(root, paths, skip_types=SKIP_TYPES, version=_tree.FINGERPRINT_VERSION):
    """TreeSummary of only the entries of ``root`` whose relative path is in ``paths``.

    ``paths`` holds paths as the validator reports them (``b'.'`` for the root,
    ``b'a/b'`` below it). Computed exactly like ``_tree.fingerprint`` over the
    same walk, so after a merge it equals the archive's manifest fingerprint
    when every archived entry is in the volume as archived, whatever else the
    volume holds (merge idempotency). Directories not in ``paths`` are not entered.
    """
    def descend(entry):
        return entry.relpath[2:] in paths

    selected = (entry for entry in _tree.walk(root, descend=descend)
                if (b'.' if entry.relpath == b'.' else entry.relpath[2:]) in paths)
    return _tree.summarize(selected, skip_types=skip_types, version=version)


def verify_tree(root, manifest):
    """Raise ArchiveError unless the tree at ``root`` matches the manifest's count and fingerprint."""
    summary = tree_summary(root, version=manifest_fingerprint_version(manifest))
    if summary.entries != manifest['entries']:
        raise StreamRejected('The extracted tree has %d entries but the archive manifest lists %d '
                             '(the archive is truncated or incomplete).' % (summary.entries, manifest['entries']))
    if summary.fingerprint != manifest['fingerprint']:
        raise StreamRejected('The extracted tree does not match the fingerprint in the archive manifest '
                             '(%s != %s): the archive content differs from what was backed up.'
                             % (summary.fingerprint, manifest['fingerprint']))
    return summary


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def is_mounted_volume(driver, options):
    """A local volume with type/device mount options (NFS, CIFS, a block device, a bind mount, tmpfs)."""
    return (driver or 'local') == 'local' and bool(set(options or {}) & {'type', 'device'})


MEMORY_MOUNT_TYPES = ('tmpfs', 'ramfs')


def is_memory_volume(driver, options):
    """A local volume mounting a memory filesystem: its content lives only while a container mounts it."""
    return is_mounted_volume(driver, options) and str((options or {}).get('type', '')).strip() in MEMORY_MOUNT_TYPES


def mounted_only_in_use(driver, options):
    """Whether a volume's data is mounted only while a container uses it (mount options, another driver):
    its directory on the host is otherwise an empty directory that is not its data."""
    return (driver or 'local') != 'local' or is_mounted_volume(driver, options)


def exchange_dirs(a, b):
    """Atomically exchange two paths on the same filesystem (renameat2 RENAME_EXCHANGE).

    Fallback when the kernel/libc/filesystem cannot: two renames through a
    temporary name (a short window where ``b`` is absent, never a mixed tree).
    """
    fn = _libc_function('renameat2', ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if fn is not None:
        rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        if rc == 0:
            return 'exchange'
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), a)
    tmp = os.path.join(os.path.dirname(b), parked_prefix(os.path.basename(b)) + str(os.getpid()))
    os.rename(b, tmp)
    try:
        os.rename(a, b)
    except OSError:
        os.rename(tmp, b)
        raise
    os.rename(tmp, a)
    return 'rename'


def merge_into(staging, target, progress=None):
    """Move the verified staging tree into ``target`` (existing content kept unless replaced).

    Walks top-down; never follows a symlink in ``target``: an existing entry
    that is not a real directory where the archive has a directory is replaced
    (a file or symlink is unlinked first: rename(2) cannot put a directory in
    its place), and a directory where the archive has something else is removed.
    Directory metadata (owner, mode, xattrs, mtime) is taken from the archive.
    Returns the number of entries moved. ``progress`` (a list) gets the target
    path of each entry as it is moved, so a caller still knows after a failure
    part-way whether the target was changed.
    """
    moved = 0
    stack = [(staging, target)]
    dirs = []
    while stack:
        src_dir, dst_dir = stack.pop()
        # The archive's metadata is read before children move out (moving them changes the mtime).
        dirs.append((src_dir, dst_dir, os.lstat(src_dir)))
        for name in sorted(os.listdir(src_dir)):
            src = os.path.join(src_dir, name)
            dst = os.path.join(dst_dir, name)
            sst = os.lstat(src)
            try:
                dst_st = os.lstat(dst)
            except FileNotFoundError:
                dst_st = None
            if stat.S_ISDIR(sst.st_mode) and dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
                stack.append((src, dst))
                continue
            clears = dst_st is not None and (stat.S_ISDIR(dst_st.st_mode) or stat.S_ISDIR(sst.st_mode))
            if progress is not None and clears:
                progress.append(dst)  # before the first change to it: removing what is there
            if dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
                shutil.rmtree(dst)
            elif dst_st is not None and stat.S_ISDIR(sst.st_mode):
                os.unlink(dst)  # the link itself, never what it points to
            os.rename(src, dst)  # replaces a file or symlink atomically, never follows it
            if progress is not None and not clears:
                progress.append(dst)  # a failed rename changed nothing
            moved += 1
    # Directory metadata, deepest first so parents' mtimes are set last.
    for src_dir, dst_dir, st in reversed(dirs):
        copy_dir_metadata(src_dir, dst_dir, st)
    return moved


class _DirStat(object):
    """The fields of an os.stat_result that copy_dir_metadata uses."""

    def __init__(self, st, atime_ns=None, mtime_ns=None):
        self.st_uid = st.st_uid
        self.st_gid = st.st_gid
        self.st_mode = st.st_mode
        self.st_atime_ns = st.st_atime_ns if atime_ns is None else atime_ns
        self.st_mtime_ns = st.st_mtime_ns if mtime_ns is None else mtime_ns


def swap_in(root, staging):
    """Make directory ``root`` hold exactly the verified tree ``staging`` (a child of ``root``).

    For a root that cannot itself be renamed (a volume mounted in a helper
    container); where it can, ``exchange_dirs`` is one atomic step instead.
    Phase 1 parks root's entries in ``.volumeops-old-<id>``; the staging
    directory is then renamed ``.volumeops-ready-<id>.<atime_ns>.<mtime_ns>``
    (the name marks "phase 1 complete" and keeps the archive root's
    timestamps, which moving children out changes); phase 2 moves its entries
    up; root takes the archive root's metadata; the parked old entries are
    removed last. Every step is a rename inside one filesystem.

    A failure in phase 1 or 2 moves everything back (root as before, the
    staging tree intact for the caller to remove) and re-raises. A process
    killed part-way leaves marker directories that ``recover_swaps`` resolves
    on the next run: before the ready rename it rolls back to the old content,
    after it rolls forward to the verified new content.
    Returns the list of top-level names moved in.
    """
    parent = os.path.dirname(staging)
    ident = os.path.basename(staging)[len(STAGING_MARKER):]
    old = os.path.join(parent, OLD_MARKER + ident)
    st = os.lstat(staging)
    ready = os.path.join(parent, '%s%s.%d.%d' % (READY_MARKER, ident, st.st_atime_ns, st.st_mtime_ns))
    keep = (os.path.basename(staging), os.path.basename(old), os.path.basename(ready))
    os.mkdir(old, 0o700)
    parked = []
    moved = []
    is_ready = False
    try:
        for name in sorted(os.listdir(root)):
            if name not in keep:
                os.rename(os.path.join(root, name), os.path.join(old, name))
                parked.append(name)
        os.rename(staging, ready)
        is_ready = True
        for name in sorted(os.listdir(ready)):
            os.rename(os.path.join(ready, name), os.path.join(root, name))
            moved.append(name)
    except BaseException:
        # Undo in reverse order; the caller still holds a verified staging tree to discard.
        for name in reversed(moved):
            os.rename(os.path.join(root, name), os.path.join(ready, name))
        if is_ready:
            os.rename(ready, staging)
        for name in reversed(parked):
            os.rename(os.path.join(old, name), os.path.join(root, name))
        os.rmdir(old)
        raise
    copy_dir_metadata(ready, root, _DirStat(st))
    os.rmdir(ready)
    remove_tree(old)
    # Removing the parked tree touched root's mtime: set it last.
    os.utime(root, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return moved


def is_real_dir(path):
    """True for a directory that is not a symlink (lstat); False when missing."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def recover_swaps(root):
    """Resolve what an interrupted restore left directly below ``root``; returns a list of actions taken.

    - ``.volumeops-ready-<id>.*`` (killed in phase 2): roll forward, the tree in it was verified.
    - ``.volumeops-old-<id>`` with ``.volumeops-staging-<id>`` (killed in phase 1): move the old entries back.
    - ``.volumeops-old-<id>`` alone (killed while removing the old content): remove it.
    - ``.volumeops-staging-<id>`` alone (killed while extracting): remove it.

    Only real directories count: an entry of such a name that is a symlink or a file is not ours and
    is left alone. Followed, a symlink would move or delete what it points to; this also runs as root
    on the host through a holder container's ``/proc/<pid>/root``, where an absolute symlink resolves
    on the host, not inside the volume.
    """
    actions = []
    names = [n for n in os.listdir(root)
             if n.startswith((READY_MARKER, OLD_MARKER, STAGING_MARKER)) and is_real_dir(os.path.join(root, n))]
    ready = {}
    for name in names:
        if name.startswith(READY_MARKER):
            parts = name[len(READY_MARKER):].rsplit('.', 2)
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                ready[parts[0]] = (name, int(parts[1]), int(parts[2]))
    for ident, (name, atime_ns, mtime_ns) in sorted(ready.items()):
        path = os.path.join(root, name)
        for child in sorted(os.listdir(path)):
            os.rename(os.path.join(path, child), os.path.join(root, child))
        copy_dir_metadata(path, root, _DirStat(os.lstat(path), atime_ns, mtime_ns))
        os.rmdir(path)
        old = os.path.join(root, OLD_MARKER + ident)
        if is_real_dir(old):
            remove_tree(old)
        os.utime(root, ns=(atime_ns, mtime_ns), follow_symlinks=False)
        actions.append('completed the interrupted swap %s' % ident)
    for name in sorted(names):
        if not name.startswith(OLD_MARKER) or not is_real_dir(os.path.join(root, name)):
            continue
        ident = name[len(OLD_MARKER):]
        path = os.path.join(root, name)
        staging = os.path.join(root, STAGING_MARKER + ident)
        if is_real_dir(staging):
            for child in sorted(os.listdir(path)):
                os.rename(os.path.join(path, child), os.path.join(root, child))
            os.rmdir(path)
            actions.append('rolled back the interrupted swap %s' % ident)
        else:
            remove_tree(path)
            actions.append('removed old content left by %s' % ident)
    for name in sorted(names):
        if name.startswith(STAGING_MARKER) and is_real_dir(os.path.join(root, name)):
            remove_tree(os.path.join(root, name))
            actions.append('removed the staging directory %s' % name)
    return actions


def copy_dir_metadata(src, dst, st=None):
    """Owner, mode, xattrs (ACLs included) and timestamps of directory ``src`` (or ``st``) onto ``dst``."""
    st = st or os.lstat(src)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    src_x = dict(_tree.read_xattrs(os.fsencode(src)))
    for name, value in _tree.read_xattrs(os.fsencode(dst)):
        if name not in src_x:
            try:
                os.removexattr(dst, name, follow_symlinks=False)
            except OSError:
                pass
    for name, value in src_x.items():  # after chown: chown clears security.capability
        os.setxattr(dst, name, value, follow_symlinks=False)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


# --- writing archives safely ---------------------------------------------------------------------

def ensure_dest_dir(path, check_mode=False):
    """Create the destination directory 0700 when missing. Returns True when created."""
    if os.path.isdir(path):
        return False
    if os.path.lexists(path):
        raise ArchiveError('Destination %s exists and is not a directory.' % path)
    if not check_mode:
        old = os.umask(0o077)
        try:
            os.makedirs(path, 0o700)
        finally:
            os.umask(old)
    return True


def _temp_host():
    """This host's name as temporary file names carry it (see _temp_owner)."""
    return re.sub(r'[^A-Za-z0-9._-]', '_', os.uname()[1]) or 'unknown'


def _temp_owner():
    """``<pid>@<host>``: who writes a temporary file. The host part keeps a destination directory shared by
    several hosts (NFS) safe: a run removes only its own host's leftovers, never a file another host is
    still writing (whose pid means nothing here)."""
    return '%d@%s' % (os.getpid(), _temp_host())


def temp_archive_path(dest, name):
    return os.path.join(dest, '.%s%s%s' % (name, TMP_MARKER, _temp_owner()))


def cleanup_stale_temp(dest):
    """Remove this host's ``.<name>.volumeops-tmp-<pid>@<host>`` files whose process is gone (and those of
    versions that did not name the host). Returns the removed names."""
    removed = []
    try:
        names = os.listdir(dest)
    except FileNotFoundError:
        return removed
    this_host = _temp_host()
    for name in names:
        m = re.match(r'^.+' + re.escape(TMP_MARKER) + r'(\d+)(?:@(.*))?$', name)
        if not m:
            continue
        if m.group(2) is not None and m.group(2) != this_host:
            continue  # another host's, maybe being written right now
        pid = int(m.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        try:
            os.unlink(os.path.join(dest, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    # Sidecars are written (under their final names) just before the archive is renamed into place: a run
    # killed in between leaves sidecars of an archive that does not exist. Remove those, unless a live
    # process still holds that archive's temporary file (a concurrent run about to rename it).
    try:
        names = set(os.listdir(dest))
    except FileNotFoundError:
        return removed
    for name in sorted(names):
        for suffix in ('.sha256', '.manifest.json'):
            if not name.endswith(suffix):
                continue
            base = name[:-len(suffix)]
            if parse_archive_name(base) is None or base in names:
                continue
            if any(n.startswith('.' + base + TMP_MARKER) for n in names):
                continue
            try:
                os.unlink(os.path.join(dest, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A live process with that pid might be unrelated (pid reuse): only our module writes these
    # names, and a module writing one holds it open; check its cmdline mentions python.
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return b'python' in f.read()
    except OSError:
        return False


def open_private(path):
    """Create ``path`` exclusively with mode 0600 (private from the first byte)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, 'wb', buffering=CHUNK)


def write_private_file(path, data):
    tmp = path + TMP_MARKER + _temp_owner()
    with open_private(tmp) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


NO_SPACE_RESTORE = ('No space left on %s\'s filesystem while extracting the archive into the staging directory '
                    '(a restore needs room for the archive\'s content next to the current content until the swap)')


def is_no_space(text):
    """True when a tool's error text reports a full filesystem or an exceeded quota.

    GNU tar extracting a file reports a short write(2) as "Wrote only N of M bytes" (the filesystem filled up in
    the middle of a block; the next write would have failed with ENOSPC): a short write to a regular file means a
    full filesystem or quota (a file size limit kills tar with SIGXFSZ instead).
    """
    return ('No space left on device' in text or 'Disk quota exceeded' in text
            or re.search(r'Wrote only \d+ of \d+ bytes', text) is not None)


def describe_os_error(exc, action):
    if exc.errno == errno.ENOSPC:
        return '%s failed: no space left on the device (%s). Nothing was written under a final name.' % (
            action, exc.filename or 'destination')
    if exc.errno == errno.EDQUOT:
        return '%s failed: disk quota exceeded. Nothing was written under a final name.' % action
    return '%s failed: %s' % (action, exc)
