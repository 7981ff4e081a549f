"""raw_argv: the command line runs exactly the given argument list, and no shell parses any argument."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.volumeops.docker.plugins.filter.raw_argv import EXEC_SCRIPT, FilterModule, raw_argv

HOSTILE = [
    '', ' ', 'plain', "it's", '"double"', '$(touch {canary})', '`touch {canary}`', '; touch {canary}',
    '$HOME', '\\', 'back\\slash\\\\', 'line\nbreak', 'trailing newlines\n\n', '-e', '--', '*', '~', '!x',
    'ünïcödé ✓', "'; touch {canary}; echo '", '${IFS}', 'x' * 20000,
]
SHELLS = [s for s in ('/bin/sh', '/bin/dash', '/bin/bash') if shutil.which(s)]


def _echo_argv():
    # The executed command prints the argument list it received.
    return [sys.executable, '-c', 'import json, sys; print(json.dumps(sys.argv[1:]))']


@pytest.mark.parametrize('login_shell', SHELLS)
def test_the_list_arrives_exactly_and_nothing_is_run(tmp_path, login_shell):
    canary = tmp_path / 'canary'
    args = [a.replace('{canary}', str(canary)) for a in HOSTILE] + [7]
    line = raw_argv(_echo_argv() + args)
    # As ansible.builtin.raw hands it over: one command line for the login shell.
    proc = subprocess.run([login_shell, '-c', line], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [str(a) for a in args]
    assert not canary.exists()


def test_the_shell_sees_only_the_constant_script_and_base64_words():
    line = raw_argv(['docker', 'stop', '--', "x'; rm -rf / #", 'a b'])
    prefix = "/bin/sh -c '%s' volumeops-exec " % EXEC_SCRIPT
    assert line.startswith(prefix)
    words = line[len(prefix):].split(' ')
    assert len(words) == 5
    assert all(re.match(r"^'[A-Za-z0-9+/=]*'$", w) for w in words)
    assert "'" not in EXEC_SCRIPT


def test_exit_status_and_a_missing_command():
    assert subprocess.run(['/bin/sh', '-c', raw_argv(['sh', '-c', 'exit 3'])], check=False).returncode == 3
    proc = subprocess.run(['/bin/sh', '-c', raw_argv(['/nonexistent/python3', '-c', 'pass'])],
                          stderr=subprocess.PIPE, check=False)
    assert proc.returncode == 127
    assert b'/nonexistent/python3' in proc.stderr


@pytest.mark.parametrize('value', ['docker stop', [], None, {'a': 1}, ['ok', None], ['ok', True], ['ok', ['x']]])
def test_refuses_what_is_not_an_argument_list(value):
    with pytest.raises(AnsibleFilterError, match='raw_argv'):
        raw_argv(value)


def test_registered_under_its_name():
    assert FilterModule().filters()['raw_argv'] is raw_argv
