"""A restored or migrated tree is on disk before it takes the old content's place (bench hosts).

Whether data reached the disk cannot be seen in the files afterwards (the page cache serves them
either way), and a power loss cannot be staged here. So these tests watch the host's system calls:
strace follows every process the host's sshd starts (modules, the transfer's receiver, tar), and
the sync of the filesystem must have returned before the rename that puts the new tree in place
(renameat2 RENAME_EXCHANGE of the staging directory and _data). Without it, a power loss right after
could leave a volume of empty files (delayed allocation) marked complete, while a migration goes on
to remove the source (migrate_remove_source) or a restore has dropped the old content.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time

from test_migrate import assert_ok, assert_same_tree, cleanup, digest, make_volume, marker, migrate, rand, sh  # noqa: F401  pylint: disable=unused-import

SYSCALLS = 'syncfs,sync,renameat2'


@contextlib.contextmanager
def traced(bench, host, out, extra=''):
    """strace -f of the host's sshd processes into ``out`` while the block runs.

    The listener and every session already open (Ansible keeps its SSH connection open between
    tasks): whatever runs on the host over SSH, now or in a new session, is traced.
    """
    pids = bench.sshd_pids(host)
    argv = ['strace', '-f', '-qq', '-o', str(out), '-e', 'trace=' + SYSCALLS + (',' + extra if extra else '')]
    for pid in pids:
        argv += ['-p', str(pid)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while not all('TracerPid:\t%d\n' % proc.pid in open('/proc/%d/status' % pid).read() for pid in pids):
        assert proc.poll() is None and time.time() < deadline, 'strace did not attach: %s' % proc.stderr.read()
        time.sleep(0.05)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def sync_then_exchange(trace, data_dir):
    """(sync completed before the exchange into ``data_dir``, the exchange line) from an strace -f log."""
    lines = open(trace).read().splitlines()
    exchange = [i for i, line in enumerate(lines)
                if 'renameat2(' in line and '"%s"' % data_dir in line and 'RENAME_EXCHANGE' in line
                and line.rstrip().endswith('= 0')]
    assert exchange, 'no exchange into %s traced:\n%s' % (data_dir, '\n'.join(lines[-40:]))
    at = exchange[-1]
    # A finished sync: "syncfs(5) = 0", or its "<... syncfs resumed>) = 0" when another thread interleaved.
    done = [i for i, line in enumerate(lines[:at]) if re.search(r'\b(syncfs|sync)\b.*\) += 0$', line.rstrip())]
    return bool(done), lines[at]


def test_restore_syncs_the_tree_before_swapping_it_in(bench, ansible_run, tmp_path):
    vol = rand('vodur')
    archive_dir = '/var/backups/%s' % vol
    try:
        make_volume(bench, 'h1', vol)
        before = digest(bench, 'h1', vol)
        ansible_run(['ansible', 'h1', '-m', 'volumeops.docker.volume_backup', '-a',
                     json.dumps({'volume': vol, 'dest': archive_dir})], check=True)
        sh(bench, 'h1', ['sh', '-c', 'echo changed > "$(docker volume inspect -f "{{.Mountpoint}}" "$1")/new-file"',
                         'sh', vol])
        data_dir = sh(bench, 'h1', ['docker', 'volume', 'inspect', '-f', '{{.Mountpoint}}', vol])
        trace = tmp_path / 'restore.strace'
        with traced(bench, 'h1', trace):
            ansible_run(['ansible', 'h1', '-m', 'volumeops.docker.volume_restore', '-a', json.dumps(
                {'volume': vol, 'archive': 'latest', 'src': archive_dir, 'existing': 'replace'})], check=True)
        synced, line = sync_then_exchange(trace, data_dir)
        assert synced, 'the restored tree was swapped in before any sync returned: %s' % line
        assert_same_tree(before, digest(bench, 'h1', vol), 'restored volume')
    finally:
        cleanup(bench, volumes=[vol])
        bench.exec('h1', ['rm', '-rf', archive_dir], check=False)


def test_migration_syncs_the_destination_before_marking_it_complete(bench, migrate, tmp_path):
    vol = rand('vodur')
    try:
        make_volume(bench, 'h1', vol)
        before = digest(bench, 'h1', vol)
        trace = tmp_path / 'migrate.strace'
        with traced(bench, 'h2', trace):
            proc = migrate({'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_volumes': [vol]})
        assert_ok(proc)
        data_dir = sh(bench, 'h2', ['docker', 'volume', 'inspect', '-f', '{{.Mountpoint}}', vol])
        synced, line = sync_then_exchange(trace, data_dir)
        assert synced, 'the transferred tree was swapped in before any sync returned: %s' % line
        assert marker(bench, 'h2', vol)['state'] == 'complete'
        assert_same_tree(before, digest(bench, 'h2', vol), 'h2:%s' % vol)
    finally:
        cleanup(bench, volumes=[vol])


def test_two_phase_warm_pass_writes_its_data_back_before_the_downtime(bench, migrate, tmp_path):
    """The warm pass syncs what it wrote, before the final pass starts: the final pass (the downtime) then
    waits on the disk only for what changed, not for the whole warm copy's dirty pages."""
    vol = rand('vodur')
    try:
        make_volume(bench, 'h1', vol)
        before = digest(bench, 'h1', vol)
        trace = tmp_path / 'two_phase.strace'
        with traced(bench, 'h2', trace, extra='execve'):
            proc = migrate({'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_volumes': [vol],
                            'migrate_strategy': 'two_phase'})
        assert_ok(proc)
        lines = open(trace).read().splitlines()
        # Each pass starts its own receiver on the destination: "<python> -c <bootstrap> <length> receiver".
        receivers = [i for i, line in enumerate(lines)
                     if 'execve(' in line and '"receiver"]' in line and line.rstrip().endswith('= 0')]
        assert len(receivers) == 2, 'expected a warm and a final receiver:\n%s' % '\n'.join(lines[-60:])
        synced = [i for i in range(receivers[0], receivers[1]) if re.search(r'\b(syncfs|sync)\b.*\) += 0$', lines[i].rstrip())]
        assert synced, 'the warm pass did not write its data back:\n%s' % '\n'.join(lines[receivers[0]:receivers[1]][-40:])
        assert marker(bench, 'h2', vol)['state'] == 'complete'
        assert_same_tree(before, digest(bench, 'h2', vol), 'h2:%s' % vol)
    finally:
        cleanup(bench, volumes=[vol])
