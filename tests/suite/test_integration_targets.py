"""Each integration target (tests/integration/targets/<name>) is one test.

A target is a real playbook run by ansible-test against the real Docker engine
on this machine. Targets whose aliases say `disabled` or `hidden` are skipped.
"""

from __future__ import annotations

import pytest

from suite_helpers import COLLECTION_ROOT, PYTHON_VERSION, assert_ok, run

TARGETS_DIR = COLLECTION_ROOT / 'tests' / 'integration' / 'targets'


def _targets():
    if not TARGETS_DIR.is_dir():
        return []
    result = []
    for target in sorted(TARGETS_DIR.iterdir()):
        aliases_file = target / 'aliases'
        aliases = aliases_file.read_text().split() if aliases_file.exists() else []
        if not (target / 'tasks' / 'main.yml').exists() or 'hidden' in aliases or 'disabled' in aliases:
            continue
        result.append(target.name)
    return result


@pytest.mark.parametrize('target', _targets())
def test_integration_target(collection_root, target):
    proc = run(['ansible-test', 'integration', '--local', '--python', PYTHON_VERSION, '--allow-destructive', '--color', 'no', '-v', target],
               cwd=collection_root)
    assert_ok(proc, 'integration target %s' % target)
    assert 'failed=0' in proc.stdout, proc.stdout[-2000:]
