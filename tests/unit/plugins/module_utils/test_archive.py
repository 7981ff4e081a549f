# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests for the archive format pieces: naming, manifest, the untrusted-stream validator."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading
import time

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _archive as A
from ansible_collections.volumeops.docker.plugins.module_utils._tree import TreeSummary

MANIFEST = A.build_manifest('vol', TreeSummary('sha256:x', 2, 1), compression='none')


def _tar(build, manifest=True, end=True):
    buf = io.BytesIO()
    tf = tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT)
    if manifest:
        data = A.manifest_bytes(MANIFEST)
        info = tarfile.TarInfo(A.MANIFEST_MEMBER)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    root = tarfile.TarInfo('.')
    root.type = tarfile.DIRTYPE
    tf.addfile(root)
    build(tf)
    tf.close()
    raw = buf.getvalue()
    if not end:
        raw = raw.rstrip(b'\0')
        raw += b'\0' * (-len(raw) % 512)
    return raw


def _add(tf, name, kind=tarfile.REGTYPE, data=b'', link=''):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if data else None)


def _run_feed(raw, chunk=700, **kw):
    v = A.TarStreamValidator(**kw)
    out = b''.join(v.feed(raw[i:i + chunk]) for i in range(0, len(raw), chunk))
    v.finish()
    return v, out


def _run_pump(raw, **kw):
    """The same stream through pump(): real pipes in and out, member data moved by splice(2)."""
    v = A.TarStreamValidator(**kw)
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    received = []

    def write():
        try:
            for i in range(0, len(raw), 4096):
                os.write(src_w, raw[i:i + 4096])
        except BrokenPipeError:
            pass
        finally:
            os.close(src_w)

    def read():
        with os.fdopen(dst_r, 'rb') as f:
            received.append(f.read())

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    try:
        v.pump(src_r, dst_w)
    finally:
        os.close(src_r)
        os.close(dst_w)
        for t in threads:
            t.join()
    return v, received[0]


@pytest.fixture(params=['feed', 'pump'])
def _run(request):
    """Run a stream through the validator's chunked feed() or its pipe-to-pipe pump(); both must agree."""
    if request.param == 'pump' and not A.SPLICE:
        pytest.skip('os.splice needs Python >= 3.10 on Linux')
    return _run_feed if request.param == 'feed' else _run_pump


def test_names_round_trip():
    name = A.archive_name('my_vol.1', 'zstd')
    info = A.parse_archive_name(name)
    assert info['volume'] == 'my_vol.1' and info['compression'] == 'zstd'
    assert A.parse_archive_name('.x.volumeops-tmp-1') is None
    assert A.parse_archive_name('vol_20250101T000000Z.tar')['compression'] == 'none'


def test_manifest_parse_rejects_garbage():
    assert A.parse_manifest(A.manifest_bytes(MANIFEST))['volume'] == 'vol'
    with pytest.raises(A.ArchiveError):
        A.parse_manifest(b'{"format": "other"}')
    with pytest.raises(A.ArchiveError):
        A.parse_manifest(b'not json')


def test_good_stream_strips_manifest_and_counts(_run):
    raw = _tar(lambda tf: (_add(tf, './d', tarfile.DIRTYPE), _add(tf, './d/f', data=b'hello' * 300),
                           _add(tf, './d/h', tarfile.LNKTYPE, link='./d/f'), _add(tf, './l', tarfile.SYMTYPE, link='/etc')))
    v, out = _run(raw)
    assert v.manifest['volume'] == 'vol'
    assert v.entries == 5
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(out))]
    assert A.MANIFEST_MEMBER not in names and './d/f' in names


@pytest.mark.parametrize('build, message', [
    (lambda tf: _add(tf, '/etc/x', data=b'x'), 'absolute'),
    (lambda tf: _add(tf, './a/../../x', data=b'x'), '..'),
    (lambda tf: (_add(tf, './l', tarfile.SYMTYPE, link='/etc'), _add(tf, './l/passwd', data=b'x')), 'link'),
    (lambda tf: _add(tf, './h', tarfile.LNKTYPE, link='/etc/passwd'), 'outside'),
    (lambda tf: _add(tf, './h', tarfile.LNKTYPE, link='./nothing'), 'earlier member'),
    (lambda tf: _add(tf, './dev', tarfile.CHRTYPE), 'device'),
    (lambda tf: (_add(tf, './f', data=b'1'), _add(tf, './f', data=b'2')), 'duplicate'),
    # A directory known safe (a/b, its parent a never a member) must stop being trusted once a link or
    # a file takes the name of one of its ancestors: a/b/g would be written through the symlink a.
    (lambda tf: (_add(tf, './a/b', tarfile.DIRTYPE), _add(tf, './a/b/f', data=b'1'),
                 _add(tf, './a', tarfile.SYMTYPE, link='/etc'), _add(tf, './a/b/g', data=b'2')), 'link'),
    (lambda tf: (_add(tf, './a/b', tarfile.DIRTYPE), _add(tf, './a/b/f', data=b'1'),
                 _add(tf, './a/b', tarfile.REGTYPE, data=b'x')), 'duplicate'),
    (lambda tf: (_add(tf, './a/b', tarfile.DIRTYPE), _add(tf, './a/b/f', data=b'1'),
                 _add(tf, './a', data=b'file'), _add(tf, './a/b/g', data=b'2')), 'non-directory'),
    (lambda tf: (_add(tf, './a/b', tarfile.DIRTYPE), _add(tf, './a/b/f', data=b'1'),
                 _add(tf, './a', tarfile.LNKTYPE, link='./a/b/f'), _add(tf, './a/b/g', data=b'2')), 'link'),
])
def test_hostile_streams_are_refused(build, message, _run):
    with pytest.raises(A.StreamRejected, match=message.replace('.', r'\.')):
        _run(_tar(build))


def test_devices_allowed_on_request(_run):
    v, _out = _run(_tar(lambda tf: _add(tf, './dev', tarfile.CHRTYPE)), allow_devices=True)
    assert v.entries == 2


def test_missing_end_marker_is_truncation(_run):
    with pytest.raises(A.StreamRejected, match='end-of-archive'):
        _run(_tar(lambda tf: _add(tf, './f', data=b'x'), end=False))


def test_stream_without_manifest_is_refused(_run):
    with pytest.raises(A.StreamRejected, match='manifest'):
        _run(_tar(lambda tf: _add(tf, './f', data=b'x'), manifest=False))


def test_corrupt_header_checksum(_run):
    raw = bytearray(_tar(lambda tf: _add(tf, './f', data=b'x')))
    raw[1024 + 3] ^= 0xff  # inside a later header's name field
    with pytest.raises(A.StreamRejected):
        _run(bytes(raw))


def test_pump_forwards_exactly_what_feed_forwards():
    big = bytes(range(256)) * 2000  # 512,000 bytes: spliced in several moves
    raw = _tar(lambda tf: (_add(tf, './d', tarfile.DIRTYPE), _add(tf, './d/big', data=big),
                           _add(tf, './d/' + 'n' * 150, data=b'long name'),  # pax path record
                           _add(tf, './empty', data=b''), _add(tf, './l', tarfile.SYMTYPE, link='d/big')))
    v1, out1 = _run_feed(raw)
    v2, out2 = _run_pump(raw)
    assert out1 == out2 and v1.entries == v2.entries == 6
    assert tarfile.open(fileobj=io.BytesIO(out2)).extractfile('./d/big').read() == big


def test_pump_refuses_a_stream_cut_anywhere():
    raw = _tar(lambda tf: (_add(tf, './f', data=b'z' * 100000), _add(tf, './g', data=b'g')))
    start = raw.index(b'z' * 512)
    boundary = start + 100000 + (-100000 % 512)  # just after f's data: a cut at a member boundary
    cuts = (100, start - 300, start + 5000, boundary, boundary + 600, len(raw.rstrip(b'\0')))
    for cut in cuts:
        with pytest.raises(A.StreamRejected):
            _run_pump(raw[:cut])


needs_zstd_and_gnu_tar = pytest.mark.skipif(not shutil.which('zstd') or not shutil.which('tar'),
                                            reason='needs zstd and GNU tar (the test bootstrap installs them)')


def _zstd(raw):
    return subprocess.run(['zstd', '-q', '-c'], input=raw, stdout=subprocess.PIPE, check=True).stdout


@needs_zstd_and_gnu_tar
def test_extract_stream_round_trip_and_corrupt_compressed_data(tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    packed = _zstd(_tar(lambda tf: (_add(tf, './d', tarfile.DIRTYPE), _add(tf, './d/big', data=data))))
    good = tmp_path / 'good'
    good.mkdir()
    res = A.extract_stream([packed[i:i + 65536] for i in range(0, len(packed), 65536)], 'zstd', str(good))
    assert (good / 'd' / 'big').read_bytes() == data and res['entries'] == 3 and res['manifest']['volume'] == 'vol'
    bad = bytearray(packed)
    bad[len(bad) // 2] ^= 0xff
    dest = tmp_path / 'bad'
    dest.mkdir()
    with pytest.raises(A.StreamRejected, match='corrupt or truncated: zstd failed'):
        A.extract_stream([bytes(bad)], 'zstd', str(dest))


@needs_zstd_and_gnu_tar
def test_extract_stream_refuses_hostile_content_promptly(tmp_path):
    # The refusal names the hostile member even while the decompressor still has data to give.
    filler = os.urandom(4 * 1024 * 1024)
    packed = _zstd(_tar(lambda tf: (_add(tf, './l', tarfile.SYMTYPE, link='/etc'), _add(tf, './l/passwd', data=b'x'),
                                    _add(tf, './filler', data=filler))))
    started = time.monotonic()
    with pytest.raises(A.StreamRejected, match='through the link'):
        A.extract_stream([packed], 'zstd', str(tmp_path))
    assert time.monotonic() - started < 4
    assert not os.path.lexists(str(tmp_path / 'l' / 'passwd'))


def test_argv_builders_never_use_a_shell():
    argv = A.tar_create_argv('/v', exclude=['*.log', 'cache/*'])
    assert argv[0] == 'tar' and '--numeric-owner' in argv and '--xattrs-include=*' in argv
    assert argv[-3:] == ['--directory', '/v', '.']
    assert '--exclude=./cache/*' in argv and '--exclude=*.log' in argv
    assert A.compressor_argv('zstd', 3) == ['zstd', '-3', '-q', '-T0', '-c']
    assert A.compressor_argv('none') is None


def test_run_beside_overlaps_and_reports_both_sides():
    order = []

    def slow_background():
        time.sleep(0.2)
        order.append('background')

    started = time.monotonic()
    assert A.run_beside(slow_background, lambda: order.append('foreground') or 42) == 42
    assert order == ['foreground', 'background']  # joined before returning
    assert time.monotonic() - started < 1

    def failing_background():
        raise OSError(28, 'No space left on device')
    with pytest.raises(OSError, match='No space'):
        A.run_beside(failing_background, lambda: 1)

    done = []
    with pytest.raises(ValueError):
        A.run_beside(lambda: (time.sleep(0.1), done.append(1)), lambda: int('x'))
    assert done == [1]  # the background step finished before the foreground's error left


def test_early_writeback_syncs_while_writing_and_stops(tmp_path):
    path = tmp_path / 'archive'
    synced = []
    real = os.fdatasync

    def counting(fd):
        synced.append(fd)
        real(fd)
    with open(path, 'wb') as f:
        writeback = A.EarlyWriteback.for_file(f, every=16 * 1024)
        A.os.fdatasync = counting
        try:
            for dummy in range(20):
                f.write(b'x' * 4096)
                writeback.wrote(4096)
            writeback.finish()
        finally:
            A.os.fdatasync = real
        assert writeback._thread is None
    assert path.read_bytes() == b'x' * 4096 * 20
    assert synced  # at least one background fdatasync ran (requests are coalesced, so not all five)


def test_early_writeback_reports_a_background_error(tmp_path):
    # fdatasync on a pipe fails (EINVAL): the error must reach finish(), as a real writeback error
    # (EIO, ENOSPC) would; the kernel reports such an error only once per descriptor.
    rfd, wfd = os.pipe()
    try:
        with os.fdopen(wfd, 'wb') as f:
            writeback = A.EarlyWriteback.for_file(f, every=1)
            f.write(b'abc')
            writeback.wrote(3)
            with pytest.raises(OSError):
                writeback.finish()
    finally:
        os.close(rfd)


def test_early_writeback_without_enough_data_starts_no_thread(tmp_path):
    with open(tmp_path / 'small', 'wb') as f:
        writeback = A.EarlyWriteback.for_file(f)
        f.write(b'x')
        writeback.wrote(1)
        assert writeback._thread is None
        writeback.finish()


def test_early_writeback_counted_passes_chunks_and_syncs_every_step():
    calls = []
    writeback = A.EarlyWriteback(lambda: calls.append('sync'), every=10)
    chunks = [b'a' * 4, b'b' * 4, b'c' * 4, b'd' * 9, b'e']
    assert list(writeback.counted(iter(chunks))) == chunks  # unchanged, in order
    assert writeback.stop() is None
    # 12 bytes after the third chunk ask for a background sync, 9+1 more for another (coalesced
    # while one runs); stop() serves what was asked for before it.
    assert calls


def test_early_writeback_stop_starts_no_sync_that_was_not_asked_for():
    calls = []
    writeback = A.EarlyWriteback(lambda: calls.append('sync'), every=10)
    writeback.wrote(10)  # one request: the thread starts and serves it
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.001)
    assert calls == ['sync']
    writeback.wrote(5)  # below the step: no request
    assert writeback.stop() is None
    assert calls == ['sync']  # the caller syncs itself next (beside its walk, or before a rename)


def test_early_writeback_stop_returns_the_error_and_finish_raises_it():
    def failing():
        raise OSError(5, 'Input/output error')
    writeback = A.EarlyWriteback(failing, every=1)
    writeback.wrote(1)
    error = writeback.stop()
    assert isinstance(error, OSError) and error.errno == 5
    with pytest.raises(OSError):
        writeback.finish()


def test_early_writeback_for_tree_syncs_the_filesystem(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(A, 'sync_filesystem', seen.append)
    writeback = A.EarlyWriteback.for_tree(str(tmp_path), every=1)
    writeback.wrote(1)
    writeback.finish()
    assert seen and all(p == str(tmp_path) for p in seen)


def test_sync_filesystem_of_a_real_directory_and_of_a_missing_one(tmp_path):
    (tmp_path / 'f').write_bytes(b'x' * 100000)
    A.sync_filesystem(str(tmp_path))  # syncfs(2) on this machine's filesystem succeeds
    with pytest.raises(OSError):
        A.sync_filesystem(str(tmp_path / 'missing'))


# --- retention ------------------------------------------------------------------------------------

def _whole_archive(directory, volume, stamp, manifest_volume=None, sha=True, manifest=True):
    name = '%s_%s.tar.zst' % (volume, stamp)
    path = os.path.join(str(directory), name)
    with open(path, 'wb') as f:
        f.write(b'x')
    if sha:
        with open(path + '.sha256', 'w') as f:
            f.write('%s  %s\n' % ('0' * 64, name))
    if manifest:
        m = A.build_manifest(manifest_volume or volume, TreeSummary('sha256:x', 2, 1), compression='zstd')
        with open(path + '.manifest.json', 'wb') as f:
            f.write(A.manifest_bytes(m))
    return path


def test_retention_counts_only_whole_archives_of_the_volume(tmp_path):
    old = _whole_archive(tmp_path, 'db', '20250101T000000.000000Z')
    mid = _whole_archive(tmp_path, 'db', '20250102T000000.000000Z')
    new = _whole_archive(tmp_path, 'db', '20250103T000000.000000Z')
    _whole_archive(tmp_path, 'db', '20241231T000000.000000Z', sha=False)  # cut short: no checksum
    _whole_archive(tmp_path, 'db', '20241230T000000.000000Z', manifest=False)  # copied in by hand
    _whole_archive(tmp_path, 'db', '20241229T000000.000000Z', manifest_volume='other')  # not this volume's
    _whole_archive(tmp_path, 'db_x', '20241228T000000.000000Z')  # another volume whose name starts alike
    whole = A.complete_archives(A.list_archives(str(tmp_path)), 'db')
    assert [i['path'] for i in whole] == [old, mid, new]

    assert [i['path'] for i in A.expired_archives(whole, 2, current=new)] == [old]
    assert [i['path'] for i in A.expired_archives(whole, 1, current=new)] == [old, mid]
    assert A.expired_archives(whole, 3, current=new) == []
    # about to write a new one (check mode): it counts as one of the keep
    assert [i['path'] for i in A.expired_archives(whole, 2, current='/x/db_20250104T000000.000000Z.tar.zst')] == [old, mid]
    # a clock set back: this run's archive sorts oldest, yet it stays and the others make room
    assert [i['path'] for i in A.expired_archives(whole, 2, current=old)] == [mid]

    A.remove_archive(old)
    assert not any(n.startswith('db_20250101') for n in os.listdir(str(tmp_path)))  # sidecars went too
    assert [i['path'] for i in A.complete_archives(A.list_archives(str(tmp_path)), 'db')] == [mid, new]
    assert len(os.listdir(str(tmp_path))) == 2 * 3 + 2 + 2 + 3 + 3  # the others untouched


# -- write_compressed_stream with a head made while the producer runs (volume_backup's walk beside tar)

def _decompress(compression, data):
    argv = A.decompressor_argv(compression)
    return data if argv is None else subprocess.run(argv, input=data, stdout=subprocess.PIPE, check=True).stdout


def _producer(size):
    # A real producer process with a known output: ``size`` bytes of a repeating pattern.
    return ['python3', '-c', 'import sys; sys.stdout.buffer.write(bytes(range(256)) * (%d // 256))' % size]


@pytest.mark.parametrize('compression', ['zstd', 'gzip', 'none'])
@needs_zstd_and_gnu_tar
def test_deferred_head_is_written_first_and_hashed(tmp_path, compression):
    size = 3 * 1024 * 1024
    path = tmp_path / 'out'
    seen_before_head = []

    def make_head():
        time.sleep(0.3)  # the producer has long finished: its output waits in memory
        seen_before_head.append(os.path.getsize(str(path)))
        return b'HEAD' * 128
    with open(str(path), 'wb') as out:
        res = A.write_compressed_stream(out, compression, 1, head=make_head, producer_argv=_producer(size))
    data = path.read_bytes()
    assert seen_before_head == [0]  # nothing reached the file before the head
    assert _decompress(compression, data) == b'HEAD' * 128 + bytes(range(256)) * (size // 256)
    assert res['sha256'] == hashlib.sha256(data).hexdigest() and res['size'] == len(data)
    assert res['producer_rc'] == 0


@needs_zstd_and_gnu_tar
def test_deferred_head_waits_with_bounded_memory(tmp_path, monkeypatch):
    # More output than may wait: the producer is held back (a full pipe) until the head exists.
    monkeypatch.setattr(A, 'HEAD_WAIT_MAX', 256 * 1024)
    size = 8 * 1024 * 1024
    path = tmp_path / 'out'
    with open(str(path), 'wb') as out:
        res = A.write_compressed_stream(out, 'none', head=lambda: time.sleep(0.3) or b'H' * 512,
                                        producer_argv=_producer(size))
    data = path.read_bytes()
    assert data == b'H' * 512 + bytes(range(256)) * (size // 256) and res['size'] == len(data)


@pytest.mark.parametrize('compression', ['zstd', 'none'])
@needs_zstd_and_gnu_tar
def test_declined_head_writes_nothing_and_stops_the_producer(tmp_path, compression):
    path = tmp_path / 'out'
    marker = tmp_path / 'still-running'
    # A producer that would write a marker file after a while if it were not stopped.
    argv = ['python3', '-c', 'import sys, time\nsys.stdout.buffer.write(b"x" * 65536)\nsys.stdout.flush()\n'
            'time.sleep(1.5)\nopen(%r, "w").close()' % str(marker)]

    def make_head():
        time.sleep(0.2)
        raise A.HeadDeclined('unchanged')
    with open(str(path), 'wb') as out:
        with pytest.raises(A.HeadDeclined, match='unchanged'):
            A.write_compressed_stream(out, compression, head=make_head, producer_argv=argv)
    assert path.read_bytes() == b''
    time.sleep(2)
    assert not marker.exists()  # killed, not left running


@needs_zstd_and_gnu_tar
def test_deferred_head_error_and_a_failing_producer(tmp_path):
    path = tmp_path / 'out'

    def failing_walk():
        raise OSError('walk failed')
    with open(str(path), 'wb') as out:
        with pytest.raises(OSError, match='walk failed'):
            A.write_compressed_stream(out, 'zstd', head=failing_walk, producer_argv=_producer(1024 * 1024))
    assert path.read_bytes() == b''
    # The producer's exit status is reported as with a plain head; an empty stream still gets its head.
    with open(str(path), 'wb') as out:
        res = A.write_compressed_stream(out, 'zstd', head=lambda: b'HEAD', producer_argv=['python3', '-c', 'raise SystemExit(2)'])
    assert res['producer_rc'] == 2 and _decompress('zstd', path.read_bytes()) == b'HEAD'
    with pytest.raises(ValueError, match='producer_argv'):
        A.write_compressed_stream(io.BytesIO(), 'zstd', head=lambda: b'', producer_chunks=[b'x'])


def test_refusals_name_paths_as_text_with_odd_bytes_escaped(_run):
    with pytest.raises(A.StreamRejected) as info:
        _run(_tar(lambda tf: _add(tf, './d\xe9v\n', tarfile.CHRTYPE)))
    # Not Python's bytes repr (b'd\xc3\xa9v\n'): the name as text, quoted, the newline escaped.
    assert "device node 'd\u00e9v\\n' (set allow_devices" in str(info.value)
    assert "b'" not in str(info.value)
    assert A.shown(b'x\xff\x01') == "'x\\xff\\x01'"  # undecodable and control bytes stay visible


def _with_header_field(raw, member, start, value):
    """The stream with bytes [start:start+len(value)] of ``member``'s header replaced, checksum made valid again."""
    offset = next(m.offset for m in tarfile.open(fileobj=io.BytesIO(raw)) if m.name == member)
    raw = bytearray(raw)
    raw[offset + start:offset + start + len(value)] = value
    header = raw[offset:offset + 512]
    header[148:156] = b' ' * 8
    raw[offset + 148:offset + 156] = b'%06o\0 ' % sum(header)
    return bytes(raw)


def test_corrupt_fields_are_named_as_text(_run):
    raw = _tar(lambda tf: _add(tf, './f', data=b'x'))
    with pytest.raises(A.StreamRejected) as info:
        _run(_with_header_field(raw, './f', 156, b'X'))  # typeflag
    assert str(info.value) == "Refusing archive: unsupported member type 'X'."
    with pytest.raises(A.StreamRejected) as info:
        _run(_with_header_field(raw, './f', 124, b'0000000\xff9\x01\0\0'))  # size (12 bytes): not octal
    assert str(info.value) == "Corrupt tar header: invalid size field '0000000\\xff9\\x01'."


# --- The validator must read a stream exactly as GNU tar does (review finding 1). Built by hand: Python's
# tarfile writes neither a global size record nor two extended headers in a row.

def _ustar(name, kind=tarfile.REGTYPE, size=0, devmajor=0, devminor=0):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = 0o666 if kind == tarfile.CHRTYPE else 0o644
    info.mtime = 1700000000
    info.devmajor, info.devminor = devmajor, devminor
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _ext(records, kind):
    """An extended header of type ``kind`` (b'x', b'g', b'L', b'K') whose data is ``records``
    (a dict: pax records; bytes: the data as it is)."""
    if isinstance(records, dict):
        body = b''
        for key, value in records.items():
            rec = b' %s=%s\n' % (key, value)
            n = len(rec) + 1
            while len(str(n)) + len(rec) != n:
                n = len(str(n)) + len(rec)
            body += str(n).encode() + rec
    else:
        body = records
    info = tarfile.TarInfo('././@LongLink' if kind in (b'L', b'K') else 'PaxHeaders/x')
    info.type = kind
    info.size = len(body)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + body + b'\0' * (-len(body) % 512)


def _hand_built(body):
    return (A.manifest_member(MANIFEST) + _ustar('./', tarfile.DIRTYPE) + body + b'\0' * 1024)


# A device node hidden as the data of a member that GNU tar reads as empty (then reads its "data" as headers).
_HIDDEN = _ustar('./hidden_mem', tarfile.CHRTYPE, devmajor=1, devminor=1) + b'\0' * 512

PARSER_DIFFERENTIALS = {
    'global size record': _ext({b'size': b'0'}, b'g') + _ustar('./cover', size=len(_HIDDEN)) + _HIDDEN,
    'global mtime record': _ext({b'mtime': b'1'}, b'g') + _ustar('./f'),
    'two x headers, the size in the first': (_ext({b'size': b'%d' % len(_HIDDEN)}, b'x')
                                             + _ext({b'comment': b'hi'}, b'x') + _ustar('./cover') + _HIDDEN),
    'two x headers, the size in the second': (_ext({b'comment': b'hi'}, b'x') + _ext({b'size': b'0'}, b'x')
                                              + _ustar('./cover', size=len(_HIDDEN)) + _HIDDEN),
    'two L headers': _ext(b'./a\0', b'L') + _ext(b'./b\0', b'L') + _ustar('./c'),
    'two K headers': _ext(b'./a\0', b'K') + _ext(b'./b\0', b'K') + _ustar('./c', tarfile.SYMTYPE),
}


@pytest.mark.parametrize('case', sorted(PARSER_DIFFERENTIALS))
def test_streams_read_differently_by_gnu_tar_are_refused(case, _run):
    with pytest.raises(A.StreamRejected, match='global pax header|two extended headers'):
        _run(_hand_built(PARSER_DIFFERENTIALS[case]))


# A file member named like a directory: GNU tar extracts it as a directory and reads its "data" as headers.
SLASH_NAMED = {
    'ustar name': _ustar('./cover/', size=len(_HIDDEN)) + _HIDDEN,
    'old-style file type': _ustar('./cover/', tarfile.AREGTYPE, size=len(_HIDDEN)) + _HIDDEN,
    'pax path': _ext({b'path': b'./cover/'}, b'x') + _ustar('./cover', size=len(_HIDDEN)) + _HIDDEN,
    'GNU long name': _ext(b'./' + b'c' * 120 + b'/\0', b'L') + _ustar('./cover', size=len(_HIDDEN)) + _HIDDEN,
    'symlink': _ustar('./l/', tarfile.SYMTYPE),
}


@pytest.mark.parametrize('case', sorted(SLASH_NAMED))
def test_non_directory_members_with_a_directory_name_are_refused(case, _run):
    with pytest.raises(A.StreamRejected, match='has a directory name'):
        _run(_hand_built(SLASH_NAMED[case]))


def test_a_truncated_ustar_name_ending_in_a_slash_under_a_long_name_passes(_run):
    # GNU tar's own archives of long paths: the ustar name field holds a truncated copy of the path, which may
    # end in "/"; the pax path or the GNU long name is the member's name (found by the migration benchmark).
    long = b'./' + b'd' * 90 + b'/' + b'f' * 60
    body = (_ext({b'path': long}, b'x') + _ustar(long[:93].decode(), size=3) + b'abc' + b'\0' * 509
            + _ext(long + b'2\0', b'L') + _ustar(long[:93].decode(), size=0))
    assert long[:93].endswith(b'/')
    v, _out = _run(_hand_built(body))
    assert v.entries == 3


@needs_zstd_and_gnu_tar
def test_gnu_tar_archives_of_long_paths_pass(tmp_path, _run):
    root = tmp_path / 'tree'
    # './' + 97 characters + '/' is 100: GNU tar's ustar name field of a file in that directory ends in '/'
    deep = root / ('x' * 97)
    deep.mkdir(parents=True)
    (deep / 'f').write_bytes(b'data')
    raw = subprocess.run(['tar', '--format=posix', '-C', str(root), '-cf', '-', '.'], stdout=subprocess.PIPE,
                         check=True).stdout
    # the file's own header: its (truncated, 100-byte) name field ends in '/', as in the benchmark's archive
    file_headers = [raw[o:o + 512] for o in range(0, len(raw), 512)
                    if raw[o + 257:o + 262] == b'ustar' and raw[o + 156:o + 157] == b'0']
    assert len(file_headers) == 1 and A._nul_terminated(file_headers[0][:100]).endswith(b'/')
    v, _out = _run(A.manifest_member(MANIFEST) + raw)
    assert v.entries == 3


def test_directory_members_may_end_in_a_slash(_run):
    v, _out = _run(_hand_built(_ustar('./d/', tarfile.DIRTYPE) + _ext({b'path': b'./e/'}, b'x')
                               + _ustar('./e', tarfile.DIRTYPE)))
    assert v.entries == 3


@needs_zstd_and_gnu_tar
def test_gnu_tar_extracts_a_slash_named_file_as_a_directory_and_its_data_as_headers(tmp_path):
    """Why the refusal: GNU tar extracts a member hidden in the 'data' of a file named like a directory (a
    FIFO here, which needs no privilege, in place of the device node)."""
    hidden = _ustar('./hidden_mem', tarfile.FIFOTYPE) + b'\0' * 512
    subprocess.run(A.tar_extract_argv(str(tmp_path)), input=_hand_built(_ustar('./cover/', size=len(hidden)) + hidden),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert (tmp_path / 'cover').is_dir() and os.path.lexists(tmp_path / 'hidden_mem')


@needs_zstd_and_gnu_tar
@pytest.mark.parametrize('case', ['global size record', 'two x headers, the size in the first'])
def test_gnu_tar_sees_the_member_the_old_validator_missed(case):
    """Real disagreements: GNU tar lists the device node that merging the records (or ignoring the global
    size) made the validator pass on unchecked as file data."""
    listing = subprocess.run(['tar', '-tvf', '-'], input=_hand_built(PARSER_DIFFERENTIALS[case]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False).stdout
    assert b'./hidden_mem' in listing and listing.count(b'\n') == 4  # manifest, root, cover, hidden_mem


def test_global_header_with_a_comment_only_and_one_of_each_extended_header_pass(_run):
    body = (_ext({b'comment': b'made by hand'}, b'g') + _ext(b'./' + b'n' * 120 + b'\0', b'L')
            + _ext({b'mtime': b'1700000000.5'}, b'x') + _ustar('./short') + _ext({b'comment': b'x'}, b'x')
            + _ustar('./g2'))
    v, _out = _run(_hand_built(body))
    assert v.entries == 3  # root, the long-named file, g2


def test_verify_tree_computes_the_fingerprint_version_of_the_manifest(tmp_path):
    # An archive made before fingerprints covered hard links (version 1, or no version recorded) of a tree
    # with hard links still verifies after its restore; a version 2 manifest is held to the link structure.
    from ansible_collections.volumeops.docker.plugins.module_utils import _tree
    root = tmp_path / 'r'
    root.mkdir()
    (root / 'a').write_bytes(b'data')
    os.link(str(root / 'a'), str(root / 'b'))
    v1 = _tree.fingerprint(str(root), skip_types=A.SKIP_TYPES, version=1)
    for manifest in ({'fingerprint': v1.fingerprint, 'entries': v1.entries, 'fingerprint_version': 1},
                     {'fingerprint': v1.fingerprint, 'entries': v1.entries}):
        assert A.verify_tree(str(root), manifest).fingerprint == v1.fingerprint
    with pytest.raises(A.StreamRejected):
        A.verify_tree(str(root), {'fingerprint': v1.fingerprint, 'entries': v1.entries, 'fingerprint_version': 2})


def test_stale_temp_cleanup_leaves_other_hosts_files_alone(tmp_path, monkeypatch):
    # A destination directory shared by several hosts (NFS): a pid of another host means nothing here,
    # so its temporary files (maybe being written right now) must survive this host's cleanup.
    monkeypatch.setattr(A.os, 'uname', lambda: os.uname_result(('Linux', 'db-1.example', 'r', 'v', 'm')))
    dead = 999999
    while os.path.exists('/proc/%d' % dead):
        dead -= 1
    mine = tmp_path / ('.v_20250101T000000.000000Z.tar.zst.volumeops-tmp-%d@db-1.example' % dead)
    other = tmp_path / ('.v_20250101T000000.000000Z.tar.zst.volumeops-tmp-%d@db-2.example' % dead)
    legacy = tmp_path / ('.v_20250101T000000.000000Z.tar.zst.volumeops-tmp-%d' % dead)
    live = tmp_path / ('.v_20250101T000000.000000Z.tar.zst.volumeops-tmp-%d@db-1.example' % os.getpid())
    for f in (mine, other, legacy, live):
        f.write_bytes(b'partial')
    removed = A.cleanup_stale_temp(str(tmp_path))
    assert sorted(removed) == sorted([mine.name, legacy.name, live.name])
    assert other.exists() and not mine.exists() and not legacy.exists()
    # This process's own leftover (same pid, same host) counts as stale: the module never keeps one.
    assert not live.exists()


def test_temp_names_carry_pid_and_host(tmp_path, monkeypatch):
    monkeypatch.setattr(A.os, 'uname', lambda: os.uname_result(('Linux', 'odd host/name', 'r', 'v', 'm')))
    path = A.temp_archive_path(str(tmp_path), 'v_x.tar.zst')
    assert os.path.basename(path) == '.v_x.tar.zst.volumeops-tmp-%d@odd_host_name' % os.getpid()
    A.write_private_file(str(tmp_path / 'v_x.tar.zst.sha256'), b'x\n')
    assert os.listdir(tmp_path) == ['v_x.tar.zst.sha256']


def test_checksum_sidecar_in_either_case_as_sha256sum_takes_it(tmp_path):
    archive = str(tmp_path / 'v_20250101T000000Z.tar.zst')
    digest = hashlib.sha256(b'x').hexdigest()
    with open(archive + '.sha256', 'w') as f:
        f.write('%s  v_20250101T000000Z.tar.zst\n' % digest.upper())
    assert A.read_sidecar_sha256(archive) == digest
    with open(archive + '.sha256', 'w') as f:
        f.write('not a digest\n')
    with pytest.raises(A.ArchiveError, match='not in sha256sum format'):
        A.read_sidecar_sha256(archive)


@pytest.mark.parametrize('text, full', [
    ('tar: ./big: Cannot write: No space left on device', True),
    ('tar: ./big: Cannot write: Disk quota exceeded', True),
    # GNU tar's short write when the filesystem fills up in the middle of a block (a helper-path restore, QA)
    ('/usr/bin/tar: ./big: Wrote only 7168 of 10240 bytes\n/usr/bin/tar: Exiting with failure status', True),
    ('tar: ./big: Cannot open: Permission denied', False),
    ('Wrote only some of them', False),
])
def test_no_space_is_recognised_in_tar_messages(text, full):
    assert A.is_no_space(text) is full
