"""Faults a migration must survive (issue 5 section 5), on the two-host bench.

Each fault: a clear message, the source data intact (fidelity oracle digest), the source containers
running again, the destination not looking complete, the temporary key gone (or, when the destination
is unreachable during the cleanup, left behind as documented and removed by the next run), and a rerun
that succeeds once the fault is gone. Independent faults share one playbook run (one pair each).
"""

from __future__ import annotations

import os
import re
import subprocess
import time

# "migrate" is a fixture: imported for pytest, not referenced by name.
from test_migrate import (  # noqa: F401  pylint: disable=unused-import
    IMAGE, REPO_ROOT, assert_ok, assert_same_tree, authorized_keys, cleanup, digest, make_volume, marker, migrate,
    playbook_argv, rand, run_container, running, sh, summary_ok, volume_mountpoint,
)

VENV_BIN = os.path.join(os.environ.get('VOLUMEOPS_VENV', '/opt/volumeops/venv'), 'bin')


def assert_rolled_back(bench, src, dst, vol, app, source_digest, key_left=False):
    assert_same_tree(source_digest, digest(bench, src, vol), 'source %s:%s' % (src, vol))
    if app:
        assert running(bench, src, app), 'source container %s not running again' % app
        assert not running(bench, dst, app), 'a container was started on the destination'
    m = marker(bench, dst, vol)
    assert m is None or m.get('state') != 'complete', 'destination looks complete: %s' % m
    if not key_left:
        assert 'volumeops-migrate-' not in authorized_keys(bench, dst), 'temporary key left on the destination'


def assert_migrated(bench, src, dst, vol, app, source_digest):
    assert_same_tree(source_digest, digest(bench, dst, vol), '%s:%s' % (dst, vol))
    assert_same_tree(source_digest, digest(bench, src, vol), 'source %s:%s' % (src, vol))
    assert marker(bench, dst, vol)['state'] == 'complete'
    assert running(bench, dst, app) and not running(bench, src, app)
    assert 'volumeops-migrate-' not in authorized_keys(bench, dst)


def _tmpfs_over_volume(bench, host, vol, size, inodes=None):
    """Put the destination volume's directory on a small tmpfs (a nearly full disk).

    ``inodes`` limits the number of files it can hold: room enough by bytes (every free-space check
    passes) and full after a few dozen files, in the middle of the stream."""
    sh(bench, host, ['docker', 'volume', 'create', vol])
    path = os.path.dirname(volume_mountpoint(bench, host, vol))
    opts = 'size=%s,mode=0701' % size + (',nr_inodes=%d' % inodes if inodes else '')
    sh(bench, host, ['mount', '-t', 'tmpfs', '-o', opts, 'vofull', path])
    sh(bench, host, ['mkdir', '-m', '0755', path + '/_data'])
    return path


def test_independent_faults_in_one_run_and_rerun(bench, migrate):
    """Eight pairs in one run, h1 -> h2 and h2 -> h1 in parallel: one good pair and seven faults —
    wrong destination host key, destination name taken by other data, a source container that a
    supervisor restarts, too little space (the role's pre-flight; and, with it disabled, volume_transfer's
    own check after the source containers were stopped), a destination disk that fills up in the middle of
    the stream (room by bytes, no inodes left), a wrong pinned SOURCE host key in relay mode. The good pair
    migrates; each faulty one fails with its own message and is rolled back. Once the faults are gone, a rerun
    finishes all."""
    t = rand('vof')
    h1_vols = {k: t + k for k in ('good', 'badkey', 'taken', 'stubborn', 'mate', 'nostart')}
    h2_vols = {k: t + k for k in ('full', 'enospc', 'midfull', 'relaykey')}
    src_of = dict([(v, 'h1') for v in h1_vols.values()] + [(v, 'h2') for v in h2_vols.values()])
    dst_of = dict((v, 'h2' if s == 'h1' else 'h1') for v, s in src_of.items())
    apps = dict((v, v + 'app') for v in src_of)
    watchdog = None
    mounts = []
    try:
        before = {}
        for v in src_of:
            big = v in (h2_vols['full'], h2_vols['enospc'])
            make_volume(bench, src_of[v], v, payload_kib=3072 if big else 0, skip=() if big else ('sparse',))
            run_container(bench, src_of[v], apps[v], v)
            run_container(bench, dst_of[v], apps[v], v, start=False)
            before[v] = digest(bench, src_of[v], v)
        # "taken": the destination volume already holds other data (no marker of this migration).
        taken = h1_vols['taken']
        sh(bench, 'h2', ['sh', '-c', 'echo other > "$1/precious"', 'sh', volume_mountpoint(bench, 'h2', taken)])
        taken_dest_before = digest(bench, 'h2', taken)
        # "full"/"enospc": their destination volumes on h1 live on a 2 MB tmpfs; "midfull" on a 64 MB tmpfs
        # that holds 40 inodes: every free-space check passes, the stream fails part-way.
        for v, size, inodes in ((h2_vols['full'], '2m', None), (h2_vols['enospc'], '2m', None),
                                (h2_vols['midfull'], '64m', 40)):
            sh(bench, 'h1', ['docker', 'rm', '-f', apps[v]])
            sh(bench, 'h1', ['docker', 'volume', 'rm', v])
            mounts.append(_tmpfs_over_volume(bench, 'h1', v, size, inodes))
            run_container(bench, 'h1', apps[v], v, start=False)
        # "stubborn": something on the source starts the container again whenever it stops.
        stubborn, mate, nostart = h1_vols['stubborn'], h1_vols['mate'], h1_vols['nostart']
        # "nostart": its same-named container on h2 cannot start (no such entrypoint).
        sh(bench, 'h2', ['docker', 'rm', '-f', apps[nostart]])
        sh(bench, 'h2', ['docker', 'create', '--name', apps[nostart], '--entrypoint', '/nonexistent', '-v',
                         '%s:/var/lib/app' % nostart, IMAGE])
        watchdog = bench.popen('h1', ['/bin/sh', '-c', 'while :; do docker start "$1" >/dev/null 2>&1; sleep 0.1; done',
                                      'watchdog', apps[stubborn]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        pairs = [
            {'source': 'h1', 'destination': 'h2', 'volumes': [h1_vols['good']]},
            # a real ed25519 key, but h1's, not h2's
            {'source': 'h1', 'destination': 'h2', 'volumes': [h1_vols['badkey']], 'dest_host_key': bench.host_key('h1')},
            {'source': 'h1', 'destination': 'h2', 'volumes': [taken]},
            # "mate" is copied and completed before "stubborn" fails in the same final pass: it must not stay
            # complete on h2 while its source container runs again.
            {'source': 'h1', 'destination': 'h2', 'volumes': [mate, stubborn], 'stop_timeout': 2},
            # The destination is complete when its container fails to start: no way back to the source.
            {'source': 'h1', 'destination': 'h2', 'volumes': [nostart]},
            # A further container to stop that does not exist: the docker CLI's own error, not "non-zero return code".
            {'source': 'h1', 'destination': 'h2', 'volumes': [t + 'unmade'], 'stop_containers': [t + 'nosuch']},
            # two problems at once (too little space and h2's own host key pinned for h1): both are named
            {'source': 'h2', 'destination': 'h1', 'volumes': [h2_vols['full']], 'compression': 'none',
             'dest_host_key': bench.host_key('h2')},
            {'source': 'h2', 'destination': 'h1', 'volumes': [h2_vols['enospc']], 'compression': 'none',
             'free_space_factor': 0},
            {'source': 'h2', 'destination': 'h1', 'volumes': [h2_vols['midfull']]},
            {'source': 'h2', 'destination': 'h1', 'volumes': [h2_vols['relaykey']], 'transfer': 'controller',
             'source_host_key': bench.host_key('h1')},
        ]
        proc = migrate({'migrate_pairs': pairs})
        out = proc.stdout
        print('faulty run: %.1fs' % proc.seconds)
        assert proc.returncode != 0, out[-5000:]
        assert proc.recap['h1']['failed'] == 1 and proc.recap['h2']['failed'] == 1, out[-5000:]
        # One clear message per fault, in the summary.
        summary_ok(proc, 'h1', h1_vols['good'], 'h2')
        assert 'h1:%s -> h2  FAILED' % h1_vols['badkey'] in out and 'Host key mismatch: h2' in out, out[-6000:]
        assert 'already exist with other data: %s' % taken in out, out[-6000:]
        assert ('Container(s) %s still run or were started again and use source volume %s'
                % (apps[stubborn], stubborn)) in out, out[-6000:]
        # One summary line per volume of the failed pair, each with its real state on the destination.
        mate_line = out.split('h1:%s -> h2  FAILED' % mate)[1].split('\n')[0]
        assert 'copied and verified, then set back to staging' in mate_line, mate_line
        assert 'Set back from complete to staging on h2 (this run had completed them): %s.' % mate in mate_line, mate_line
        assert 'h1:%s -> h2  FAILED' % stubborn in out, out[-6000:]
        assert marker(bench, 'h2', mate)['state'] == 'staging', marker(bench, 'h2', mate)
        # The destination's container did not start: the volume is migrated, the source stays stopped.
        summary_ok(proc, 'h1', nostart, 'h2')
        assert re.search(r'h1 -> h2  FAILED  Volumes migrated and verified \(%s complete on h2\), but could not start %s '
                         r'on h2: .*/nonexistent.*no such file or directory.*The source containers stay stopped \(%s\)'
                         % (nostart, apps[nostart], apps[nostart]), out), out[-6000:]
        assert marker(bench, 'h2', nostart)['state'] == 'complete'
        assert not running(bench, 'h1', apps[nostart]) and not running(bench, 'h2', apps[nostart])
        assert_same_tree(before[nostart], digest(bench, 'h2', nostart), 'h2:' + nostart)
        assert re.search(r'h1:%s -> h2  FAILED  .*Inspect the further containers to stop.*No such (container|object): '
                         r'%snosuch' % (t + 'unmade', t), out), out[-6000:]
        full_line = out.split('h2:%s -> h1  FAILED' % h2_vols['full'])[1].split('\n')[0]
        assert 'Not enough free space on h1' in full_line and 'Host key mismatch: h1' in full_line, full_line
        assert 'h2:%s -> h1  FAILED' % h2_vols['enospc'] in out, out[-6000:]
        assert 'Source containers restarted: %s' % apps[h2_vols['enospc']] in out, out[-6000:]
        # With the role's pre-flight disabled, volume_transfer's own check stops it (after the stop).
        assert 'Not enough free space on the destination' in out.split('h2:%s -> h1  FAILED' % h2_vols['enospc'])[1][:600]
        midfull_line = out.split('h2:%s -> h1  FAILED' % h2_vols['midfull'])[1].split('\n')[0]
        assert 'Destination disk full' in midfull_line and 'not complete' in midfull_line, midfull_line
        assert 'Source containers restarted: %s' % apps[h2_vols['midfull']] in out, out[-6000:]
        assert 'h2:%s -> h1  FAILED' % h2_vols['relaykey'] in out, out[-6000:]
        relay_line = out.split('h2:%s -> h1  FAILED' % h2_vols['relaykey'])[1].split('\n')[0].lower()
        assert 'host key mismatch' in relay_line and 'relay_source_host_key pins' in relay_line, relay_line
        # The good pair is done; the faulty ones are rolled back.
        assert_migrated(bench, 'h1', 'h2', h1_vols['good'], apps[h1_vols['good']], before[h1_vols['good']])
        for v in (h1_vols['badkey'], stubborn, mate, h2_vols['full'], h2_vols['enospc'], h2_vols['midfull'],
                  h2_vols['relaykey']):
            assert_rolled_back(bench, src_of[v], dst_of[v], v, apps[v], before[v])
        assert_same_tree(before[taken], digest(bench, 'h1', taken), 'source h1:' + taken)
        assert running(bench, 'h1', apps[taken])
        assert_same_tree(taken_dest_before, digest(bench, 'h2', taken), 'the other data on h2 (must be untouched)',
                         min_entries=2)
        assert marker(bench, 'h2', taken) is None

        # Faults gone: right host keys (default: gathered facts), the other data moved away,
        # watchdog stopped, room on the disk.
        os.killpg(watchdog.pid, 15)
        watchdog.wait(10)
        watchdog = None
        sh(bench, 'h2', ['docker', 'rm', '-f', apps[taken]])
        sh(bench, 'h2', ['docker', 'volume', 'rm', taken])
        run_container(bench, 'h2', apps[taken], taken, start=False)
        sh(bench, 'h2', ['docker', 'rm', '-f', apps[nostart]])
        # As the failure says: fix the cause and start it on h2 (the rerun starts nothing for a pair whose source
        # containers are stopped already), then rerun.
        run_container(bench, 'h2', apps[nostart], nostart)
        pairs = [p for p in pairs if not p.get('stop_containers')]
        while mounts:
            sh(bench, 'h1', ['umount', mounts.pop()])
        for p in pairs:
            p.pop('dest_host_key', None)
            p.pop('source_host_key', None)
        proc = migrate({'migrate_pairs': pairs})
        print('rerun: %.1fs' % proc.seconds)
        assert_ok(proc)
        for v in src_of:
            assert_migrated(bench, src_of[v], dst_of[v], v, apps[v], before[v])
        assert 'relayed by the controller' in proc.stdout
    finally:
        if watchdog is not None:
            os.killpg(watchdog.pid, 15)
            watchdog.wait(10)
        for path in mounts:
            bench.exec('h1', ['umount', path], check=False)
        cleanup(bench, list(apps.values()), list(src_of))


def _wait_for_staging(bench, host, vol, proc, timeout=120):
    """True once data arrives in the destination's staging directory of vol."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        listing = sh(bench, host, ['sh', '-c', 'ls -d /var/lib/docker/volumes/*/.volumeops-incoming-* 2>/dev/null'],
                     check=False)
        if vol in listing:
            return True
        time.sleep(0.1)
    return False


def test_connection_cut_and_link_down_mid_transfer(bench, ansible_env):
    """The destination's sshd dies (all sessions killed) while the data streams; then, on the
    next try, the destination's link goes down mid-transfer and stays down until the play ends
    (the temporary key cannot be removed: the run says so, the key stays, restricted to the
    source address, and the next run removes it). The link is slowed to 40 Mbit/s so the copy
    takes seconds. A third run, with everything back, finishes the migration."""
    vol, app = rand('vocut'), rand('voapp')
    veth = bench.veth('h2')
    # Ansible's own connections must notice a dead link instead of hanging on it.
    env = dict(ansible_env, ANSIBLE_PIPELINING='True',
               ANSIBLE_SSH_ARGS='-C -o ControlMaster=auto -o ControlPersist=60s '
                                '-o ServerAliveInterval=2 -o ServerAliveCountMax=3')
    one = {'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_volumes': [vol],
           'migrate_compression': 'none', 'migrate_connect_timeout': 5}
    argv = [os.path.join(VENV_BIN, 'ansible-playbook'), '-i', bench.inventory] + playbook_argv(one)[1:]
    link_is_down = False
    try:
        make_volume(bench, 'h1', vol, payload_kib=16384, skip=('sparse',))
        run_container(bench, 'h1', app, vol)
        before = digest(bench, 'h1', vol)
        subprocess.run(['tc', 'qdisc', 'add', 'dev', veth, 'root', 'tbf', 'rate', '40mbit', 'burst', '64kb',
                        'latency', '200ms'], check=True)

        # 1. sshd killed mid-transfer (and back at once: the controller must still clean up).
        started = time.time()
        proc = subprocess.Popen(argv, env=env, cwd=str(REPO_ROOT), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        cut = _wait_for_staging(bench, 'h2', vol, proc)
        if cut:
            time.sleep(0.5)
            bench.sshd_stop('h2')
            bench.sshd_start('h2')
        out = proc.communicate(timeout=600)[0]
        print('sshd cut run: %.1fs' % (time.time() - started))
        assert cut, 'the transfer was never seen in progress:\n' + out[-5000:]
        assert proc.returncode != 0, out[-5000:]
        assert 'h1:%s -> h2  FAILED' % vol in out, out[-5000:]
        assert 'Source containers restarted: %s' % app in out
        assert_rolled_back(bench, 'h1', 'h2', vol, app, before)

        # 2. link down mid-transfer, still down when the role cleans up.
        started = time.time()
        proc = subprocess.Popen(argv, env=env, cwd=str(REPO_ROOT), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        # The staging directory of run 1 is still there: wait for the transfer's own SSH connection
        # from h1 to h2 (Ansible's connections come from the controller) and let data flow a moment.
        deadline = time.time() + 120
        cut = False
        while time.time() < deadline and proc.poll() is None:
            conns = sh(bench, 'h1', ['ss', '-Htn', 'state', 'established', 'dst', bench.ip('h2')], check=False)
            if conns and not running(bench, 'h1', app):
                time.sleep(1.5)
                bench.link_down('h2')
                link_is_down = cut = True
                break
            time.sleep(0.1)
        out = proc.communicate(timeout=600)[0]
        seconds = time.time() - started
        print('link down run: %.1fs' % seconds)
        bench.link_up('h2')
        link_is_down = False
        assert cut, 'the transfer was never seen in progress:\n' + out[-5000:]
        assert proc.returncode != 0, out[-5000:]
        # TCP_USER_TIMEOUT of the transfer: max(30, 3 x migrate_connect_timeout) seconds.
        assert seconds < 150, 'the dead link was not noticed in time (%.0fs)' % seconds
        assert 'h1:%s -> h2  FAILED' % vol in out, out[-5000:]
        assert 'was lost in the middle of the transfer' in out, out[-5000:]
        assert 'Source containers restarted: %s' % app in out
        # Documented: the key stays when the destination is unreachable during the cleanup ...
        assert 'Could not remove the temporary migration key' in out, out[-5000:]
        keys = authorized_keys(bench, 'h2')
        assert 'volumeops-migrate-' in keys and 'from="10.' in keys, keys
        # ... and stops working by itself: sshd's expiry-time, migrate_key_lifetime_hours (24) ahead, local time.
        expiry = re.search(r'expiry-time="(\d{14})",from="10\.', keys)
        assert expiry, keys
        ahead = time.mktime(time.strptime(expiry.group(1), '%Y%m%d%H%M%S')) - time.time()
        assert 23.8 * 3600 < ahead <= 24 * 3600, ahead
        assert 'expires within 24 h' in out, out[-5000:]
        assert_rolled_back(bench, 'h1', 'h2', vol, app, before, key_left=True)

        # 3. everything back: the rerun finishes and removes the left-over key.
        subprocess.run(['tc', 'qdisc', 'del', 'dev', veth, 'root'], check=False)
        started = time.time()
        rerun = subprocess.run(argv, env=env, cwd=str(REPO_ROOT), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
        print('rerun: %.1fs' % (time.time() - started))
        assert rerun.returncode == 0, rerun.stdout[-5000:]
        assert_same_tree(before, digest(bench, 'h2', vol), 'h2:' + vol)
        assert marker(bench, 'h2', vol)['state'] == 'complete'
        assert not running(bench, 'h1', app)
        assert 'volumeops-migrate-' not in authorized_keys(bench, 'h2')
    finally:
        if link_is_down:
            bench.link_up('h2')
        subprocess.run(['tc', 'qdisc', 'del', 'dev', veth, 'root'], check=False, stderr=subprocess.DEVNULL)
        bench.sshd_start('h2')
        cleanup(bench, [app], [vol])
