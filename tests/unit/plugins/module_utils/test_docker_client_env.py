# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options from the environment: a variable set to the empty string counts as unset (docker CLI)."""

from __future__ import annotations

import pytest

from ansible.module_utils.errors import AnsibleFallbackNotFound

from ansible_collections.volumeops.docker.plugins.module_utils import _docker_client


def test_empty_variable_is_unset(monkeypatch):
    monkeypatch.setenv('DOCKER_TLS_VERIFY', '')
    with pytest.raises(AnsibleFallbackNotFound):
        _docker_client.set_env_fallback('DOCKER_TLS_VERIFY')
    monkeypatch.setenv('DOCKER_TLS_VERIFY', '1')
    assert _docker_client.set_env_fallback('DOCKER_TLS_VERIFY') == '1'
    monkeypatch.delenv('DOCKER_TLS_VERIFY')
    with pytest.raises(AnsibleFallbackNotFound):
        _docker_client.set_env_fallback('DOCKER_TLS_VERIFY')


def test_every_connection_option_from_the_environment_uses_it():
    for name, spec in _docker_client.docker_argument_spec().items():
        if 'fallback' in spec:
            assert spec['fallback'][0] is _docker_client.set_env_fallback, name
