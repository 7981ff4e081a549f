"""The collection with the newest and the oldest ansible-core it claims (scripts/lib/requirements-{newest,oldest}.txt).

The main suite runs ansible-core 2.19, the newest release for Debian 12's Python 3.11. Users run others:

- the newest (2.21), whose ansible-test sanity has more rules and whose controller templates the roles. It
  needs Python >= 3.12: where one is installed (pyenv on the CI machine), scripts/lib/bootstrap.sh makes a
  venv with it; without one these tests are skipped, with the reason. With it: ansible-test sanity of the
  whole collection; integration targets for the shared connection options and the action group, and the
  archive pipelines (backup_info backs up and reads back) on the newer Python; the roles' system tests.
- the oldest that meta/runtime.yml accepts (2.16): the roles' system tests. (The integration targets assert
  with 2.19's templating, e.g. a template giving None stays None, and are not run with it.)

The roles' system tests run on their own bench (another state dir and subnet) with the controller from the
extra venv and the hosts' interpreter from the main venv (the hosts cannot see a pyenv Python under /root,
which each bench host mounts privately).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from suite_helpers import COLLECTION_ROOT, assert_ok, run

ROLE_TESTS = [
    'tests/system/test_migrate.py::test_many_pairs_selections_options_relay_and_rerun',
    'tests/system/test_backup_role.py::test_backup_and_restore_roles_pass_their_options_through',
    'tests/system/test_restore_role.py',
]
TARGETS = ['connection', 'volume', 'backup_info']


def _extra_venv(which):
    proc = subprocess.run(['bash', '-c', 'source scripts/lib/bootstrap.sh && bootstrap_extra_venv "$0"', which],
                          cwd=str(COLLECTION_ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          check=False, timeout=1200)
    if proc.returncode == 2:
        pytest.skip('no Python >= 3.12 on this machine: the newest ansible-core cannot be installed')
    assert proc.returncode == 0, proc.stderr[-3000:]
    venv = proc.stdout.strip().splitlines()[-1]
    version = run([os.path.join(venv, 'bin', 'ansible'), '--version'])
    assert_ok(version, 'ansible --version')
    wanted = [line.split('==')[1] for line in (COLLECTION_ROOT / 'scripts' / 'lib' / ('requirements-%s.txt' % which))
              .read_text().splitlines() if line.startswith('ansible-core==')][0]
    assert 'core %s]' % wanted in version.stdout, version.stdout
    return venv


@pytest.fixture(scope='module')
def newest_venv():
    return _extra_venv('newest')


@pytest.fixture(scope='module')
def oldest_venv():
    return _extra_venv('oldest')


def _env(venv, copy_root=None):
    env = {'VOLUMEOPS_VENV': venv,
           'PATH': '%s:%s' % (os.path.join(venv, 'bin'), os.environ.get('PATH', '/usr/bin:/bin'))}
    if copy_root is not None:
        env['VOLUMEOPS_COPY_ROOT'] = str(copy_root)  # the scripts' collection copy
    return env


def test_sanity_with_the_newest_ansible_core(newest_venv, tmp_path):
    proc = run(['bash', 'scripts/run-sanity.sh'], env=_env(newest_venv, tmp_path / 'copy'))
    assert_ok(proc, 'ansible-test sanity with the newest ansible-core')
    assert 'Running sanity test "validate-modules"' in proc.stdout
    assert 'Running sanity test "pylint"' in proc.stdout


@pytest.mark.parametrize('target', TARGETS)
def test_integration_target_with_the_newest_ansible_core(newest_venv, tmp_path, target):
    proc = run(['bash', 'scripts/run-target.sh', target], env=_env(newest_venv, tmp_path / 'copy'))
    assert_ok(proc, 'integration target %s with the newest ansible-core' % target)
    assert 'failed=0' in proc.stdout, proc.stdout[-2000:]
    assert 'Using a template for task args is unsafe' not in proc.stdout, 'a task passes its whole args as a template'


def _role_tests(venv, bench_net):
    env = _env(venv)
    env.update({'VOLUMEOPS_HOST_PYTHON': os.path.join(os.path.dirname(sys.executable), 'python'),
                'VOLUMEOPS_BENCH_STATE': '/var/lib/volumeops-bench-compat', 'VOLUMEOPS_BENCH_NET': bench_net,
                'PYTHONPATH': os.environ.get('PYTHONPATH', '')})
    proc = run([os.path.join(venv, 'bin', 'python'), '-m', 'pytest', '-p', 'no:cacheprovider', '-q', '-rfE']
               + ROLE_TESTS, env=env)
    assert_ok(proc, 'the roles\' system tests with %s' % venv)
    passed = re.search(r'(\d+) passed', proc.stdout)
    assert passed and int(passed.group(1)) >= len(ROLE_TESTS), proc.stdout[-3000:]
    assert 'failed' not in proc.stdout and 'skipped' not in proc.stdout, proc.stdout[-3000:]


def test_roles_with_the_newest_ansible_core(newest_venv):
    _role_tests(newest_venv, '79')


def test_roles_with_the_oldest_ansible_core(oldest_venv):
    _role_tests(oldest_venv, '79')
