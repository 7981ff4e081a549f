from __future__ import annotations

import pytest

from ansible_collections.volumeops.docker.plugins.filter.migrate_pairs import FilterModule, migrate_pairs

DEFAULTS = {'volumes': [], 'volume_labels': [], 'compose_project': '', 'containers': [], 'strategy': 'cold',
            'verify': 'metadata', 'transfer': 'direct', 'existing': 'fail', 'stop_containers': [], 'exclude': []}
HOSTS = {'h1': {}, 'h2': {}, 'h3': {}}


def check(given):
    return migrate_pairs(given, DEFAULTS, HOSTS)


def test_pairs_get_every_setting_and_lists_from_strings():
    res = check([{'source': 'h1', 'destination': 'h2', 'volumes': 'pgdata, redis,', 'exclude': '*.tmp',
                  'strategy': 'two_phase'}])
    assert res['problems'] == []
    pair, = res['pairs']
    assert pair['volumes'] == ['pgdata', 'redis']
    assert pair['exclude'] == ['*.tmp']
    assert pair['strategy'] == 'two_phase'  # the pair's own setting wins
    assert pair['verify'] == 'metadata'  # the default fills what the pair does not give
    assert DEFAULTS['volumes'] == []  # the defaults are not changed


@pytest.mark.parametrize('pair', [
    {'source': 'h1', 'destination': 'h1', 'volumes': ['a']},          # the same host
    {'source': 'h1', 'destination': 'nowhere', 'volumes': ['a']},     # not in the inventory
    {'source': '', 'destination': 'h2', 'volumes': ['a']},
    {'destination': 'h2', 'volumes': ['a']},
    {'source': 'h1', 'destination': 'h2', 'volumes': ['a'], 'strategy': 'hot'},
    {'source': 'h1', 'destination': 'h2', 'volumes': ['a'], 'verify': 'none'},
    {'source': 'h1', 'destination': 'h2', 'volumes': ['a'], 'transfer': 'scp'},
    {'source': 'h1', 'destination': 'h2', 'volumes': ['a'], 'existing': 'merge'},
    {'source': 'h1', 'destination': 'h2', 'volumes': {'a': 1}},       # not a list
    {'source': 'h1', 'destination': 'h2'},                            # selects nothing
    {'source': 'h1', 'destination': 'h2', 'volumes': ' , '},          # selects nothing either
])
def test_invalid_pairs_are_named(pair):
    res = check([{'source': 'h1', 'destination': 'h3', 'volumes': ['ok']}, pair])
    assert len(res['problems']) == 1
    assert res['problems'][0].startswith('Invalid migration pair %s -> %s: source and destination must be'
                                         % (pair.get('source') or '?', pair.get('destination') or '?'))


@pytest.mark.parametrize('selection', [{'volume_labels': ['a=b']}, {'containers': 'web'}, {'compose_project': 'p'}])
def test_other_selections_are_enough(selection):
    assert check([dict({'source': 'h1', 'destination': 'h2'}, **selection)])['problems'] == []


def test_an_item_that_is_not_a_pair():
    assert check(['h1'])['problems'][0].startswith('Invalid migration pair ? -> ?:')


def test_two_pairs_into_one_destination_volume():
    res = check([{'source': 'h1', 'destination': 'h3', 'volumes': ['aa', 'aa', {'name': 'bb', 'dest_name': 'cc'}]},
                 {'source': 'h2', 'destination': 'h3', 'volumes': ['cc', 'aa']},
                 {'source': 'h2', 'destination': 'h1', 'volumes': ['aa']}])
    assert res['problems'] == [
        'Two migration pairs would copy into the same destination volume: h3:aa (from h1:aa, h2:aa); h3:cc (from '
        'h1:bb, h2:cc). The second would replace the first; give one of them another dest_name.']


def test_shared_destinations_are_judged_only_for_valid_pairs():
    res = check([{'source': 'h1', 'destination': 'h3', 'volumes': ['aa']},
                 {'source': 'h2', 'destination': 'h3', 'volumes': ['aa'], 'strategy': 'x'}])
    assert len(res['problems']) == 1 and res['problems'][0].startswith('Invalid migration pair h2 -> h3')


@pytest.mark.parametrize('entry, says', [
    ({'dest_name': 'x'}, "invalid volume entry {'dest_name': 'x'} in volumes: each is a volume name, or a dict with "
                         "a name and optional dest_name, driver, driver_options, labels."),
    (123, 'invalid volume entry 123 in volumes: each is a volume name, or a dict'),
    ([], 'invalid volume entry [] in volumes'),
    ({'name': 'db', 'dest_name': 'x'}, "Invalid dest_name 'x': Docker volume names must match"),
    ({'name': 'db', 'dest_name': 'a b'}, "Invalid dest_name 'a b'"),
    ({'name': 'db', 'dest_name': '../evil'}, "Invalid dest_name '../evil'"),
    ('../evil', "Invalid volume name '../evil'"),
    ({'name': 'db', 'labels': 'a=b'}, 'labels of volume db must be a dict.'),
])
def test_invalid_volume_entries_are_named_before_anything_runs(entry, says):
    res = check([{'source': 'h1', 'destination': 'h3', 'volumes': ['ok']},
                 {'source': 'h1', 'destination': 'h2', 'volumes': ['good', entry]}])
    problem, = res['problems']
    assert problem.startswith('Invalid migration pair h1 -> h2: ') and says in problem, problem


@pytest.mark.parametrize('settings, says', [
    ({'compression_level': 40}, 'compression_level must be between 1 and 19 (got 40).'),
    ({'compression_level': '0'}, "compression_level must be between 1 and 19 (got '0')."),
    ({'compression_level': 'fast'}, 'compression_level must be between 1 and 19'),
    ({'exclude': ['[^a]']}, "exclude pattern '[^a]': write [!...] to negate a bracket expression"),
    ({'exclude': '*.tmp, a\\b'}, 'a backslash is not supported'),
])
def test_settings_the_transfer_would_refuse_after_the_stop(settings, says):
    problem, = check([dict({'source': 'h1', 'destination': 'h2', 'volumes': ['db']}, **settings)])['problems']
    assert problem.startswith('Invalid migration pair h1 -> h2: ') and says in problem, problem
    good = dict({'source': 'h1', 'destination': 'h2', 'volumes': [{'name': 'db', 'dest_name': 'db-2'}]},
                compression_level='19', exclude=['*.tmp', 'cache/'])
    assert check([good])['problems'] == []


def test_filter_is_registered():
    assert FilterModule().filters()['migrate_pairs'] is migrate_pairs
