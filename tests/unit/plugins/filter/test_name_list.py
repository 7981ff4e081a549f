from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.volumeops.docker.plugins.filter.name_list import FilterModule, name_list


@pytest.mark.parametrize('value, expected', [
    (None, []),
    ('', []),
    (' , ,', []),
    ('pgdata', ['pgdata']),
    ('pgdata, redis ,', ['pgdata', 'redis']),
    ('team=db,tier=1', ['team=db', 'tier=1']),
    ([], []),
    ([' a ', '', 'b,c'], ['a', 'b,c']),
    (('x',), ['x']),
    ([{'name': 'd', 'from': 'e'}, 'f'], [{'name': 'd', 'from': 'e'}, 'f']),
])
def test_name_list(value, expected):
    assert name_list(value) == expected


@pytest.mark.parametrize('value', [{'name': 'a'}, 3, True])
def test_name_list_refuses_other_types(value):
    with pytest.raises(AnsibleFilterError, match='expected a list or a comma-separated string'):
        name_list(value)


def test_registered_name():
    assert FilterModule().filters()['name_list'] is name_list
