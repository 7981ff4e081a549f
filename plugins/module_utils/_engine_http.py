# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Single requests to a Docker daemon's local unix socket, with the standard library only.

Private to the collection. Used where importing the docker SDK would cost more
than the work itself: the first reads of every module (``_docker_client``), and
the transfer receiver on the destination host (``_transfer``), which runs
outside Ansible and may have no SDK at all.

One HTTP/1.0 request per connection: the daemon answers with the body
delimited by closing the connection, so no keep-alive or streaming logic is
needed. Without a version prefix in the path the daemon answers in its own
current API version, the one the SDK's ``version='auto'`` would negotiate.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import unquote, urlencode, urlparse


class EngineAnswerError(Exception):
    """Whatever answered on the socket did not speak HTTP."""


def unix_socket_path(docker_host):
    """The socket path of a ``unix://`` docker_host, else None."""
    url = urlparse(docker_host or 'unix:///var/run/docker.sock')
    if url.scheme not in ('unix', ''):
        return None
    return unquote(url.path) or None


def parse_http_response(raw):
    """(status, body) of a complete HTTP/1.x response; (None, b'') when ``raw`` is not one.

    A chunked body (which an HTTP/1.0 request should not get) is decoded too.
    """
    head, sep, body = raw.partition(b'\r\n\r\n')
    lines = head.split(b'\r\n')
    parts = lines[0].split(None, 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b'HTTP/1.') or not parts[1].isdigit():
        return None, b''
    headers = dict((k.strip().lower(), v.strip().lower()) for k, dummy, v in
                   (line.partition(b':') for line in lines[1:]))
    if headers.get(b'transfer-encoding') == b'chunked':
        decoded = []
        while body:
            size_line, dummy, rest = body.partition(b'\r\n')
            try:
                size = int(size_line.split(b';')[0], 16)
            except ValueError:
                return None, b''
            if size == 0:
                break
            decoded.append(rest[:size])
            body = rest[size + 2:]
        body = b''.join(decoded)
    return int(parts[1]), body


def request(sock_path, method, path, query=None, document=None, timeout=60):
    """Send one request; return (HTTP status, decoded JSON body or None).

    ``document`` (any JSON value) is sent as the request body. Raises OSError
    when the socket cannot be reached and EngineAnswerError when the answer is
    not HTTP; an error status is returned, not raised.
    """
    target = path + ('?' + urlencode(query) if query else '')
    body = b'' if document is None else json.dumps(document).encode('utf-8')
    head = ['%s %s HTTP/1.0' % (method, target), 'Host: docker', 'User-Agent: volumeops.docker']
    if document is not None:
        head += ['Content-Type: application/json', 'Content-Length: %d' % len(body)]
    message = ('\r\n'.join(head) + '\r\n\r\n').encode('ascii') + body
    chunks = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(sock_path)
        sock.sendall(message)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    status, raw_body = parse_http_response(b''.join(chunks))
    if status is None:
        raise EngineAnswerError('what listens on %s did not answer %s %s with HTTP' % (sock_path, method, path))
    try:
        decoded = json.loads(raw_body.decode('utf-8')) if raw_body.strip() else None
    except ValueError:
        decoded = None
    return status, decoded


def error_text(status, document):
    """The daemon's own message for an error answer."""
    if isinstance(document, dict) and document.get('message'):
        return str(document['message']).strip()
    return 'HTTP status %d' % status
