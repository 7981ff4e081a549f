"""Shared helpers for the suite-level tests (sanity, lint, build, integration targets).

These tests run from the collection copy that scripts/test-all.sh makes
(<root>/ansible_collections/volumeops/docker), as root, with the venv's tools on PATH.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

COLLECTION_ROOT = pathlib.Path(__file__).resolve().parents[2]
# ansible-test runs its tests with the interpreter of the venv that runs pytest (the one whose
# ansible-core is under test).
PYTHON_VERSION = '%d.%d' % sys.version_info[:2]


def run(argv, cwd=COLLECTION_ROOT, env=None, timeout=1800):
    """Run argv (a list, never a shell string); return CompletedProcess with combined output."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(argv, cwd=str(cwd), env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)


def assert_ok(proc, what):
    if proc.returncode != 0:
        tail = '\n'.join(proc.stdout.splitlines()[-80:])
        pytest.fail('%s failed (exit %d):\n%s' % (what, proc.returncode, tail), pytrace=False)
