from __future__ import annotations

from ansible_collections.volumeops.docker.plugins.filter.migrate_results import (
    FilterModule, migrate_pass_results, migrate_summary_lines)

PAIR = {'source': 'h1', 'verify': 'content', 'strategy': 'two_phase'}
V = {'name': 'db', 'dest_name': 'db2'}


def result(**kw):
    base = {'migrate__v': V, 'changed': True, 'bytes': 2000000, 'bytes_sent': 500, 'duration': 1.0, 'mb_per_s': 2.0,
            'verified': True, 'dest_state': 'complete', 'source_fingerprint': 'sha256:a', 'dest_fingerprint': 'sha256:a'}
    base.update(kw)
    return base


def test_two_passes_add_up():
    warm = migrate_pass_results({'results': [result(dest_state='staging', verified=False)]}, PAIR, 'h2', False, [])
    assert warm['problems'] == []  # a warm pass proves nothing yet and needs not
    row, = warm['results']
    assert (row['status'], row['changed'], row['duration'], row['pass_mb_per_s']) == ('staged', True, 1.0, [2.0])
    final = migrate_pass_results({'results': [result(changed=False, bytes_sent=100, duration=0.333, mb_per_s=0.3)]},
                                 PAIR, 'h2', True, warm['results'])
    row, = final['results']
    assert final['problems'] == []
    assert row == {'source': 'h1', 'destination': 'h2', 'volume': 'db', 'dest_volume': 'db2', 'status': 'ok',
                   'changed': True, 'bytes': 2000000, 'bytes_sent': 600, 'duration': 1.33, 'final_duration': 0.33,
                   'mb_per_s': 1.5, 'pass_mb_per_s': [2.0, 0.3], 'verified': True, 'verify': 'content',
                   'strategy': 'two_phase', 'relayed': False, 'note': '', 'fingerprint': 'sha256:a'}


def test_unchanged_volume_has_no_rate():
    res = migrate_pass_results({'results': [result(changed=False)]}, PAIR, 'h2', True, [])
    assert res['results'][0]['mb_per_s'] == 0


def test_final_pass_must_prove_the_copy():
    res = migrate_pass_results({'results': [result(dest_fingerprint='sha256:b'), result(verified=False),
                                            result(dest_state='staging')]}, PAIR, 'h2', True, [])
    assert res['problems'][0] == (
        'Verification of db -> h2:db2 failed (verified=True, destination state complete, source fingerprint sha256:a, '
        'destination sha256:b). The destination is not marked complete.')
    assert len(res['problems']) == 3
    missing = {'migrate__v': V, 'changed': True}
    assert 'verified=?, destination state ?, source fingerprint ?, destination ?' in \
        migrate_pass_results({'results': [missing]}, PAIR, 'h2', 'true', [])['problems'][0]


def test_destination_written_since_completion_is_no_problem():
    res = migrate_pass_results({'results': [result(changed=False, dest_changed_since_complete=True,
                                                   dest_fingerprint='sha256:new')]}, PAIR, 'h2', True, [])
    assert res['problems'] == []
    assert res['results'][0]['note'] == 'already migrated, the destination written since'


def test_summary_lines():
    ok = {'status': 'ok', 'source': 'h1', 'volume': 'db', 'destination': 'h2', 'dest_volume': 'db2', 'changed': True,
          'bytes': 1048576, 'duration': 2, 'mb_per_s': 0.5, 'bytes_sent': 2048, 'relayed': True, 'downtime': 1.234,
          'verified': True, 'verify': 'metadata'}
    lines = migrate_summary_lines([
        ok, dict(ok, changed=False, note='source already removed', relayed=False),
        {'status': 'failed', 'source': 'h1', 'volume': '-', 'destination': 'h2', 'msg': ' key left \n'},
        {'status': 'failed', 'source': 'h1', 'volume': 'web', 'destination': 'h2', 'msg': 'boom'}])
    assert lines == [
        'h1:db -> h2:db2  OK  1.00 MB in 2.00s (0.5 MB/s, 2.00 KB sent, relayed by the controller)  downtime 1.23s  '
        'verified=True (metadata)',
        'h1:db -> h2:db2  OK (unchanged, source already removed)  1.00 MB in 2.00s (0.5 MB/s, 2.00 KB sent)  '
        'downtime 1.23s  verified=True (metadata)',
        'h1 -> h2  FAILED  key left',
        'h1:web -> h2  FAILED  boom']
    assert migrate_summary_lines([]) == ['No volume was migrated.']


def test_filters_are_registered():
    assert FilterModule().filters() == {'migrate_pass_results': migrate_pass_results,
                                        'migrate_summary_lines': migrate_summary_lines}
