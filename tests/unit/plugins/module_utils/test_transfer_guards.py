# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The transfer's guards around a destination: whose complete data it holds, whether it changed since it
completed, the volume lock, and paramiko's errors after the handshake (pure logic and fakes; the real runs
are in the volume_transfer integration target)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _archive, _transfer, _tree

paramiko = pytest.importorskip('paramiko')

SOURCE = {'volume': 'pgdata', 'host': 'old1'}


@pytest.mark.parametrize('marker, other', [
    ({'source_volume': 'pgdata', 'source_host': 'old1'}, False),
    ({'source_volume': 'other', 'source_host': 'old1'}, True),
    ({'source_volume': 'pgdata', 'source_host': 'old2'}, True),
    # markers of older versions without the fields: taken as this transfer's, as before
    ({}, False),
    ({'source_volume': 'pgdata'}, False),
    ({'source_host': 'old2'}, True),
])
def test_marker_other_source(marker, other):
    found = _transfer.marker_other_source(marker, SOURCE)
    assert bool(found) == other
    if other:
        assert 'source volume %s on host %s' % (marker.get('source_volume', '?'), marker.get('source_host', '?')) \
            == found


NOW = {'fingerprint': 'f1', 'entries': 3, 'bytes': 10}
V = _tree.FINGERPRINT_VERSION


@pytest.mark.parametrize('marker, changed', [
    ({}, False),  # nothing recorded: nothing to tell
    ({'dest_fingerprint': 'f1', 'fingerprint_version': V}, False),  # a marker with its fingerprint only
    ({'dest_fingerprint': 'f0', 'fingerprint_version': V}, True),
    ({'dest_fingerprint': 'f1', 'dest_summary': {'fingerprint': 'f1', 'entries': 3, 'bytes': 10},
      'fingerprint_version': _tree.FINGERPRINT_VERSION}, False),
    ({'dest_fingerprint': 'f1', 'dest_summary': {'fingerprint': 'f1', 'entries': 4, 'bytes': 10},
      'fingerprint_version': _tree.FINGERPRINT_VERSION}, True),
    # a field the summary of this version does not have is not compared
    ({'dest_summary': {'fingerprint': 'f1', 'links': 'x'}, 'fingerprint_version': _tree.FINGERPRINT_VERSION}, False),
    # another fingerprint version hashes other records: proves nothing
    ({'dest_fingerprint': 'f0', 'fingerprint_version': _tree.FINGERPRINT_VERSION + 1}, False),
])
def test_marker_dest_changed(marker, changed):
    assert _transfer.marker_dest_changed(marker, NOW) == changed


def test_marker_without_fingerprint_version_is_version_1():
    marker = {'dest_fingerprint': 'f0'}  # written before markers named their fingerprint version
    assert _transfer.marker_dest_changed(marker, NOW) == (V == 1)


class _Frames(object):
    """A stand-in for the receiver's FrameIO that keeps what is sent."""

    def __init__(self):
        self.sent = []

    def send(self, kind, payload=b''):
        self.sent.append(kind)


def _receiver(vdir, check_mode=False):
    receiver = _transfer.Receiver(io_=_Frames())
    receiver.hello = {'dest_volume': 'v1', 'migration_id': 'm1', 'check_mode': check_mode}
    return receiver


def test_second_receiver_for_a_volume_fails_after_the_lock_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(_transfer, 'LOCK_WAIT_SECONDS', 2)
    busy = 'Another restore or transfer of volume v1 is running.*waited 2 s'
    # check mode only probes: without a lock file it creates none
    _receiver(str(tmp_path), check_mode=True)._lock(str(tmp_path))
    assert os.listdir(str(tmp_path)) == []
    first = _receiver(str(tmp_path))
    first._lock(str(tmp_path))
    try:
        second = _receiver(str(tmp_path))
        with pytest.raises(_transfer.TransferError, match=busy):
            second._lock(str(tmp_path))
        assert second.io.sent and set(second.io.sent) == {b'K'}  # the sender's reads kept alive meanwhile
        with pytest.raises(_transfer.TransferError, match=busy):
            _receiver(str(tmp_path), check_mode=True)._lock(str(tmp_path))
    finally:
        first.cleanup()
    assert first.lock is None
    again = _receiver(str(tmp_path))
    again._lock(str(tmp_path))
    again.cleanup()


def test_receiver_waits_for_a_lock_released_meanwhile(tmp_path, monkeypatch):
    # The holder may be the receiver of a pass whose connection just died (it ends within
    # RECEIVER_IDLE_SECONDS): the next pass waits for it instead of failing at once.
    import threading
    monkeypatch.setattr(_transfer, 'LOCK_WAIT_SECONDS', 10)
    first = _receiver(str(tmp_path))
    first._lock(str(tmp_path))
    timer = threading.Timer(1.5, first.cleanup)
    timer.start()
    second = _receiver(str(tmp_path))
    try:
        second._lock(str(tmp_path))
        assert second.lock is not None and first.lock is None
    finally:
        timer.join()
        second.cleanup()


def _frame(kind, payload=b''):
    return _transfer._HDR.pack(kind, len(payload)) + payload


def test_frames_skip_the_senders_keepalives():
    import io
    data = io.BytesIO(_frame(b'k') + _frame(b'k') + _frame(b'P', b'{}') + _frame(b'k') + _frame(b'Z', b'x'))
    frames = _transfer.FrameIO(data.read, None)
    assert frames.recv() == (b'P', b'{}')
    assert frames.recv_expect(b'Z') == (b'Z', b'x')


def test_receiver_ends_when_the_source_is_silent_and_not_while_it_sends_keepalives():
    # A source that vanished without closing the connection (a link down) sends nothing more: the
    # receiver's blocked read ends with ConnectionLost (its lock is then freed), not hours later.
    import threading
    import time
    r, w = os.pipe()
    frames = _transfer.FrameIO(lambda n: os.read(r, n), None)
    watch = _transfer.ReceiverIdleWatch(frames, limit=1)
    try:
        def beats():
            for dummy in range(8):  # 2.4 s of keepalives only, longer than the limit, then a frame
                os.write(w, _frame(b'k'))
                time.sleep(0.3)
            os.write(w, _frame(b'P', b'{}'))
        sender = threading.Thread(target=beats)
        sender.start()
        assert frames.recv() == (b'P', b'{}')
        sender.join()
        started = time.monotonic()
        with pytest.raises(_transfer.ConnectionLost, match='no frame from the source'):
            frames.recv()
        assert time.monotonic() - started < 5
    finally:
        watch.stop()
        os.close(r)
        os.close(w)


def test_receiver_lock_never_through_a_symlink(tmp_path):
    os.symlink(str(tmp_path / 'elsewhere'), str(tmp_path / _archive.VOLUME_LOCK))
    with pytest.raises(_transfer.TransferError, match='Cannot lock destination volume v1'):
        _receiver(str(tmp_path))._lock(str(tmp_path))
    assert not (tmp_path / 'elsewhere').exists()


# --- paramiko errors after the handshake -----------------------------------------------------------------

class _FakeChannel(object):
    def __init__(self, fail_exec):
        self.fail_exec = fail_exec
        self.closed = False

    def settimeout(self, value):
        pass

    def exec_command(self, command):
        if self.fail_exec is not None:
            raise self.fail_exec

    def close(self):
        self.closed = True


class _FakeTransport(object):
    def __init__(self, fail_open=None, fail_exec=None):
        self.fail_open = fail_open
        self.fail_exec = fail_exec

    def open_session(self, **kwargs):
        if self.fail_open is not None:
            raise self.fail_open
        return _FakeChannel(self.fail_exec)

    def request_port_forward(self, address, port, handler=None):
        return 40000


class _FakeClient(object):
    def __init__(self, transport):
        self.transport = transport

    def get_transport(self):
        return self.transport

    def close(self):
        pass


FAULTS = [dict(fail_open=paramiko.ChannelException(1, 'Administratively prohibited')),
          dict(fail_open=paramiko.SSHException('Unable to open channel.')),
          dict(fail_exec=paramiko.SSHException('Channel closed.'))]


def _fake_ssh(monkeypatch, fault):
    monkeypatch.setattr(_transfer, 'parse_host_key', lambda line: object())
    monkeypatch.setattr(_transfer, 'load_private_key', lambda *args: object())
    monkeypatch.setattr(_transfer, 'ssh_connect', lambda *args: _FakeClient(_FakeTransport(**fault)))


@pytest.mark.parametrize('fault', FAULTS)
def test_ssh_session_refused_after_the_handshake_is_one_message(tmp_path, monkeypatch, fault):
    _fake_ssh(monkeypatch, fault)
    (tmp_path / 'f').write_text('x')
    params = dict(volume='v', dest_volume='v', dest_host='10.0.0.12', dest_port=2222, dest_user='root',
                  dest_host_key='k', private_key_content='k', migration_id='m1', exclude=[])
    sender = _transfer.Sender(params, str(tmp_path), check_mode=True)
    with pytest.raises(_transfer.TransferError) as info:
        sender.run()
    text = str(info.value)
    assert text.startswith('SSH session to root@10.0.0.12:2222 failed after the connection was made: ')
    assert str(fault.get('fail_open') or fault.get('fail_exec')).strip("()'") in text or 'Administratively' in text


@pytest.mark.parametrize('fault', FAULTS)
def test_ssh_session_refused_in_relay_mode_is_one_message(monkeypatch, fault):
    _fake_ssh(monkeypatch, fault)
    params = dict(volume='v', dest_volume='v', dest_host='10.0.0.12', relay_source_host='10.0.0.11',
                  relay_source_port=22, relay_source_user='root', relay_source_host_key='k',
                  relay_source_private_key_content='k', migration_id='m1')
    with pytest.raises(_transfer.TransferError, match=r'^SSH session to root@10\.0\.0\.11:22 failed after the '
                                                      r'connection was made: '):
        _transfer.Relay(params).run()


def test_other_errors_are_not_taken_for_ssh_session_errors():
    assert _transfer.ssh_session_error(ValueError('x'), {}) is None
    error = _transfer.ssh_session_error(paramiko.ChannelException(1, 'Administratively prohibited'),
                                        dict(dest_host='h', dest_user='u', dest_port=22))
    assert 'u@h:22' in str(error) and 'Administratively prohibited' in str(error)


@pytest.mark.parametrize('leftover', ['marker', 'data', None])
def test_volume_created_meanwhile_by_another_run_is_not_written(tmp_path, leftover):
    """_state saw no volume (unlocked); when the pass creates it, another run may have made and filled it."""
    vdir = tmp_path / 'v1'
    (vdir / '_data').mkdir(parents=True)
    if leftover == 'marker':
        _transfer.write_marker(str(vdir / _transfer.MARKER_NAME), {'migration_id': 'm1', 'state': 'complete'})
    elif leftover == 'data':
        (vdir / '_data' / 'db').write_text('theirs')

    class Docker(object):
        def create(self, *args):
            pass

        def inspect(self, name):
            return {'Name': name, 'Driver': 'local', 'Options': {}, 'Mountpoint': str(vdir / '_data')}

        def release(self):
            pass
    receiver = _receiver(str(vdir))
    receiver.hello.update(dest_driver='local', source_volume={})
    receiver.docker = Docker()
    try:
        if leftover is None:
            receiver._ensure_volume(None)
            assert receiver.lock is not None
        else:
            with pytest.raises(_transfer.TransferError, match='was created and written by another transfer'):
                receiver._ensure_volume(None)
    finally:
        receiver.cleanup()


@pytest.mark.parametrize('exc, reason', [
    (EOFError(), 'the connection was closed'),
    (OSError(), 'OSError'),
    (OSError(104, 'Connection reset by peer'), 'Connection reset by peer'),
])
def test_lost_connection_message_always_names_a_reason(exc, reason):
    sender = _transfer.Sender.__new__(_transfer.Sender)
    sender.p = {'dest_host': '10.0.0.2'}
    sender.channel = None
    msg = sender._remote_failure(exc)
    assert msg.startswith('Connection to the destination 10.0.0.2 was lost in the middle of the transfer (')
    assert reason in msg and '()' not in msg


def test_overrides_an_existing_destination_volume_does_not_have_are_named():
    vol = {'Driver': 'local', 'Options': None, 'Labels': {'app': 'pg'}}
    assert _transfer.existing_volume_overrides(vol, 'local', None, None) == []
    assert _transfer.existing_volume_overrides(vol, None, {}, {'app': 'pg'}) == []
    found = _transfer.existing_volume_overrides(vol, 'local', {'type': 'nfs', 'device': ':/x', 'o': 'addr=h'},
                                                {'app': 'pg', 'tier': 'db'})
    assert len(found) == 2
    assert found[0].startswith('its driver options are {}, not {"device": ":/x"')
    assert found[1] == 'it lacks the label(s) tier as asked'
    nfs = {'Driver': 'local', 'Options': {'type': 'nfs', 'device': ':/x', 'o': 'addr=h'}, 'Labels': None}
    assert _transfer.existing_volume_overrides(nfs, 'local', {'type': 'nfs', 'device': ':/x', 'o': 'addr=h'}, {}) == []
    assert _transfer.existing_volume_overrides(vol, 'rexray', None, None) == ['its driver is local, not rexray']
