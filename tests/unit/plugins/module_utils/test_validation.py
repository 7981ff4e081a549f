# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests for the input checks (plugins/module_utils/_validation.py)."""

from __future__ import annotations

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils._validation import (
    stringify_labels,
    volume_name_error,
)


@pytest.mark.parametrize('name', ['ab', 'pgdata', 'a1', '0data', 'my_vol.v-2', 'A' * 200, 'x' + '_' * 5])
def test_valid_names(name):
    assert volume_name_error(name) is None


@pytest.mark.parametrize('name', ['', 'a', '-dash', '_under', '.dot', 'with space', 'with/slash', 'a:b',
                                  'tab\there', 'ünïcode', '../escape', 'new\nline', None, 12, ['ab']])
def test_invalid_names_are_refused_with_the_rule(name):
    error = volume_name_error(name)
    assert error is not None
    assert '[a-zA-Z0-9][a-zA-Z0-9_.-]+' in error
    assert repr(name) in error


def test_name_error_says_what_was_checked():
    assert 'Invalid source volume' in volume_name_error('-x', what='source volume')


def test_trailing_newline_is_not_accepted():
    # `$` in a Python regex also matches before a final newline: make sure that is not a hole.
    assert volume_name_error('data\n') is not None


def test_labels_strings_ints_and_none():
    assert stringify_labels({'a': 'x', 'port': 5432, 'empty': None}) == {'a': 'x', 'port': '5432', 'empty': ''}
    assert stringify_labels(None) == {}
    assert stringify_labels({}) == {}


@pytest.mark.parametrize('value', [1.0, 0.5, True, False])
def test_labels_refuse_floats_and_booleans_naming_key_and_value(value):
    with pytest.raises(ValueError) as info:
        stringify_labels({'foo': value})
    # Word for word community.docker's message (its integration test compares it exactly).
    assert str(info.value) == ("The value %s for 'foo' of labels is not a string or something than can be "
                               "safely converted to a string!" % value)


def test_labels_refuse_nested_values():
    with pytest.raises(ValueError) as info:
        stringify_labels({'nested': {'a': 'b'}})
    assert "'nested'" in str(info.value)


def test_labels_message_names_what():
    with pytest.raises(ValueError) as info:
        stringify_labels({'o': True}, what='driver_options')
    assert "'o' of driver_options" in str(info.value)
