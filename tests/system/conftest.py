"""Shared fixtures for the multi-host system tests (tests/system).

- ``bench``: a session-wide bench of 2 namespaced hosts (tests/bench/benchhosts.py), each with its
  own sshd and dockerd, torn down at the end. Set VOLUMEOPS_BENCH_KEEP=1 to keep it for debugging,
  VOLUMEOPS_BENCH_STATE / VOLUMEOPS_BENCH_NET to use another state dir / subnet.
- ``collections_path``: a directory whose ansible_collections/volumeops/docker is this checkout.
- ``ansible_env``: environment for ansible/ansible-playbook from the venv using that collection.
- ``ansible_run``: run a venv ansible command against the bench inventory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get('VOLUMEOPS_VENV', '/opt/volumeops/venv'))
VENV_BIN = VENV / 'bin'
TEST_IMAGE = os.environ.get('VOLUMEOPS_TEST_IMAGE', 'volumeops-test/busybox:1')

sys.path.insert(0, str(REPO_ROOT / 'tests' / 'bench'))

from benchhosts import Bench  # noqa: E402  (path set just above)


@pytest.fixture(scope='session')
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope='session')
def collections_path(tmp_path_factory):
    """A collections dir in which volumeops.docker is this checkout."""
    if REPO_ROOT.parent.name == 'volumeops' and REPO_ROOT.parent.parent.name == 'ansible_collections':
        return REPO_ROOT.parent.parent.parent
    base = tmp_path_factory.mktemp('collections')
    ns = base / 'ansible_collections' / 'volumeops'
    ns.mkdir(parents=True)
    (ns / 'docker').symlink_to(REPO_ROOT)
    return base


@pytest.fixture(scope='session')
def ansible_env(collections_path):
    env = dict(os.environ)
    env.update({
        'PATH': '%s:%s' % (VENV_BIN, env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')),
        'ANSIBLE_COLLECTIONS_PATH': str(collections_path),
        'ANSIBLE_HOST_KEY_CHECKING': 'True',
        'ANSIBLE_RETRY_FILES_ENABLED': 'False',
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_FORCE_COLOR': '0',
        'ANSIBLE_STDOUT_CALLBACK': 'default',
        'ANSIBLE_ROLES_PATH': str(REPO_ROOT / 'roles'),
        'VOLUMEOPS_TEST_IMAGE': TEST_IMAGE,
    })
    env.pop('DOCKER_HOST', None)
    return env


@pytest.fixture(scope='session')
def bench():
    """Two bench hosts h1, h2 (10.77.0.11/12 by default), up for the whole session."""
    if os.geteuid() != 0:
        pytest.skip('the multi-host bench needs root')
    b = Bench()
    started = time.time()
    b.up(2)
    b.up_seconds = time.time() - started
    try:
        yield b
    finally:
        if os.environ.get('VOLUMEOPS_BENCH_KEEP') != '1':
            b.down()


@pytest.fixture(scope='session')
def ansible_run(bench, ansible_env):
    """ansible_run(['ansible', 'bench', '-m', 'ping']) -> CompletedProcess (text); -i is added."""
    def run(argv, timeout=900, check=False, env=None):
        argv = list(argv)
        argv[0] = str(VENV_BIN / argv[0]) if (VENV_BIN / argv[0]).exists() else argv[0]
        argv[1:1] = ['-i', bench.inventory]
        proc = subprocess.run(argv, check=False, env=env or ansible_env, cwd=str(REPO_ROOT), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError('%s failed rc=%d:\n%s' % (' '.join(argv), proc.returncode, proc.stdout))
        return proc
    return run
