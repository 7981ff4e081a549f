"""Faults a migration must survive (issue 5 section 5), on the two-host bench.

Each fault: a clear message, the source data intact (digest), the source containers running again,
the destination not looking complete, the temporary key gone, and a rerun that succeeds once the
fault is gone.
"""

from __future__ import annotations

import os
import subprocess
import time

from test_migrate import (  # noqa: F401  (fixtures are re-exported for pytest)
    assert_ok, authorized_keys, cleanup, digest, make_volume, marker, migrate, playbook_argv, rand,
    recap, run_container, running, sh,
)


def assert_rolled_back(bench, vol, app, source_digest, dest_vol=None):
    assert digest(bench, 'h1', vol) == source_digest, 'source data changed'
    if app:
        assert running(bench, 'h1', app), 'source container not running again'
        assert not running(bench, 'h2', app), 'a container was started on the destination'
    m = marker(bench, 'h2', dest_vol or vol)
    assert m is None or m.get('state') != 'complete', 'destination looks complete: %s' % m
    assert 'volumeops-migrate-' not in authorized_keys(bench, 'h2'), 'temporary key left on the destination'


def assert_migrated(bench, vol, app, source_digest):
    assert digest(bench, 'h2', vol) == source_digest
    assert digest(bench, 'h1', vol) == source_digest
    assert marker(bench, 'h2', vol)['state'] == 'complete'
    assert running(bench, 'h2', app) and not running(bench, 'h1', app)
    assert 'volumeops-migrate-' not in authorized_keys(bench, 'h2')


def test_independent_faults_in_one_run_and_rerun(bench, migrate):
    """Three faulty pairs and one good pair in one run: wrong destination host key, destination
    name taken by other data, a source container that will not stay stopped (a supervisor starts
    it again). The good pair migrates; each faulty one fails with its own message and is rolled
    back. Once the faults are gone, a rerun finishes every pair."""
    good, badkey, taken, stubborn = rand('vogood'), rand('vokey'), rand('votaken'), rand('vostub')
    apps = {v: rand('voapp') for v in (good, badkey, taken, stubborn)}
    watchdog = None
    try:
        before = {}
        for i, v in enumerate((good, badkey, taken, stubborn)):
            make_volume(bench, 'h1', v, kib=128, seed=10 + i)
            run_container(bench, 'h1', apps[v], v)
            run_container(bench, 'h2', apps[v], v, start=False)
            before[v] = digest(bench, 'h1', v)
        # "taken": the destination volume already holds other data (no marker of this migration).
        sh(bench, 'h2', ['docker', 'run', '--rm', '-v', '%s:/data' % taken, 'volumeops-test/busybox:1',
                         'sh', '-c', 'echo other > /data/precious'])
        taken_dest_before = digest(bench, 'h2', taken)
        # "stubborn": something on the source starts the container again whenever it stops.
        watchdog = bench.popen('h1', ['/bin/sh', '-c', 'while :; do docker start "$1" >/dev/null 2>&1; sleep 0.1; done',
                                      'watchdog', apps[stubborn]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wrong_key = bench.host_key('h1')  # a real ed25519 key, but not h2's
        pairs = [
            {'source': 'h1', 'destination': 'h2', 'volumes': [good]},
            {'source': 'h1', 'destination': 'h2', 'volumes': [badkey], 'dest_host_key': wrong_key},
            {'source': 'h1', 'destination': 'h2', 'volumes': [taken]},
            {'source': 'h1', 'destination': 'h2', 'volumes': [stubborn], 'stop_timeout': 2},
        ]
        proc = migrate({'migrate_pairs': pairs})
        out = proc.stdout
        assert proc.returncode != 0, out[-5000:]
        assert proc.recap['h1']['failed'] == 1
        # One clear message per fault, in the summary.
        assert 'h1:%s -> h2:%s  OK' % (good, good) in out, out[-6000:]
        assert 'h1:%s -> h2  FAILED' % badkey in out and 'host key' in out.lower(), out[-6000:]
        assert 'already exist with other data: %s' % taken in out, out[-6000:]
        assert 'Container(s) %s on h1 still run or were started again' % apps[stubborn] in out, out[-6000:]
        # The good pair is done; the faulty ones are rolled back.
        assert_migrated(bench, good, apps[good], before[good])
        assert_rolled_back(bench, badkey, apps[badkey], before[badkey])
        assert_rolled_back(bench, stubborn, apps[stubborn], before[stubborn])
        assert digest(bench, 'h1', taken) == before[taken] and running(bench, 'h1', apps[taken])
        assert digest(bench, 'h2', taken) == taken_dest_before, 'the other data on the destination was touched'
        assert marker(bench, 'h2', taken) is None

        # Faults gone: right host key (default: gathered facts), the other data moved away, watchdog stopped.
        os.killpg(watchdog.pid, 15)
        watchdog.wait(10)
        watchdog = None
        sh(bench, 'h2', ['docker', 'rm', '-f', apps[taken]])
        sh(bench, 'h2', ['docker', 'volume', 'rm', taken])
        run_container(bench, 'h2', apps[taken], taken, start=False)
        for p in pairs:
            p.pop('dest_host_key', None)
        proc = migrate({'migrate_pairs': pairs})
        assert_ok(proc)
        for v in (good, badkey, taken, stubborn):
            assert_migrated(bench, v, apps[v], before[v])
    finally:
        if watchdog is not None:
            os.killpg(watchdog.pid, 15)
            watchdog.wait(10)
        cleanup(bench, list(apps.values()), [good, badkey, taken, stubborn])


def _tmpfs_over_volume(bench, host, vol, size):
    """Put the destination volume's directory on a small tmpfs (a nearly full disk)."""
    sh(bench, host, ['docker', 'volume', 'create', vol])
    path = os.path.dirname(sh(bench, host, ['docker', 'volume', 'inspect', '-f', '{{.Mountpoint}}', vol]))
    sh(bench, host, ['mount', '-t', 'tmpfs', '-o', 'size=%s,mode=0701' % size, 'vofull', path])
    sh(bench, host, ['mkdir', '-m', '0755', path + '/_data'])
    return path


def test_destination_disk_full(bench, migrate):
    vol, app = rand('vofull'), rand('voapp')
    path = None
    try:
        make_volume(bench, 'h1', vol, kib=3072, seed=21)
        run_container(bench, 'h1', app, vol)
        before = digest(bench, 'h1', vol)
        path = _tmpfs_over_volume(bench, 'h2', vol, '2m')
        one = {'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_volumes': [vol],
               'migrate_compression': 'none'}

        # Pre-flight sees that 1.1 x the used bytes do not fit: nothing is stopped.
        proc = migrate(one)
        assert proc.returncode != 0
        assert 'Not enough free space on h2' in proc.stdout, proc.stdout[-5000:]
        assert 'No source container was stopped' in proc.stdout
        assert_rolled_back(bench, vol, app, before)

        # With the check disabled, the disk fills up during the copy (after the stop): ENOSPC, rollback.
        proc = migrate(dict(one, migrate_free_space_factor=0))
        assert proc.returncode != 0
        assert 'Source containers restarted: %s' % app in proc.stdout, proc.stdout[-5000:]
        assert 'space' in proc.stdout.lower(), proc.stdout[-5000:]
        assert_rolled_back(bench, vol, app, before)

        # Room again: the rerun finishes.
        sh(bench, 'h2', ['umount', path])
        path = None
        proc = migrate(one)
        assert_ok(proc)
        assert digest(bench, 'h2', vol) == before
        assert marker(bench, 'h2', vol)['state'] == 'complete'
        assert not running(bench, 'h1', app)
    finally:
        if path:
            bench.exec('h2', ['umount', path], check=False)
        cleanup(bench, [app], [vol])


def test_connection_cut_mid_transfer(bench, ansible_env):
    """The destination's sshd dies (all sessions killed) while the data streams; the link is
    slowed to 40 Mbit/s so the copy takes seconds."""
    vol, app = rand('vocut'), rand('voapp')
    veth = bench.veth('h2')
    try:
        make_volume(bench, 'h1', vol, kib=16384, seed=31)
        run_container(bench, 'h1', app, vol)
        before = digest(bench, 'h1', vol)
        subprocess.run(['tc', 'qdisc', 'add', 'dev', veth, 'root', 'tbf', 'rate', '40mbit', 'burst', '64kb',
                        'latency', '200ms'], check=True)
        one = {'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_volumes': [vol],
               'migrate_compression': 'none'}
        argv = [os.path.join(os.environ.get('VOLUMEOPS_VENV', '/opt/volumeops/venv'), 'bin', 'ansible-playbook'),
                '-i', bench.inventory] + playbook_argv(one)[1:]
        ansible_env = dict(ansible_env, ANSIBLE_PIPELINING='True')
        proc = subprocess.Popen(argv, env=ansible_env, cwd=str(_repo_root()), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        # Wait until data is arriving in the destination's staging directory, then cut.
        deadline = time.time() + 120
        cut = False
        while time.time() < deadline and proc.poll() is None:
            listing = sh(bench, 'h2', ['sh', '-c', 'ls -d /var/lib/docker/volumes/*/.volumeops-incoming-* 2>/dev/null'],
                         check=False)
            if vol in listing:
                time.sleep(0.5)
                bench.sshd_stop('h2')
                bench.sshd_start('h2')  # back at once: the controller must still clean up
                cut = True
                break
            time.sleep(0.1)
        out = proc.communicate(timeout=600)[0]
        assert cut, 'the transfer was never seen in progress:\n' + out[-5000:]
        assert proc.returncode != 0, out[-5000:]
        assert 'h1:%s -> h2  FAILED' % vol in out, out[-5000:]
        assert 'Source containers restarted: %s' % app in out
        assert_rolled_back(bench, vol, app, before)

        subprocess.run(['tc', 'qdisc', 'del', 'dev', veth, 'root'], check=False)
        rerun = subprocess.run(argv, env=ansible_env, cwd=str(_repo_root()), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stdout[-5000:]
        assert digest(bench, 'h2', vol) == before
        assert marker(bench, 'h2', vol)['state'] == 'complete'
        assert not running(bench, 'h1', app)
    finally:
        subprocess.run(['tc', 'qdisc', 'del', 'dev', veth, 'root'], check=False, stderr=subprocess.DEVNULL)
        bench.sshd_start('h2')
        cleanup(bench, [app], [vol])


def _repo_root():
    from pathlib import Path
    return Path(__file__).resolve().parents[2]

