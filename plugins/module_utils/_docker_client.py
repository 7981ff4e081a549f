# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The Docker connection layer shared by every module of the collection.

Private to the collection (the leading underscore): no compatibility promise
to code outside it.

- ``docker_argument_spec()`` returns the connection options documented once in
  the ``volumeops.docker.docker`` doc fragment (env fallbacks included).
- ``AnsibleDockerClient`` builds the AnsibleModule and, on first use, a
  low-level docker SDK ``APIClient``; every API error is turned into one clear
  ``fail_json`` message, never a traceback.
- Reads that every module starts with (inspect a volume, list the containers
  using it) go straight to a local daemon's unix socket as one HTTP GET when
  no TLS and no pinned API version are involved: importing the SDK and
  negotiating the API version cost about 0.1 s, a quarter of an idempotent
  backup's run. Anything else uses the SDK.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from contextlib import contextmanager
from urllib.parse import quote, urlparse

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.errors import AnsibleFallbackNotFound
from ansible_collections.volumeops.docker.plugins.module_utils import _engine_http

# The docker SDK is imported on first use (import_docker_sdk), once the module knows its docker_host.
docker = docker_errors = TLSConfig = requests_errors = None
HAS_DOCKER = None  # None: not tried yet
DOCKER_IMPORT_ERROR = None


def import_docker_sdk(docker_host=None):
    """Import the docker SDK once; True when it is importable (else DOCKER_IMPORT_ERROR has the traceback).

    The SDK imports paramiko eagerly for its ssh:// transport, which costs about 35 ms, a tenth of
    a module's start-up and a noticeable share of a no-op run. Unless the daemon is reached over
    ssh:// (or paramiko is loaded already), paramiko is hidden while the SDK loads; only the SDK's
    optional ssh transport is skipped, and paramiko stays importable for anything else afterwards.
    """
    global docker, docker_errors, TLSConfig, requests_errors, HAS_DOCKER, DOCKER_IMPORT_ERROR  # pylint: disable=global-statement
    if HAS_DOCKER is not None:
        return HAS_DOCKER
    hide_paramiko = 'paramiko' not in sys.modules and urlparse(docker_host or '').scheme != 'ssh'
    if hide_paramiko:
        sys.modules['paramiko'] = None  # makes "import paramiko" raise ImportError, which the SDK tolerates
    try:
        import docker as sdk
        from docker import errors as sdk_errors
        from docker.tls import TLSConfig as sdk_tls_config
        from requests import exceptions as sdk_requests_errors  # comes with the SDK
        docker, docker_errors, TLSConfig, requests_errors = sdk, sdk_errors, sdk_tls_config, sdk_requests_errors
        HAS_DOCKER = True
    except ImportError:
        HAS_DOCKER = False
        DOCKER_IMPORT_ERROR = traceback.format_exc()
    finally:
        if hide_paramiko and sys.modules.get('paramiko', False) is None:
            del sys.modules['paramiko']
    return HAS_DOCKER


DEFAULT_DOCKER_HOST = 'unix:///var/run/docker.sock'
MIN_DOCKER_SDK = (7, 0, 0)
# Container states in which a container holds its volumes mounted and may write to them (or, restarting, is about
# to): a paused container's processes resume where they were, over whatever was done to the volume meanwhile.
# They count as running users: refused, or stopped by stop_containers and started again afterwards.
ACTIVE_STATES = ('running', 'paused', 'restarting')


def set_env_fallback(*names):
    """Like ``env_fallback``, but a variable set to the empty string counts as unset, as the docker CLI
    reads them (``DOCKER_TLS_VERIFY=`` must not fail every task with "'' is not a valid boolean")."""
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    raise AnsibleFallbackNotFound


def docker_argument_spec():
    """The connection options; a fresh dict each call so modules may extend it."""
    return dict(
        docker_host=dict(type='str', default=DEFAULT_DOCKER_HOST, aliases=['docker_url'],
                         fallback=(set_env_fallback, ['DOCKER_HOST'])),
        tls=dict(type='bool', default=False, fallback=(set_env_fallback, ['DOCKER_TLS'])),
        validate_certs=dict(type='bool', default=False, aliases=['tls_verify'],
                            fallback=(set_env_fallback, ['DOCKER_TLS_VERIFY'])),
        ca_path=dict(type='path', aliases=['ca_cert', 'tls_ca_cert', 'cacert_path']),
        client_cert=dict(type='path', aliases=['tls_client_cert', 'cert_path']),
        client_key=dict(type='path', aliases=['tls_client_key', 'key_path'], no_log=False),
        api_version=dict(type='str', default='auto', aliases=['docker_api_version'],
                         fallback=(set_env_fallback, ['DOCKER_API_VERSION'])),
        timeout=dict(type='int', default=60, fallback=(set_env_fallback, ['DOCKER_TIMEOUT'])),
    )


CONNECTION_OPTION_NAMES = frozenset(docker_argument_spec())


def is_local_unix_socket(docker_host):
    """True when the daemon is reached through a unix socket on this host.

    Only then is a volume's Mountpoint a path the module can open itself.
    """
    return urlparse(docker_host or DEFAULT_DOCKER_HOST).scheme in ('unix', '')


class DockerCallError(Exception):
    """A Docker API call failed; ``msg`` is meant for the user as it is."""

    def __init__(self, msg, status=None):
        super().__init__(msg)
        self.msg = msg
        self.status = status


def describe_docker_error(exc, action):
    """One human sentence for an exception raised by the docker SDK."""
    if docker_errors is not None and isinstance(exc, docker_errors.APIError):
        explanation = exc.explanation
        if isinstance(explanation, bytes):
            explanation = explanation.decode('utf-8', 'replace')
        return '%s failed: %s' % (action, explanation or str(exc))
    if requests_errors is not None and isinstance(exc, requests_errors.ConnectionError):
        return '%s failed: cannot reach the Docker daemon (%s)' % (action, _root_cause(exc))
    if isinstance(exc, PermissionError):
        return '%s failed: permission denied on the Docker socket (%s)' % (action, exc)
    return '%s failed: %s' % (action, _root_cause(exc))


def _root_cause(exc):
    seen = set()
    while exc.__context__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__context__
    return str(exc) or exc.__class__.__name__


class AnsibleDockerClient(object):
    """AnsibleModule + docker APIClient with error handling in one place.

    Modules pass their own argument spec (connection options are merged in)
    and the usual AnsibleModule keyword arguments.
    """

    def __init__(self, argument_spec, **module_kwargs):
        spec = docker_argument_spec()
        spec.update(argument_spec)
        self.module = AnsibleModule(argument_spec=spec, **module_kwargs)
        self.params = self.module.params
        self._init_connection()

    def _init_connection(self):
        """Check docker_host; the daemon itself is contacted only by the first API call."""
        self._api = None
        host = self.params['docker_host']
        try:
            scheme = urlparse(host).scheme
        except ValueError as exc:  # "Invalid IPv6 URL" for tcp://[::1
            self.fail('docker_host %r is not a valid URL (%s).' % (host, exc))
        if scheme not in ('unix', 'tcp', 'ssh', 'http', 'https', 'npipe'):
            self.fail('docker_host %r is not a unix://, tcp:// or ssh:// URL.' % host)
        if self.params['timeout'] is not None and self.params['timeout'] < 1:
            self.fail('timeout must be 1 second or more, not %d.' % self.params['timeout'])

    @property
    def api(self):
        """The docker SDK's low-level APIClient, made (SDK imported, API version negotiated) on first use."""
        if self._api is None:
            self._require_sdk()
            self._api = self._connect()
        return self._api

    def _require_sdk(self):
        if not import_docker_sdk(self.params['docker_host']):
            self.module.fail_json(msg=missing_required_lib('docker (the Docker SDK for Python: apt install python3-docker, or pip install docker)'),
                                  exception=DOCKER_IMPORT_ERROR)
        version = tuple(int(p) for p in docker.__version__.split('.')[:3] if p.isdigit())
        if version < MIN_DOCKER_SDK:
            self.module.fail_json(msg='The docker Python SDK %s on %s is too old; version %s or newer is required.'
                                  % (docker.__version__, os.uname()[1], '.'.join(map(str, MIN_DOCKER_SDK))))

    @property
    def NotFound(self):  # pylint: disable=invalid-name
        """The SDK's NotFound exception class (for ``except client.NotFound``)."""
        self._require_sdk()
        return docker_errors.NotFound

    @property
    def docker_host(self):
        return self.params['docker_host']

    @property
    def is_local(self):
        return is_local_unix_socket(self.docker_host)

    def fail(self, msg, **kwargs):
        self.module.fail_json(msg=msg, **kwargs)

    def _tls_config(self):
        p = self.params
        cert_dir = os.environ.get('DOCKER_CERT_PATH')

        def from_cert_dir(value, name):
            if value or not cert_dir:
                return value
            candidate = os.path.join(cert_dir, name)
            return candidate if os.path.exists(candidate) else None

        ca = from_cert_dir(p['ca_path'], 'ca.pem')
        cert = from_cert_dir(p['client_cert'], 'cert.pem')
        key = from_cert_dir(p['client_key'], 'key.pem')
        if not (p['tls'] or p['validate_certs']):
            return False
        if bool(cert) != bool(key):
            self.fail('client_cert and client_key must be given together.')
        for name, value in (('ca_path', ca), ('client_cert', cert), ('client_key', key)):
            if value and not os.path.isfile(value):
                self.fail('%s %s does not exist or is not a file.' % (name, value))
        return TLSConfig(client_cert=(cert, key) if cert else None,
                         ca_cert=ca if p['validate_certs'] else None,
                         verify=bool(p['validate_certs']))

    def _connect(self):
        p = self.params
        host = p['docker_host']
        try:
            api = docker.APIClient(base_url=host, version=p['api_version'] or 'auto',
                                   timeout=p['timeout'], tls=self._tls_config(),
                                   use_ssh_client=False)
        except Exception as exc:  # the SDK raises many kinds while negotiating the version
            self.fail(self._connect_error(exc))
        return api

    def _connect_error(self, exc):
        text = _root_cause(exc)
        if 'Permission denied' in text or isinstance(exc, PermissionError):
            return ('Cannot connect to the Docker daemon at %s: permission denied. Run as root, '
                    'add the user to the docker group, or use become.' % self.docker_host)
        if 'client version' in text and 'too old' in text or 'minimum supported API version' in text:
            return 'The Docker daemon at %s refused the API version: %s' % (self.docker_host, text)
        return 'Cannot connect to the Docker daemon at %s: %s' % (self.docker_host, text)

    @contextmanager
    def errors(self, action):
        """Turn any SDK error inside the block into one fail_json message."""
        try:
            yield
        except DockerCallError as exc:
            self.fail(exc.msg)
        except Exception as exc:
            if docker_errors is not None and isinstance(exc, docker_errors.DockerException) or \
                    (requests_errors is not None and isinstance(exc, requests_errors.RequestException)) or \
                    isinstance(exc, (OSError, PermissionError)):
                self.fail(describe_docker_error(exc, action))
            raise

    # --- direct reads from a local daemon -----------------------------------------------------------

    def _local_socket(self):
        """The socket path when reads may bypass the SDK (local unix socket, no TLS, API version 'auto')."""
        p = self.params
        if p['tls'] or p['validate_certs'] or (p['api_version'] or 'auto') != 'auto':
            return None
        return _engine_http.unix_socket_path(p['docker_host'])

    def _get_json(self, path, query=None):
        """GET ``path`` from a local daemon directly: (HTTP status, decoded JSON body or None).

        None when the daemon is not reached that way (see _local_socket); the caller then uses the SDK.
        An error status other than 404 raises DockerCallError.
        """
        sock_path = self._local_socket()
        if sock_path is None:
            return None
        try:
            status, document = _engine_http.request(sock_path, 'GET', path, query, timeout=self.params['timeout'])
        except OSError as exc:
            self.fail(self._connect_error(exc))
        except _engine_http.EngineAnswerError as exc:
            self.fail('Cannot connect to the Docker daemon at %s: %s.' % (self.docker_host, exc))
        if status >= 400 and status != 404:
            raise DockerCallError('Docker API GET %s failed: %s' % (path, _engine_http.error_text(status, document)),
                                  status=status)
        return status, document

    # --- volume helpers used by several modules -------------------------------------------------

    def volume_disk_usage(self):
        """The daemon's disk usage answer (GET /system/df), asking for the volumes only.

        ``type=volume`` (Engine API 1.42+) spares the daemon computing the size of every image, container
        and build cache entry on the host; older daemons ignore the parameter and answer everything.
        """
        answer = self._get_json('/system/df', {'type': 'volume'})
        if answer is not None:
            return answer[1] or {}
        return self.api.df()

    def inspect_volume(self, name):
        """The volume's inspect dict, or None when it does not exist."""
        answer = self._get_json('/volumes/' + quote(name, safe=''))
        if answer is not None:
            status, document = answer
            return None if status == 404 else document
        try:
            return self.api.inspect_volume(name)
        except docker_errors.NotFound:
            return None

    def list_volumes(self, filters=None):
        """The daemon's volume listing (GET /volumes): ``{'Volumes': [...], 'Warnings': [...]}``.

        ``filters`` maps a filter name to a list of values, as the Engine API takes them.
        """
        answer = self._get_json('/volumes', {'filters': json.dumps(filters)} if filters else None)
        if answer is not None:
            return answer[1] or {}
        return self.api.volumes(filters=filters)

    def list_containers(self, filters=None):
        """Summaries of all containers, running or not (GET /containers/json?all=1), optionally filtered.

        ``filters`` maps a filter name to a list of values, as the Engine API takes them.
        """
        query = dict(all='1')
        if filters:
            query['filters'] = json.dumps(filters)
        answer = self._get_json('/containers/json', query)
        if answer is not None:
            return answer[1] or []
        return self.api.containers(all=True, filters=filters)

    def containers_using_volume(self, name):
        """Containers (running or not) that mount the volume.

        Returns dicts with name, id, running, state, destination, read_only, labels; ``running`` is true in
        every state of ACTIVE_STATES (a paused container still holds the volume mounted).
        """
        result = []
        for summary in self.list_containers(filters={'volume': [name]}):
            for mount in summary.get('Mounts') or []:
                if mount.get('Type') == 'volume' and mount.get('Name') == name:
                    result.append(dict(
                        name=(summary.get('Names') or ['/' + summary['Id'][:12]])[0].lstrip('/'),
                        id=summary['Id'],
                        state=summary.get('State'),
                        running=summary.get('State') in ACTIVE_STATES,
                        destination=mount.get('Destination'),
                        read_only=not mount.get('RW', True),
                        labels=summary.get('Labels') or {},
                    ))
        return result

    def require_local_image(self, image):
        """Helper images are never pulled: fail clearly when the image is absent."""
        try:
            return self.api.inspect_image(image)
        except docker_errors.NotFound:
            self.fail('Helper image %r is not present on the Docker host; this collection never pulls images. '
                      'Load or build it there first (docker load / docker import), or set helper_image.' % image)
