# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every module's DOCUMENTATION, EXAMPLES and RETURN is YAML that parses (a ': ' inside a plain
scalar breaks it). ansible-test sanity's validate-modules checks far more, in minutes; this fails
in a second, in the unit run, with the line at fault."""

from __future__ import annotations

import ast
import pathlib

import pytest
import yaml

MODULES = sorted((pathlib.Path(__file__).resolve().parents[4] / 'plugins' / 'modules').glob('*.py'))
FRAGMENTS = sorted((pathlib.Path(__file__).resolve().parents[4] / 'plugins' / 'doc_fragments').glob('*.py'))


def _doc_strings(path):
    """{name: text} of the module-level DOCUMENTATION/EXAMPLES/RETURN strings (also class attributes of fragments)."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if getattr(target, 'id', None) in ('DOCUMENTATION', 'EXAMPLES', 'RETURN'):
                    found[target.id] = node.value.value
    return found


def test_every_module_is_found():
    assert len(MODULES) >= 8 and FRAGMENTS


@pytest.mark.parametrize('path', MODULES + FRAGMENTS, ids=lambda p: p.name)
def test_documentation_examples_and_return_parse_as_yaml(path):
    docs = _doc_strings(path)
    if path in MODULES:
        assert set(docs) == {'DOCUMENTATION', 'EXAMPLES', 'RETURN'}, sorted(docs)
    assert docs, 'no documentation strings in %s' % path
    for name, text in docs.items():
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            pytest.fail('%s %s is not valid YAML: %s' % (path.name, name, exc))
        if name == 'DOCUMENTATION':
            assert isinstance(data, dict) and data.get('options') is not None or path in FRAGMENTS, path.name
