# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests for the pure parts of the connection layer (plugins/module_utils/_docker_client.py).

The direct GET against a real daemon's socket runs in every integration target (inspect and the
container listing of a local volume); here only the response parsing, which needs no daemon.
"""

from __future__ import annotations

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils._docker_client import parse_http_response


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
