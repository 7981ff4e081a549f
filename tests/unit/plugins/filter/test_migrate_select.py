from __future__ import annotations

import base64
import hashlib
import json

from ansible_collections.volumeops.docker.plugins.filter.migrate_select import (
    FilterModule, migrate_keep, migrate_select, source_volumes)

PAIR = {'source': 'h1', 'destination': 'h2', 'id': '', 'volumes': [], 'volume_labels': [], 'compose_project': '',
        'containers': [], 'stop_containers': [], 'stop_using_containers': True, 'remove_source': False,
        'strategy': 'cold'}


def pair(**kw):
    return dict(PAIR, **kw)


def vol(name, labels=None, driver='local', options=None):
    """A volume as `docker volume inspect` describes it."""
    return {'Name': name, 'Driver': driver, 'Options': options, 'Labels': labels, 'Scope': 'local',
            'Mountpoint': '/v/%s/_data' % name, 'CreatedAt': '2026-12-07T12:00:00Z'}


def container(name, status, *volumes):
    """A line of the inspect program: name, status and mounts (JSON each)."""
    mounts = [{'Type': 'volume', 'Name': v, 'Destination': '/%s' % v, 'RW': True} for v in volumes]
    mounts.append({'Type': 'bind', 'Source': '/etc', 'Destination': '/host-etc'})
    return '%s %s %s' % (json.dumps('/' + name), json.dumps(status), json.dumps(mounts))


def inspect_result(volumes, containers, rc=0, stderr=''):
    """The registered result of the role's inspect program."""
    lines = ''.join(line + '\n' for line in containers)
    stdout = 'volumes:\n%s\ncontainers:\n%s' % (json.dumps(volumes, indent=4), lines)
    return {'rc': rc, 'stdout': stdout, 'stderr': stderr}


INFO = inspect_result(
    [vol('web', {'com.docker.compose.project': 'shop'}),
     vol('db', {'com.docker.compose.project': 'shop', 'tier': 'data'}),
     vol('nfs', {'tier': 'data'}, options={'type': 'nfs', 'device': ':/x'}),
     vol('other', driver='rexray')],
    [container('shop_web_1', 'running', 'web'), container('shop_db_1', 'running', 'db'),
     container('backup', 'exited', 'db'), container('paused', 'paused', 'nfs')])


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
    assert db['users'] == [{'name': 'backup', 'running': False, 'state': 'exited', 'destination': '/db'},
                           {'name': 'shop_db_1', 'running': True, 'state': 'running', 'destination': '/db'}]
    assert db['mountpoint'] == '/v/db/_data'
    assert (nfs['src_mounted'], nfs['labels']) == (True, {'tier': 'data'})  # mount options
    assert other['src_mounted'] is True  # another driver
    assert (gone['exists'], gone['mountpoint'], gone['src_mounted'], gone['users']) == (False, '', False, [])


def test_migration_id_with_the_pair_id():
    sel = migrate_select(INFO, pair(volumes=['db'], id='move-1'), 'h2')
    assert sel['planned'][0]['migration_id'] == 'move-1-' + hashlib.sha256(b'h1|db|h2|db').hexdigest()[:12]


def test_source_volumes():
    volumes, error = source_volumes(INFO, 'h1')
    assert error == ''
    assert [v['name'] for v in volumes] == ['web', 'db', 'nfs', 'other']
    assert volumes[2] == {'name': 'nfs', 'driver': 'local', 'options': {'type': 'nfs', 'device': ':/x'},
                          'labels': {'tier': 'data'}, 'mountpoint': '/v/nfs/_data',
                          'in_use_by': [{'name': 'paused', 'running': True, 'state': 'paused', 'destination': '/nfs'}]}
    assert source_volumes(inspect_result([], []), 'h1') == ([], '')


def test_paused_and_restarting_containers_count_as_running():
    """A paused container resumes writing when unpaused, a restarting one is started again by its restart policy:
    both are stopped like running ones, and their destination twins are the ones started."""
    info = inspect_result([vol('v1'), vol('v2'), vol('v3')],
                          [container('p', 'paused', 'v1'), container('r', 'restarting', 'v2'),
                           container('x', 'exited', 'v3'), container('c', 'created', 'v3'), container('d', 'dead', 'v3')])
    p = pair(volumes=['v1', 'v2', 'v3'])
    kept = migrate_keep(migrate_select(info, p, 'h2'), p, 'h2', {'results': []}, {'results': []}, [], '/d')
    assert kept['to_stop'] == ['p', 'r'] and kept['candidates_dest'] == ['p', 'r']
    # stop_containers: docker container inspect of a restarting one (State.Running may be false between tries)
    extra = {'results': [{'stdout': json.dumps([{'Name': '/rs', 'State': {'Running': False, 'Status': 'restarting'}}])},
                         {'stdout': json.dumps([{'Name': '/ps', 'State': {'Running': True, 'Paused': True,
                                                                          'Status': 'paused'}}])}]}
    kept = migrate_keep(migrate_select(info, p, 'h2'), p, 'h2', {'results': []}, extra, [], '/d')
    assert kept['to_stop'] == ['p', 'r', 'rs', 'ps']


def test_source_without_docker():
    failed = {'rc': 3, 'stdout': '', 'stderr': 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n'
              'Shared connection to h1 closed.\n'}
    sel = migrate_select(failed, pair(volumes=['db']), 'h2')
    assert sel['unreachable'] == ('Cannot list the Docker volumes on h1: Cannot connect to the Docker daemon at '
                                  'unix:///var/run/docker.sock.')
    assert sel['planned'] == []
    garbled = dict(INFO, stdout=INFO['stdout'].replace('"running"', 'running', 1))
    assert migrate_select(garbled, pair(volumes=['db']), 'h2')['unreachable'].startswith(
        'Cannot read the Docker volumes of h1 from the docker CLI')


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
    # Only the twins of the containers this migration stops: not the stopped 'backup' nor 'idle'.
    assert kept['candidates_dest'] == ['shop_db_1', 'shop_web_1', 'cron']
    left_running = keep(pair(volumes=['db'], stop_using_containers='false'))
    # The source app keeps running: its twin must not start on the destination (it would run on both).
    assert left_running['to_stop'] == [] and left_running['candidates_dest'] == []
    both = keep(pair(volumes=['db'], stop_using_containers=False, stop_containers=['cron']), extra=inspect)
    assert both['to_stop'] == ['cron'] and both['candidates_dest'] == ['cron']


def test_a_rerun_after_success_starts_nothing():
    """After a successful cold migration the source containers are stopped: nothing to start on the destination
    (an operator may have stopped the destination app since)."""
    info = inspect_result([vol('db')], [container('shop_db_1', 'exited', 'db')])
    p = pair(volumes=['db'])
    kept = migrate_keep(migrate_select(info, p, 'h2'), p, 'h2', {'results': []}, {'results': []}, [], '/d')
    assert kept['problem'] == '' and kept['to_stop'] == [] and kept['candidates_dest'] == []


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


def test_containers_by_name_id_or_id_prefix_and_unknown_ones():
    def line(name, status, cid, *volumes):
        return container(name, status, *volumes) + ' ' + json.dumps(cid)
    info = inspect_result([vol('webv'), vol('dbv'), vol('cachev')],
                          [line('web', 'running', 'abc123' + '0' * 58, 'webv'),
                           line('db', 'running', 'abd456' + '1' * 58, 'dbv'),
                           line('cache', 'running', 'ff' * 32, 'cachev')])

    def kept(containers):
        p = pair(containers=containers)
        return migrate_keep(migrate_select(info, p, 'h2'), p, 'h2', {'results': []}, {'results': []}, [], '/d')
    assert [v['name'] for v in kept(['web', 'abd4'])['vols']] == ['dbv', 'webv']  # a name, an ID prefix
    assert kept(['/cache', 'ff' * 32])['problem'] == ''  # docker's leading slash, a full ID
    assert kept(['web', 'dbb', 'nope'])['problem'] == (
        'Container(s) not found on h1: dbb, nope (containers selects the volumes of containers by name, ID or ID '
        'prefix; nothing was stopped).')
    assert kept(['ab'])['problem'] == ('Container ID prefix(es) matching several containers on h1: ab (web, db); '
                                       'give a name or a longer ID.')
    assert kept(['web'])['to_stop'] == ['web']


def test_a_tmpfs_source_volume_is_marked():
    info = inspect_result([vol('tmp', options={'type': 'tmpfs', 'device': 'tmpfs', 'o': 'size=10m'}), vol('db')], [])
    tmp, db = migrate_select(info, pair(volumes=['tmp', 'db']), 'h2')['planned']
    assert tmp['src_unreadable'].startswith('local {"device": "tmpfs", "o": "size=10m", "type": "tmpfs"}, a tmpfs')
    assert tmp['src_mounted'] is True and db['src_unreadable'] == ''


def test_invalid_migration_id():
    assert keep(pair(volumes=['db'], id='-bad'))['problem'] == 'migrate id must match [A-Za-z0-9][A-Za-z0-9_.-]{0,50}'
    assert keep(pair(volumes=['db'], id='good_1.2'))['problem'] == ''


def test_filters_are_registered():
    assert FilterModule().filters() == {'migrate_select': migrate_select, 'migrate_keep': migrate_keep}
