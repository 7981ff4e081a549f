# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared helpers of the benchmark scripts: timing, peak memory of a process tree, docker CLI, tables.

Stdlib only. Import from a script in benchmarks/ with ``sys.path.insert(0, <benchmarks dir>)``.

Peak memory (``run_measured``) — three figures, because none alone is the whole truth:
- ``hwm_sum``: sum over every process of the tree of its kernel-tracked peak RSS (VmHWM in
  /proc/PID/status, read every ``interval`` s until the process exits). An upper bound of the
  tree's simultaneous peak; ``hwm_by_process`` lists each process's own peak (e.g. the module's
  Python process alone).
- ``rss_sum_peak``: the largest sum of current RSS seen in one sample. A lower bound.
- ``cgroup_max_usage``: memory.max_usage_in_bytes of a cgroup v1 memory cgroup created for the
  run (all descendants are in it). It also counts page cache and kernel memory (dentries, inodes)
  charged to the run, so it grows with the data touched, not only with the program's own memory.
The process tree is found through the cgroup's member list when cgroup v1 is available
(``/sys/fs/cgroup/memory``), else through /proc parent links.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
import uuid

CGROUP_MEMORY = '/sys/fs/cgroup/memory'


class CommandFailed(RuntimeError):
    pass


def sh(script, check=True, capture=True, env=None, cwd=None):
    """Run a bash script with ``set -euo pipefail`` (every process of a pipeline counts). Returns CompletedProcess."""
    proc = subprocess.run(['bash', '-c', 'set -euo pipefail\n' + script], capture_output=capture, text=True,
                          env=env, cwd=cwd, check=False)
    if check and proc.returncode != 0:
        raise CommandFailed('command failed (rc=%s): %s\n%s' % (
            proc.returncode, script, (proc.stderr or '')[-2000:]))
    return proc


def timed_sh(script, **kwargs):
    """Wall-clock seconds of one run of ``sh(script)``."""
    start = time.perf_counter()
    sh(script, **kwargs)
    return time.perf_counter() - start


def q(value):
    return shlex.quote(str(value))


def docker(*args, check=True):
    proc = subprocess.run(['docker'] + [str(a) for a in args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise CommandFailed('docker %s: %s' % (' '.join(map(str, args)), proc.stderr.strip()))
    return proc.stdout.strip()


def volume_mountpoint(name):
    return json.loads(docker('volume', 'inspect', name))[0]['Mountpoint']


def warm(path):
    """Read a tree once so that measurements run warm-cache, as in the issue's figures."""
    sh('tar -C %s -cf - . | cat > /dev/null' % q(path))


def settle():
    """Write back dirty pages before the next measurement, so one run's writes do not slow the next."""
    sh('sync')


def _read_status(pid):
    out = {}
    try:
        with open('/proc/%d/status' % pid) as handle:
            for line in handle:
                key, dummy, value = line.partition(':')
                if key in ('Name', 'VmHWM', 'VmRSS', 'PPid'):
                    out[key] = value.strip()
    except (OSError, ValueError):
        return None
    return out


def _kb(value):
    return int(value.split()[0]) * 1024 if value else 0


def _cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            parts = handle.read().split(b'\0')
    except OSError:
        return ''
    return ' '.join(p.decode('utf-8', 'replace') for p in parts if p)[:160]


def _descendants(root_pid):
    children = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        status = _read_status(int(entry))
        if status and 'PPid' in status:
            children.setdefault(int(status['PPid']), []).append(int(entry))
    out, stack = [], [root_pid]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


class _Cgroup(object):
    def __init__(self):
        self.path = None
        if os.path.isdir(CGROUP_MEMORY) and os.access(CGROUP_MEMORY, os.W_OK):
            path = os.path.join(CGROUP_MEMORY, 'volumeops-bench-%s' % uuid.uuid4().hex[:10])
            try:
                os.mkdir(path)
                self.path = path
            except OSError:
                self.path = None

    def pids(self):
        try:
            with open(os.path.join(self.path, 'cgroup.procs')) as handle:
                return [int(x) for x in handle.read().split()]
        except OSError:
            return []

    def read(self, name):
        try:
            with open(os.path.join(self.path, name)) as handle:
                return handle.read()
        except OSError:
            return None

    def join_fn(self):
        procs = os.path.join(self.path, 'cgroup.procs')

        def join():
            with open(procs, 'w') as handle:
                handle.write(str(os.getpid()))
        return join

    def remove(self):
        if not self.path:
            return
        for dummy in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)


def run_measured(argv, env=None, interval=0.02, cwd=None, stdin=None):
    """Run ``argv`` and measure its process tree. Returns a dict (see module docstring) with
    seconds, rc, stdout, stderr, hwm_sum, rss_sum_peak, hwm_by_process, cgroup_max_usage, method."""
    cgroup = _Cgroup()
    preexec = cgroup.join_fn() if cgroup.path else None
    peaks = {}      # pid -> (hwm bytes, name, cmdline)
    state = {'rss_sum_peak': 0, 'done': False}

    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec)

    def sample():
        while not state['done']:
            pids = cgroup.pids() if cgroup.path else _descendants(proc.pid)
            total = 0
            for pid in pids:
                status = _read_status(pid)
                if not status:
                    continue
                total += _kb(status.get('VmRSS'))
                hwm = _kb(status.get('VmHWM'))
                old = peaks.get(pid)
                if old is None or hwm > old[0]:
                    peaks[pid] = (hwm, status.get('Name', '?'), old[2] if old else _cmdline(pid))
            state['rss_sum_peak'] = max(state['rss_sum_peak'], total)
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    state['done'] = True
    thread.join()
    result = {
        'seconds': seconds, 'rc': proc.returncode, 'stdout': out.decode('utf-8', 'replace'),
        'stderr': err.decode('utf-8', 'replace'),
        'hwm_sum': sum(p[0] for p in peaks.values()),
        'rss_sum_peak': state['rss_sum_peak'],
        'hwm_by_process': sorted(({'pid': pid, 'name': v[1], 'cmdline': v[2], 'hwm': v[0]}
                                  for pid, v in peaks.items()), key=lambda r: -r['hwm']),
        'cgroup_max_usage': None,
        'method': 'cgroup v1 memory (%s) + /proc VmHWM sampling every %.0f ms' % (cgroup.path, interval * 1000)
        if cgroup.path else '/proc VmHWM sampling every %.0f ms (no cgroup v1 memory controller)' % (interval * 1000),
    }
    if cgroup.path:
        value = cgroup.read('memory.max_usage_in_bytes')
        result['cgroup_max_usage'] = int(value) if value else None
        cgroup.remove()
    return result


def mb(nbytes):
    return None if nbytes is None else nbytes / 1e6


def table(rows, headers):
    """Plain-text table; rows are sequences of already formatted cells."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    line = '  '.join('%-*s' % (w, h) for w, h in zip(widths, headers))
    out = [line, '  '.join('-' * w for w in widths)]
    for row in rows:
        out.append('  '.join('%-*s' % (w, c) for w, c in zip(widths, row)))
    return '\n'.join(out)


def loadavg():
    try:
        with open('/proc/loadavg') as handle:
            return handle.read().split()[:3]
    except OSError:
        return None
