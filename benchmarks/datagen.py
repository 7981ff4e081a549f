# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark data: realistic volume trees, many tiny files, and 1% modifications for delta tests.

Stdlib only; importable (``generate``, ``small_files``, ``modify``) and a command line::

    python3 benchmarks/datagen.py generate DIR [--size-mb 1000] [--files N] [--seed 0]
    python3 benchmarks/datagen.py small DIR [--count 1000000] [--file-size 64] [--per-dir 1000]
    python3 benchmarks/datagen.py modify DIR [--percent 1] [--seed 1] [--keep-mtime] [--add N] [--delete N]

``generate`` copies real files of this machine (shared libraries and other files from /usr/lib,
Python sources, /usr/share/locale message catalogs, /usr/share/doc) into DIR, keeping their
relative layout under one directory per source (lib/, locale/, doc/), their mode and mtime.
The default mix is the issue's benchmark volume: ~1,000 MB in ~13,158 files (13.158 files per MB).
The choice is deterministic for a given seed and set of source files (sorted, then shuffled
with random.Random(seed)); sizes are steered so that both the byte and the file count targets are
met (within one file). If the sources run short, files are reused under a dupN/ prefix.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import stat
import sys
import time

MB = 1000 * 1000
FILES_PER_MB = 13.158          # the volume: 13,158 files in ~1,000 MB
MAX_FILE = 48 * 1024 * 1024    # keep one huge file from dominating the tree
SOURCES = (
    # (prefix in the generated tree, source root)
    ('lib', '/usr/lib'),
    ('locale', '/usr/share/locale'),
    ('doc', '/usr/share/doc'),
)
# Never copy from inside these (volatile, or not ours to read)
SKIP_DIRS = ('/usr/lib/modules', '/usr/lib/debug', '/usr/lib/jvm')


def _candidates():
    """Sorted (prefix, source path, relative path, size) of every readable regular file of the sources."""
    out = []
    for prefix, root in SOURCES:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if os.path.join(dirpath, d) not in SKIP_DIRS)
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or st.st_size > MAX_FILE:
                    continue
                if not os.access(path, os.R_OK):
                    continue
                out.append((prefix, path, os.path.relpath(path, root), st.st_size))
    return out


def plan(size_bytes, files, seed=0, candidates=None):
    """Choose ``files`` source files totalling about ``size_bytes``. Returns [(dest relpath, source path, size)]."""
    pool = list(candidates if candidates is not None else _candidates())
    if not pool:
        raise RuntimeError('no source files found under %s' % ', '.join(r for dummy, r in SOURCES))
    rng = random.Random(seed)
    rng.shuffle(pool)
    target_avg = size_bytes / float(files)
    big = [c for c in pool if c[3] > target_avg]
    small = [c for c in pool if c[3] <= target_avg]
    queues = {'big': [big, 0, 0], 'small': [small, 0, 0]}   # items, next index, round
    chosen = []
    total = 0

    def take(kind, limit, closest=None):
        """Next item of a queue no larger than ``limit`` (scanning ahead a little; the last pick
        takes the one closest to ``closest``), so the byte target is not overshot by one big file."""
        if not queues[kind][0]:
            kind = 'small' if kind == 'big' else 'big'
        q = queues[kind]
        items, start = q[0], q[1]
        window = min(len(items), 2000)
        pick = None
        for step in range(window):
            item = items[(start + step) % len(items)]
            if closest is not None:
                if pick is None or abs(item[3] - closest) < abs(items[pick][3] - closest):
                    pick = (start + step) % len(items)
            elif item[3] <= limit:
                pick = (start + step) % len(items)
                break
        if pick is None:
            pick = start
        if pick != start:
            # keep the queue a permutation: swap the picked item to the front
            items[start], items[pick] = items[pick], items[start]
        item = items[start]
        rnd = q[2]
        q[1] += 1
        if q[1] == len(items):
            q[1], q[2] = 0, q[2] + 1
        return item, rnd

    for i in range(files):
        left = size_bytes - total
        need = left / float(files - i)
        last = i == files - 1
        (prefix, src, rel, size), rnd = take('big' if need > target_avg else 'small', max(left, 1),
                                             closest=left if last else None)
        dest = os.path.join(prefix, rel) if rnd == 0 else os.path.join('dup%d' % rnd, prefix, rel)
        chosen.append((dest, src, size))
        total += size
    return chosen


def generate(root, size_mb=1000, files=None, seed=0, verbose=False):
    """Fill ``root`` (created if missing) with about ``size_mb`` MB (10^6 bytes) in ``files`` files.

    Returns a summary dict: files, bytes, dirs, seconds, by_prefix.
    """
    start = time.time()
    size_bytes = int(size_mb * MB)
    if files is None:
        files = max(1, int(round(size_mb * FILES_PER_MB)))
    chosen = plan(size_bytes, files, seed)
    root_b = os.fsencode(root)
    os.makedirs(root_b, exist_ok=True)
    made = set()
    total = 0
    by_prefix = {}
    dir_times = {}
    for dest, src, size in chosen:
        dest_b = os.path.join(root_b, os.fsencode(dest))
        parent = os.path.dirname(dest_b)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        shutil.copyfile(src, dest_b)
        st = os.stat(src)
        os.chmod(dest_b, stat.S_IMODE(st.st_mode) & 0o777)
        os.utime(dest_b, ns=(st.st_atime_ns, st.st_mtime_ns))
        src_dir = os.path.dirname(src)
        if parent not in dir_times:
            dir_times[parent] = os.stat(src_dir).st_mtime_ns
        total += size
        key = dest.split('/', 1)[0]
        by_prefix[key] = by_prefix.get(key, 0) + 1
    # directory mtimes from their sources, deepest first (deterministic tree metadata)
    for parent in sorted(dir_times, key=lambda p: -p.count(b'/')):
        os.utime(parent, ns=(dir_times[parent], dir_times[parent]))
    summary = {'files': len(chosen), 'bytes': total, 'dirs': len(made), 'seconds': round(time.time() - start, 2),
               'by_prefix': by_prefix, 'seed': seed}
    if verbose:
        print(json.dumps(summary), file=sys.stderr)
    return summary


def small_files(root, count=1000000, file_size=64, per_dir=1000):
    """Create ``count`` tiny files of ``file_size`` bytes, ``per_dir`` per directory (two-level fan-out)."""
    start = time.time()
    root_b = os.fsencode(root)
    os.makedirs(root_b, exist_ok=True)
    pad = b'.' * max(0, file_size)
    dirs = 0
    for i in range(count):
        if i % per_dir == 0:
            d = i // per_dir
            current = os.path.join(root_b, b'%03d' % (d // 1000), b'%03d' % (d % 1000))
            os.makedirs(current, exist_ok=True)
            dirs += 1
        body = (b'%d\n' % i + pad)[:file_size]
        fd = os.open(os.path.join(current, b'f%06d' % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
    return {'files': count, 'bytes': count * file_size, 'dirs': dirs, 'seconds': round(time.time() - start, 2)}


def _regular_files(root_b):
    out = []
    for dirpath, dirnames, filenames in os.walk(root_b):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                out.append((path, st))
    return out


def modify(root, percent=1.0, seed=1, keep_mtime=False, add=0, delete=0):
    """Change ``percent`` % of the regular files (deterministic choice), optionally add/delete files.

    Each chosen file gets a few bytes rewritten in the middle (size unchanged) and a new mtime, or
    its old mtime back with ``keep_mtime`` (the same-size same-mtime edit a size+mtime delta misses).
    Returns {'modified': [...], 'added': [...], 'deleted': [...], 'bytes_modified': N} (paths relative, text).
    """
    root_b = os.fsencode(root)
    rng = random.Random(seed)
    files = _regular_files(root_b)
    count = max(1, int(round(len(files) * percent / 100.0))) if percent > 0 and files else 0
    chosen = sorted(rng.sample(range(len(files)), min(count, len(files))))
    modified = []
    nbytes = 0
    for index in chosen:
        path, st = files[index]
        if st.st_size == 0:
            with open(path, 'wb') as handle:
                handle.write(b'm')
        else:
            with open(path, 'r+b') as handle:
                offset = st.st_size // 2
                handle.seek(offset)
                old = handle.read(16)
                handle.seek(offset)
                handle.write(bytes((b ^ 0x5a) for b in old))
        if keep_mtime:
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:
            now = time.time_ns()
            os.utime(path, ns=(now, now))
        nbytes += st.st_size
        modified.append(os.fsdecode(os.path.relpath(path, root_b)))
    deleted = []
    if delete:
        chosen_set = set(chosen)
        remaining = [files[i][0] for i in range(len(files)) if i not in chosen_set]
        for path in rng.sample(remaining, min(delete, len(remaining))):
            os.unlink(path)
            deleted.append(os.fsdecode(os.path.relpath(path, root_b)))
    added = []
    if add:
        target = os.path.join(root_b, b'added-%d' % seed)
        os.makedirs(target, exist_ok=True)
        for i in range(add):
            path = os.path.join(target, b'new-%06d' % i)
            with open(path, 'wb') as handle:
                handle.write(rng.randbytes(rng.randint(1, 64 * 1024)))
            added.append(os.fsdecode(os.path.relpath(path, root_b)))
    return {'modified': modified, 'added': added, 'deleted': sorted(deleted), 'bytes_modified': nbytes}


def main(argv=None):
    parser = argparse.ArgumentParser(prog='datagen.py', description='benchmark volume data')
    sub = parser.add_subparsers(dest='cmd', required=True)
    p = sub.add_parser('generate', help='mixed tree of real files (default ~1,000 MB in ~13,158 files)')
    p.add_argument('dir')
    p.add_argument('--size-mb', type=float, default=1000)
    p.add_argument('--files', type=int, help='number of files (default: 13.158 per MB)')
    p.add_argument('--seed', type=int, default=0)
    p = sub.add_parser('small', help='many tiny files')
    p.add_argument('dir')
    p.add_argument('--count', type=int, default=1000000)
    p.add_argument('--file-size', type=int, default=64)
    p.add_argument('--per-dir', type=int, default=1000)
    p = sub.add_parser('modify', help='change a percentage of the files (delta tests)')
    p.add_argument('dir')
    p.add_argument('--percent', type=float, default=1.0)
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--keep-mtime', action='store_true', help='same size, same mtime edits')
    p.add_argument('--add', type=int, default=0)
    p.add_argument('--delete', type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == 'generate':
        result = generate(args.dir, size_mb=args.size_mb, files=args.files, seed=args.seed)
    elif args.cmd == 'small':
        result = small_files(args.dir, count=args.count, file_size=args.file_size, per_dir=args.per_dir)
    else:
        result = modify(args.dir, percent=args.percent, seed=args.seed, keep_mtime=args.keep_mtime,
                        add=args.add, delete=args.delete)
        result = dict(result, modified_count=len(result['modified']))
        result['modified'] = result['modified'][:20]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
