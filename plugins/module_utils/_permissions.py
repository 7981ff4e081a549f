# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Ownership and modes inside a volume tree: mode parsing, user resolution, plan and apply.

Private to the collection. This file must stay standard-library only and
import nothing from the collection except ``_tree``: the volume_permissions
module ships this file's source (and _tree's) into a helper container and runs
it there with ``python3 -c`` when the volume's data is not reachable on the
host (see ``helper_script()``).

Design choices, and why:
- One walk (``_tree.walk``); each entry is compared and, if it differs,
  fixed immediately. No subprocess per file.
- Changes go through a file descriptor of the entry's parent directory whose
  device/inode were checked against what the walk saw, and then through an
  O_NOFOLLOW descriptor of the entry itself (fchown/fchmod) after checking it
  is still the inode the walk saw. A process inside a running container cannot
  redirect a change outside the volume by swapping in a symlink. FIFOs,
  sockets and devices go through an O_PATH descriptor (never opened for
  real). Symlinks are never chmod-ed (Linux has no symlink modes); their own
  owner is set (fchownat AT_SYMLINK_NOFOLLOW) only when owner/group are asked.
- chown(2) clears setuid/setgid and ``security.capability`` of non-directories.
  An entry keeps the mode it had (or the mode asked for) and its capability:
  both are put back after the chown.
- After each change the entry is lstat-ed again: a chown that "succeeds"
  without effect (NFS root_squash, some FUSE/SMB mounts) is an error, not a
  silent success.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys

from ansible_collections.volumeops.docker.plugins.module_utils._tree import walk as _tree_walk

SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
EXEC_BITS = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
CAPABILITY_XATTR = 'security.capability'


def walk(root, descend=None):
    """``_tree.walk`` that also enters mount points below the root, as ``chown -R`` and ``chmod -R`` do
    (the backup's walk stops there because GNU tar does; this tree is not archived)."""
    return _tree_walk(root, descend=descend, one_file_system=False)


class PermissionsError(Exception):
    """A problem meant for the user as it is (bad input, refused path, failed change).

    ``changed`` is the number of entries already changed when a run stopped on it (None before any change
    could be made: bad input, refused path).
    """

    def __init__(self, msg, changed=None):
        super().__init__(msg)
        self.changed = changed


# --- modes -----------------------------------------------------------------------------------------

# [ugo] first: the empty alternative of [rwxXst]* must not swallow a copy source (g=u).
_CLAUSE_RE = re.compile(r'^([ugoa]*)((?:[-+=](?:[ugo]|[rwxXst]*))+)$')
_ACTION_RE = re.compile(r'([-+=])([ugo]|[rwxXst]*)')
_WHO_BITS = {
    'u': stat.S_IRWXU | stat.S_ISUID,
    'g': stat.S_IRWXG | stat.S_ISGID,
    'o': stat.S_IRWXO | stat.S_ISVTX,
}


class ModeSpec(object):
    """A parsed mode: octal (absolute) or symbolic (relative to the entry's current mode).

    ``apply(current, is_dir)`` returns the 12 permission bits the entry should have.
    """

    __slots__ = ('text', 'octal', 'clauses', '_memo')

    def __init__(self, text, octal=None, clauses=None):
        self.text = text
        self.octal = octal
        self.clauses = clauses
        self._memo = {}

    def apply(self, current, is_dir):
        if self.octal is not None:
            return self.octal
        # A tree has few distinct (mode, type) pairs: compute each once.
        key = (current, is_dir)
        result = self._memo.get(key)
        if result is None:
            result = self._memo[key] = self._compute(current, is_dir)
        return result

    def _compute(self, current, is_dir):
        mode = stat.S_IMODE(current)
        for who, actions in self.clauses:
            for op, perms in actions:
                mode = _apply_action(mode, who, op, perms, is_dir)
        return mode

    def __repr__(self):
        return 'ModeSpec(%r)' % self.text


def _class_bits(mode, cls):
    """The rwx bits of one class (u/g/o) of ``mode``, shifted to the 'other' position."""
    shift = {'u': 6, 'g': 3, 'o': 0}[cls]
    return (mode >> shift) & 7


def _apply_action(mode, who, op, perms, is_dir):
    # Without who, the clause applies to all classes. Unlike chmod(1) the umask is
    # ignored: the result must not depend on the environment the module runs in.
    classes = who.replace('a', 'ugo') or 'ugo'
    classes = ''.join(c for c in 'ugo' if c in classes)
    if perms in ('u', 'g', 'o'):
        # Copy another class's current rwx bits (g=u, o+g ...).
        rwx = _class_bits(mode, perms)
        value = 0
        for cls in classes:
            value |= rwx << {'u': 6, 'g': 3, 'o': 0}[cls]
    else:
        value = 0
        rwx = 0
        if 'r' in perms:
            rwx |= 4
        if 'w' in perms:
            rwx |= 2
        if 'x' in perms:
            rwx |= 1
        elif 'X' in perms and (is_dir or mode & EXEC_BITS):
            # X: execute/search only for directories or entries that already have an x bit.
            rwx |= 1
        for cls in classes:
            value |= rwx << {'u': 6, 'g': 3, 'o': 0}[cls]
        if 's' in perms:
            if 'u' in classes:
                value |= stat.S_ISUID
            if 'g' in classes:
                value |= stat.S_ISGID
        if 't' in perms and 'o' in classes:
            value |= stat.S_ISVTX
    if op == '+':
        return mode | value
    if op == '-':
        return mode & ~value
    affected = 0
    for cls in classes:
        affected |= _WHO_BITS[cls]
    if is_dir and 's' not in perms:
        # As chmod(1): '=' keeps a directory's setuid/setgid unless 's' is named.
        affected &= ~(stat.S_ISUID | stat.S_ISGID)
    return (mode & ~affected) | value


def parse_mode(value, name='mode'):
    """Parse an octal ('0750', '750', '2775') or symbolic ('u=rwX,g=rX,o=') mode.

    Raise PermissionsError with a message naming ``name`` when it is invalid.
    Integers are refused: YAML reads an unquoted 0750 as the number 488 and an
    unquoted 750 as 750, and only one of them means what it looks like.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str):
        raise PermissionsError(
            'Invalid %s %r: give modes as quoted strings, for example %s: "0750" or %s: "u=rwX,g=rX,o=" '
            '(YAML reads an unquoted 0750 as a decimal number).' % (name, value, name, name))
    text = value.strip()
    if re.match(r'^[0-7]{1,4}$', text):
        return ModeSpec(text, octal=int(text, 8))
    if not text:
        raise PermissionsError('Invalid %s: it is empty.' % name)
    clauses = []
    for clause in text.split(','):
        m = _CLAUSE_RE.match(clause)
        if not m:
            raise PermissionsError(
                'Invalid %s %r: %r is neither an octal mode (up to four digits 0-7) nor a symbolic clause '
                'such as u=rwX, g+s, o-w or a=r (who: u g o a; operator: + - =; permissions: r w x X s t, '
                'or one of u g o to copy).' % (name, value, clause))
        clauses.append((m.group(1), _ACTION_RE.findall(m.group(2))))
    return ModeSpec(text, clauses=clauses)


def format_mode(mode):
    return '%04o' % stat.S_IMODE(mode)


# --- users and groups ------------------------------------------------------------------------------

def _is_ascii_number(text):
    """Digits 0-9 only: str.isdigit() also accepts '²' (which int() refuses) and '١٢٣٤' (which int() reads as 1234)."""
    return text.isascii() and text.isdigit()


def parse_passwd(text):
    """name -> (uid, gid) from /etc/passwd content (str); malformed lines are skipped."""
    result = {}
    for line in text.splitlines():
        if not line or line.startswith('#'):
            continue
        parts = line.split(':')
        if len(parts) < 4 or not _is_ascii_number(parts[2]) or not _is_ascii_number(parts[3]):
            continue
        result.setdefault(parts[0], (int(parts[2]), int(parts[3])))
    return result


def parse_group(text):
    """name -> gid from /etc/group content (str); malformed lines are skipped."""
    result = {}
    for line in text.splitlines():
        if not line or line.startswith('#'):
            continue
        parts = line.split(':')
        if len(parts) < 3 or not _is_ascii_number(parts[2]):
            continue
        result.setdefault(parts[0], int(parts[2]))
    return result


def _numeric_id(value):
    text = str(value).strip()
    if _is_ascii_number(text):
        number = int(text)
        if number > 0xFFFFFFFE:  # (uid_t)-1 means "unchanged" to chown(2)
            raise PermissionsError('ID %s is out of range (0 to 4294967294).' % text)
        return number
    return None


def resolve_owner(owner, passwd, where):
    """(uid, primary gid or None) of ``owner`` (a number or a name looked up in ``passwd``)."""
    number = _numeric_id(owner)
    if number is not None:
        for uid, gid in passwd.values() if passwd else ():
            if uid == number:
                return number, gid
        return number, None
    if passwd is None:
        raise PermissionsError(
            'owner %r is not a numeric ID. User names are resolved the way a container sees them: '
            'set like_container to a container whose image defines the user, or give the numeric UID.' % owner)
    if owner not in passwd:
        raise PermissionsError('Unknown user %r: it is not numeric and not in /etc/passwd of %s.' % (owner, where))
    return passwd[owner]


def resolve_group(group, groups, where):
    number = _numeric_id(group)
    if number is not None:
        return number
    if groups is None:
        raise PermissionsError(
            'group %r is not a numeric ID. Group names are resolved the way a container sees them: '
            'set like_container to a container whose image defines the group, or give the numeric GID.' % group)
    if group not in groups:
        raise PermissionsError('Unknown group %r: it is not numeric and not in /etc/group of %s.' % (group, where))
    return groups[group]


def resolve_container_user(user_spec, passwd, groups, where):
    """(uid, gid) a container configured with ``User: user_spec`` runs as (Docker's rules).

    Empty means root. ``user`` alone takes the user's primary group from
    /etc/passwd; a numeric UID unknown to /etc/passwd runs with GID 0.
    """
    spec = (user_spec or '').strip()
    if not spec:
        return 0, 0
    user, sep, group = spec.partition(':')
    uid, primary = resolve_owner(user, passwd, where)
    if sep and group:
        return uid, resolve_group(group, groups, where)
    return uid, primary if primary is not None else 0


# --- the target path -------------------------------------------------------------------------------

def resolve_target(root, path):
    """Absolute path (str) of ``path`` inside ``root``; refuse anything that could leave the tree.

    ``path`` must be relative and free of '..'. Symlink components are resolved
    on this side; the result must still lie inside ``root`` (absolute links
    point into the container's namespace, never into the volume as seen from
    here, so they are refused as well).
    """
    text = (path or '.').strip() or '.'
    if os.path.isabs(text):
        raise PermissionsError('path %r must be relative to the volume root, not absolute.' % path)
    parts = [p for p in text.split('/') if p not in ('', '.')]
    if '..' in parts:
        raise PermissionsError("path %r must not contain '..' components." % path)
    real_root = os.path.realpath(root)
    candidate = os.path.join(real_root, *parts) if parts else real_root
    probe = real_root
    for part in parts:
        probe = os.path.join(probe, part)
        if os.path.islink(probe):
            target = os.path.realpath(probe)
            if not _inside(target, real_root):
                raise PermissionsError('path %r is refused: its component %r is a symlink pointing outside the '
                                       'volume (%s).' % (path, os.path.relpath(probe, real_root), os.readlink(probe)))
    real = os.path.realpath(candidate)
    if not _inside(real, real_root):
        raise PermissionsError('path %r is refused: it resolves outside the volume.' % path)
    if not os.path.lexists(real):
        raise PermissionsError('path %r does not exist in the volume.' % path)
    return real


def _inside(path, root):
    return path == root or path.startswith(root.rstrip('/') + '/')


# --- plan and apply --------------------------------------------------------------------------------

class _DirHandles(object):
    """At most one open, verified directory fd at a time (the walk yields a directory's entries together)."""

    def __init__(self):
        self.rel = None
        self.fd = None

    def get(self, rel, abspath, expect):
        if rel == self.rel:
            return self.fd
        self.close()
        fd = os.open(abspath, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, 'O_CLOEXEC', 0))
        if expect is not None:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != expect:
                os.close(fd)
                raise PermissionsError('Directory %s changed while it was being processed (replaced or moved); '
                                       'nothing below it was changed. Stop the containers writing to the volume '
                                       'and run again.' % display_path(abspath))
        self.rel, self.fd = rel, fd
        return fd

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
        self.rel = self.fd = None


def display_path(path):
    if isinstance(path, bytes):
        return path.decode('utf-8', 'backslashreplace')
    return path


class Plan(object):
    """What every entry should look like. IDs are ints or None (leave as is); modes are ModeSpec or None."""

    def __init__(self, uid=None, gid=None, mode=None, dir_mode=None, file_mode=None, recurse=False, sample_size=20):
        self.uid = uid
        self.gid = gid
        self.mode = mode
        self.dir_mode = dir_mode
        self.file_mode = file_mode
        self.recurse = recurse
        self.sample_size = sample_size

    def wanted(self, st, is_root):
        """(uid, gid, mode) the entry should have; mode None for symlinks (never chmod-ed)."""
        uid = st.st_uid if self.uid is None else self.uid
        gid = st.st_gid if self.gid is None else self.gid
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            return uid, gid, None
        is_dir = stat.S_ISDIR(st.st_mode)
        spec = self.mode if is_root else None
        if spec is None:
            spec = self.dir_mode if is_dir else self.file_mode
        if spec is not None:
            mode = spec.apply(st.st_mode, is_dir)
        return uid, gid, mode


class _Tally(object):
    """Counts and the bounded sample of one walk (or one worker's share of it); mergeable."""

    def __init__(self, sample_size):
        self.sample_size = sample_size
        self.examined = 0
        self.changed = 0
        self.owner = 0
        self.group = 0
        self.mode = 0
        self.sample = []
        self.root = None

    def as_dict(self):
        return dict(examined=self.examined, changed=self.changed, owner=self.owner, group=self.group,
                    mode=self.mode, sample=self.sample, root=self.root)

    def merge(self, data):
        for key in ('examined', 'changed', 'owner', 'group', 'mode'):
            setattr(self, key, getattr(self, key) + data[key])
        room = self.sample_size - len(self.sample)
        if room > 0:
            self.sample.extend(data['sample'][:room])
        if data.get('root') is not None:
            self.root = data['root']


def _never(entry):
    return False


def _process(entries, plan, check_mode, tally, target_b, prefix=b'.', expect_top=None, subdirs=None):
    """Compare (and fix) every entry an iterator from walk() yields.

    ``prefix`` is the relative path (from the target) of the directory the
    walk started at; its own entry (relpath b'.') was already handled by
    whoever listed it, so it is only checked against ``expect_top`` (the
    device/inode seen then) and skipped. Directories are appended to
    ``subdirs`` (when given) as (relpath, abspath, (dev, ino)).
    """
    handles = _DirHandles()
    dirs_seen = {}
    sample_size = plan.sample_size
    top = prefix == b'.' and expect_top is None
    want_uid, want_gid = plan.uid, plan.gid
    # The wanted mode of a non-root entry depends only on its st_mode: computed once per distinct value
    # (-1: leave the mode alone). This keeps the common "already correct" case to a few comparisons.
    mode_memo = {}
    examined = 0
    isdir = stat.S_ISDIR
    fixing = None  # the entry being changed, while it is
    try:
        for entry in entries:
            st = entry.st
            st_mode = st.st_mode
            rel = entry.relpath
            if isdir(st_mode):
                if rel == b'.':
                    if not top:
                        if (st.st_dev, st.st_ino) != expect_top:
                            raise PermissionsError(
                                'Directory %s changed while it was being processed (replaced or moved); nothing '
                                'below it was changed. Stop the containers writing to the volume and run again.'
                                % display_path(entry.abspath))
                        dirs_seen[rel] = expect_top
                        continue
                    dirs_seen[rel] = (st.st_dev, st.st_ino)
                else:
                    dirs_seen[rel] = (st.st_dev, st.st_ino)
                    if subdirs is not None:
                        subdirs.append((prefix + rel[1:], entry.abspath, (st.st_dev, st.st_ino)))
            examined += 1
            is_root = top and rel == b'.'
            if is_root:
                uid, gid, mode = plan.wanted(st, True)
                cur_mode = stat.S_IMODE(st_mode)
                tally.root = dict(uid=uid, gid=gid, mode=format_mode(mode if mode is not None else cur_mode))
            else:
                mode = mode_memo.get(st_mode)
                if mode is None:
                    mode = plan.wanted(st, False)[2]
                    mode = mode_memo[st_mode] = -1 if mode is None else mode
                uid = st.st_uid if want_uid is None else want_uid
                gid = st.st_gid if want_gid is None else want_gid
                if uid == st.st_uid and gid == st.st_gid and (mode == -1 or mode == st_mode & 0o7777):
                    continue
                if mode == -1:
                    mode = None
                cur_mode = st_mode & 0o7777
            chown_needed = uid != st.st_uid or gid != st.st_gid
            chmod_needed = mode is not None and mode != cur_mode
            if not (chown_needed or chmod_needed):
                continue
            tally.changed += 1
            tally.owner += uid != st.st_uid
            tally.group += gid != st.st_gid
            tally.mode += chmod_needed
            if len(tally.sample) < sample_size:
                full = rel if prefix == b'.' else prefix + rel[1:]
                tally.sample.append(dict(
                    path=display_path(full),
                    before=dict(uid=st.st_uid, gid=st.st_gid, mode=format_mode(cur_mode)),
                    after=dict(uid=uid, gid=gid, mode=format_mode(mode if mode is not None else cur_mode))))
            if check_mode:
                continue
            if is_root:
                parent_rel, parent_abs, name, expect = b'\0root-parent', os.path.dirname(target_b) or b'/', \
                    os.path.basename(target_b), None
            else:
                parent_rel, name = rel.rsplit(b'/', 1)
                parent_abs = entry.abspath[:-(len(name) + 1)]
                expect = dirs_seen.get(parent_rel)
            fixing = entry
            fd = handles.get(parent_rel, parent_abs, expect)
            _fix(fd, name, entry.abspath, st, uid, gid, mode, chown_needed, chmod_needed)
            fixing = None
    except PermissionsError as exc:
        if exc.changed is None:
            exc.changed = 0 if check_mode else tally.changed - (fixing is not None)
        raise
    except OSError as exc:
        # fchown/fchmod errors carry no file name: name the entry being changed (or what the walk failed on).
        where = fixing.abspath if fixing is not None else (exc.filename or target_b)
        verb = 'Changing' if fixing is not None else 'Reading'
        done = 0 if check_mode else tally.changed - (fixing is not None)
        if exc.errno == errno.ENAMETOOLONG:
            raise PermissionsError(_too_deep_message(where, target_b), changed=done)
        raise PermissionsError('%s %s failed: %s' % (verb, display_path(where), exc.strerror or exc), changed=done)
    finally:
        handles.close()
        tally.examined += examined


def _too_deep_message(where, target_b):
    """One readable sentence for ENAMETOOLONG: the tree is deeper than the absolute paths the walk opens."""
    where = os.fsencode(where)
    rel = where[len(target_b):].lstrip(b'/') if where.startswith(target_b) else where
    shown = display_path(rel)
    if len(shown) > 100:
        shown = shown[:45] + ' ... ' + shown[-45:]
    return ('The tree is too deep: an entry %d levels below path has a path of %d bytes, longer than the '
            'system allows (PATH_MAX, 4096 bytes); this module cannot reach it (%s). Change such a tree with '
            'chown -R/chmod -R, or move its deep part higher.' % (rel.count(b'/') + 1, len(where), shown))


def default_workers():
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


def run(root, path, plan, check_mode=False, workers=1):
    """Walk ``path`` inside ``root`` once; fix (unless check_mode) every entry that differs from ``plan``.

    With ``workers`` > 1 and ``plan.recurse``, the top levels of the tree are
    listed here and the subtrees below them are walked by that many forked
    worker processes (each entry is still visited exactly once).

    Returns a JSON-serialisable dict: examined, changed_entries, changes
    (owner/group/mode counts and a bounded sample), root (resulting uid/gid/mode).
    """
    target = resolve_target(root, path)
    target_b = os.fsencode(target)
    tally = _Tally(plan.sample_size)
    if not plan.recurse or not stat.S_ISDIR(os.lstat(target_b).st_mode):
        # A file (or anything but a directory) at ``path`` is a tree of one entry.
        _process(iter([_root_entry(target_b)]), plan, check_mode, tally, target_b)
    elif workers <= 1:
        _process(walk(target_b), plan, check_mode, tally, target_b)
    else:
        jobs = []
        _process(walk(target_b, descend=_never), plan, check_mode, tally, target_b, subdirs=jobs)
        # Go down level by level until there are enough subtrees to share out.
        depth = 1
        while jobs and len(jobs) < 4 * workers and depth < 4:
            deeper = []
            for rel, abspath, expect in jobs:
                _process(walk(abspath, descend=_never), plan, check_mode, tally, target_b, prefix=rel,
                         expect_top=expect, subdirs=deeper)
            jobs = deeper
            depth += 1
        if len(jobs) < 2:
            for rel, abspath, expect in jobs:
                _process(walk(abspath), plan, check_mode, tally, target_b, prefix=rel, expect_top=expect)
        else:
            _run_workers(jobs, min(workers, len(jobs)), plan, check_mode, tally, target_b)
    if tally.root is None:  # pragma: no cover - the root is always processed first
        st = os.lstat(target_b)
        tally.root = dict(uid=st.st_uid, gid=st.st_gid, mode=format_mode(st.st_mode))
    rel_target = os.path.relpath(target, os.path.realpath(root))
    return dict(
        target_path=rel_target,
        examined=tally.examined,
        changed_entries=tally.changed,
        changes=dict(owner=tally.owner, group=tally.group, mode=tally.mode,
                     sample=tally.sample, sample_truncated=tally.changed > len(tally.sample)),
        root=tally.root,
    )


def _run_workers(jobs, count, plan, check_mode, tally, target_b):
    """Share ``jobs`` (subtrees) out to ``count`` forked workers, one job at a time each, in order.

    Protocol on pipes, one line each way per job: the parent writes a job
    index, the worker answers with a JSON tally (or an error message).
    Results are merged in job order so the sample does not depend on timing.
    """
    import select
    workers = []
    try:
        for _i in range(count):
            job_r, job_w = os.pipe()
            res_r, res_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                os.close(job_w)
                os.close(res_r)
                for other in workers:
                    os.close(other['job'])
                    os.close(other['res'])
                _worker_loop(job_r, res_w, jobs, plan, check_mode, target_b)
            os.close(job_r)
            os.close(res_w)
            workers.append(dict(pid=pid, job=job_w, res=res_r, buf=b'', busy=None))
        results = {}
        error = None
        error_changed = 0  # entries a failed job had changed before it stopped
        next_job = 0
        for w in workers:
            if next_job < len(jobs):
                os.write(w['job'], b'%d\n' % next_job)
                w['busy'] = next_job
                next_job += 1
        while any(w['busy'] is not None for w in workers):
            ready, _w, _x = select.select([w['res'] for w in workers if w['busy'] is not None], [], [])
            for w in workers:
                if w['res'] not in ready:
                    continue
                chunk = os.read(w['res'], 65536)
                if not chunk:
                    error = error or 'A worker process ended unexpectedly.'
                    w['busy'] = None
                    continue
                w['buf'] += chunk
                while b'\n' in w['buf']:
                    line, w['buf'] = w['buf'].split(b'\n', 1)
                    answer = json.loads(line.decode('utf-8'))
                    if 'error' in answer:
                        error = error or answer['error']
                        error_changed += answer.get('changed') or 0
                    else:
                        results[w['busy']] = answer
                    w['busy'] = None
                    if error is None and next_job < len(jobs):
                        os.write(w['job'], b'%d\n' % next_job)
                        w['busy'] = next_job
                        next_job += 1
        if error is not None:
            # Jobs that ended (before or after the failure) did their changes: count them all.
            raise PermissionsError(error, changed=0 if check_mode else (
                tally.changed + error_changed + sum(r['changed'] for r in results.values())))
        for index in range(len(jobs)):
            tally.merge(results[index])
    finally:
        for w in workers:
            for fd in (w['job'], w['res']):
                try:
                    os.close(fd)
                except OSError:
                    pass
        for w in workers:
            try:
                os.waitpid(w['pid'], 0)
            except OSError:
                pass


def _worker_loop(job_r, res_w, jobs, plan, check_mode, target_b):  # pragma: no cover - runs in the child
    status = 0
    try:
        with os.fdopen(job_r, 'rb') as job_in, os.fdopen(res_w, 'wb') as res_out:
            for line in job_in:
                rel, abspath, expect = jobs[int(line)]
                part = _Tally(plan.sample_size)
                try:
                    _process(walk(abspath), plan, check_mode, part, target_b, prefix=rel, expect_top=expect)
                    answer = part.as_dict()
                except PermissionsError as exc:
                    answer = dict(error=str(exc), changed=exc.changed or 0)
                except Exception as exc:  # anything else must still reach the parent as a message
                    answer = dict(error='%s while processing %s: %s' % (type(exc).__name__, display_path(abspath), exc),
                                  changed=0 if check_mode else part.changed)
                res_out.write(json.dumps(answer).encode('utf-8') + b'\n')
                res_out.flush()
    except BaseException:
        status = 1
    os._exit(status)


def _root_entry(target_b):
    class _E(object):
        __slots__ = ('relpath', 'abspath', 'st')
    e = _E()
    e.relpath, e.abspath, e.st = b'.', target_b, os.lstat(target_b)
    return e


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, 'O_CLOEXEC', 0)
_O_PATH = getattr(os, 'O_PATH', None)


def _fix(dir_fd, name, abspath, st, uid, gid, mode, chown_needed, chmod_needed):
    """Change one entry (``name`` inside the verified directory ``dir_fd``), never through a symlink."""
    if stat.S_ISLNK(st.st_mode):
        # A symlink's own owner; fchownat(AT_SYMLINK_NOFOLLOW) never reaches its target.
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        after = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        _verify(abspath, st, after, uid, gid, None)
        return
    by_path = not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))
    fd = None
    if not by_path:
        # Work on an open descriptor of the very inode the walk saw: O_NOFOLLOW fails on a symlink
        # swapped in since, and fchown/fchmod/fsetxattr cannot be redirected afterwards.
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PermissionsError('%s was replaced by a symlink while it was being changed; nothing was done '
                                       'to it. Stop the containers writing to the volume and run again.'
                                       % display_path(abspath))
            by_path = True  # e.g. a file that cannot be opened: fall back to O_PATH below
    if by_path:
        # FIFOs, sockets and devices are never opened for real (opening a device can have effects).
        if _O_PATH is None:
            raise PermissionsError('Cannot change %s safely on this platform (no O_PATH).' % display_path(abspath))
        fd = os.open(name, _O_PATH | os.O_NOFOLLOW | getattr(os, 'O_CLOEXEC', 0), dir_fd=dir_fd)
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or stat.S_ISLNK(now.st_mode):
            raise PermissionsError('%s was replaced while it was being changed; nothing was done to it. Stop the '
                                   'containers writing to the volume and run again.' % display_path(abspath))
        is_dir = stat.S_ISDIR(st.st_mode)
        if chown_needed:
            capability = None
            if not by_path and not is_dir:
                capability = _read_capability(fd)
            if by_path:
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
            else:
                os.fchown(fd, uid, gid)
            if capability is not None:
                # chown(2) dropped the file capability; put it back (after the chown, which would drop it again).
                os.setxattr(fd, CAPABILITY_XATTR, capability)
            if not is_dir:
                # chown(2) cleared setuid/setgid of a non-directory: put the mode back.
                if mode is None:
                    mode = stat.S_IMODE(st.st_mode)
                if mode & (stat.S_ISUID | stat.S_ISGID):
                    chmod_needed = True
        if chmod_needed:
            if by_path:
                # The O_PATH descriptor refers to the verified inode; chmod through its /proc link.
                os.chmod('/proc/self/fd/%d' % fd, mode)
            else:
                os.fchmod(fd, mode)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    _verify(abspath, st, after, uid, gid, mode)


def _verify(abspath, st, after, uid, gid, mode):
    if after.st_uid != uid or after.st_gid != gid or (mode is not None and stat.S_IMODE(after.st_mode) != mode):
        raise PermissionsError(
            'Changing %s reported success but it is now %d:%d %s instead of %d:%d %s: the filesystem ignores '
            'ownership or mode changes (NFS root_squash, SMB, some FUSE mounts).'
            % (display_path(abspath), after.st_uid, after.st_gid, format_mode(after.st_mode), uid, gid,
               format_mode(mode if mode is not None else after.st_mode)))


def _read_capability(fd):
    try:
        if CAPABILITY_XATTR not in os.listxattr(fd):
            return None
        return os.getxattr(fd, CAPABILITY_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA):
            return None
        raise


# --- parameters as JSON (module <-> helper container) ----------------------------------------------

def plan_to_dict(plan):
    return dict(uid=plan.uid, gid=plan.gid, recurse=plan.recurse, sample_size=plan.sample_size,
                mode=plan.mode.text if plan.mode else None,
                dir_mode=plan.dir_mode.text if plan.dir_mode else None,
                file_mode=plan.file_mode.text if plan.file_mode else None)


def plan_from_dict(data):
    return Plan(uid=data['uid'], gid=data['gid'], recurse=data['recurse'], sample_size=data['sample_size'],
                mode=parse_mode(data['mode'], 'mode'), dir_mode=parse_mode(data['dir_mode'], 'dir_mode'),
                file_mode=parse_mode(data['file_mode'], 'file_mode'))


def helper_main(argv=None):
    """Entry point inside the helper container: argv[1] is a JSON request; one JSON line on stdout."""
    argv = sys.argv if argv is None else argv
    try:
        request = json.loads(argv[1])
        result = run(request['root'], request['path'], plan_from_dict(request['plan']),
                     check_mode=request['check_mode'], workers=request.get('workers', 1))
        out = dict(ok=True, result=result)
    except PermissionsError as exc:
        out = dict(ok=False, msg=str(exc))
        if exc.changed:
            out['changed'] = exc.changed
    sys.stdout.write(json.dumps(out) + '\n')
    sys.stdout.flush()
    return 0
