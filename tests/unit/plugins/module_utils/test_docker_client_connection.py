# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The connection options are checked when they are read: one clear message each, never a traceback."""

from __future__ import annotations

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _docker_client


class _Fail(Exception):
    pass


def _client(**params):
    client = _docker_client.AnsibleDockerClient.__new__(_docker_client.AnsibleDockerClient)
    client.params = dict(dict(docker_host=_docker_client.DEFAULT_DOCKER_HOST, timeout=60), **params)

    def fail(msg, **kwargs):
        raise _Fail(msg)
    client.fail = fail
    return client


@pytest.mark.parametrize('timeout', [0, -1])
def test_a_timeout_below_one_second_is_refused(timeout):
    with pytest.raises(_Fail, match='timeout must be 1 second or more, not %d' % timeout):
        _client(timeout=timeout)._init_connection()


def test_a_valid_timeout_and_host_pass():
    _client(timeout=1, docker_host='tcp://[::1]:2375')._init_connection()


def test_a_malformed_ipv6_host_is_one_message():
    with pytest.raises(_Fail, match=r"docker_host 'tcp://\[::1' is not a valid URL \(Invalid IPv6 URL\)"):
        _client(docker_host='tcp://[::1')._init_connection()
