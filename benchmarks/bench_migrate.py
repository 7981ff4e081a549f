# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration benchmark (issue 5 section 4), measured in one run on the multi-host bench.

The same ~1 GB mixed volume (benchmarks/datagen.py when present) on bench host h1 is moved to h2 by:

  A  the common recipe of Docker guides: `/bin/busybox tar czf` in a helper container on h1,
     scp h1 -> h2, `/bin/busybox tar xzf` in a helper container on h2;
  B  the best hand pipeline: GNU tar (full-fidelity flags) | zstd -T0 | ssh h2 'zstd -dc | tar -x ...';
  P  playbooks/migrate-volumes.yml (wall clock of ansible-playbook, as a user runs it);
  T  the volume_transfer module alone: a warm full pass (finalize=false), then 1% of the files are
     modified and the final delta pass runs (finalize=true) - the two-phase downtime. Then a rerun
     (verify=content), and a second two-phase cycle with the caches kept: a warm delta pass
     (finalize=false), another 1% modified, the final delta.

Every destination tree is compared with the source by the collection's tree fingerprint
(owners, modes, mtimes, xattrs/ACLs, link targets, sizes), so a fast but lossy copy shows as such.

Peak memory of each side: each host's sshd listener is moved into a cgroup v1 memory cgroup
(/sys/fs/cgroup/memory/<bench prefix><host>/sshd); every SSH session, Ansible module, transfer
receiver and helper container of the host (containers run under the host dockerd's cgroup parent
/<bench prefix><host>) is in that host's subtree. A sampler reads the subtree's processes every
0.1 s and sums their PSS (/proc/<pid>/smaps_rollup) and RSS; the peak sums are reported
(page cache is not counted; the daemons dockerd/containerd are not part of it).

Targets: P >= 5x faster than A; P <= 1.3x of B; final delta <= 10% of the full copy; < 200 MB per side.

  python3 benchmarks/bench_migrate.py            # ~1 GB, ~8 minutes
  python3 benchmarks/bench_migrate.py --quick    # ~60 MB smoke run
Results: benchmarks/results/migrate-<timestamp>.json (gitignored).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tests' / 'bench'))
sys.path.insert(0, str(REPO / 'benchmarks'))

from benchhosts import Bench  # noqa: E402

VENV_BIN = Path(os.environ.get('VOLUMEOPS_VENV', '/opt/volumeops/venv')) / 'bin'
IMAGE = os.environ.get('VOLUMEOPS_TEST_IMAGE', 'volumeops-test/busybox:1')
PLAYBOOK = REPO / 'playbooks' / 'migrate-volumes.yml'
RESULTS = REPO / 'benchmarks' / 'results'
MB = 1000 * 1000  # as benchmarks/datagen.py

# Full-fidelity GNU tar flags (see ../shared notes: pax keeps sub-second mtimes, xattrs incl. capabilities,
# ACLs, sparse files, numeric owners).
TAR_CREATE = "tar --format=posix --xattrs --xattrs-include='*' --acls --sparse --numeric-owner"
TAR_EXTRACT = "tar --xattrs --xattrs-include='*' --acls --numeric-owner --same-owner -p"
KEY = '/root/.ssh/bench_migrate_key'


def log(msg):
    print('[bench_migrate] %s' % msg, flush=True)


def load_tree():
    spec = importlib.util.spec_from_file_location('volumeops_tree', str(REPO / 'plugins/module_utils/_tree.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TREE = load_tree()


# --------------------------------------------------------------------------- data
def generate_tree(root, size_mb, seed):
    """Fill root with the mixed benchmark tree; datagen.py (shared with the backup benchmark) if present."""
    try:
        import datagen  # noqa: F401 (benchmarks/datagen.py, owned by the backup benchmark)
    except ImportError:
        datagen = None
    if datagen is not None and hasattr(datagen, 'generate'):
        return datagen.generate(str(root), size_mb=size_mb, seed=seed)
    return _fallback_generate(str(root), size_mb, seed)


def _fallback_generate(root, size_mb, seed):
    """Mixed tree: many small text files, medium binaries (half compressible), a few large files,
    a sparse file, hard links, symlinks, owners 999/1000, modes incl. setgid, xattrs."""
    rnd = random.Random(seed)
    total = size_mb * MB
    words = [b'alpha', b'beta', b'gamma', b'delta', b'postgres', b'volume', b'page', b'tuple', b'index',
             b'wal', b'checkpoint', b'vacuum', b'row', b'commit', b'0001', b'ffff', b'\n']
    written = 0
    n = 0

    def text(size):
        out = bytearray()
        while len(out) < size:
            out += b' '.join(rnd.choice(words) for _i in range(64)) + b'\n'
        return bytes(out[:size])

    def binary(size):
        half = size // 2
        return os.urandom(half) + text(size - half)

    budget = {'small': total * 0.15, 'medium': total * 0.45, 'large': total * 0.40}
    os.makedirs(root, exist_ok=True)
    # small files (configs, logs, a PostgreSQL-like base/ with many relation files)
    used = 0
    while used < budget['small']:
        d = os.path.join(root, 'base', '%05d' % (n // 200))
        os.makedirs(d, exist_ok=True)
        size = rnd.randint(200, 16 * 1024)
        p = os.path.join(d, 'rel_%06d' % n)
        with open(p, 'wb') as f:
            f.write(text(size))
        os.chown(p, 999, 999)
        os.chmod(p, 0o600)
        used += size
        n += 1
    written += used
    used = 0
    while used < budget['medium']:
        d = os.path.join(root, 'media', '%03d' % (n // 50))
        os.makedirs(d, exist_ok=True)
        size = rnd.randint(256 * 1024, 4 * MB)
        p = os.path.join(d, 'blob_%06d.bin' % n)
        with open(p, 'wb') as f:
            f.write(binary(size))
        os.chown(p, 1000, 1000)
        used += size
        n += 1
    written += used
    used = 0
    os.makedirs(os.path.join(root, 'large'), exist_ok=True)
    i = 0
    while used < budget['large']:
        size = min(64 * MB, int(budget['large'] - used) + 1)
        p = os.path.join(root, 'large', 'segment_%02d' % i)
        with open(p, 'wb') as f:
            left = size
            while left > 0:
                chunk = min(left, 4 * MB)
                f.write(binary(chunk) if i % 2 else text(chunk))
                left -= chunk
        used += size
        i += 1
        n += 1
    written += used
    # special entries
    with open(os.path.join(root, 'large', 'sparse.img'), 'wb') as f:
        f.seek(256 * MB if size_mb >= 512 else 16 * MB)
        f.write(b'end')
    os.link(os.path.join(root, 'large', 'segment_00'), os.path.join(root, 'large', 'segment_00.hardlink'))
    os.symlink('base/00000/rel_000000', os.path.join(root, 'current'))
    os.symlink('/nonexistent/target', os.path.join(root, 'dangling'))
    conf = os.path.join(root, 'conf')
    os.makedirs(conf, exist_ok=True)
    os.chmod(conf, 0o2750)
    os.chown(conf, 999, 999)
    with open(os.path.join(conf, 'app.conf'), 'wb') as f:
        f.write(text(4000))
    os.setxattr(os.path.join(conf, 'app.conf'), 'user.volumeops', b'bench')
    os.chown(root, 999, 999)
    os.chmod(root, 0o700)
    return {'files': n, 'bytes': written, 'generator': 'bench_migrate fallback'}


def modify_fraction(root, fraction, seed):
    """Modify `fraction` of the regular files (datagen.modify when present); returns (changed, total)."""
    try:
        import datagen
    except ImportError:
        datagen = None
    if datagen is not None and hasattr(datagen, 'modify'):
        total = sum(1 for dirpath, _d, names in os.walk(root) for n in names
                    if os.path.isfile(os.path.join(dirpath, n)) and not os.path.islink(os.path.join(dirpath, n)))
        res = datagen.modify(root, percent=fraction * 100.0, seed=seed)
        return len(res['modified']), total
    files = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                files.append(p)
    files.sort()
    rnd = random.Random(seed)
    chosen = rnd.sample(files, max(1, int(len(files) * fraction)))
    for p in chosen:
        with open(p, 'r+b') as f:
            f.seek(0, os.SEEK_END)
            f.write(b'\nmodified by bench_migrate %d\n' % rnd.randint(0, 10 ** 9))
    return len(chosen), len(files)


FIELDS = ('path', 'type', 'size', 'mtime_ns', 'mode', 'uid', 'gid', 'link_or_dev')


def tree_differences(src_root, dst_root, limit=5):
    """Which fingerprinted properties a copy lost: counts per field and a few examples."""
    def records(root):
        return {e.relpath: TREE.entry_record(e).split(b'\0') for e in TREE.walk(root.encode())}
    a, b = records(src_root), records(dst_root)
    counts = {}
    examples = []
    for rel in sorted(set(a) | set(b)):
        if rel not in b or rel not in a:
            key = 'missing' if rel not in b else 'extra'
            counts[key] = counts.get(key, 0) + 1
            if len(examples) < limit:
                examples.append('%s %s' % (key, rel.decode(errors='replace')))
            continue
        ra, rb = a[rel], b[rel]
        for i, name in enumerate(FIELDS[1:], 1):
            if ra[i] != rb[i]:
                counts[name] = counts.get(name, 0) + 1
                if len(examples) < limit:
                    examples.append('%s %s: %s -> %s' % (name, rel.decode(errors='replace'),
                                                         ra[i].decode(errors='replace'),
                                                         rb[i].decode(errors='replace')))
        if ra[len(FIELDS):] != rb[len(FIELDS):]:
            counts['xattrs_acls'] = counts.get('xattrs_acls', 0) + 1
            if len(examples) < limit:
                examples.append('xattrs %s' % rel.decode(errors='replace'))
    return {'entries_differing_by_property': counts, 'examples': examples}


# --------------------------------------------------------------------------- memory
class MemSampler(threading.Thread):
    """Peak PSS/RSS sums of the processes in each host's memory cgroup subtree, sampled every 0.1 s."""

    def __init__(self, cgroups, interval=0.1):
        super().__init__(daemon=True)
        self.cgroups = cgroups  # {host: cgroup dir}
        self.interval = interval
        self._halt = threading.Event()
        self.peak = {h: {'pss_mb': 0.0, 'rss_mb': 0.0, 'max_process': '', 'max_process_rss_mb': 0.0, 'samples': 0}
                     for h in cgroups}

    @staticmethod
    def _pids(cg):
        pids = set()
        for dirpath, _dirs, _files in os.walk(cg):
            try:
                with open(os.path.join(dirpath, 'cgroup.procs')) as f:
                    pids.update(int(x) for x in f.read().split())
            except OSError:
                pass
        return pids

    @staticmethod
    def _mem(pid):
        rss = pss = 0
        try:
            with open('/proc/%d/smaps_rollup' % pid) as f:
                for line in f:
                    if line.startswith('Rss:'):
                        rss = int(line.split()[1])
                    elif line.startswith('Pss:'):
                        pss = int(line.split()[1])
        except OSError:
            return 0, 0, ''
        try:
            with open('/proc/%d/comm' % pid) as f:
                comm = f.read().strip()
        except OSError:
            comm = '?'
        return rss / 1024.0, pss / 1024.0, comm

    def run(self):
        while not self._halt.is_set():
            for host, cg in self.cgroups.items():
                rss_sum = pss_sum = 0.0
                peak = self.peak[host]
                for pid in self._pids(cg):
                    rss, pss, comm = self._mem(pid)
                    rss_sum += rss
                    pss_sum += pss
                    if rss > peak['max_process_rss_mb']:
                        peak['max_process_rss_mb'] = round(rss, 1)
                        peak['max_process'] = comm
                peak['pss_mb'] = round(max(peak['pss_mb'], pss_sum), 1)
                peak['rss_mb'] = round(max(peak['rss_mb'], rss_sum), 1)
                peak['samples'] += 1
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()
        return self.peak


def track_host_memory(bench, host):
    """Move the host's sshd listener into <memory>/<prefix><host>/sshd; returns the host's subtree.

    Commands the benchmark runs directly in a host (baselines) go to <subtree>/exec; helper containers
    are in <subtree>/<container id> (the host dockerd's cgroup parent)."""
    base = '/sys/fs/cgroup/memory/%s%s' % (bench.prefix, host)
    os.makedirs(base + '/sshd', exist_ok=True)
    os.makedirs(base + '/exec', exist_ok=True)
    for pid in bench.sshd_pids(host):
        with open(base + '/sshd/cgroup.procs', 'w') as f:
            f.write(str(pid))
    return base


# --------------------------------------------------------------------------- helpers
class Runner:
    def __init__(self, bench, cgroups, results):
        self.bench = bench
        self.cgroups = cgroups
        self.results = results

    def root_of(self, host, volume):
        """The volume's data dir as seen from the controller (through the host's mount namespace)."""
        return '/proc/%d/root/var/lib/docker/volumes/%s/_data' % (self.bench.init_pid(host), volume)

    def run(self, host, argv, timeout=7200, **kwargs):
        """Run argv in host inside the host's memory cgroup subtree (<subtree>/exec), so the sampler sees it."""
        procs = os.path.join(self.cgroups[host], 'exec', 'cgroup.procs')
        return self.bench.exec(host, ['sh', '-c', 'echo $$ > "$0" && exec "$@"', procs] + list(argv),
                               timeout=timeout, **kwargs)

    def sh(self, host, script, timeout=7200):
        """A fixed benchmark script (only generated names in it) run with bash -o pipefail in host."""
        return self.run(host, ['bash', '-o', 'pipefail', '-c', script], timeout=timeout)

    def fp(self, host, volume):
        s = TREE.fingerprint(self.root_of(host, volume).encode())
        return {'fingerprint': s.fingerprint, 'entries': s.entries, 'bytes': s.bytes}

    def drop_caches(self):
        try:
            subprocess.run(['sync'], check=True)
            with open('/proc/sys/vm/drop_caches', 'w') as f:
                f.write('3\n')
            return True
        except OSError:
            return False

    def timed(self, name, fn, cold=True):
        """Run fn (after dropping the page caches unless cold=False) and record time and peak memory."""
        cold = self.drop_caches() if cold else False
        sampler = MemSampler(self.cgroups)
        sampler.start()
        t0 = time.monotonic()
        try:
            extra = fn() or {}
        finally:
            seconds = time.monotonic() - t0
            mem = sampler.stop()
        res = {'seconds': round(seconds, 2), 'memory_peak': mem, 'caches_dropped': cold}
        res.update(extra)
        self.results['phases'][name] = res
        log('%s: %.1fs  mem h1 %.0f MB / h2 %.0f MB (PSS peak)' % (
            name, seconds, mem['h1']['pss_mb'], mem['h2']['pss_mb']))
        return res


def parse_adhoc(output):
    results = {}
    decoder = json.JSONDecoder()
    for m in re.finditer(r'^(\S+) \| (SUCCESS|CHANGED|FAILED!|UNREACHABLE!) => ', output, re.M):
        results[m.group(1)] = (m.group(2), decoder.raw_decode(output, m.end())[0])
    return results


def ansible_env(collections_dir):
    env = dict(os.environ)
    env.update({
        'PATH': '%s:%s' % (VENV_BIN, env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')),
        'ANSIBLE_COLLECTIONS_PATH': collections_dir,
        'ANSIBLE_ROLES_PATH': str(REPO / 'roles'),
        'ANSIBLE_HOST_KEY_CHECKING': 'True',
        'ANSIBLE_RETRY_FILES_ENABLED': 'False',
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_DEPRECATION_WARNINGS': 'False',
    })
    env.pop('DOCKER_HOST', None)
    return env


def collections_dir():
    """(path, made_here): a collections dir holding this checkout; made_here says whether to remove it."""
    if REPO.parent.name == 'volumeops' and REPO.parent.parent.name == 'ansible_collections':
        # Already installed in a collections tree (e.g. the test suite's copy): use it, never remove it.
        return str(REPO.parent.parent.parent), False
    base = tempfile.mkdtemp(prefix='vo-bench-coll-')
    os.makedirs(os.path.join(base, 'ansible_collections', 'volumeops'))
    os.symlink(str(REPO), os.path.join(base, 'ansible_collections', 'volumeops', 'docker'))
    return base, True


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description='Migration benchmark on the multi-host bench (issue 5 section 4).')
    ap.add_argument('--quick', action='store_true', help='small smoke run (~60 MB)')
    ap.add_argument('--size-mb', type=int,
                    help='volume size in MB of 10^6 bytes (default 1000 as the backup benchmark, --quick 60)')
    ap.add_argument('--state-dir', default='/var/lib/volumeops-bench-perf')
    ap.add_argument('--net', type=int, default=76, help='bench subnet 10.N.0.0/24 (default 76: apart from the test bench)')
    ap.add_argument('--keep', action='store_true', help='leave the bench up afterwards')
    ap.add_argument('--skip', action='append', default=[], choices=['A', 'B', 'P', 'T'], help='skip a method')
    ap.add_argument('--seed', type=int, default=20250)
    ap.add_argument('--output', help='results JSON path (default benchmarks/results/migrate-<time>.json)')
    args = ap.parse_args(argv)
    size_mb = args.size_mb or (60 if args.quick else 1000)

    bench = Bench(args.state_dir, net=args.net)
    started = datetime.datetime.now(datetime.timezone.utc)
    log('bringing up 2 bench hosts (%s, net %d)' % (args.state_dir, args.net))
    bench.up(2)
    coll, coll_made_here = collections_dir()
    env = ansible_env(coll)
    results = {'started': started.isoformat(), 'size_mb_requested': size_mb, 'quick': args.quick,
               'machine': {'cpus': os.cpu_count(), 'kernel': os.uname().release}}
    try:
        cgroups = {h: track_host_memory(bench, h) for h in ('h1', 'h2')}
        results['phases'] = {}
        r = Runner(bench, cgroups, results)
        src = 'vobsrc%06d' % random.randint(0, 999999)
        bench.exec('h1', ['docker', 'volume', 'create', src])
        log('generating ~%d MB mixed tree in volume %s on h1' % (size_mb, src))
        t0 = time.monotonic()
        results['data'] = generate_tree(r.root_of('h1', src), size_mb, args.seed)
        results['data']['generate_seconds'] = round(time.monotonic() - t0, 1)
        src_fp = r.fp('h1', src)
        results['source'] = src_fp
        log('source: %d entries, %.1f MB' % (src_fp['entries'], src_fp['bytes'] / MB))

        # h1's own key for h2 (baselines and the module-level two-phase run), h2's key pinned on h1.
        bench.exec('h1', ['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', KEY])
        pub = bench.exec('h1', ['cat', KEY + '.pub']).stdout
        bench.exec('h2', ['sh', '-c', 'cat >> /root/.ssh/authorized_keys'], input=pub)
        bench.exec('h1', ['sh', '-c', 'cat >> /root/.ssh/known_hosts'],
                   input=('%s %s\n' % (bench.ip('h2'), bench.host_key('h2'))).encode())
        ssh = 'ssh -i %s -o StrictHostKeyChecking=yes -o BatchMode=yes root@%s' % (KEY, bench.ip('h2'))

        def check_dest(volume):
            fp = r.fp('h2', volume)
            res = {'dest': fp, 'identical': fp['fingerprint'] == src_fp['fingerprint']}
            if not res['identical']:
                res['lost'] = tree_differences(r.root_of('h1', src), r.root_of('h2', volume))
                log('  destination differs from the source: %s' % res['lost']['entries_differing_by_property'])
            return res

        if 'A' not in args.skip:
            dst = 'vobA%06d' % random.randint(0, 999999)

            def baseline_a():
                bench.exec('h2', ['docker', 'volume', 'create', dst])
                steps = {}
                t = time.monotonic()
                bench.exec('h1', ['mkdir', '-p', '/tmp/bench-a'])
                r.run('h1', ['docker', 'run', '--rm', '--network', 'none', '-v', '%s:/data:ro' % src,
                             '-v', '/tmp/bench-a:/backup', IMAGE,
                             '/bin/busybox', 'tar', 'czf', '/backup/vol.tgz', '-C', '/data', '.'])
                steps['tar_czf'] = round(time.monotonic() - t, 2)
                t = time.monotonic()
                bench.exec('h2', ['mkdir', '-p', '/tmp/bench-a'])
                r.run('h1', ['scp', '-q', '-i', KEY, '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes',
                             '/tmp/bench-a/vol.tgz', 'root@%s:/tmp/bench-a/vol.tgz' % bench.ip('h2')])
                steps['scp'] = round(time.monotonic() - t, 2)
                t = time.monotonic()
                r.run('h2', ['docker', 'run', '--rm', '--network', 'none', '-v', '%s:/data' % dst,
                             '-v', '/tmp/bench-a:/backup', IMAGE,
                             '/bin/busybox', 'tar', 'xzf', '/backup/vol.tgz', '-C', '/data'])
                steps['tar_xzf'] = round(time.monotonic() - t, 2)
                size = os.path.getsize('/proc/%d/root/tmp/bench-a/vol.tgz' % bench.init_pid('h1'))
                return {'steps': steps, 'archive_bytes': size}

            res = r.timed('A_tar_gzip_scp', baseline_a)
            res.update(check_dest(dst))
            for h in ('h1', 'h2'):
                bench.exec(h, ['rm', '-rf', '/tmp/bench-a'])
            bench.exec('h2', ['docker', 'volume', 'rm', dst])

        if 'B' not in args.skip:
            dst = 'vobB%06d' % random.randint(0, 999999)
            bench.exec('h2', ['docker', 'volume', 'create', dst])
            script = ("%s -C /var/lib/docker/volumes/%s/_data -cf - . | zstd -T0 -3 -q -c | "
                      "%s \"zstd -dcq | %s -xf - -C /var/lib/docker/volumes/%s/_data\""
                      % (TAR_CREATE, src, ssh, TAR_EXTRACT, dst))

            def baseline_b():
                r.sh('h1', script)
                return {'command': script}

            res = r.timed('B_tar_zstd_ssh', baseline_b)
            # The module's final pass waits until the tree is on the destination's disk (syncfs) before
            # it marks the volume complete; B's tar returns with the data still in the page cache. Also
            # recorded: B until its data is written back, the figure to compare durability with.
            t = time.monotonic()
            r.run('h2', ['sync', '-f', '/var/lib/docker/volumes/%s/_data' % dst])
            res['written_back_seconds'] = round(res['seconds'] + time.monotonic() - t, 2)
            res.update(check_dest(dst))
            bench.exec('h2', ['docker', 'volume', 'rm', dst])

        if 'P' not in args.skip:
            if PLAYBOOK.exists():
                def playbook():
                    argv = [str(VENV_BIN / 'ansible-playbook'), str(PLAYBOOK), '-i', bench.inventory,
                            '-e', 'migrate_source=h1', '-e', 'migrate_destination=h2',
                            '-e', json.dumps({'migrate_volumes': [src]})]
                    times_file = tempfile.NamedTemporaryFile(prefix='vo-bench-tasks-', suffix='.json', delete=False)
                    times_file.close()
                    # Per-task times (benchmarks/callbacks): where the playbook's time goes.
                    timed_env = dict(env, VOLUMEOPS_TASK_TIMES=times_file.name,
                                     ANSIBLE_CALLBACK_PLUGINS=str(REPO / 'benchmarks' / 'callbacks'),
                                     ANSIBLE_CALLBACKS_ENABLED='volumeops_task_times')
                    proc = subprocess.run(argv, check=False, env=timed_env, cwd=str(REPO), text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=7200)
                    try:
                        with open(times_file.name) as f:
                            task_times = json.load(f)
                    except ValueError:
                        task_times = {'tasks': [], 'since_start': None}
                    finally:
                        os.unlink(times_file.name)
                    RESULTS.mkdir(parents=True, exist_ok=True)
                    logfile = RESULTS / ('migrate-%s-playbook.log' % started.strftime('%Y%m%dT%H%M%SZ'))
                    with open(logfile, 'w') as f:
                        f.write(proc.stdout)
                    if proc.returncode != 0:
                        raise RuntimeError('playbook failed rc=%d:\n%s' % (proc.returncode, proc.stdout[-4000:]))
                    recap = proc.stdout[proc.stdout.rfind('PLAY RECAP'):]
                    tasks = task_times['tasks']
                    slow = [t for t in tasks if t['seconds'] >= 0.2]
                    quick = [t for t in tasks if t['seconds'] < 0.2]
                    return {'command': ' '.join(argv), 'recap': recap.strip(), 'log': str(logfile),
                            'tasks': {'count': len(tasks), 'slow': slow,
                                      'quick_count': len(quick),
                                      'quick_seconds': round(sum(t['seconds'] for t in quick), 2),
                                      'playbook_since_start': task_times['since_start']}}
                try:
                    res = r.timed('P_playbook_full', playbook)
                    res.update(check_dest(src))
                except Exception as exc:  # record and go on: the baselines are still worth reporting
                    results['phases']['P_playbook_full'] = {'error': str(exc)[-4000:]}
                    log('playbook run failed: %s' % str(exc)[:2000])
            else:
                results['phases']['P_playbook_full'] = {'error': 'playbooks/migrate-volumes.yml does not exist yet'}

        if 'T' not in args.skip:
            run_two_phase(bench, r, env, src, src_fp, args)

        summarize(results)
    finally:
        results['finished'] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = 'migrate-%s%s.json' % (started.strftime('%Y%m%dT%H%M%SZ'), '-quick' if args.quick else '')
        out = args.output or RESULTS / name
        with open(out, 'w') as f:
            json.dump(results, f, indent=2, sort_keys=True)
        log('results written to %s' % out)
        if not args.keep:
            bench.down()
        if coll_made_here:
            shutil.rmtree(coll, ignore_errors=True)
    failed = sorted(k for k, v in results['phases'].items() if 'error' in v)
    if failed:
        log('phases that failed: %s' % ', '.join(failed))
        return 1
    return 0


def run_two_phase(bench, r, env, src, src_fp, args):
    """volume_transfer alone: warm full pass (not finalized), modify 1% of files, final delta pass."""
    results = r.results
    module = REPO / 'plugins' / 'modules' / 'volume_transfer.py'
    if not module.exists():
        results['phases']['T_full_warm'] = {'error': 'plugins/modules/volume_transfer.py does not exist yet'}
        return
    dst = 'vobT%06d' % random.randint(0, 999999)
    mig = 'bench-%06d' % random.randint(0, 999999)
    base = {'volume': src, 'dest_volume': dst, 'dest_host': bench.ip('h2'),
            'dest_host_key': bench.host_key('h2'), 'private_key': KEY, 'migration_id': mig}

    def transfer(params):
        def go():
            argv = [str(VENV_BIN / 'ansible'), 'h1', '-i', bench.inventory, '-m', 'volumeops.docker.volume_transfer',
                    '-a', json.dumps(params)]
            proc = subprocess.run(argv, check=False, env=env, cwd=str(REPO), text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=7200)
            res = parse_adhoc(proc.stdout).get('h1')
            if proc.returncode != 0 or not res or res[0] not in ('SUCCESS', 'CHANGED'):
                raise RuntimeError('volume_transfer failed rc=%d:\n%s' % (proc.returncode, proc.stdout[-3000:]))
            out = res[1]
            keys = ('duration', 'bytes', 'bytes_sent', 'entries', 'sent_entries', 'deleted', 'replaced', 'mb_per_s',
                    'verified', 'dest_state', 'changed', 'source_recheck', 'dest_records_reused',
                    'streamed_beside_walk', 'dest_records_kept', 'dest_records_rewalked')
            return {'module': {k: out.get(k) for k in keys}}
        return go

    try:
        r.timed('T_full_warm', transfer(dict(base, **{'pass': 'full', 'finalize': False})))
        t0 = time.monotonic()
        changed, total = modify_fraction(r.root_of('h1', src), 0.01, args.seed + 1)
        results['modified_files'] = {'changed': changed, 'of': total,
                                     'seconds': round(time.monotonic() - t0, 2)}
        new_fp = r.fp('h1', src)
        res = r.timed('T_final_delta', transfer(dict(base, **{'pass': 'delta', 'finalize': True})))
        dest = r.fp('h2', dst)
        res.update({'dest': dest, 'identical': dest['fingerprint'] == new_fp['fingerprint']})
        again = dict(base, **{'pass': 'delta', 'finalize': True, 'verify': 'content'})
        res_c = r.timed('T_final_delta_again_content', transfer(again))
        res_c['note'] = 'rerun after completion: must send nothing (idempotency), verify=content'
        # A two-phase migration runs its final delta right after the warm pass and the application's
        # stop: the trees' metadata is still in the page cache, and the destination is staged (not
        # complete). So: the application writes (1%), a warm pass (a delta, not finalized) copies that,
        # the application writes another 1% until it stops, then the final delta runs with the caches
        # left as they are.
        modify_fraction(r.root_of('h1', src), 0.01, args.seed + 3)
        r.timed('T_warm_delta_before_final', transfer(dict(base, **{'pass': 'delta', 'finalize': False})),
                cold=False)
        changed, total = modify_fraction(r.root_of('h1', src), 0.01, args.seed + 2)
        results['modified_files_warm'] = {'changed': changed, 'of': total}
        time.sleep(2.5)  # as after an application stop: the last writes are seconds old
        res_w = r.timed('T_final_delta_warm_cache', transfer(dict(base, **{'pass': 'delta', 'finalize': True})),
                        cold=False)
        new_fp = r.fp('h1', src)
        dest = r.fp('h2', dst)
        res_w.update({'dest': dest, 'identical': dest['fingerprint'] == new_fp['fingerprint'],
                      'note': 'final delta onto the staged destination a warm pass left, caches as they were'})
    except Exception as exc:
        results['phases'].setdefault('T_error', {})['error'] = str(exc)[-4000:]
        log('two-phase run failed: %s' % str(exc)[:2000])
    finally:
        bench.exec('h2', ['docker', 'volume', 'rm', '-f', dst], check=False)


def _ratio(a, b):
    return round(a / b, 2) if a and b else None


def summarize(results):
    ph = results['phases']
    sec = {k: v.get('seconds') for k, v in ph.items() if isinstance(v, dict) and 'seconds' in v}
    a, b, p = sec.get('A_tar_gzip_scp'), sec.get('B_tar_zstd_ssh'), sec.get('P_playbook_full')
    tf, td = sec.get('T_full_warm'), sec.get('T_final_delta')
    b_synced = ph.get('B_tar_zstd_ssh', {}).get('written_back_seconds')
    mod_full = (ph.get('T_full_warm', {}).get('module') or {}).get('duration')
    mod_delta = (ph.get('T_final_delta', {}).get('module') or {}).get('duration')
    tdw = sec.get('T_final_delta_warm_cache')
    mod_delta_warm = (ph.get('T_final_delta_warm_cache', {}).get('module') or {}).get('duration')
    peak = {}
    for name, v in ph.items():
        for h, m in (v.get('memory_peak') or {}).items():
            if name.startswith(('P_', 'T_')):
                peak[h] = max(peak.get(h, 0), m['pss_mb'])
    targets = {
        'playbook_speedup_vs_A': {'value': _ratio(a, p), 'target': '>= 5', 'ok': bool(a and p and a / p >= 5)},
        'playbook_vs_B': {'value': _ratio(p, b), 'target': '<= 1.3', 'ok': bool(p and b and p / b <= 1.3)},
        'playbook_vs_B_written_back': {'value': _ratio(p, b_synced), 'target': '<= 1.3 (informative)',
                                       'ok': bool(p and b_synced and p / b_synced <= 1.3)},
        'module_full_vs_B': {'value': _ratio(tf, b), 'target': '<= 1.3 (informative)',
                             'ok': bool(tf and b and tf / b <= 1.3)},
        'delta_vs_full': {'value': _ratio(td, tf), 'target': '<= 0.10', 'ok': bool(td and tf and td / tf <= 0.10)},
        'delta_vs_full_module_duration': {'value': _ratio(mod_delta, mod_full), 'target': '<= 0.10 (informative)',
                                          'ok': bool(mod_delta and mod_full and mod_delta / mod_full <= 0.10)},
        'delta_warm_cache_vs_full': {'value': _ratio(tdw, tf), 'target': '<= 0.10 (caches kept)',
                                     'ok': bool(tdw and tf and tdw / tf <= 0.10)},
        'delta_warm_cache_vs_full_module_duration': {
            'value': _ratio(mod_delta_warm, mod_full), 'target': '<= 0.10 (caches kept, informative)',
            'ok': bool(mod_delta_warm and mod_full and mod_delta_warm / mod_full <= 0.10)},
        'peak_memory_mb_per_side': {'value': peak or None, 'target': '< 200',
                                    'ok': bool(peak) and all(v < 200 for v in peak.values())},
    }
    results['targets'] = targets
    src = results.get('source', {})
    print()
    print('Migration benchmark: %.1f MB, %s entries' % (src.get('bytes', 0) / MB, src.get('entries')))
    print('%-30s %9s %9s %10s %10s  %s' % ('method', 'seconds', 'MB/s', 'h1 PSS MB', 'h2 PSS MB', 'identical tree'))
    for name, v in ph.items():
        if 'seconds' not in v:
            print('%-30s %s' % (name, v.get('error', '')[:200]))
            continue
        mem = v.get('memory_peak', {})
        print('%-30s %9.1f %9.1f %10.0f %10.0f  %s' % (
            name, v['seconds'], src.get('bytes', 0) / MB / v['seconds'] if v['seconds'] else 0,
            mem.get('h1', {}).get('pss_mb', 0), mem.get('h2', {}).get('pss_mb', 0), v.get('identical', '-')))
    tasks = ph.get('P_playbook_full', {}).get('tasks')
    if tasks:
        print()
        print('Playbook: %d tasks; %d under 0.2 s took %.1f s together; the others:' % (
            tasks['count'], tasks['quick_count'], tasks['quick_seconds']))
        for t in tasks['slow']:
            print('  %6.2f s  %s' % (t['seconds'], t['task']))
    print()
    for k, t in targets.items():
        print('%-32s %-14s target %-22s %s' % (k, t['value'], t['target'], 'OK' if t['ok'] else 'MISSED'))
    return targets


if __name__ == '__main__':
    sys.exit(main())
