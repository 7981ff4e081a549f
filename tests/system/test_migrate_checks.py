"""The migrate role's checks before anything is stopped, and which containers it stops and starts, on the
two-host bench (a QA pass of 2026-12-07 found each of these wrong).

- The pair checks refuse invalid volume entries, volume names, compression levels and exclude patterns before
  anything runs (--check too), each pair with one message.
- One real run, h1 -> h2 and h2 -> h1 in parallel, one pair per case: the destination starts only the twins of
  the source containers the migration stopped (running and paused ones; not a never-started one, not the twin of
  one left running with stop_using_containers false); the pre-flight refuses, before stopping anything, a
  destination volume a running destination container uses, a tmpfs source volume, a source volume holding a
  device node (without migrate_allow_devices), an unknown container name, and a destination that is the source's
  own Docker daemon under another inventory name (with existing=replace and remove_source, which used to delete
  the only copy); migrate_containers takes a container ID prefix; a source volume that remove_source cannot
  remove is named with Docker's reason. A rerun after success starts nothing.
"""

from __future__ import annotations

import re

# "migrate" is a fixture: imported for pytest, not referenced by name.
from test_migrate import (  # noqa: F401  pylint: disable=unused-import
    IMAGE, assert_ok, assert_unchanged, cleanup, marker, migrate, rand, run_container, running, sh, summary_ok,
    volume_inspect, volume_mountpoint,
)


def small_volume(bench, host, name, options=()):
    argv = ['docker', 'volume', 'create']
    for opt in options:
        argv += ['-o', opt]
    sh(bench, host, argv + [name])
    if not options:
        sh(bench, host, ['sh', '-c', 'mkdir -p "$1/sub" && echo data > "$1/a" && echo more > "$1/sub/b"', 'sh',
                         volume_mountpoint(bench, host, name)])


def started_at(bench, host, name):
    return sh(bench, host, ['docker', 'container', 'inspect', '-f', '{{.State.StartedAt}}', name])


def state(bench, host, name):
    return sh(bench, host, ['docker', 'container', 'inspect', '-f', '{{.State.Status}}', name], check=False)


def failed_line(out, src, vol, dst):
    parts = out.split('%s:%s -> %s  FAILED' % (src, vol, dst))
    assert len(parts) > 1, 'no FAILED line for %s:%s:\n%s' % (src, vol, out[-6000:])
    return parts[1].split('\n')[0]


def test_invalid_settings_are_refused_before_anything_runs(bench, migrate):
    t = rand('voc')
    pairs = [
        {'source': 'h1', 'destination': 'h2', 'volumes': [{'dest_name': t + 'x'}]},
        {'source': 'h1', 'destination': 'h2', 'volumes': [123]},
        {'source': 'h2', 'destination': 'h1', 'volumes': [{'name': t + 'a', 'dest_name': '../evil'}]},
        {'source': 'h2', 'destination': 'h1', 'volumes': [t + 'b'], 'compression_level': 40},
        {'source': 'h1', 'destination': 'h2', 'volumes': [t + 'c'], 'exclude': ['[^a]']},
    ]
    for check in (True, False):
        proc = migrate({'migrate_pairs': pairs}, check=check)
        out = proc.stdout
        assert proc.returncode != 0, out[-4000:]
        msg = re.search(r'"msg": "(Invalid migration pair.*)"', out).group(1)
        for says in ("h1 -> h2: invalid volume entry {'dest_name': '%sx'} in volumes: each is a volume name, or a "
                     "dict with a name" % t,
                     'h1 -> h2: invalid volume entry 123 in volumes',
                     "h2 -> h1: invalid volume entry {'name': '%sa', 'dest_name': '../evil'} in volumes: Invalid "
                     "dest_name '../evil': Docker volume names must match" % t,
                     'h2 -> h1: compression_level must be between 1 and 19 (got 40).',
                     "h1 -> h2: exclude pattern '[^a]': write [!...] to negate a bracket expression"):
            assert 'Invalid migration pair ' + says in msg, msg
        # The plan play refuses them: no pair ran (no crash in a filter, no rescue that fails in turn).
        assert 'Migrate each pair' not in out and 'UndefinedMarker' not in out and 'Traceback' not in out, out[-4000:]


def test_containers_started_and_preflight_refusals(bench, migrate, tmp_path):
    t = rand('voq')
    v = {k: t + k for k in ('start', 'keep', 'busy', 'tmpfs', 'dev', 'typo', 'rm', 'byid', 'self')}
    c = {k: v[k] + 'app' for k in v}
    job, paused = v['start'] + 'job', v['start'] + 'paused'
    alias_inventory = tmp_path / 'alias.ini'
    # h1 again under another name (the same address, so the same sshd and Docker daemon).
    alias_inventory.write_text('[bench]\nh1b ansible_host=%s\n' % bench.ip('h1'))
    try:
        for k in ('start', 'keep', 'busy', 'dev', 'typo', 'self'):
            small_volume(bench, 'h1', v[k])
            run_container(bench, 'h1', c[k], v[k])
        for k in ('rm', 'byid'):
            small_volume(bench, 'h2', v[k])
        run_container(bench, 'h2', c['rm'], v['rm'])
        # "byid": a crash-looping container (restart policy), selected by an ID prefix; running or restarting.
        sh(bench, 'h2', ['docker', 'run', '-d', '--name', c['byid'], '--restart', 'always', '-v',
                         '%s:/var/lib/app' % v['byid'], IMAGE, '/bin/sh', '-c',
                         'date >> /var/lib/app/log; sleep 0.3; exit 1'])
        byid_prefix = sh(bench, 'h2', ['docker', 'container', 'inspect', '-f', '{{.Id}}', c['byid']])[:12]
        run_container(bench, 'h1', c['byid'], v['byid'], start=False)
        # "start": a never-started job and a paused container use the volume beside the running app.
        run_container(bench, 'h1', job, v['start'], start=False)
        run_container(bench, 'h1', paused, v['start'])
        sh(bench, 'h1', ['docker', 'pause', paused])
        for name in (c['start'], job, paused, c['keep']):
            run_container(bench, 'h2', name, v['start'] if name != c['keep'] else v['keep'], start=False)
        # "busy": the destination's app already runs on (an empty) volume of that name.
        run_container(bench, 'h2', c['busy'], v['busy'])
        # "tmpfs": its content lives only while the container runs.
        small_volume(bench, 'h1', v['tmpfs'], ('type=tmpfs', 'device=tmpfs', 'o=size=4m'))
        run_container(bench, 'h1', c['tmpfs'], v['tmpfs'],
                      script='echo important > /var/lib/app/state; trap "exit 0" TERM; while :; do sleep 0.2; done')
        # "dev": a character device node in the volume.
        sh(bench, 'h1', ['mknod', volume_mountpoint(bench, 'h1', v['dev']) + '/nulldev', 'c', '1', '3'])
        before = {k: started_at(bench, 'h1', c[k]) for k in ('busy', 'tmpfs', 'dev', 'typo', 'self')}

        pairs = [
            {'source': 'h1', 'destination': 'h2', 'volumes': [v['start']]},
            {'source': 'h1', 'destination': 'h2', 'volumes': [v['keep']], 'stop_using_containers': False},
            {'source': 'h1', 'destination': 'h2', 'volumes': [v['busy']]},
            {'source': 'h1', 'destination': 'h2', 'volumes': [v['tmpfs']]},
            {'source': 'h1', 'destination': 'h2', 'volumes': [v['dev']]},
            {'source': 'h1', 'destination': 'h2', 'containers': [c['typo'], c['typo'] + 'x']},
            {'source': 'h1', 'destination': 'h1b', 'volumes': [v['self']], 'existing': 'replace',
             'remove_source': True},
            {'source': 'h2', 'destination': 'h1', 'volumes': [v['rm']], 'remove_source': True},
            {'source': 'h2', 'destination': 'h1', 'containers': [byid_prefix]},
        ]
        check = migrate({'migrate_pairs': pairs}, check=True, inventories=[alias_inventory])
        assert 'Containers that would start on h2: %s, %s.' % (c['start'], paused) in check.stdout, check.stdout[-6000:]
        assert 'Containers that would start on h2: none.' in check.stdout  # keep: its source app keeps running
        for k in ('busy', 'tmpfs', 'dev'):
            assert 'h1:%s -> h2  FAILED' % v[k] in check.stdout, check.stdout[-6000:]

        proc = migrate({'migrate_pairs': pairs}, inventories=[alias_inventory])
        out = proc.stdout
        assert proc.returncode != 0 and proc.recap['h1']['failed'] == 1 and proc.recap['h2']['failed'] == 1, out[-6000:]
        # Started on h2: the twins of the running and the paused container it stopped; not the never-started job.
        summary_ok(proc, 'h1', v['start'], 'h2')
        assert (state(bench, 'h1', c['start']), state(bench, 'h1', paused)) == ('exited', 'exited')
        assert running(bench, 'h2', c['start']) and running(bench, 'h2', paused)
        assert not running(bench, 'h2', job) and not running(bench, 'h1', job)
        # stop_using_containers false: the app keeps running on h1, its twin is not started on h2.
        summary_ok(proc, 'h1', v['keep'], 'h2')
        assert running(bench, 'h1', c['keep']) and not running(bench, 'h2', c['keep'])
        # Refused by the pre-flight, nothing stopped.
        assert ('Destination volume(s) on h2 in use by running container(s): %s (%s).' % (v['busy'], c['busy'])
                in failed_line(out, 'h1', v['busy'], 'h2'))
        line = failed_line(out, 'h1', v['tmpfs'], 'h2')
        assert 'Source volume(s) on h1 that cannot be migrated: %s (local' % v['tmpfs'] in line and 'a tmpfs' in line
        assert sh(bench, 'h1', ['docker', 'exec', c['tmpfs'], 'cat', '/var/lib/app/state']) == 'important'
        assert ('Source volume(s) on h1 hold device nodes: %s (nulldev). volume_transfer refuses them unless '
                'migrate_allow_devices is true' % v['dev']) in failed_line(out, 'h1', v['dev'], 'h2')
        assert re.search(r'h1:\S* -> h2  FAILED  .*Container\(s\) not found on h1: %sx \(' % c['typo'], out), out[-6000:]
        line = failed_line(out, 'h1', v['self'], 'h1b')
        assert 'Source h1 and destination h1b are the same Docker daemon (engine ID ' in line, line
        assert 'already exist with other data' not in line, line
        assert volume_inspect(bench, 'h1', v['self']) is not None and marker(bench, 'h1', v['self']) is None
        for k, when in before.items():
            assert running(bench, 'h1', c[k]) and started_at(bench, 'h1', c[k]) == when, k
        for k in ('busy', 'tmpfs', 'dev', 'typo'):
            assert volume_inspect(bench, 'h2', v[k]) is None or k == 'busy'
        # remove_source: the failed item's own message, not "One or more items failed".
        assert re.search(r'h2 -> h1  FAILED  Volumes were migrated and verified, but Remove the source volumes '
                         r'\(verified copy on the destination\) failed: %s: Cannot remove volume %s: it is used by '
                         r'container\(s\) %s' % (v['rm'], v['rm'], c['rm']), out), out[-6000:]
        # By ID prefix; a restarting (crash-looping) container is stopped, its twin started on h1.
        summary_ok(proc, 'h2', v['byid'], 'h1')
        assert not running(bench, 'h2', c['byid']) and running(bench, 'h1', c['byid'])
        assert marker(bench, 'h1', v['byid'])['state'] == 'complete'

        # A rerun after success starts nothing (the operator stopped the migrated app on h2 since).
        sh(bench, 'h2', ['docker', 'stop', '-t', '1', c['start'], paused])
        rerun = migrate({'migrate_pairs': [pairs[0], pairs[-1]]})
        assert_unchanged(rerun)
        assert not running(bench, 'h2', c['start']) and not running(bench, 'h2', paused)
        assert 'volumeops-migrate-' not in sh(bench, 'h2', ['cat', '/root/.ssh/authorized_keys'], check=False)
    finally:
        cleanup(bench, containers=list(c.values()) + [job, paused], volumes=list(v.values()))
