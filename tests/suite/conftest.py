"""Fixtures for the suite-level tests; helpers live in suite_helpers.py."""

from __future__ import annotations

import pytest

from suite_helpers import COLLECTION_ROOT


@pytest.fixture(scope='session')
def collection_root():
    if COLLECTION_ROOT.parent.parent.name != 'ansible_collections':
        pytest.skip('run through scripts/test-all.sh (needs the ansible_collections layout)')
    return COLLECTION_ROOT
