"""Role volumeops.docker.migrate / playbooks/migrate-volumes.yml on the two-host bench.

Real ansible-playbook runs against bench hosts h1 and h2 (own sshd + dockerd each); data moves
only over the network. Fidelity: a digest of every preserved property (type, mode incl. special
bits, owner, size, sub-second mtime, link target, xattrs, hard-link groups, content hash) of the
volume tree, computed inside each host, must be equal on both sides.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time

import pytest

PLAYBOOK = 'playbooks/migrate-volumes.yml'
IMAGE = os.environ.get('VOLUMEOPS_TEST_IMAGE', 'volumeops-test/busybox:1')
VENV_PYTHON = os.environ.get('VOLUMEOPS_VENV', '/opt/volumeops/venv') + '/bin/python'

# Runs inside a helper container on a bench host: fills /data with a tree that exercises what a
# migration must keep. argv: size of the random payload in KiB, seed.
GEN_TREE = r'''
import os, sys, random
kib, seed = int(sys.argv[1]), int(sys.argv[2])
rnd = random.Random(seed)
root = '/data'
os.chown(root, 999, 999); os.chmod(root, 0o700)
os.makedirs(root + '/base/16384', exist_ok=True)
for i in range(20):
    p = '%s/base/16384/%d' % (root, 1000 + i)
    with open(p, 'wb') as f:
        f.write(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 3000))))
    os.chown(p, 999, 999); os.chmod(p, 0o600)
    os.utime(p, ns=(1700000000123456789 + i, 1700000000123456789 + i * 1000003))
with open(root + '/payload.bin', 'wb') as f:
    left = kib * 1024
    while left > 0:
        n = min(left, 1 << 20)
        f.write(os.urandom(n)); left -= n
with open(root + '/sparse.img', 'wb') as f:
    f.seek(8 << 20); f.write(b'end')
os.link(root + '/base/16384/1000', root + '/hardlink')
os.symlink('/nonexistent/target', root + '/dangling')
os.symlink('base/16384', root + '/rel')
os.mkfifo(root + '/fifo')
os.makedirs(root + '/empty/dir', exist_ok=True)
os.makedirs(root + '/shared', exist_ok=True); os.chmod(root + '/shared', 0o3777)
with open(root + '/setuid', 'wb') as f:
    f.write(b'#!/bin/sh\n')
os.chown(root + '/setuid', 1000, 1000); os.chmod(root + '/setuid', 0o4755)
name = root + '/name with\nnewline \xe9'
with open(name, 'w') as f:
    f.write('x')
big = root + '/uid-big'
with open(big, 'w') as f:
    f.write('y')
os.chown(big, 1000480000, 1000480000)
try:
    os.setxattr(root + '/payload.bin', 'user.volumeops', b'kept')
except OSError:
    pass
'''

# Digest of a tree (stdin script, argv[1] = root). Everything a faithful copy keeps.
DIGEST = r'''
import hashlib, os, stat, sys
root = sys.argv[1].encode()
h = hashlib.sha256()
inodes = {}
count = 0
def rec(rel):
    global count
    p = os.path.join(root, rel) if rel != b'.' else root
    st = os.lstat(p)
    fields = [rel, b'%o' % st.st_mode, b'%d:%d' % (st.st_uid, st.st_gid), b'%d' % st.st_mtime_ns]
    if stat.S_ISREG(st.st_mode):
        fields.append(b'%d' % st.st_size)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in inodes:
            fields.append(b'link=' + inodes[key])
        else:
            inodes[key] = rel
            c = hashlib.sha256()
            with open(p, 'rb') as f:
                for block in iter(lambda: f.read(1 << 20), b''):
                    c.update(block)
            fields.append(c.hexdigest().encode())
            fields.append(b'blocks' if st.st_blocks * 512 < st.st_size else b'')
    elif stat.S_ISLNK(st.st_mode):
        fields.append(os.readlink(p))
    try:
        for name in sorted(os.listxattr(p, follow_symlinks=False)):
            fields.append(name.encode() + b'=' + os.getxattr(p, name, follow_symlinks=False))
    except OSError:
        pass
    h.update(b'\0'.join(fields) + b'\n')
    count += 1
    if stat.S_ISDIR(st.st_mode):
        for name in sorted(os.listdir(p)):
            rec(name if rel == b'.' else rel + b'/' + name)
rec(b'.')
print('%s %d' % (h.hexdigest(), count))
'''


def rand(prefix='vomig'):
    return '%s%06d' % (prefix, random.randint(0, 999999))


def sh(bench, host, argv, check=True, timeout=300):
    proc = bench.exec(host, argv, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError('%s on %s failed rc=%d: %s' % (argv, host, proc.returncode,
                                                             proc.stderr.decode(errors='replace')))
    return proc.stdout.decode(errors='replace').strip()


def volume_mountpoint(bench, host, name):
    out = sh(bench, host, ['docker', 'volume', 'inspect', name], check=False)
    data = json.loads(out) if out.startswith('[') else []
    return data[0]['Mountpoint'] if data else None


def make_volume(bench, host, name, kib=256, seed=1, labels=None):
    argv = ['docker', 'volume', 'create']
    for k, v in (labels or {}).items():
        argv += ['--label', '%s=%s' % (k, v)]
    sh(bench, host, argv + [name])
    sh(bench, host, ['docker', 'run', '--rm', '-v', '%s:/data' % name, IMAGE,
                     '/usr/bin/python3', '-c', GEN_TREE, str(kib), str(seed)])


def digest(bench, host, name):
    """Digest of the volume's tree computed inside the host, or None when it does not exist."""
    mp = volume_mountpoint(bench, host, name)
    if mp is None:
        return None
    proc = bench.exec(host, [VENV_PYTHON, '-', mp], input=DIGEST.encode(), check=True)
    return proc.stdout.decode().strip()


def marker(bench, host, name):
    mp = volume_mountpoint(bench, host, name)
    if mp is None:
        return None
    proc = bench.exec(host, ['cat', os.path.join(os.path.dirname(mp), '.volumeops-migration.json')], check=False)
    return json.loads(proc.stdout.decode()) if proc.returncode == 0 else None


def run_container(bench, host, name, volume, script='trap "exit 0" TERM; while :; do sleep 0.2; done', start=True):
    sh(bench, host, ['docker', 'create', '--name', name, '-v', '%s:/var/lib/app' % volume, IMAGE,
                     '/bin/sh', '-c', script])
    if start:
        sh(bench, host, ['docker', 'start', name])


def running(bench, host, name):
    return sh(bench, host, ['docker', 'container', 'inspect', '-f', '{{.State.Running}}', name], check=False) == 'true'


def authorized_keys(bench, host):
    return sh(bench, host, ['cat', '/root/.ssh/authorized_keys'], check=False)


def cleanup(bench, containers=(), volumes=()):
    for host in ('h1', 'h2'):
        for c in containers:
            bench.exec(host, ['docker', 'rm', '-f', c], check=False)
        for v in volumes:
            bench.exec(host, ['docker', 'volume', 'rm', '-f', v], check=False)


def recap(output):
    """{host: {ok:.., changed:.., failed:.., unreachable:..}} from the PLAY RECAP."""
    out = {}
    for m in re.finditer(r'^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)', output, re.M):
        out[m.group(1)] = dict(ok=int(m.group(2)), changed=int(m.group(3)), unreachable=int(m.group(4)),
                               failed=int(m.group(5)))
    return out


def playbook_argv(extra_vars, check=False):
    argv = ['ansible-playbook', PLAYBOOK, '-e', json.dumps(extra_vars)]
    if check:
        argv.append('--check')
    return argv


@pytest.fixture
def migrate(ansible_run, ansible_env):
    # Pipelining: fewer SSH round trips per task (the bench connects as root, no sudo/requiretty).
    env = dict(ansible_env, ANSIBLE_PIPELINING='True')

    def run(extra_vars, check=False, timeout=600):
        started = time.time()
        proc = ansible_run(playbook_argv(extra_vars, check), timeout=timeout, env=env)
        proc.seconds = time.time() - started
        proc.recap = recap(proc.stdout)
        return proc
    return run


def assert_ok(proc):
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert proc.recap and all(r['failed'] == 0 and r['unreachable'] == 0 for r in proc.recap.values()), proc.stdout[-6000:]


def assert_unchanged(proc):
    assert_ok(proc)
    assert all(r['changed'] == 0 for r in proc.recap.values()), proc.stdout[-8000:]


def test_cold_migration_check_mode_and_rerun(bench, migrate):
    vol, app = rand(), rand('voapp')
    try:
        make_volume(bench, 'h1', vol, kib=512, labels={'app': 'db'})
        run_container(bench, 'h1', app, vol)
        # The same-named container exists (stopped) on the destination; it is started after success.
        # Its mount creates an empty destination volume, as `docker compose create` would.
        run_container(bench, 'h2', app, vol, start=False)
        before = digest(bench, 'h1', vol)
        one_pair = {'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_volumes': [vol]}

        # --check: reports what would move and which containers would stop/start, changes nothing.
        proc = migrate(one_pair, check=True)
        assert_unchanged(proc)
        assert 'Would migrate 1 volume(s) from h1 to h2' in proc.stdout
        assert re.search(r'Containers that would stop on h1: %s' % app, proc.stdout), proc.stdout[-4000:]
        assert re.search(r'Containers that would start on h2: %s' % app, proc.stdout), proc.stdout[-4000:]
        assert running(bench, 'h1', app) and not running(bench, 'h2', app)
        assert marker(bench, 'h2', vol) is None
        assert digest(bench, 'h1', vol) == before
        assert 'volumeops-migrate-' not in authorized_keys(bench, 'h2')

        proc = migrate(one_pair)
        assert_ok(proc)
        assert proc.recap['h1']['changed'] > 0
        after = digest(bench, 'h2', vol)
        assert after == before, 'destination differs from the source'
        assert digest(bench, 'h1', vol) == before, 'source was modified'
        assert marker(bench, 'h2', vol)['state'] == 'complete'
        assert running(bench, 'h2', app) and not running(bench, 'h1', app)
        # The summary, printed once, per volume.
        assert len(re.findall(r'h1:%s -> h2:%s  OK' % (vol, vol), proc.stdout)) == 1, proc.stdout[-4000:]
        assert re.search(r'downtime [0-9.]+s  verified=True \(metadata\)', proc.stdout)
        # The temporary key is gone from the destination.
        assert 'volumeops-migrate-' not in authorized_keys(bench, 'h2')

        # Rerun after success: nothing changes anywhere.
        proc = migrate(one_pair)
        assert_unchanged(proc)
        assert digest(bench, 'h2', vol) == before
        assert running(bench, 'h2', app) and not running(bench, 'h1', app)
    finally:
        cleanup(bench, [app], [vol])


def test_two_phase_migration_while_the_app_writes(bench, migrate):
    """Warm copy while the app writes, stop, delta pass, content verification; two pairs in
    parallel (h1 -> h2 and h2 -> h1), volumes selected by label and by container."""
    vol_a, vol_b, app_a, app_b = rand(), rand(), rand('voapp'), rand('voapp')
    writer = 'trap "exit 0" TERM; i=0; while :; do i=$((i+1)); echo $i > /var/lib/app/counter; sleep 0.1; done'
    try:
        make_volume(bench, 'h1', vol_a, kib=1024, seed=2, labels={'team': vol_a})
        make_volume(bench, 'h2', vol_b, kib=256, seed=3)
        run_container(bench, 'h1', app_a, vol_a, script=writer)
        run_container(bench, 'h2', app_b, vol_b, script=writer)
        pairs = {'migrate_pairs': [
            {'source': 'h1', 'destination': 'h2', 'volume_labels': ['team=%s' % vol_a]},
            {'source': 'h2', 'destination': 'h1', 'containers': [app_b]},
        ], 'migrate_strategy': 'two_phase', 'migrate_verify': 'content'}
        proc = migrate(pairs)
        assert_ok(proc)
        # The apps were stopped for the final pass: the sources are now frozen; the copies equal them.
        assert not running(bench, 'h1', app_a) and not running(bench, 'h2', app_b)
        assert digest(bench, 'h2', vol_a) == digest(bench, 'h1', vol_a)
        assert digest(bench, 'h1', vol_b) == digest(bench, 'h2', vol_b)
        assert marker(bench, 'h2', vol_a)['state'] == 'complete'
        assert marker(bench, 'h1', vol_b)['state'] == 'complete'
        # Created by the migration: the destination volume carries the source's labels.
        labels = json.loads(sh(bench, 'h2', ['docker', 'volume', 'inspect', '-f', '{{json .Labels}}', vol_a]))
        assert labels == {'team': vol_a}
        for src, dst, vol in (('h1', 'h2', vol_a), ('h2', 'h1', vol_b)):
            assert len(re.findall(r'%s:%s -> %s:%s  OK' % (src, vol, dst, vol), proc.stdout)) == 1, proc.stdout[-4000:]
        assert 'verified=True (content)' in proc.stdout

        proc = migrate(pairs)
        assert_unchanged(proc)
    finally:
        cleanup(bench, [app_a, app_b], [vol_a, vol_b])
