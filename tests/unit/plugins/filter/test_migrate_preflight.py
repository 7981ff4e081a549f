from __future__ import annotations

import json

from ansible_collections.volumeops.docker.plugins.filter.migrate_preflight import FilterModule, migrate_preflight

KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKEY'
PAIR = {'source': 'h1', 'destination': 'h2', 'dest_port': 22, 'dest_python': '/usr/bin/python3', 'existing': 'fail',
        'free_space_factor': 1.1}
VOLS = [{'name': 'db', 'dest_name': 'db', 'migration_id': 'vm-1', 'src_mounted': False},
        {'name': 'nfs', 'dest_name': 'nfs2', 'migration_id': 'vm-2', 'src_mounted': True}]
PROBE = {'rc': 0, 'stdout': 'missing:\nsize:0:1000000000\nsize:1:2000\nkey 10.0.0.2 %s\nroute: 10.0.0.2 dev br src 10.0.0.1\n'
         % KEY, 'stderr': ''}


def report(**kw):
    base = {'missing': [], 'docker_error': '', 'volumes': {
        'db': {'exists': False, 'fs': '/var', 'avail': 10 ** 10},
        'nfs2': {'exists': False, 'fs': '/var', 'avail': 10 ** 10}}, 'containers': {'app': {'running': False}},
        'authorized': True}
    base.update(kw)
    return {'rc': 0, 'stdout': json.dumps(base), 'stderr': ''}


def facts(**kw):
    base = {'pair': PAIR, 'dest': 'h2', 'dest_address': '10.0.0.2', 'probe': PROBE, 'scan': PROBE,
            'dest_check': report(), 'dest_host_key': KEY, 'dest_host_key_from': 'gathered facts',
            'source_address': '10.0.0.1', 'relay_mode': False, 'check_mode': False, 'key_made': True,
            'helper_image': 'helper:1', 'dest_docker_root': '/var/lib/docker', 'connect_timeout': 10}
    base.update(kw)
    return base


def test_all_well():
    res = migrate_preflight(VOLS, facts())
    assert res['problems'] == []
    assert [(v['size'], v['sized'], v['plan']) for v in res['vols']] == [
        (1000000000, True, 'db -> h2:db (953.67 MB)'), (2000, True, 'nfs -> h2:nfs2 (1.95 KB)')]
    assert res['to_start'] == ['app']
    assert res['dest_state'] == {}
    assert res['presented'] == [KEY]


def test_destination_state_and_space():
    volumes = {'db': {'exists': True, 'empty': False, 'marker': {'migration_id': 'vm-1', 'state': 'complete'},
                      'fs': '/var', 'avail': 100},
               'nfs2': {'exists': True, 'empty': False, 'marker': {'migration_id': 'other'}, 'fs': '/var', 'avail': 100}}
    res = migrate_preflight(VOLS, facts(dest_check=report(volumes=volumes)))
    assert res['dest_state'] == {'db': {'state': 'ours-complete', 'other_id': 'vm-1'},
                                 'nfs2': {'state': 'other', 'other_id': 'other'}}
    assert res['problems'] == [
        'Destination volume(s) on h2 already exist with other data: nfs2. Choose another dest_name, remove them, or '
        'set migrate_existing=replace to overwrite them.',
        # the complete one needs no space; the other needs 1.1 x 2000 bytes
        "Not enough free space on h2: /var has 100.00 Bytes free, needs 2.15 KB (need 1.1 x the source's used bytes)."]


def test_missing_tools_on_both_sides_and_unsized_source():
    probe = dict(PROBE, stdout='missing: zstd ip\nsize:0:5\n')
    res = migrate_preflight(VOLS, facts(probe=probe, scan=probe, dest_check=report(missing=['tar'])))
    assert res['problems'][0] == (
        'Missing tools: h1: zstd ip; h2: tar. Install GNU tar, zstd, the docker CLI, openssh-client and iproute2 on the '
        'source, GNU tar, zstd, the docker CLI and Python 3.8+ as /usr/bin/python3 on the destination.')
    assert res['problems'][1].startswith('Cannot read source volume(s) nfs on h1 through a holder container of '
                                         'migrate_helper_image=helper:1')
    assert len(res['problems']) == 2  # the host key is judged only when the tools are there
    assert migrate_preflight(VOLS, facts(probe=probe, scan=probe, helper_image=''))['problems'][1].startswith(
        'Source volume(s) on h1 mounted only while a container uses them')


def test_destination_not_running_or_unreachable():
    res = migrate_preflight(VOLS, facts(dest_check={'rc': 127, 'stdout': '', 'stderr': 'x\npython3: not found\n'}))
    assert res['problems'][0].startswith('Missing tools: h2: /usr/bin/python3 does not run (python3: not found).')
    assert res['dest_report'] == {}
    res = migrate_preflight(VOLS, facts(dest_check={'unreachable': True, 'msg': 'timed out'}))
    assert res['problems'][0] == 'Destination h2 is unreachable from the controller: timed out.'


def test_source_probe_did_not_run():
    probe = {'rc': 1, 'msg': 'sh: not found', 'stdout': ''}
    res = migrate_preflight(VOLS, facts(probe=probe, scan=probe))
    assert res['problems'][0].startswith('Missing tools: h1: (/bin/sh did not run: sh: not found).')


def test_key_and_address_problems():
    res = migrate_preflight(VOLS, facts(check_mode=False, key_made=False, source_address=''))
    assert res['problems'][0].startswith('ssh-keygen on the controller could not make the temporary key')
    assert res['problems'][1] == (
        'Cannot tell which address h1 reaches h2 from at 10.0.0.2 (10.0.0.2 dev br src 10.0.0.1); the temporary key '
        'is restricted to that address. Set migrate_source_address (or migrate_dest_address to an address the source '
        'resolves).')
    assert migrate_preflight(VOLS, facts(check_mode=True, key_made=False))['problems'] == []
    res = migrate_preflight(VOLS, facts(dest_check=report(authorize_error='read-only file system')))
    assert res['problems'] == ['Cannot authorize the temporary key on h2: read-only file system.']


def test_host_key_checks():
    other = 'ssh-ed25519 AAAAOTHER'
    res = migrate_preflight(VOLS, facts(dest_host_key=other, dest_host_key_from='migrate_dest_host_key'))
    assert res['problems'] == [
        'Host key mismatch: h2 (10.0.0.2:22) presents %s to h1, but the pinned host key is %s (migrate_dest_host_key). '
        'Refusing to connect (possible man-in-the-middle, or the pinned key is wrong).' % (KEY, other)]
    silent = dict(PROBE, stdout='missing:\nsize:0:1\nsize:1:1\nroute: x src 10.0.0.1\n', stderr='connect timed out\n')
    res = migrate_preflight(VOLS, facts(scan=silent, relay_mode=True))
    assert res['problems'] == [
        'The controller (relay mode) cannot reach the SSH server of h2 at 10.0.0.2:22 within 10s (connect timed out). '
        'Check routing/firewalls.']
    # No key pinned yet: the one the destination read from its key file.
    res = migrate_preflight(VOLS, facts(dest_host_key='', dest_check=report(host_key=KEY)))
    assert res['problems'] == [] and res['dest_host_key'] == KEY
    res = migrate_preflight(VOLS, facts(dest_host_key=''))
    assert res['problems'][0].startswith('No ed25519 SSH host key found for h2')


def test_destination_docker_and_volume_findings():
    res = migrate_preflight(VOLS, facts(dest_check=report(docker_error='Cannot connect')))
    assert res['problems'] == ['Docker on h2 does not answer: Cannot connect']
    volumes = {'db': {'exists': True, 'empty': True, 'unwritable': 'tmpfs', 'fs': '/x', 'avail': 10 ** 12},
               'nfs2': {'exists': False, 'unwritable': 'driver rexray'}}
    res = migrate_preflight(VOLS, facts(dest_check=report(volumes=volumes, look_error='db2', space_error='')))
    assert res['dest_state'] == {'db': {'state': 'empty', 'other_id': ''}}
    assert res['problems'][0].startswith('Destination volume(s) on h2 that the transfer cannot write: db (exists: '
                                         'tmpfs), nfs2 (would be created: driver rexray).')
    assert res['problems'][1].startswith('Cannot look into the destination volume db2 on h2')
    res = migrate_preflight(VOLS, facts(dest_check=report(space_error='no such directory')))
    assert res['problems'] == ['Cannot measure the free space on h2: no such directory (is migrate_dest_docker_root='
                               '/var/lib/docker the Docker data root there?).']


def test_one_daemon_under_two_names_is_refused():
    probe = dict(PROBE, stdout=PROBE['stdout'] + 'engine: "G7OX:BVVR"\n')
    # The destination volume "exists with other data": it is the source volume itself, not named as such.
    taken = {'db': {'exists': True, 'empty': False, 'marker': {}, 'fs': '/var', 'avail': 10 ** 10}}
    res = migrate_preflight(VOLS, facts(probe=probe, scan=probe, dest_check=report(engine_id='G7OX:BVVR', volumes=taken)))
    assert res['problems'] == [
        'Source h1 and destination h2 are the same Docker daemon (engine ID G7OX:BVVR): one host under two inventory '
        'names, or an address that leads back to the source. Migrating onto itself would overwrite or remove the only '
        'copy; refusing. Check the inventory (ansible_host) and migrate_dest_address.']
    assert migrate_preflight(VOLS, facts(probe=probe, scan=probe, dest_check=report(engine_id='OTHER')))['problems'] == []
    # Unknown on either side (an old probe, docker info failed): nothing to compare.
    assert migrate_preflight(VOLS, facts(dest_check=report(engine_id='')))['problems'] == []
    assert migrate_preflight(VOLS, facts(probe=probe, scan=probe, dest_check=report()))['problems'] == []


def test_a_destination_volume_in_use_by_a_running_container():
    res = migrate_preflight(VOLS, facts(dest_check=report(in_use={'nfs2': ['app', 'web'], 'unrelated': ['x']})))
    assert res['problems'] == [
        'Destination volume(s) on h2 in use by running container(s): nfs2 (app, web). volume_transfer refuses to write '
        'a volume that a running container uses; stop those containers on h2 first.']
    # Complete for this migration since an earlier run: the application runs there, a rerun copies nothing.
    volumes = {'db': {'exists': True, 'empty': False, 'marker': {'migration_id': 'vm-1', 'state': 'complete'},
                      'fs': '/var', 'avail': 10 ** 10}}
    assert migrate_preflight(VOLS, facts(dest_check=report(volumes=volumes, in_use={'db': ['app']})))['problems'] == []


def test_a_tmpfs_source_volume_is_refused():
    vols = [dict(VOLS[0], src_unreadable=''), dict(VOLS[1], name='tmp', src_unreadable='local {"type": "tmpfs"}, a tmpfs: '
                                                   'its content is gone once its containers stop')]
    res = migrate_preflight(vols, facts())
    assert res['problems'] == [
        'Source volume(s) on h1 that cannot be migrated: tmp (local {"type": "tmpfs"}, a tmpfs: its content is gone '
        'once its containers stop). Stopping the containers that use them (which the copy needs) would wipe them, and '
        'an empty volume would be copied. Move such data into a volume that keeps it first.']
    # not also named as needing migrate_helper_image
    assert len(migrate_preflight(vols, facts(helper_image=''))['problems']) == 1


def test_device_nodes_in_a_source_volume():
    probe = dict(PROBE, stdout=PROBE['stdout'] + 'device:1:dev/null\n')
    assert migrate_preflight(VOLS, facts(probe=probe, scan=probe))['problems'] == [
        'Source volume(s) on h1 hold device nodes: nfs (dev/null). volume_transfer refuses them unless '
        'migrate_allow_devices is true (per pair allow_devices); set it to migrate them, or remove them.']


def test_filter_is_registered():
    assert FilterModule().filters() == {'migrate_preflight': migrate_preflight}
