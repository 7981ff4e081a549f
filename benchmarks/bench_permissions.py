# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_permissions benchmark (issue 4, "Scale").

Creates its own Docker volume (random name, removed at the end) holding N files (default 200,000) in
N/1000 directories, owned 0:0, files 0644, directories 0755. Then, with a warm page cache, alternating
the tool and its baseline and taking the median of --repeat rounds (the machine is shared):

  no-op      the module with owner 0, group 0, dir_mode u=rwX,g=rX,o=rX, file_mode u=rw,g=r,o=r
             (everything already matches, changed=false)
             vs  find <mountpoint> -printf '%U %G %m\\n' >/dev/null               target <= 2x
  re-own     the module with owner 1000, group 1000, dir_mode/file_mode u=rwX,g=rX,o= (every entry
             changes owner, group and mode)
             vs  chown -R 1000:1000 <mp> && chmod -R u=rwX,g=rX,o= <mp>           target <= 2x
             (the tree is reset to 0:0 0755/0644 before each timed run, untimed)

The module is timed the way a user runs it without a controller: a direct module invocation
(`python -m ansible_collections.volumeops.docker.plugins.modules.volume_permissions args.json`,
the collection copied into an ansible_collections tree), so the wall time includes interpreter start,
AnsibleModule and docker SDK import, the Docker API calls and the walk. With --playbook, an
ansible-playbook run of the same task is timed too (it adds the controller's fixed start-up cost).

  python3 benchmarks/bench_permissions.py [--files 200000] [--repeat 3] [--playbook]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get('VOLUMEOPS_VENV', '/opt/volumeops/venv'))
PY = str(VENV / 'bin' / 'python')
MODULE = 'ansible_collections.volumeops.docker.plugins.modules.volume_permissions'


def sh(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


CPU = {}


def timed(argv, label=None, **kw):
    """Wall seconds and stdout of ``argv``; its CPU seconds (user+sys, with all its descendants) go to CPU[label]."""
    start, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False, **kw)
    elapsed = time.perf_counter() - start
    if label:
        CPU.setdefault(label, []).append(_children_cpu() - cpu)
    if proc.returncode != 0:
        raise SystemExit('%s failed (%d): %s %s' % (argv[:3], proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
    return elapsed, proc.stdout


def populate(mountpoint, files):
    per_dir = 1000
    for d in range((files + per_dir - 1) // per_dir):
        dpath = os.path.join(mountpoint, 'd%04d' % d)
        os.mkdir(dpath, 0o755)
        for i in range(min(per_dir, files - d * per_dir)):
            fd = os.open(os.path.join(dpath, 'f%04d' % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
    os.chmod(mountpoint, 0o755)


def reset(mountpoint):
    sh(['chown', '-R', '0:0', mountpoint])
    sh(['chmod', '-R', 'u=rwX,g=rX,o=rX', mountpoint])


def module_runner(workdir, args):
    """argv running the module directly with ``args``."""
    path = os.path.join(workdir, 'args-%s.json' % uuid.uuid4().hex[:8])
    with open(path, 'w') as f:
        json.dump({'ANSIBLE_MODULE_ARGS': args}, f)
    return [PY, '-m', MODULE, path]


def playbook_runner(workdir, args):
    path = os.path.join(workdir, 'play-%s.yml' % uuid.uuid4().hex[:8])
    task = {'volumeops.docker.volume_permissions': args}
    with open(path, 'w') as f:
        json.dump([{'hosts': 'localhost', 'gather_facts': False, 'connection': 'local', 'tasks': [task]}], f)
    return [str(VENV / 'bin' / 'ansible-playbook'), '-i', 'localhost,', '-e', 'ansible_python_interpreter=' + PY, path]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--files', type=int, default=200000)
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--playbook', action='store_true', help='also time ansible-playbook runs')
    ap.add_argument('--workers', type=int, default=0, help='workers option of the module (0: automatic)')
    opts = ap.parse_args()

    work = tempfile.mkdtemp(prefix='vo-bench-perm-')
    coll_root = os.path.join(work, 'coll')
    sh([str(REPO / 'scripts' / 'lib' / 'collection-copy.sh'), coll_root])
    env = dict(os.environ, PYTHONPATH=coll_root, ANSIBLE_COLLECTIONS_PATH=coll_root,
               PATH='%s:%s' % (VENV / 'bin', os.environ.get('PATH', '')))
    volume = 'vobenchperm%s' % uuid.uuid4().hex[:8]
    sh(['docker', 'volume', 'create', '--label', 'volumeops.bench=permissions', volume])
    try:
        mp = sh(['docker', 'volume', 'inspect', '-f', '{{.Mountpoint}}', volume]).stdout.strip()
        t0 = time.perf_counter()
        populate(mp, opts.files)
        entries = int(sh(['find', mp, '-printf', '.']).stdout.count('.'))
        print('volume %s: %d entries created in %.1fs' % (volume, entries, time.perf_counter() - t0))

        noop_args = dict(volume=volume, owner=0, group=0, recurse=True, workers=opts.workers,
                         dir_mode='u=rwX,g=rX,o=rX', file_mode='u=rw,g=r,o=r')
        reown_args = dict(volume=volume, owner=1000, group=1000, recurse=True, workers=opts.workers,
                          dir_mode='u=rwX,g=rX,o=', file_mode='u=rwX,g=rX,o=')
        find_cmd = ['sh', '-c', 'find "$1" -printf \'%U %G %m\\n\' >/dev/null', 'find', mp]
        base_reown = ['sh', '-c', 'chown -R 1000:1000 "$1" && chmod -R u=rwX,g=rX,o= "$1"', 'base', mp]

        reset(mp)
        timed(find_cmd)  # warm the cache
        res = dict(noop_module=[], noop_find=[], reown_module=[], reown_base=[], noop_playbook=[],
                   reown_playbook=[])
        for r in range(opts.repeat):
            res['noop_find'].append(timed(find_cmd, 'noop_find')[0])
            t, out = timed(module_runner(work, noop_args), 'noop_module', env=env, cwd=work)
            result = json.loads(out)
            assert result['changed'] is False and result['examined'] == entries, result
            res['noop_module'].append(t)

            reset(mp)
            res['reown_base'].append(timed(base_reown, 'reown_base')[0])
            reset(mp)
            t, out = timed(module_runner(work, reown_args), 'reown_module', env=env, cwd=work)
            result = json.loads(out)
            assert result['changed'] is True and result['changed_entries'] == entries, \
                {k: result.get(k) for k in ('msg', 'changed_entries', 'examined')}
            res['reown_module'].append(t)
            check = sh(['find', mp, '-not', '-user', '1000', '-printf', '.']).stdout
            assert check == '', 'entries not re-owned: %d' % len(check)
            reset(mp)
            if opts.playbook:
                res['noop_playbook'].append(timed(playbook_runner(work, noop_args), env=env, cwd=work)[0])
                reset(mp)
                res['reown_playbook'].append(timed(playbook_runner(work, reown_args), env=env, cwd=work)[0])
                reset(mp)
            print('round %d: %s' % (r + 1, ', '.join('%s %.2fs' % (k, v[-1]) for k, v in res.items() if v)))
            sys.stdout.flush()

        med = {k: statistics.median(v) for k, v in res.items() if v}
        print()
        print('entries: %d (files %d), median of %d rounds, warm cache, %d CPUs, load avg %s'
              % (entries, opts.files, opts.repeat, os.cpu_count(), ' '.join('%.2f' % x for x in os.getloadavg())))
        print('no-op : module %.2fs  vs find -printf %.2fs  ratio %.2fx (target <= 2x)'
              % (med['noop_module'], med['noop_find'], med['noop_module'] / med['noop_find']))
        print('re-own: module %.2fs  vs chown -R + chmod -R %.2fs  ratio %.2fx (target <= 2x)'
              % (med['reown_module'], med['reown_base'], med['reown_module'] / med['reown_base']))
        cpu = {k: statistics.median(v) for k, v in CPU.items()}
        print('CPU seconds (user+sys, median; less sensitive to other load on the machine):')
        print('  no-op : module %.2f vs find %.2f  ratio %.2fx'
              % (cpu['noop_module'], cpu['noop_find'], cpu['noop_module'] / cpu['noop_find']))
        print('  re-own: module %.2f vs chown+chmod %.2f  ratio %.2fx'
              % (cpu['reown_module'], cpu['reown_base'], cpu['reown_module'] / cpu['reown_base']))
        if opts.playbook:
            print('ansible-playbook: no-op %.2fs (%.2fx), re-own %.2fs (%.2fx)'
                  % (med['noop_playbook'], med['noop_playbook'] / med['noop_find'],
                     med['reown_playbook'], med['reown_playbook'] / med['reown_base']))
        print(json.dumps(dict(entries=entries, rounds=res, median=med, cpu=CPU)))
    finally:
        subprocess.run(['docker', 'volume', 'rm', '-f', volume], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        subprocess.run(['rm', '-rf', work], check=False)


if __name__ == '__main__':
    main()
