"""The multi-host bench gives isolated hosts that talk to each other only over the network."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from benchhosts import Bench, BenchError


def _rand(prefix='vobt'):
    return '%s%06d' % (prefix, random.randint(0, 999999))


def _out(proc):
    return proc.stdout.decode().strip()


def _ssh(bench, host, command, known_hosts=None, timeout=30):
    argv = bench.ssh_argv(host)
    if known_hosts:
        argv = [a.replace(bench.known_hosts, known_hosts) for a in argv]
    return subprocess.run(argv + [command], check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)


def _adhoc_results(output):
    """{host: (status, result)} from the default ad-hoc output 'h1 | SUCCESS => {...}'."""
    results = {}
    decoder = json.JSONDecoder()
    for m in re.finditer(r'^(\S+) \| (SUCCESS|CHANGED|FAILED!|UNREACHABLE!) => ', output, re.M):
        results[m.group(1)] = (m.group(2), decoder.raw_decode(output, m.end())[0])
    return results


def test_bring_up_is_fast(bench):
    assert bench.hosts == ['h1', 'h2']
    assert bench.up_seconds < 60, 'bench bring-up took %.1fs' % bench.up_seconds


def test_ansible_reaches_hosts_over_ssh_with_pinned_keys(bench, ansible_run):
    proc = ansible_run(['ansible', 'bench', '-m', 'ansible.builtin.ping'])
    assert proc.returncode == 0, proc.stdout
    results = _adhoc_results(proc.stdout)
    assert sorted(results) == ['h1', 'h2'], proc.stdout
    assert all(status == 'SUCCESS' and res['ping'] == 'pong' for status, res in results.values())

    # Facts are those of the host's own sshd: hostname and the pinned ed25519 key.
    proc = ansible_run(['ansible', 'bench', '-m', 'ansible.builtin.setup',
                        '-a', 'gather_subset=!all,ssh_host_pub_keys,platform'])
    assert proc.returncode == 0, proc.stdout
    results = _adhoc_results(proc.stdout)
    assert sorted(results) == ['h1', 'h2'], proc.stdout
    for host, (status, res) in results.items():
        facts = res['ansible_facts']
        assert facts['ansible_hostname'] == host
        assert 'ssh-ed25519 ' + facts['ansible_ssh_host_key_ed25519_public'] == bench.host_key(host)
    assert bench.host_key('h1') != bench.host_key('h2')

    # The inventory is what a user writes: ansible_host, root, key, pinned known_hosts.
    with open(bench.inventory) as f:
        inventory = f.read()
    assert 'h1 ansible_host=10.%d.0.11' % bench.net in inventory
    assert 'StrictHostKeyChecking=yes' in inventory


def test_each_host_has_its_own_docker_daemon(bench):
    vol = _rand()
    bench.exec('h1', ['docker', 'volume', 'create', '--label', 'volumeops.bench.test=1', vol])
    try:
        info = json.loads(_out(bench.exec('h1', ['docker', 'volume', 'inspect', vol])))
        assert info[0]['Mountpoint'] == '/var/lib/docker/volumes/%s/_data' % vol
        assert bench.exec('h2', ['docker', 'volume', 'inspect', vol], check=False).returncode != 0
        # Not on the controller's daemon either.
        root = subprocess.run(['docker', 'volume', 'inspect', vol], capture_output=True, check=False)
        assert root.returncode != 0
        # Different daemons: different IDs.
        ids = {_out(bench.exec(h, ['docker', 'info', '--format', '{{.ID}}'])) for h in ('h1', 'h2')}
        assert len(ids) == 2
        # Containers run (no bridge: --network none) and see their volume.
        run = bench.exec('h1', ['docker', 'run', '--rm', '--network', 'none', '-v', '%s:/data' % vol,
                                os.environ.get('VOLUMEOPS_TEST_IMAGE', 'volumeops-test/busybox:1'),
                                'sh', '-c', 'echo bench > /data/f && cat /data/f'])
        assert _out(run) == 'bench'
    finally:
        bench.exec('h1', ['docker', 'volume', 'rm', '-f', vol], check=False)


def test_hosts_cannot_see_each_others_files(bench):
    name = _rand()
    vol = _rand()
    bench.exec('h2', ['sh', '-c', 'echo secret > /var/backups/%s' % name])
    bench.exec('h2', ['docker', 'volume', 'create', vol])
    try:
        assert _out(bench.exec('h2', ['cat', '/var/backups/%s' % name])) == 'secret'
        assert bench.exec('h2', ['test', '-d', '/var/lib/docker/volumes/%s' % vol], check=False).returncode == 0
        # h1 sees neither h2's backup dir nor its docker data root.
        assert bench.exec('h1', ['test', '-e', '/var/backups/%s' % name], check=False).returncode != 0
        assert bench.exec('h1', ['test', '-e', '/var/lib/docker/volumes/%s' % vol], check=False).returncode != 0
        # Nor does the controller (root namespace).
        assert not os.path.exists('/var/backups/%s' % name)
        assert not os.path.exists('/var/lib/docker/volumes/%s' % vol)
        # The bench state dir (other hosts' dirs, the controller key) is hidden inside a host.
        assert _out(bench.exec('h1', ['ls', '-A', bench.state_dir])) == ''
        # /tmp, /root and /run are private too.
        bench.exec('h2', ['sh', '-c', 'echo x > /tmp/%s' % name])
        assert bench.exec('h1', ['test', '-e', '/tmp/%s' % name], check=False).returncode != 0
        assert not os.path.exists('/tmp/%s' % name)
        assert _out(bench.exec('h1', ['hostname'])) == 'h1'
    finally:
        bench.exec('h2', ['rm', '-f', '/var/backups/%s' % name, '/tmp/%s' % name], check=False)
        bench.exec('h2', ['docker', 'volume', 'rm', '-f', vol], check=False)


BANNER = ('import socket,sys\n'
          's=socket.create_connection((sys.argv[1],22),timeout=float(sys.argv[2]))\n'
          's.settimeout(float(sys.argv[2]))\n'
          'print(s.recv(64).decode().strip())\n')


def _banner_from(bench, src, dst_ip, timeout=3):
    return bench.exec(src, ['python3', '-c', BANNER, dst_ip, str(timeout)], check=False)


def test_hosts_reach_each_other_directly(bench):
    # TCP straight from h1 to h2's sshd over the bridge (needs the FORWARD rule).
    proc = _banner_from(bench, 'h1', bench.ip('h2'))
    assert proc.returncode == 0, proc.stderr
    assert _out(proc).startswith('SSH-2.0-OpenSSH')

    # A real SSH login h1 -> h2 with a key made on h1 and h2's pinned host key.
    key = '/root/.ssh/%s' % _rand('k')
    bench.exec('h1', ['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', key])
    pub = _out(bench.exec('h1', ['cat', key + '.pub']))
    bench.exec('h2', ['sh', '-c', 'cp /root/.ssh/authorized_keys /root/.ssh/ak.bak && cat >> /root/.ssh/authorized_keys'],
               input=(pub + '\n').encode())
    kh = key + '.known_hosts'
    bench.exec('h1', ['sh', '-c', 'cat > ' + kh], input=('%s %s\n' % (bench.ip('h2'), bench.host_key('h2'))).encode())
    try:
        proc = bench.exec('h1', ['ssh', '-i', key, '-o', 'UserKnownHostsFile=' + kh, '-o', 'StrictHostKeyChecking=yes',
                                 '-o', 'BatchMode=yes', 'root@' + bench.ip('h2'), 'hostname'], check=False)
        assert proc.returncode == 0, proc.stderr
        assert _out(proc) == 'h2'
    finally:
        bench.exec('h2', ['mv', '/root/.ssh/ak.bak', '/root/.ssh/authorized_keys'], check=False)
        bench.exec('h1', ['rm', '-f', key, key + '.pub', kh], check=False)
    # The key is gone again: login refused.
    proc = bench.exec('h1', ['ssh', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no',
                             '-o', 'UserKnownHostsFile=/dev/null', 'root@' + bench.ip('h2'), 'true'], check=False)
    assert proc.returncode == 255


def test_controller_rejects_wrong_host_key(bench, tmp_path):
    assert _ssh(bench, 'h1', 'hostname').stdout.strip() == 'h1'
    wrong = tmp_path / 'known_hosts_wrong'
    wrong.write_text('%s %s\n' % (bench.ip('h1'), bench.host_key('h2')))
    proc = _ssh(bench, 'h1', 'hostname', known_hosts=str(wrong))
    assert proc.returncode == 255
    assert 'REMOTE HOST IDENTIFICATION HAS CHANGED' in proc.stderr or 'Host key verification failed' in proc.stderr
    assert 'h1' not in proc.stdout
    empty = tmp_path / 'known_hosts_empty'
    empty.write_text('')
    proc = _ssh(bench, 'h1', 'hostname', known_hosts=str(empty))
    assert proc.returncode == 255
    assert 'Host key verification failed' in proc.stderr
    assert empty.read_text() == ''  # nothing auto-accepted


def test_sshd_stop_cuts_sessions_and_start_restores(bench):
    session = subprocess.Popen(bench.ssh_argv('h2') + ['sleep 60'], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert session.poll() is None
        killed = bench.sshd_stop('h2')
        assert killed
        assert session.wait(timeout=15) != 0  # the live session was cut
        assert not bench._tcp_ok(bench.ip('h2'), 22)
        assert _ssh(bench, 'h2', 'true', timeout=20).returncode == 255
        # h1 is unaffected.
        assert _ssh(bench, 'h1', 'true').returncode == 0
    finally:
        if session.poll() is None:
            session.send_signal(signal.SIGKILL)
            session.wait()
        bench.sshd_start('h2')
    assert _ssh(bench, 'h2', 'hostname').stdout.strip() == 'h2'
    bench.sshd_start('h2')  # idempotent
    assert len(bench.sshd_pids('h2')) >= 1


def test_link_down_and_up(bench):
    try:
        bench.link_down('h2')
        proc = _banner_from(bench, 'h1', bench.ip('h2'), timeout=2)
        assert proc.returncode != 0
        assert not bench._tcp_ok(bench.ip('h2'), 22, timeout=2)
        # h2's daemon still works locally; only its network is cut.
        assert bench.exec('h2', ['docker', 'info', '--format', '{{.ID}}'], check=False).returncode == 0
    finally:
        bench.link_up('h2')
    deadline = time.time() + 20
    while not bench._tcp_ok(bench.ip('h2'), 22) and time.time() < deadline:
        time.sleep(0.2)
    assert _banner_from(bench, 'h1', bench.ip('h2')).returncode == 0
    assert _ssh(bench, 'h2', 'hostname').stdout.strip() == 'h2'


def _leftovers(b):
    links = subprocess.run(['ip', '-o', 'link', 'show'], capture_output=True, text=True, check=False).stdout
    netns = os.listdir('/run/netns') if os.path.isdir('/run/netns') else []
    rules = subprocess.run(['iptables', '-S', 'FORWARD'], capture_output=True, text=True, check=False).stdout
    return {
        'links': [ln for ln in links.splitlines() if b.prefix in ln or (' %s:' % b.bridge) in ln],
        'netns': [n for n in netns if n.startswith(b.prefix)],
        'rules': [r for r in rules.splitlines() if b.comment in r],
        'procs': b._stray_pids(),
        'state': os.path.exists(b.state_dir),
    }


def test_up_tolerates_an_interrupted_run_and_down_cleans_everything(tmp_path):
    if os.geteuid() != 0:
        pytest.skip('needs root')
    # A separate one-host bench on its own subnet, so the session bench is untouched.
    b = Bench(str(tmp_path / 'state'), net=79)
    try:
        b.up(1, load_image=False)
        pid = b.init_pid('h1')
        # Simulate an interrupted run: the state dir is lost, processes/netns/bridge/rules remain.
        subprocess.run(['rm', '-rf', b.state_dir], check=True)
        assert os.path.exists('/proc/%d' % pid)
        left = _leftovers(b)
        assert left['netns'] and left['rules'] and left['procs'] and left['links']
        b.up(1, load_image=False)
        assert not os.path.exists('/proc/%d' % pid) or ') Z' in open('/proc/%d/stat' % pid).read()
        assert _out(b.exec('h1', ['hostname'])) == 'h1'
        assert subprocess.run(b.ssh_argv('h1') + ['true'], capture_output=True, check=False).returncode == 0
        # Only one rule and one bridge, not duplicates.
        assert len(_leftovers(b)['rules']) == 1
    finally:
        b.down()
    left = _leftovers(b)
    assert left == {'links': [], 'netns': [], 'rules': [], 'procs': [], 'state': False}, left


def test_a_second_bench_cannot_clobber_a_live_one(bench, tmp_path):
    other = Bench(str(tmp_path / 'other'), net=bench.net)
    with pytest.raises(BenchError, match='in use by the bench in %s' % bench.state_dir):
        other.up(1, load_image=False)
    with pytest.raises(BenchError, match='in use'):
        other.down()
    # The live bench is untouched.
    assert _ssh(bench, 'h1', 'hostname').stdout.strip() == 'h1'


def test_migration_benchmark_quick_run(repo_root, tmp_path):
    """benchmarks/bench_migrate.py --quick runs end to end on its own bench; every method's result is checked."""
    if os.geteuid() != 0:
        pytest.skip('needs root')
    out = tmp_path / 'migrate.json'
    proc = subprocess.run([sys.executable, str(repo_root / 'benchmarks' / 'bench_migrate.py'), '--quick',
                           '--size-mb', '30', '--net', '75', '--state-dir', str(tmp_path / 'perf'),
                           '--output', str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:]
    res = json.loads(out.read_text())
    ph = res['phases']
    assert res['source']['entries'] > 100
    assert ph['A_tar_gzip_scp']['seconds'] > 0
    assert ph['A_tar_gzip_scp']['identical'] is False  # busybox tar drops sub-second mtimes
    assert ph['B_tar_zstd_ssh']['identical'] is True
    assert ph['P_playbook_full']['identical'] is True
    tasks = ph['P_playbook_full']['tasks']  # the per-task times of benchmarks/callbacks
    assert tasks['quick_count'] + len(tasks['slow']) == tasks['count'] > 10, tasks
    assert any(t['task'].endswith('Transfer the volumes to the destination') for t in tasks['slow']), tasks
    assert ph['T_full_warm']['module']['dest_state'] == 'staging'
    assert ph['T_final_delta']['identical'] is True
    assert ph['T_final_delta']['module']['dest_state'] == 'complete'
    assert 0 < ph['T_final_delta']['module']['bytes_sent'] < ph['T_full_warm']['module']['bytes_sent']
    assert ph['T_final_delta']['module']['replaced'] > 0  # the modified 1% went again as replacements
    again = ph['T_final_delta_again_content']['module']
    assert again['changed'] is False and again['bytes_sent'] == 0 and again['verified'] is True
    assert ph['T_warm_delta_before_final']['module']['dest_state'] == 'staging'  # the final delta builds on it
    warm = ph['T_final_delta_warm_cache']
    assert warm['identical'] is True and warm['caches_dropped'] is False
    assert warm['module']['dest_state'] == 'complete' and warm['module']['replaced'] > 0
    peak = res['targets']['peak_memory_mb_per_side']['value']
    assert set(peak) == {'h1', 'h2'} and all(0 < v < 200 for v in peak.values()), peak
    assert not os.path.exists(str(tmp_path / 'perf' / 'inventory.ini'))  # its bench was taken down
    # It cleans up only what it made: a collections tree it was run from (the suite's copy) stays.
    assert (repo_root / 'galaxy.yml').is_file()
