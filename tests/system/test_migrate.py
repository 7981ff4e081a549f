"""Role volumeops.docker.migrate / playbooks/migrate-volumes.yml on the two-host bench.

Real ansible-playbook runs against bench hosts h1 and h2 (own sshd + dockerd each); data moves
only over the network. Scenarios are combined into few playbook runs with many pairs each (pairs
of one source run one after the other, sources in parallel), so the whole file stays fast.

Fidelity: the independent oracle tests/support/fidelity.py builds its hard-case tree (owners incl.
ids >= 2**24, every mode bit, sub-second mtimes, hard links, sparse files, FIFOs, xattrs, POSIX ACLs,
file capabilities, non-UTF-8 names, long paths) in the source volume INSIDE the source bench host,
digests the tree inside each host, and the digests are compared property by property.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / 'tests' / 'support'))

import fidelity  # noqa: E402  (path set just above)

PLAYBOOK = 'playbooks/migrate-volumes.yml'
IMAGE = os.environ.get('VOLUMEOPS_TEST_IMAGE', 'volumeops-test/busybox:1')
# The oracle runs inside the bench hosts from stdin (the checkout may not be visible there).
FIDELITY_SOURCE = (REPO_ROOT / 'tests' / 'support' / 'fidelity.py').read_bytes()
HOST_PYTHON = '/usr/bin/python3'
VENV_BIN = Path(os.environ.get('VOLUMEOPS_VENV', '/opt/volumeops/venv')) / 'bin'
# The interpreter the bench inventory gives Ansible on the hosts (see tests/bench/benchhosts.py).
HOST_VENV_PYTHON = os.environ.get('VOLUMEOPS_HOST_PYTHON') or str(VENV_BIN / 'python')


def rand(prefix='vomig'):
    return '%s%06d' % (prefix, random.randint(0, 999999))


def sh(bench, host, argv, check=True, timeout=300):
    proc = bench.exec(host, argv, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors='replace')
        raise AssertionError('%s on %s failed rc=%d: %s' % (argv, host, proc.returncode, err))
    return proc.stdout.decode(errors='replace').strip()


def volume_inspect(bench, host, name):
    out = sh(bench, host, ['docker', 'volume', 'inspect', name], check=False)
    data = json.loads(out) if out.startswith('[') else []
    return data[0] if data else None


def volume_mountpoint(bench, host, name):
    info = volume_inspect(bench, host, name)
    return info['Mountpoint'] if info else None


def make_volume(bench, host, name, labels=None, payload_kib=0, skip=()):
    """Create a volume on host and build the oracle's hard-case tree in it (inside the host).

    payload_kib adds an incompressible file of that size (to fill a small disk or to make a
    transfer last long enough to be cut)."""
    argv = ['docker', 'volume', 'create']
    for k, v in (labels or {}).items():
        argv += ['--label', '%s=%s' % (k, v)]
    sh(bench, host, argv + [name])
    mp = volume_mountpoint(bench, host, name)
    argv = [HOST_PYTHON, '-', 'build', mp] + (['--skip', ','.join(skip)] if skip else [])
    proc = bench.exec(host, argv, input=FIDELITY_SOURCE, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors='replace')
    if payload_kib:
        sh(bench, host, ['dd', 'if=/dev/urandom', 'of=%s/payload.bin' % mp, 'bs=1024', 'count=%d' % payload_kib])
    return mp


def digest(bench, host, name):
    """The oracle's digest (dict) of the volume's tree computed inside host, None when no such volume."""
    mp = volume_mountpoint(bench, host, name)
    if mp is None:
        return None
    proc = bench.exec(host, [HOST_PYTHON, '-', 'digest', mp], input=FIDELITY_SOURCE, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors='replace')
    return json.loads(proc.stdout.decode())


def assert_same_tree(a, b, what='destination', min_entries=50):
    """Every preserved property of every entry equal (the oracle's compare, one line per difference)."""
    assert a is not None and b is not None, '%s: volume missing' % what
    diffs = fidelity.compare(a, b)
    assert not diffs, '%s differs from the source:\n%s' % (what, '\n'.join(diffs[:40]))
    # the hard-case tree really is there (not two empty volumes compared)
    assert a['count'] == b['count'] and a['count'] >= min_entries, (a['count'], b['count'])


def marker(bench, host, name):
    mp = volume_mountpoint(bench, host, name)
    if mp is None:
        return None
    proc = bench.exec(host, ['cat', os.path.join(os.path.dirname(mp), '.volumeops-migration.json')], check=False)
    return json.loads(proc.stdout.decode()) if proc.returncode == 0 else None


def run_container(bench, host, name, volume, script='trap "exit 0" TERM; while :; do sleep 0.2; done', start=True,
                  labels=None):
    argv = ['docker', 'create', '--name', name]
    for k, v in (labels or {}).items():
        argv += ['--label', '%s=%s' % (k, v)]
    sh(bench, host, argv + ['-v', '%s:/var/lib/app' % volume, IMAGE, '/bin/sh', '-c', script])
    if start:
        sh(bench, host, ['docker', 'start', name])


def running(bench, host, name):
    return sh(bench, host, ['docker', 'container', 'inspect', '-f', '{{.State.Running}}', name], check=False) == 'true'


def authorized_keys(bench, host):
    return sh(bench, host, ['cat', '/root/.ssh/authorized_keys'], check=False)


def cleanup(bench, containers=(), volumes=()):
    for host in ('h1', 'h2'):
        if containers:
            bench.exec(host, ['docker', 'rm', '-f'] + list(containers), check=False)
        if volumes:
            bench.exec(host, ['docker', 'volume', 'rm', '-f'] + list(volumes), check=False)


def recap(output):
    """{host: {ok:.., changed:.., failed:.., unreachable:..}} from the PLAY RECAP."""
    out = {}
    for m in re.finditer(r'^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)', output, re.M):
        out[m.group(1)] = dict(ok=int(m.group(2)), changed=int(m.group(3)), unreachable=int(m.group(4)),
                               failed=int(m.group(5)))
    return out


def playbook_argv(extra_vars, check=False, inventories=(), diff=False):
    argv = ['ansible-playbook', PLAYBOOK, '-e', json.dumps(extra_vars)]
    for inv in inventories:
        argv += ['-i', str(inv)]
    if check:
        argv.append('--check')
    if diff:
        argv.append('--diff')
    return argv


@pytest.fixture
def migrate(ansible_run, ansible_env):
    # Pipelining: fewer SSH round trips per task (the bench connects as root, no sudo/requiretty).
    env = dict(ansible_env, ANSIBLE_PIPELINING='True')

    def run(extra_vars, check=False, timeout=600, inventories=(), extra_env=None, diff=False):
        started = time.time()
        proc = ansible_run(playbook_argv(extra_vars, check, inventories, diff), timeout=timeout,
                           env=dict(env, **(extra_env or {})))
        proc.seconds = time.time() - started
        proc.recap = recap(proc.stdout)
        return proc

    def raw(argv, timeout=600):
        """Any ansible-playbook command line (a wrapper playbook) with the same environment."""
        return ansible_run(argv, timeout=timeout, env=env)
    run.raw = raw
    return run


def assert_ok(proc):
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert proc.recap and all(r['failed'] == 0 and r['unreachable'] == 0 for r in proc.recap.values()), proc.stdout[-6000:]


def assert_unchanged(proc):
    assert_ok(proc)
    assert all(r['changed'] == 0 for r in proc.recap.values()), proc.stdout[-8000:]


def summary_ok(proc, src, vol, dst, dest_vol=None):
    """The play's summary has exactly one OK line for this volume."""
    pattern = r'%s:%s -> %s:%s  OK' % (src, re.escape(vol), dst, re.escape(dest_vol or vol))
    assert len(re.findall(pattern, proc.stdout)) == 1, 'no summary line %r:\n%s' % (pattern, proc.stdout[-6000:])


def test_many_pairs_selections_options_relay_and_rerun(bench, migrate, tmp_path):
    """One --check run, one real run, one rerun, covering in parallel (h1 -> h2 pairs one after the
    other, h2 -> h1 and an unreachable source beside them):

    - cold, by name, running app stopped on h1 and its same-named container started on h2, a user
      post_tasks hook, a second volume whose destination name holds other data (existing=replace);
    - by Compose project (only the labelled volumes move) plus a per-volume dest_name/labels override;
    - h2 -> h1: migrate_remove_source (source volume gone only after a verified copy), relay through
      the controller (transfer=controller) selected by container, two_phase while the app writes
      selected by label with verify=content;
    - a source host that is unreachable: clear message, every other pair unaffected.
    """
    t = rand('vo')
    v = dict(fid=t + 'fid', rep=t + 'rep', db=t + 'db', cache=t + 'cache', decoy=t + 'decoy', ren=t + 'ren',
             rm=t + 'rm', rel=t + 'rel', tp=t + 'tp')
    c = dict(app=t + 'app', web=t + 'web', relapp=t + 'relapp', tpapp=t + 'tpapp')
    project = t + 'proj'
    ren_dest = v['ren'] + '-v2'
    post_file = '/root/%s-post.json' % t
    writer = 'trap "exit 0" TERM; i=0; while :; do i=$((i+1)); echo $i > /var/lib/app/counter; sleep 0.1; done'
    try:
        # --- source data -------------------------------------------------------------------
        for name in ('fid', 'rep'):
            make_volume(bench, 'h1', v[name])
        for name in ('rm', 'rel'):
            make_volume(bench, 'h2', v[name])
        make_volume(bench, 'h1', v['db'], labels={'com.docker.compose.project': project})
        make_volume(bench, 'h1', v['cache'], labels={'com.docker.compose.project': project}, skip=('sparse',))
        make_volume(bench, 'h1', v['decoy'], labels={'com.docker.compose.project': project + 'x'}, skip=('sparse',))
        make_volume(bench, 'h1', v['ren'], labels={'tier': 'bronze'}, skip=('sparse',))
        make_volume(bench, 'h2', v['tp'], labels={'team': t})
        run_container(bench, 'h1', c['app'], v['fid'])
        run_container(bench, 'h2', c['app'], v['fid'], start=False)  # waits for the data on h2
        run_container(bench, 'h1', c['web'], v['db'], labels={'com.docker.compose.project': project})
        run_container(bench, 'h2', c['relapp'], v['rel'])
        run_container(bench, 'h2', c['tpapp'], v['tp'], script=writer)
        # The destination name of "rep" holds other data.
        sh(bench, 'h2', ['docker', 'volume', 'create', v['rep']])
        sh(bench, 'h2', ['sh', '-c', 'echo other > "$1/precious"', 'sh', volume_mountpoint(bench, 'h2', v['rep'])])
        before = {k: digest(bench, 'h1', v[k]) for k in ('fid', 'rep', 'db', 'cache', 'decoy', 'ren')}
        before.update({k: digest(bench, 'h2', v[k]) for k in ('rm', 'rel')})

        post_tasks = tmp_path / 'post.yml'
        post_tasks.write_text(
            '- name: Record what moved\n'
            '  ansible.builtin.copy:\n'
            '    dest: %s\n'
            '    mode: "0600"\n'
            '    content: "{{ {\'destination\': migrate_result_pair.destination,'
            ' \'volumes\': migrate_result_volumes | map(attribute=\'volume\') | list,'
            ' \'verified\': migrate_result_volumes | map(attribute=\'verified\') | list,'
            ' \'key_lines_left\': migrate__key_lines | default([]) | length} | to_json }}"\n' % post_file)
        ghost_inventory = tmp_path / 'ghost.ini'
        # A source host nobody can reach (nothing listens on port 1): connection refused at once.
        ghost_inventory.write_text('ghost ansible_host=127.0.0.1 ansible_port=1 ansible_user=root\n')

        pairs = [
            {'source': 'h1', 'destination': 'h2', 'volumes': [v['fid'], v['rep']], 'existing': 'replace',
             'post_tasks': str(post_tasks)},
            {'source': 'h1', 'destination': 'h2', 'compose_project': project,
             'volumes': [{'name': v['ren'], 'dest_name': ren_dest, 'labels': {'tier': 'gold', 'moved': 'yes'}}]},
            {'source': 'h2', 'destination': 'h1', 'volumes': [v['rm']], 'remove_source': True},
            {'source': 'h2', 'destination': 'h1', 'containers': [c['relapp']], 'transfer': 'controller'},
            {'source': 'h2', 'destination': 'h1', 'volume_labels': ['team=%s' % t], 'strategy': 'two_phase',
             'verify': 'content'},
        ]
        # (Its own destination name: two pairs copying into one destination volume are refused before anything runs.)
        ghost_pair = {'source': 'ghost', 'destination': 'h2', 'volumes': [{'name': v['fid'], 'dest_name': v['fid'] + 'g'}]}

        # --- --check, then --check --diff: report, change nothing ------------------------------
        for diff in (False, True):
            proc = migrate({'migrate_pairs': pairs}, check=True, diff=diff)
            assert_unchanged(proc)
            out = proc.stdout
            assert 'Would migrate 2 volume(s) from h1 to h2' in out, out[-6000:]
            assert re.search(r'Containers that would stop on h1: %s\.' % c['app'], out), out[-6000:]
            assert re.search(r'Containers that would start on h2: %s\.' % c['app'], out), out[-6000:]
            assert re.search(r'Would migrate 3 volume\(s\) from h1 to h2 .*%s -> h2:%s' % (v['ren'], ren_dest), out), out[-6000:]
            assert v['decoy'] not in out
            assert 'Would migrate 1 volume(s) from h2 to h1 (two_phase, verify=content)' in out
            print('check run (diff=%s): %.1fs' % (diff, proc.seconds))
            assert running(bench, 'h1', c['app']) and not running(bench, 'h2', c['app'])
            for host, name in (('h2', 'fid'), ('h2', 'db'), ('h1', 'rm'), ('h1', 'rel')):
                assert volume_inspect(bench, host, v[name]) is None or marker(bench, host, v[name]) is None
            assert marker(bench, 'h2', v['rep']) is None
            assert volume_inspect(bench, 'h1', v['tp']) is None
            assert 'volumeops-migrate-' not in authorized_keys(bench, 'h2') + authorized_keys(bench, 'h1')

        # --- the real run, with the unreachable source beside --------------------------------
        proc = migrate({'migrate_pairs': pairs + [ghost_pair]}, inventories=[ghost_inventory])
        out = proc.stdout
        print('real run: %.1fs' % proc.seconds)
        assert proc.returncode != 0, out[-6000:]
        # The unreachable source fails clearly; nothing else does.
        assert re.search(r'ghost:%s -> h2  FAILED .*Source ghost is unreachable' % v['fid'], out), out[-6000:]
        assert proc.recap['h1']['failed'] == 0 and proc.recap['h2']['failed'] == 0, out[-6000:]
        assert 'did not set no_log' not in out  # volume_transfer's "pass" option is not a secret
        for src, dst, name, dest_name in (('h1', 'h2', 'fid', None), ('h1', 'h2', 'rep', None),
                                          ('h1', 'h2', 'db', None), ('h1', 'h2', 'cache', None),
                                          ('h1', 'h2', 'ren', ren_dest), ('h2', 'h1', 'rm', None),
                                          ('h2', 'h1', 'rel', None), ('h2', 'h1', 'tp', None)):
            summary_ok(proc, src, v[name], dst, dest_name)
        assert re.search(r'h2:%s -> h1:%s  OK .*relayed by the controller' % (v['rel'], v['rel']), out), out[-6000:]
        assert 'verified=True (content)' in out

        # Every volume: the destination equals the source in every preserved property.
        for src, dst, name in (('h1', 'h2', 'fid'), ('h1', 'h2', 'rep'), ('h1', 'h2', 'db'), ('h1', 'h2', 'cache'),
                               ('h2', 'h1', 'rel')):
            assert_same_tree(before[name], digest(bench, dst, v[name]), '%s:%s' % (dst, v[name]))
            assert_same_tree(before[name], digest(bench, src, v[name]), 'source %s:%s' % (src, v[name]))
            assert marker(bench, dst, v[name])['state'] == 'complete'
        # existing=replace: the other data is gone, replaced by the source's.
        assert 'precious' not in digest(bench, 'h2', v['rep'])['entries']
        # Compose project: only the project's volumes moved.
        assert volume_inspect(bench, 'h2', v['decoy']) is None
        assert_same_tree(before['decoy'], digest(bench, 'h1', v['decoy']), 'decoy')
        labels = volume_inspect(bench, 'h2', v['db'])['Labels']
        assert labels == {'com.docker.compose.project': project}, labels
        assert not running(bench, 'h1', c['web'])
        # Per-volume dest_name and labels override.
        assert volume_inspect(bench, 'h2', v['ren']) is None
        assert volume_inspect(bench, 'h2', ren_dest)['Labels'] == {'tier': 'gold', 'moved': 'yes'}
        assert_same_tree(before['ren'], digest(bench, 'h2', ren_dest), 'h2:' + ren_dest)
        assert marker(bench, 'h2', ren_dest)['state'] == 'complete'
        # remove_source: verified copy on h1, source volume on h2 gone.
        assert volume_inspect(bench, 'h2', v['rm']) is None
        assert_same_tree(before['rm'], digest(bench, 'h1', v['rm']), 'h1:' + v['rm'])
        assert marker(bench, 'h1', v['rm'])['state'] == 'complete'
        # Containers: stopped on the source, the same-named one started on the destination.
        assert running(bench, 'h2', c['app']) and not running(bench, 'h1', c['app'])
        assert not running(bench, 'h2', c['relapp'])
        # The post_tasks hook ran on the source with the results of its (verified) pair only.
        post = json.loads(sh(bench, 'h1', ['cat', post_file]))
        # ... and could not find the temporary private key among the host's variables any more.
        assert post == {'destination': 'h2', 'volumes': [v['fid'], v['rep']], 'verified': [True, True],
                        'key_lines_left': 0}, post
        # two_phase h2 -> h1 while writing: the app was stopped for the final delta; copy == frozen source.
        assert not running(bench, 'h2', c['tpapp'])
        tp_src = digest(bench, 'h2', v['tp'])
        assert 'counter' in tp_src['entries']
        assert_same_tree(tp_src, digest(bench, 'h1', v['tp']), 'h1:' + v['tp'])
        assert marker(bench, 'h1', v['tp'])['state'] == 'complete'
        assert volume_inspect(bench, 'h1', v['tp'])['Labels'] == {'team': t}
        # The temporary keys are gone from both destinations, and no key file was left anywhere: the key
        # pairs were made on the controller in directories removed at once, and never written on a host.
        assert 'volumeops-migrate-' not in authorized_keys(bench, 'h2') + authorized_keys(bench, 'h1')
        key_dirs = 'ls -d "${TMPDIR:-/tmp}"/volumeops-migrate-* 2>/dev/null; true'
        assert [sh(bench, h, ['sh', '-c', key_dirs]).strip() for h in ('h1', 'h2')] == ['', ''], 'key files on a host'
        assert not glob.glob(os.path.join(os.environ.get('TMPDIR', '/tmp'), 'volumeops-migrate-*')), 'controller'

        # --- rerun after success: nothing changes (the removed source counts as done) ---------
        proc = migrate({'migrate_pairs': pairs})
        print('rerun: %.1fs' % proc.seconds)
        assert_unchanged(proc)
        assert len(re.findall(r'  OK \(unchanged', proc.stdout)) == 8, proc.stdout[-6000:]
        assert_same_tree(before['fid'], digest(bench, 'h2', v['fid']), 'h2:' + v['fid'] + ' after the rerun')
        assert running(bench, 'h2', c['app']) and not running(bench, 'h1', c['app'])
    finally:
        sh(bench, 'h1', ['rm', '-f', post_file], check=False)
        cleanup(bench, list(c.values()), list(v.values()) + [ren_dest])


HOST_PUB = '/etc/ssh/ssh_host_ed25519_key.pub'


def test_preflight_host_key_from_gathered_facts_and_unreachable_sshd(bench, migrate, tmp_path):
    """When the play gathered the destination's ssh host key fact, that fact is the pinned key (and is checked
    against what the destination's sshd presents); without it (every other run here) the role reads the sshd's
    key file on the destination. An sshd port nobody answers on is reported as unreachable, not as a key
    mismatch; a destination or source Docker daemon that does not answer, a destination Python that does not run
    and a destination without a host key file are named. Check mode: pre-flight only, nothing changes."""
    vol = rand('vokey')
    nodocker_py = '/tmp/%s-python' % vol
    wrapper = tmp_path / 'with-facts.yml'
    wrapper.write_text(
        '- name: Host key facts of the destination\n'
        '  hosts: h2\n'
        '  gather_facts: false\n'
        '  tasks:\n'
        '    - name: Gather the ssh host keys\n'
        '      ansible.builtin.setup:\n'
        "        gather_subset: ['!all', '!min', 'ssh_pub_keys']\n"
        '    - name: Replace the fact by another key (the fault under test)\n'
        '      ansible.builtin.set_fact:\n'
        '        ansible_ssh_host_key_ed25519_public: "{{ wrong_key }}"\n'
        '      when: wrong_key | length > 0\n'
        '- name: Migrate\n'
        '  ansible.builtin.import_playbook: %s\n' % (REPO_ROOT / PLAYBOOK))
    extra = {'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_volumes': [vol]}
    try:
        sh(bench, 'h1', ['docker', 'volume', 'create', vol])
        h1_key = bench.host_key('h1').split()[1]
        argv = ['ansible-playbook', str(wrapper), '--check', '-e', json.dumps(dict(extra, wrong_key=h1_key))]
        proc = migrate.raw(argv)
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert ('Host key mismatch: h2' in proc.stdout and 'ssh-ed25519 %s (gathered facts)' % h1_key in proc.stdout), \
            proc.stdout[-6000:]

        # migrate_volumes as one comma-separated string, as an AWX survey's text field gives it.
        argv = ['ansible-playbook', str(wrapper), '--check', '-e',
                json.dumps(dict(extra, wrong_key='', migrate_volumes='%s, ' % vol))]
        proc = migrate.raw(argv)
        assert proc.returncode == 0, proc.stdout[-6000:]
        assert 'Would migrate 1 volume(s) from h1 to h2' in proc.stdout, proc.stdout[-6000:]
        assert not volume_inspect(bench, 'h2', vol)  # check mode: nothing on the destination

        # Two volumes into one destination name: within a pair (found on the source) and across pairs (named).
        sh(bench, 'h1', ['docker', 'volume', 'create', vol + 'b'])
        proc = migrate(dict(extra, migrate_volumes=[{'name': vol, 'dest_name': vol + 'x'},
                                                    {'name': vol + 'b', 'dest_name': vol + 'x'}]), check=True)
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert ('Two or more selected volumes would be copied into the same destination volume on h2: %sx (from %s, %sb)'
                % (vol, vol, vol)) in proc.stdout, proc.stdout[-6000:]
        proc = migrate({'migrate_pairs': [{'source': 'h1', 'destination': 'h2', 'volumes': [vol]},
                                          {'source': 'h1', 'destination': 'h2',
                                           'volumes': [{'name': vol + 'b', 'dest_name': vol}]}]}, check=True)
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert ('Two migration pairs would copy into the same destination volume: h2:%s (from h1:%s, h1:%sb)'
                % (vol, vol, vol)) in proc.stdout, proc.stdout[-6000:]
        # --limit (AWX's Limit field): the source in the limit runs the migration; a limit without it fails loudly.
        argv = playbook_argv(extra, check=True)
        proc = migrate.raw(argv + ['--limit', 'h1'])
        assert proc.returncode == 0 and 'Would migrate 1 volume(s) from h1 to h2' in proc.stdout, proc.stdout[-6000:]
        proc = migrate.raw(argv + ['--limit', 'h2'])
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert 'leaves out the source host(s) h1' in proc.stdout, proc.stdout[-6000:]

        # Destination volumes the transfer cannot write: a new one asked for by a driver_options override (NFS,
        # mounted only while a container uses it) without migrate_helper_image, and an existing tmpfs volume
        # (gone with its last user). Both named by the pre-flight, which runs before any container stops.
        sh(bench, 'h1', ['docker', 'volume', 'create', vol + 'tmp'])
        sh(bench, 'h2', ['docker', 'volume', 'create', '-o', 'type=tmpfs', '-o', 'device=tmpfs', vol + 'tmp'])
        nfs = {'type': 'nfs', 'device': ':/export', 'o': 'addr=192.0.2.1'}
        argv = ['ansible-playbook', str(wrapper), '--check', '-e', json.dumps(dict(
            extra, wrong_key='', migrate_volumes=[{'name': vol, 'driver_options': nfs}, vol + 'tmp']))]
        proc = migrate.raw(argv)
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert 'Destination volume(s) on h2 that the transfer cannot write: %s (would be created: local' % vol \
            in proc.stdout, proc.stdout[-6000:]
        assert 'set migrate_helper_image' in proc.stdout, proc.stdout[-6000:]
        assert '%stmp (exists: local {' % vol in proc.stdout and 'a tmpfs: its content is gone' in proc.stdout, \
            proc.stdout[-6000:]
        assert not volume_inspect(bench, 'h2', vol)

        proc = migrate(dict(extra, migrate_dest_port=2222, migrate_connect_timeout=3), check=True)
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert 'h1 cannot reach the SSH server of h2 at %s:2222 within 3s' % bench.ip('h2') in proc.stdout, \
            proc.stdout[-6000:]
        assert 'Host key mismatch' not in proc.stdout

        # The destination's Docker daemon does not answer (its CLI pointed at a socket nobody serves), then
        # the destination's Python does not run: each is named, and check mode changed nothing.
        bench.exec('h2', ['sh', '-c', 'cat > "$0" && chmod 0755 "$0"', nodocker_py],
                   input=b'#!/bin/sh\nDOCKER_HOST=unix:///nonexistent/docker.sock exec /usr/bin/python3 "$@"\n')
        proc = migrate(dict(extra, migrate_dest_python=nodocker_py), check=True)
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert 'Docker on h2 does not answer: Cannot connect to the Docker daemon' in proc.stdout, proc.stdout[-6000:]
        # The source's Docker daemon does not answer (root's bash, which sshd starts for each command, points the
        # docker CLI at a socket nobody serves): one message, before anything else runs there.
        bench.exec('h1', ['sh', '-c', 'echo "export DOCKER_HOST=unix:///nonexistent/docker.sock" > /root/.bashrc'])
        try:
            proc = migrate(extra, check=True)
        finally:
            bench.exec('h1', ['rm', '-f', '/root/.bashrc'])
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert ('Cannot list the Docker volumes on h1: Cannot connect to the Docker daemon at '
                'unix:///nonexistent/docker.sock') in proc.stdout, proc.stdout[-6000:]
        assert 'Would migrate' not in proc.stdout
        proc = migrate(dict(extra, migrate_dest_python='/nonexistent/python3'), check=True)
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert 'Missing tools: h2: /nonexistent/python3 does not run' in proc.stdout, proc.stdout[-6000:]
        # A real run on a controller without ssh-keygen (PATH holds every other command): the pre-flight names it
        # and nothing changes on either host.
        nokeygen = tmp_path / 'bin-without-ssh-keygen'
        nokeygen.mkdir()
        for d in ('/usr/local/bin', '/usr/sbin', '/usr/bin'):
            for name in os.listdir(d):
                if name != 'ssh-keygen' and not (nokeygen / name).exists():
                    (nokeygen / name).symlink_to(os.path.join(d, name))
        proc = migrate(extra, extra_env={'PATH': '%s:%s' % (VENV_BIN, nokeygen)})
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert 'ssh-keygen on the controller could not make the temporary key' in proc.stdout, proc.stdout[-6000:]
        assert not volume_inspect(bench, 'h2', vol) and volume_inspect(bench, 'h1', vol)
        assert 'volumeops-migrate-' not in authorized_keys(bench, 'h2')
        # No host key given, none gathered, and no key file to read (sshd itself reads the private key file).
        bench.exec('h2', ['mv', HOST_PUB, HOST_PUB + '.aside'])
        proc = migrate(extra, check=True)
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert 'No ed25519 SSH host key found for h2' in proc.stdout, proc.stdout[-6000:]
        assert not volume_inspect(bench, 'h2', vol)
    finally:
        bench.exec('h2', ['sh', '-c', '[ -e "$0.aside" ] && mv "$0.aside" "$0"; true', HOST_PUB], check=False)
        bench.exec('h2', ['rm', '-f', nodocker_py], check=False)
        cleanup(bench, volumes=[vol, vol + 'tmp', vol + 'b'])


def test_two_phase_into_and_out_of_volumes_with_mount_options(bench, migrate):
    """Local to "NFS" and "NFS" to local: volumes with mount options are mounted only while a container uses
    them (a bind mount stands in for NFS, which cannot be served here), and are read or written through a
    holder container of migrate_helper_image.

    - Without migrate_helper_image, the --check pre-flight names both (the source's empty-looking directory is
      never sent as its content). With it, the pre-flight looks into an existing destination volume with mount
      options through a holder container: other data there is named, an empty one is fine.
    - Two-phase while the application writes; --check changes nothing; the data lands in the destination's
      mounted filesystem, and the mounted source's data in a plain local volume, both digested independently
      of Docker and of the module; a rerun changes nothing; no holder container is left.
    """
    vol = rand('vonfs')
    msrc = vol + 'src'
    app = vol + 'app'
    device = '/srv/%s-export' % vol
    src_device = '/srv/%s-srcexport' % vol
    taken = vol + 'taken'
    taken_device = '/srv/%s-taken' % vol
    options = {'type': 'none', 'o': 'bind', 'device': device}
    writer = 'trap "exit 0" TERM; i=0; while :; do i=$((i+1)); echo $i > /var/lib/app/counter; sleep 0.1; done'
    extra = {'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_strategy': 'two_phase',
             'migrate_helper_image': IMAGE, 'migrate_volumes': [{'name': vol, 'driver_options': options}, msrc]}
    holders = ['docker', 'ps', '-aq', '--filter', 'label=io.volumeops.holder']
    try:
        make_volume(bench, 'h1', vol)
        run_container(bench, 'h1', app, vol, script=writer)
        sh(bench, 'h2', ['mkdir', '-m', '0755', device])
        sh(bench, 'h1', ['mkdir', '-m', '0755', src_device])
        proc = bench.exec('h1', [HOST_PYTHON, '-', 'build', src_device], input=FIDELITY_SOURCE, check=False)
        assert proc.returncode == 0, proc.stderr.decode(errors='replace')
        sh(bench, 'h1', ['docker', 'volume', 'create', '-o', 'type=none', '-o', 'o=bind', '-o',
                         'device=' + src_device, msrc])

        proc = migrate(dict(extra, migrate_helper_image=''), check=True)
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert 'Source volume(s) on h1 mounted only while a container uses them' in proc.stdout, proc.stdout[-6000:]
        assert '%s (would be created: local' % vol in proc.stdout and 'set migrate_helper_image' in proc.stdout, \
            proc.stdout[-6000:]
        # An image that is not on the hosts (never pulled): named before anything stops.
        proc = migrate(dict(extra, migrate_helper_image='volumeops-test/absent:1'), check=True)
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert 'Cannot read source volume(s) %s on h1 through a holder container' % msrc in proc.stdout, \
            proc.stdout[-6000:]

        # An existing destination volume with mount options: the pre-flight looks into it through a holder
        # container (its directory on the host shows nothing). Other data there is named before anything stops.
        sh(bench, 'h1', ['docker', 'volume', 'create', taken])
        sh(bench, 'h2', ['mkdir', '-m', '0755', taken_device])
        sh(bench, 'h2', ['sh', '-c', 'echo other > "$1/precious"', 'sh', taken_device])
        sh(bench, 'h2', ['docker', 'volume', 'create', '-o', 'type=none', '-o', 'o=bind', '-o',
                         'device=' + taken_device, taken])
        proc = migrate(dict(extra, migrate_volumes=[taken]), check=True)
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert 'already exist with other data: %s.' % taken in proc.stdout, proc.stdout[-6000:]
        # Only a link named like the receiver's own directories: data too, as the transfer judges it.
        sh(bench, 'h2', ['rm', taken_device + '/precious'])
        sh(bench, 'h2', ['ln', '-s', '/etc', taken_device + '/.volumeops-old-planted'])
        proc = migrate(dict(extra, migrate_volumes=[taken]), check=True)
        assert proc.returncode != 0, proc.stdout[-6000:]
        assert 'already exist with other data: %s.' % taken in proc.stdout, proc.stdout[-6000:]
        sh(bench, 'h2', ['rm', taken_device + '/.volumeops-old-planted'])
        proc = migrate(dict(extra, migrate_volumes=[taken]), check=True)
        assert_unchanged(proc)
        assert sh(bench, 'h2', holders) == '', 'the pre-flight left its holder container'

        proc = migrate(extra, check=True)
        assert_unchanged(proc)
        assert 'Would migrate 2 volume(s) from h1 to h2 (two_phase' in proc.stdout, proc.stdout[-6000:]
        # The mounted source is sized through a holder too (its directory on the host would say 0 bytes).
        sized = re.search(r'%s -> h2:%s \(([0-9.]+) (Bytes|KB|MB|GB|TB)\)' % (msrc, msrc), proc.stdout)
        assert sized and float(sized.group(1)) > 0, proc.stdout[-6000:]
        assert volume_inspect(bench, 'h2', vol) is None and sh(bench, 'h2', ['ls', '-A', device]) == ''
        assert volume_inspect(bench, 'h2', msrc) is None

        proc = migrate(extra)
        assert_ok(proc)
        summary_ok(proc, 'h1', vol, 'h2')
        summary_ok(proc, 'h1', msrc, 'h2')
        assert not running(bench, 'h1', app)  # stopped for the final delta
        src = digest(bench, 'h1', vol)
        assert 'counter' in src['entries']
        for host, path, expected, what in (('h2', device, src, 'into the mounted volume'),
                                           ('h1', src_device, None, 'the mounted source')):
            proc_d = bench.exec(host, [HOST_PYTHON, '-', 'digest', path], input=FIDELITY_SOURCE, check=False)
            assert proc_d.returncode == 0, proc_d.stderr.decode(errors='replace')
            tree = json.loads(proc_d.stdout.decode())
            if expected is None:
                assert_same_tree(tree, digest(bench, 'h2', msrc), 'h2:%s (%s)' % (msrc, what))
            else:
                assert_same_tree(expected, tree, 'h2:%s (%s)' % (path, what))
        assert volume_inspect(bench, 'h2', vol)['Options'] == options
        assert volume_inspect(bench, 'h2', msrc)['Options'] in (None, {})
        assert marker(bench, 'h2', vol)['state'] == 'complete'
        assert sh(bench, 'h2', holders) == '' and sh(bench, 'h1', holders) == ''

        proc = migrate(extra)
        assert_unchanged(proc)
        assert len(re.findall(r'  OK \(unchanged', proc.stdout)) == 2, proc.stdout[-6000:]
        assert sh(bench, 'h2', holders) == '' and sh(bench, 'h1', holders) == ''
    finally:
        cleanup(bench, [app], [vol, msrc, taken])
        sh(bench, 'h2', ['rm', '-rf', device, taken_device], check=False)
        sh(bench, 'h1', ['rm', '-rf', src_device], check=False)


def test_sshd_enforces_the_expiry_of_the_temporary_key(bench, tmp_path):
    """What migrate_key_lifetime_hours relies on: the destination's sshd (the bench's, OpenSSH of this Debian)
    reads the expiry-time option that the role's destination program writes, in the destination's local time.
    The same key line is refused once its time has passed and accepted before it."""
    program = yaml.safe_load((REPO_ROOT / 'roles' / 'migrate' / 'vars' / 'main.yml').read_text())['migrate__dest_program']
    comment = rand('volumeops-migrate-expiry')
    key = tmp_path / 'key'
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', str(key)], check=True)
    private_on_h1 = '/tmp/%s' % comment

    def authorize(expires_in):
        args = {'tools': [], 'root': '/var/lib/docker', 'volumes': [], 'containers': [], 'host_key': False,
                'authorize': {'path': '/root/.ssh/authorized_keys', 'comment': comment, 'expires_in': expires_in,
                              'line': 'from="%s",no-pty %s' % (bench.ip('h1'), (tmp_path / 'key.pub').read_text().strip())}}
        answer = json.loads(sh(bench, 'h2', [HOST_PYTHON, '-c', program, json.dumps(args)]))
        assert answer.get('authorized') is True, answer
        assert 'expiry-time="' in authorized_keys(bench, 'h2')

    def login():
        # Only authentication is under test here, so the host key is not pinned in this one command.
        return bench.exec('h1', ['ssh', '-i', private_on_h1, '-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes',
                                 '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
                                 '-o', 'ConnectTimeout=5', 'root@' + bench.ip('h2'), 'true'], check=False).returncode
    try:
        bench.exec('h1', ['sh', '-c', 'umask 077 && cat > "$0"', private_on_h1], input=key.read_bytes())
        authorize(-120)  # expired two minutes ago
        assert login() != 0
        authorize(3600)
        assert login() == 0
    finally:
        bench.exec('h2', [HOST_PYTHON, '-c', program, json.dumps({'revoke': {'path': '/root/.ssh/authorized_keys',
                                                                             'comment': comment}})], check=False)
        bench.exec('h1', ['rm', '-f', private_on_h1], check=False)
    assert comment not in authorized_keys(bench, 'h2')


def test_role_options_exclude_extra_stop_no_stop_no_start_quiet(bench, migrate):
    """The role's pass-through options on one cold pair h1 -> h2, each checked on the hosts:
    migrate_exclude (the excluded files stay on the source only, everything else equal by the oracle),
    migrate_stop_containers (a further container stops and stays stopped after success),
    migrate_stop_using_containers=false (the container using the volume keeps running),
    migrate_start_destination=false (the same-named container on h2 is not started),
    migrate_summary=false (no summary lines), migrate_dest_address and migrate_compression_level given.
    --check first (nothing changes), then the real run, then a rerun that changes nothing."""
    tag = rand('voopt')
    vol, app, extra, other = tag + 'v', tag + 'app', tag + 'extra', tag + 'other'
    excluded = ['run.log', 'logs/b.log']
    # migrate_dest_address given as a name that only h1 resolves (its own /etc/hosts, bind-mounted in its
    # mount namespace): the temporary key's from= must be h1's address on the route to it, not 127.0.0.1.
    name_of_h2 = tag + '-h2.example'
    hosts_copy = '/tmp/%s-hosts' % tag
    try:
        sh(bench, 'h1', ['sh', '-c', 'cp /etc/hosts "$0" && echo "$1 $2" >> "$0" && mount --bind "$0" /etc/hosts',
                         hosts_copy, bench.ip('h2'), name_of_h2])
        mp = make_volume(bench, 'h1', vol)
        sh(bench, 'h1', ['sh', '-c', 'cd "$0" && echo log > run.log && mkdir logs && echo log > logs/b.log '
                         '&& echo kept > logs/kept.txt', mp])
        run_container(bench, 'h1', app, vol)
        run_container(bench, 'h1', extra, other)
        run_container(bench, 'h2', app, vol, start=False)
        extra_vars = {'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_volumes': [vol],
                      'migrate_exclude': ['*.log'], 'migrate_stop_containers': [extra],
                      'migrate_stop_using_containers': False, 'migrate_start_destination': False,
                      'migrate_summary': False, 'migrate_dest_address': name_of_h2,
                      'migrate_compression_level': 3}
        src = digest(bench, 'h1', vol)
        assert all(p in src['entries'] for p in excluded), sorted(src['entries'])[:20]

        check = migrate(extra_vars, check=True)
        assert_ok(check)
        # The volume on h2 exists (the same-named container there mounts it) and stays empty.
        assert marker(bench, 'h2', vol) is None and digest(bench, 'h2', vol)['count'] == 1
        assert running(bench, 'h1', app) and running(bench, 'h1', extra)

        real = migrate(extra_vars)
        assert_ok(real)
        dst = digest(bench, 'h2', vol)
        assert dst is not None and not any(p in dst['entries'] for p in excluded), 'excluded files were copied'
        diffs = fidelity.compare(src, dst, ignore_paths=excluded)
        assert not diffs, '\n'.join(diffs[:40])
        assert dst['count'] == src['count'] - len(excluded) and dst['count'] >= 50
        assert marker(bench, 'h2', vol)['state'] == 'complete'
        assert running(bench, 'h1', app), 'migrate_stop_using_containers=false stopped the container'
        assert not running(bench, 'h1', extra), 'the container of migrate_stop_containers still runs'
        assert not running(bench, 'h2', app), 'migrate_start_destination=false started the container'
        assert not re.search(r'h1:%s -> h2:%s' % (re.escape(vol), re.escape(vol)), real.stdout), real.stdout[-4000:]
        assert digest(bench, 'h1', vol) == src  # the source only read

        again = migrate(extra_vars)
        assert_unchanged(again)
        assert digest(bench, 'h2', vol) == dst
        assert running(bench, 'h1', app) and not running(bench, 'h2', app)
        check_again = migrate(dict(extra_vars, migrate_summary=True), check=True)
        assert_ok(check_again)
        assert re.search(r'%s -> h2:%s \([^)]*\) \(already complete for this migration' % (vol, vol), check_again.stdout), \
            check_again.stdout[-4000:]

        # The application writes on the destination after the switch-over, the source stays as it was: the
        # migration is done, a rerun copies nothing and says so, and changes nothing on either host.
        sh(bench, 'h2', ['sh', '-c', 'echo written-on-h2 > "$0/orders.db"', volume_mountpoint(bench, 'h2', vol)])
        used = digest(bench, 'h2', vol)
        done = migrate(dict(extra_vars, migrate_summary=True))
        assert_unchanged(done)
        assert re.search(r'h1:%s -> h2:%s  OK \(unchanged, already migrated, the destination written since\)'
                         % (re.escape(vol), re.escape(vol)), done.stdout), done.stdout[-4000:]
        assert digest(bench, 'h2', vol) == used and marker(bench, 'h2', vol)['state'] == 'complete'
        assert digest(bench, 'h1', vol) == src

        # The source changes too (the application started there again): both sides moved on, a rerun refuses
        # to copy the source over the destination (not "OK"), and nothing on either host changes.
        sh(bench, 'h1', ['sh', '-c', 'echo written-on-h1 > "$0/late.txt"', volume_mountpoint(bench, 'h1', vol)])
        rerun = migrate(dict(extra_vars, migrate_summary=True))
        assert rerun.returncode != 0 and rerun.recap['h1']['failed'] == 1, rerun.stdout[-4000:]
        assert re.search(r'h1:%s -> h2  FAILED  .*changed after migration' % re.escape(vol), rerun.stdout), \
            rerun.stdout[-4000:]
        assert not re.search(r'h1:%s -> h2:\S+  OK' % re.escape(vol), rerun.stdout), rerun.stdout[-4000:]
        assert digest(bench, 'h2', vol) == used and marker(bench, 'h2', vol)['state'] == 'complete'
        assert running(bench, 'h1', app) and not running(bench, 'h2', app)
    finally:
        bench.exec('h1', ['sh', '-c', 'umount /etc/hosts; rm -f "$0"', hosts_copy], check=False)
        cleanup(bench, containers=[app, extra], volumes=[vol, other])


def test_fail_at_end_false_reports_the_failed_pair_without_failing_the_play(bench, migrate, tmp_path):
    """migrate_fail_at_end=false: a pair that fails (a volume missing on the source) is in the summary as
    FAILED with its reason, the play itself succeeds, and the other pair of the same source host migrates."""
    tag = rand('vofae')
    good, missing = tag + 'good', tag + 'missing'
    try:
        make_volume(bench, 'h1', good)
        src = digest(bench, 'h1', good)
        failing_post = tmp_path / 'post-fails.yml'
        failing_post.write_text('- name: A post task that fails\n  ansible.builtin.fail:\n    msg: post-task-broke\n')
        pairs = [{'source': 'h1', 'destination': 'h2', 'volumes': [missing]},
                 {'source': 'h1', 'destination': 'h2', 'volumes': [good], 'post_tasks': str(failing_post)}]
        strict = migrate({'migrate_pairs': pairs}, check=True)
        assert strict.returncode != 0 and strict.recap['h1']['failed'] == 1, strict.stdout[-4000:]
        proc = migrate({'migrate_pairs': pairs, 'migrate_fail_at_end': False})
        assert_ok(proc)
        assert re.search(r'h1:%s -> h2  FAILED  .*Volume\(s\) not found on h1: %s' % (missing, missing), proc.stdout), \
            proc.stdout[-4000:]
        summary_ok(proc, 'h1', good, 'h2')
        # A failure beside the volumes is shown too, though it fails nothing.
        assert re.search(r'h1 -> h2  FAILED  Volumes were migrated and verified, but .*post-task-broke', proc.stdout), \
            proc.stdout[-4000:]
        assert_same_tree(src, digest(bench, 'h2', good))
        assert volume_inspect(bench, 'h2', missing) is None
    finally:
        cleanup(bench, volumes=[good, missing])


def test_temporary_key_is_restricted_to_the_source_address(bench, migrate):
    """migrate_source_address goes into the temporary key's from= restriction on the destination: with an
    address that is not the source's, the destination's sshd refuses the key (one clear failure, the source's
    container running again, the destination not complete, the key removed); with the source's own address
    the migration succeeds."""
    tag = rand('vosrc')
    vol, app = tag + 'v', tag + 'app'
    try:
        make_volume(bench, 'h1', vol)
        run_container(bench, 'h1', app, vol)
        src = digest(bench, 'h1', vol)
        keys_before = authorized_keys(bench, 'h2')
        wrong = bench.ip('h2').rsplit('.', 1)[0] + '.250'  # on the bench subnet, but no host has it
        refused = migrate({'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_volumes': [vol],
                           'migrate_source_address': wrong})
        assert refused.returncode != 0 and refused.recap['h1']['failed'] == 1, refused.stdout[-4000:]
        assert re.search(r'h1:%s -> h2  FAILED  .*Authentication' % re.escape(vol), refused.stdout), refused.stdout[-4000:]
        assert running(bench, 'h1', app)
        assert (marker(bench, 'h2', vol) or {}).get('state') != 'complete'
        assert authorized_keys(bench, 'h2') == keys_before
        assert digest(bench, 'h1', vol) == src

        ok = migrate({'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_volumes': [vol],
                      'migrate_source_address': bench.ip('h1')})
        assert_ok(ok)
        summary_ok(ok, 'h1', vol, 'h2')
        assert_same_tree(src, digest(bench, 'h2', vol))
        assert authorized_keys(bench, 'h2') == keys_before
    finally:
        cleanup(bench, containers=[app], volumes=[vol])


def test_relay_with_given_key_and_python(bench, migrate):
    """Relay mode (migrate_transfer=controller) with migrate_relay_private_key and migrate_relay_source_python
    given: a Python that does not exist on the source is one clear failure with nothing complete on the
    destination; the bench's controller key and the source's real interpreter relay the copy, equal by the
    oracle."""
    tag = rand('vorly')
    vol = tag + 'v'
    base = {'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_volumes': [vol],
            'migrate_transfer': 'controller', 'migrate_relay_private_key': bench.key}
    try:
        make_volume(bench, 'h1', vol)
        src = digest(bench, 'h1', vol)
        bad = migrate(dict(base, migrate_relay_source_python='/nonexistent/python3'))
        assert bad.returncode != 0 and bad.recap['h1']['failed'] == 1, bad.stdout[-4000:]
        assert re.search(r'h1:%s -> h2  FAILED  .*/nonexistent/python3' % re.escape(vol), bad.stdout), bad.stdout[-4000:]
        assert (marker(bench, 'h2', vol) or {}).get('state') != 'complete'
        ok = migrate(dict(base, migrate_relay_source_python=HOST_VENV_PYTHON))
        assert_ok(ok)
        assert re.search(r'h1:%s -> h2:%s  OK .*relayed by the controller' % (re.escape(vol), re.escape(vol)),
                         ok.stdout), ok.stdout[-4000:]
        assert_same_tree(src, digest(bench, 'h2', vol))
    finally:
        cleanup(bench, volumes=[vol])


def file_identity(bench, host, path):
    """(inode, mtime_ns, content) of a file on host: a rewrite (the role's temp file renamed into place)
    changes the inode even when the content ends up the same."""
    return sh(bench, host, [HOST_PYTHON, '-c', 'import os,sys; s = os.stat(sys.argv[1]); '
                            'print(s.st_ino, s.st_mtime_ns); print(open(sys.argv[1]).read())', path])


def test_dest_authorized_keys_and_docker_root_elsewhere(bench, migrate):
    """migrate_dest_authorized_keys and migrate_dest_docker_root given, on one pair h1 -> h2 with
    migrate_remove_source (the bench's sshd also reads /etc/ssh/authorized_keys.d/<user>):

    - a Docker root that does not exist on h2: the pre-flight fails with one message naming the variable,
      nothing is created on h2, the source keeps its volume;
    - the Docker root given as another path to it (a symlink) and the key file given elsewhere: the copy
      is equal by the oracle, the source volume removed, the temporary key was written to and removed from
      the given file only (the default file was never rewritten: same inode, mtime and content);
    - a rerun with the same variables finds the destination's marker under the given root: unchanged; under
      a root where it is not, the removed source is reported missing (one message), the copy left alone.
    """
    tag = rand('voalt')
    vol = tag + 'v'
    alt_root = '/srv/%s-docker' % tag
    alt_keys = '/etc/ssh/authorized_keys.d/root'
    base = {'migrate_source': 'h1', 'migrate_destination': 'h2', 'migrate_volumes': [vol],
            'migrate_remove_source': True, 'migrate_dest_authorized_keys': alt_keys}
    try:
        make_volume(bench, 'h1', vol)
        src = digest(bench, 'h1', vol)
        sh(bench, 'h2', ['ln', '-s', '/var/lib/docker', alt_root])
        default_keys = file_identity(bench, 'h2', '/root/.ssh/authorized_keys')

        wrong = migrate(dict(base, migrate_dest_docker_root='/nonexistent/docker'))
        assert wrong.returncode != 0 and wrong.recap['h1']['failed'] == 1, wrong.stdout[-4000:]
        assert re.search(r'h1:%s -> h2  FAILED  .*Cannot measure the free space on h2: /nonexistent/docker/volumes: '
                         r'.*is migrate_dest_docker_root=/nonexistent/docker the Docker data root there'
                         % re.escape(vol), wrong.stdout), wrong.stdout[-4000:]
        assert volume_inspect(bench, 'h2', vol) is None
        assert digest(bench, 'h1', vol) == src
        assert 'volumeops-migrate-' not in sh(bench, 'h2', ['cat', alt_keys], check=False)

        ok = migrate(dict(base, migrate_dest_docker_root=alt_root))
        assert_ok(ok)
        summary_ok(ok, 'h1', vol, 'h2')
        assert_same_tree(src, digest(bench, 'h2', vol))
        assert marker(bench, 'h2', vol)['state'] == 'complete'
        assert volume_inspect(bench, 'h1', vol) is None, 'migrate_remove_source kept the source volume'
        assert file_identity(bench, 'h2', '/root/.ssh/authorized_keys') == default_keys, \
            'the default authorized_keys was rewritten'
        # The role created the given file (it did not exist), and its temporary key line is gone again.
        alt = sh(bench, 'h2', ['cat', alt_keys])
        assert 'volumeops-migrate-' not in alt, alt

        again = migrate(dict(base, migrate_dest_docker_root=alt_root))
        assert_unchanged(again)
        assert len(re.findall(r'  OK \(unchanged', again.stdout)) == 1, again.stdout[-4000:]
        assert_same_tree(src, digest(bench, 'h2', vol))
        assert file_identity(bench, 'h2', '/root/.ssh/authorized_keys') == default_keys
        # ... and only there: under another root the marker is not found, so the removed source is missing.
        lost = migrate(dict(base, migrate_dest_docker_root='/nonexistent/docker'))
        assert lost.returncode != 0 and lost.recap['h1']['failed'] == 1, lost.stdout[-4000:]
        assert re.search(r'h1:%s -> h2  FAILED  .*Volume\(s\) not found on h1: %s\. With remove_source, .* only when h2 '
                         r'holds its complete copy by this migration under migrate_dest_docker_root=/nonexistent/docker'
                         % (re.escape(vol), re.escape(vol)), lost.stdout), lost.stdout[-4000:]
        assert_same_tree(src, digest(bench, 'h2', vol))
        assert marker(bench, 'h2', vol)['state'] == 'complete'
    finally:
        sh(bench, 'h2', ['rm', '-rf', alt_root, '/etc/ssh/authorized_keys.d'], check=False)
        cleanup(bench, volumes=[vol])
