from __future__ import annotations

import base64
import hashlib
import json

from ansible_collections.volumeops.docker.plugins.filter.migrate_select import FilterModule, migrate_keep, migrate_select

PAIR = {'source': 'h1', 'destination': 'h2', 'id': '', 'volumes': [], 'volume_labels': [], 'compose_project': '',
        'containers': [], 'stop_containers': [], 'stop_using_containers': True, 'remove_source': False,
        'strategy': 'cold'}


def pair(**kw):
    return dict(PAIR, **kw)


def vol(name, labels=None, users=(), driver='local', options=None):
    return {'name': name, 'driver': driver, 'options': options, 'labels': labels, 'mountpoint': '/v/%s/_data' % name,
            'in_use_by': [{'name': '/' + n, 'running': running} for n, running in users]}


INFO = {'volumes': [
    vol('web', {'com.docker.compose.project': 'shop'}, users=[('shop_web_1', True)]),
    vol('db', {'com.docker.compose.project': 'shop', 'tier': 'data'}, users=[('shop_db_1', True), ('backup', False)]),
    vol('nfs', {'tier': 'data'}, options={'type': 'nfs', 'device': ':/x'}),
    vol('other', driver='rexray'),
]}


def names(selection):
    return [v['name'] for v in selection['planned']]


def test_named_then_selected_volumes_each_once():
    sel = migrate_select(INFO, pair(volumes=['other', {'name': 'db', 'dest_name': 'db2'}, 'other'],
                                    compose_project='shop', volume_labels=['tier=data'], containers=['shop_web_1']),
                         'h2')
    assert sel['unreachable'] == ''
    assert names(sel) == ['other', 'db', 'nfs', 'web']  # named first, then the source's volumes by name


def test_label_selectors_must_all_match():
    assert names(migrate_select(INFO, pair(volume_labels=['tier=data', 'com.docker.compose.project']), 'h2')) == ['db']
    assert names(migrate_select(INFO, pair(volume_labels=['tier=nope']), 'h2')) == []


def test_plan_of_a_volume():
    sel = migrate_select(INFO, pair(volumes=[{'name': 'db', 'dest_name': 'db2', 'labels': {'a': 'b'}}, 'nfs', 'other',
                                             'gone']), 'h2')
    db, nfs, other, gone = sel['planned']
    tag = hashlib.sha256(b'h1|db|h2|db2').hexdigest()
    assert db['migration_id'] == 'vm-' + tag[:20]
    assert (db['dest_name'], db['exists'], db['src_mounted'], db['labels']) == ('db2', True, False, {'a': 'b'})
    assert db['users'] == INFO['volumes'][1]['in_use_by']
    assert db['mountpoint'] == '/v/db/_data'
    assert (nfs['src_mounted'], nfs['labels']) == (True, {'tier': 'data'})  # mount options
    assert other['src_mounted'] is True  # another driver
    assert (gone['exists'], gone['mountpoint'], gone['src_mounted'], gone['users']) == (False, '', False, [])


def test_migration_id_with_the_pair_id():
    sel = migrate_select(INFO, pair(volumes=['db'], id='move-1'), 'h2')
    assert sel['planned'][0]['migration_id'] == 'move-1-' + hashlib.sha256(b'h1|db|h2|db').hexdigest()[:12]


def test_unreachable_source_plans_nothing():
    sel = migrate_select({'unreachable': True, 'msg': 'no route'}, pair(volumes=['db']), 'h2')
    assert sel == {'unreachable': 'Source h1 is unreachable: no route', 'selected': [], 'planned': []}
    assert migrate_keep(sel, pair(), 'h2', {}, {}, [], '/d')['problem'] == 'Source h1 is unreachable: no route'


def keep(p, markers=None, extra=None, claimed=()):
    return migrate_keep(migrate_select(INFO, p, 'h2'), p, 'h2', markers or {'results': []}, extra or {'results': []},
                        list(claimed), '/var/lib/docker')


def test_containers_to_stop_and_start():
    inspect = {'results': [{'stdout': json.dumps([{'Name': '/cron', 'State': {'Running': True}}])},
                           {'stdout': json.dumps([{'Name': '/idle', 'State': {'Running': False}}])},
                           {'msg': 'skipped'}]}
    kept = keep(pair(volumes=['db', 'web'], stop_containers=['cron', 'idle']), extra=inspect)
    assert kept['problem'] == ''
    assert kept['to_stop'] == ['shop_db_1', 'shop_web_1', 'cron']
    assert kept['candidates_dest'] == ['shop_db_1', 'backup', 'shop_web_1', 'cron', 'idle']
    assert keep(pair(volumes=['db'], stop_using_containers='false'))['to_stop'] == []


def test_missing_volumes_and_remove_source():
    assert keep(pair(volumes=['db', 'gone', 'lost']))['problem'] == 'Volume(s) not found on h1: gone, lost.'
    p = pair(volumes=['db', 'gone', 'lost'], remove_source=True)
    sel = migrate_select(INFO, p, 'h2')
    gone = [v for v in sel['planned'] if v['name'] == 'gone'][0]
    marker = base64.b64encode(json.dumps({'migration_id': gone['migration_id'], 'state': 'complete'}).encode())
    other = base64.b64encode(json.dumps({'migration_id': 'x', 'state': 'complete'}).encode())
    lost = [v for v in sel['planned'] if v['name'] == 'lost'][0]
    markers = {'results': [{'content': marker, 'migrate__v': gone}, {'content': other, 'migrate__v': lost}]}
    kept = migrate_keep(sel, p, 'h2', markers, {'results': []}, [], '/var/lib/docker')
    assert kept['problem'].startswith('Volume(s) not found on h1: lost. With remove_source, a volume gone from the '
                                      'source counts as migrated only when h2 holds its complete copy')
    assert [r['volume'] for r in kept['done_results']] == ['gone']
    assert kept['done_results'][0]['note'] == 'source already removed'
    assert [v['name'] for v in kept['vols']] == ['db']


def test_nothing_selected():
    assert keep(pair(volume_labels=['x=y']))['problem'] == (
        'No volume on h1 matches the selection (volumes, volume_labels, compose_project, containers).')


def test_shared_destination_volume_also_with_earlier_pairs():
    kept = keep(pair(volumes=[{'name': 'db', 'dest_name': 'x'}, {'name': 'web', 'dest_name': 'x'}]))
    assert kept['problem'].startswith('Two or more selected volumes would be copied into the same destination '
                                      'volume on h2: x (from db, web). Each would replace')
    first = keep(pair(volumes=['db']))
    assert first['problem'] == '' and first['claimed'] == [{'key': 'h2:db', 'from': 'db of an earlier pair'}]
    second = keep(pair(volumes=['db']), claimed=first['claimed'])
    assert 'h2: db (from db, db of an earlier pair)' in second['problem']
    assert second['claimed'] == first['claimed']  # a pair with a problem claims nothing


def test_invalid_migration_id():
    assert keep(pair(volumes=['db'], id='-bad'))['problem'] == 'migrate id must match [A-Za-z0-9][A-Za-z0-9_.-]{0,50}'
    assert keep(pair(volumes=['db'], id='good_1.2'))['problem'] == ''


def test_filters_are_registered():
    assert FilterModule().filters() == {'migrate_select': migrate_select, 'migrate_keep': migrate_keep}
