# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests for _process: the one place the pipelines start their commands."""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _process


def test_spawn_takes_an_argument_list_only():
    with pytest.raises(TypeError, match='argument list'):
        _process.spawn('echo hi; touch /tmp/should-not-exist')
    proc = _process.spawn(['printf', '%s|', 'a b', '$(x)'], stdout=subprocess.PIPE)
    assert proc.communicate()[0] == b'a b|$(x)|'  # each word passed as it is, no shell


def test_output_returns_status_stdout_stderr_and_feeds_stdin():
    assert _process.output(['sh', '-c', 'cat; echo err >&2; exit 3'], stdin_data=b'in\x00put') == (3, b'in\x00put', b'err\n')
    assert _process.output(['cat']) == (0, b'', b'')  # stdin is /dev/null without data: no waiting on the caller's
