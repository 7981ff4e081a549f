# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests for direct requests to the engine socket (plugins/module_utils/_engine_http.py).

The direct GET against a real daemon's socket runs in every integration target (inspect and the
container listing of a local volume); here only the response parsing, which needs no daemon.
"""

from __future__ import annotations

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils._engine_http import parse_http_response


def test_plain_response_with_length():
    raw = b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"Name":"x"}'
    assert parse_http_response(raw) == (200, b'{"Name":"x"}')


def test_not_found_keeps_status_and_body():
    raw = b'HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\r\n{"message":"get x: no such volume"}\n'
    assert parse_http_response(raw) == (404, b'{"message":"get x: no such volume"}\n')


def test_chunked_body_is_decoded():
    raw = (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n'
           b'4\r\n[{"a\r\n6;ext=1\r\n":1}]\n\r\n0\r\n\r\n')
    assert parse_http_response(raw) == (200, b'[{"a":1}]\n')


@pytest.mark.parametrize('raw', [
    b'',
    b'garbage without headers',
    b'SSH-2.0-OpenSSH_9.2\r\n\r\n',
    b'HTTP/1.1 abc OK\r\n\r\n',
    b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx',
])
def test_anything_else_is_not_an_http_answer(raw):
    assert parse_http_response(raw) == (None, b'')


def test_request_against_a_socket_that_speaks_http(tmp_path):
    # A stand-in daemon on a real unix socket: the request line, headers and JSON body as sent, the
    # answer parsed (the real daemon is used by every integration target).
    import json
    import socket
    import threading
    from ansible_collections.volumeops.docker.plugins.module_utils import _engine_http
    path = str(tmp_path / 'docker.sock')
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    seen = {}

    def serve():
        conn, dummy = server.accept()
        data = b''
        while b'\r\n\r\n' not in data:
            data += conn.recv(4096)
        head, dummy, body = data.partition(b'\r\n\r\n')
        length = int([h for h in head.split(b'\r\n') if h.lower().startswith(b'content-length:')][0].split(b':')[1])
        while len(body) < length:
            body += conn.recv(4096)
        seen['head'], seen['body'] = head, body
        conn.sendall(b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\r\n{"Name": "v"}\n')
        conn.close()
    t = threading.Thread(target=serve)
    t.start()
    status, doc = _engine_http.request(path, 'POST', '/volumes/create', query={'a': 'b c'}, document={'Name': 'v'})
    t.join()
    server.close()
    assert (status, doc) == (201, {'Name': 'v'})
    assert seen['head'].split(b'\r\n')[0] == b'POST /volumes/create?a=b+c HTTP/1.0'
    assert json.loads(seen['body']) == {'Name': 'v'}


def test_request_to_a_missing_socket_raises_oserror(tmp_path):
    from ansible_collections.volumeops.docker.plugins.module_utils import _engine_http
    with pytest.raises(OSError):
        _engine_http.request(str(tmp_path / 'none.sock'), 'GET', '/version')


@pytest.mark.parametrize('host, path', [
    ('unix:///var/run/docker.sock', '/var/run/docker.sock'),
    ('unix:///run/user/1000/docker%20x.sock', '/run/user/1000/docker x.sock'),
    ('tcp://127.0.0.1:2375', None),
    ('ssh://user@host', None),
    (None, '/var/run/docker.sock'),
])
def test_unix_socket_path(host, path):
    from ansible_collections.volumeops.docker.plugins.module_utils import _engine_http
    assert _engine_http.unix_socket_path(host) == path
