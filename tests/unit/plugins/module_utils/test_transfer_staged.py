# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The records a pass keeps of a staged tree for the next pass (StagedRecordsWriter / StagedRecords), the
retry on a fresh walk when they turn out stale (run_transfer), and the delta merge's order checks."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _transfer, _tree


def _staged_tree(root):
    """Directories, files, a hard link, symlinks (one dangling), an empty directory, an xattr if supported."""
    os.makedirs(os.path.join(root, 'db', 'base'))
    os.makedirs(os.path.join(root, 'empty'))
    for i in range(30):
        with open(os.path.join(root, 'db', 'base', 'f%02d' % i), 'w') as f:
            f.write('x' * i)
    with open(os.path.join(root, 'top'), 'w') as f:
        f.write('top')
    os.link(os.path.join(root, 'top'), os.path.join(root, 'db', 'top-link'))
    os.symlink('base/f01', os.path.join(root, 'db', 'rel'))
    os.symlink('/nowhere', os.path.join(root, 'dangling'))
    try:
        os.setxattr(os.path.join(root, 'db', 'base', 'f03'), 'user.k', b'v')
    except OSError:
        pass


def _keep(root, path, migration_id='m1', settled=True):
    writer = _transfer.StagedRecordsWriter(path)
    if settled:  # as if the tree had been written well before the walk
        writer.started_ns += 10 * _tree.CTIME_SETTLED_NS
    scan = _transfer.TreeScan(root, spill=writer)
    records = [(relpath, digest, code) for relpath, digest, code, dummy in scan]
    assert writer.commit(migration_id=migration_id, summary=scan.summary.as_dict())
    return records, scan.summary


def _load(root, path, summary, migration_id='m1'):
    return _transfer.StagedRecords.load(path, migration_id, summary.fingerprint, os.lstat(root))


@pytest.fixture
def staged(tmp_path):
    root = str(tmp_path / 'staging')
    os.mkdir(root)
    _staged_tree(root)
    return root, str(tmp_path / _transfer.STAGED_RECORDS_NAME)


def test_kept_records_are_the_walks_records_and_serve_as_its_spill(staged):
    root, path = staged
    records, summary = _keep(root, path)
    assert oct(os.stat(path).st_mode & 0o777) == '0o600' and not os.path.exists(path + '.tmp')
    kept = _load(root, path, summary)
    assert kept is not None and kept.usable
    assert list(kept.records()) == records
    assert kept.summary == summary.as_dict()
    rescan = _transfer.TreeScan(root, reuse=kept).run()
    assert rescan.as_dict() == summary.as_dict() and kept.reused == summary.entries
    assert list(kept.records()) == records  # readable again after serving as a spill
    kept.close()


def test_kept_records_never_hide_a_change_made_since(staged):
    # The verification walk after a delta planned on kept records re-reads every changed entry.
    root, path = staged
    dummy, summary = _keep(root, path)
    kept = _load(root, path, summary)
    base = os.path.join(root, 'db', 'base')
    os.chmod(os.path.join(base, 'f05'), 0o600)
    st = os.lstat(os.path.join(base, 'f06'))
    os.utime(os.path.join(base, 'f06'), ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    os.unlink(os.path.join(base, 'f07'))
    with open(os.path.join(base, 'f08'), 'a') as f:
        f.write('more')
    os.unlink(os.path.join(root, 'db', 'top-link'))  # a hard link broken: the other path's record changes too
    rescan = _transfer.TreeScan(root, reuse=kept).run()
    assert rescan.as_dict() == _transfer.TreeScan(root).run().as_dict()
    assert rescan.fingerprint != summary.fingerprint
    kept.close()


def test_records_of_entries_changed_just_before_the_walk_are_kept_for_the_plan_only(staged):
    root, path = staged
    records, summary = _keep(root, path, settled=False)
    kept = _load(root, path, summary)
    assert list(kept.records()) == records  # the plan needs every entry
    assert _transfer.TreeScan(root, reuse=kept).run().as_dict() == summary.as_dict()
    assert kept.reused == 0  # a same-tick change could keep its ctime: none of them stands in for a read
    kept.close()


def _flip_byte(path, offset):
    with open(path, 'r+b') as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


@pytest.mark.parametrize('spoil', ['migration', 'fingerprint', 'top_level_entry', 'root_mode', 'body_byte',
                                   'trailer_byte', 'truncated', 'empty', 'world_readable', 'symlink', 'missing'])
def test_kept_records_that_may_not_describe_the_tree_are_not_used(staged, spoil):
    root, path = staged
    dummy, summary = _keep(root, path)
    migration_id, fingerprint = 'm1', summary.fingerprint
    if spoil == 'migration':
        migration_id = 'm2'
    elif spoil == 'fingerprint':
        fingerprint = 'sha256:' + '0' * 64  # the marker names another staged tree (a pass ended since)
    elif spoil == 'top_level_entry':
        with open(os.path.join(root, 'new'), 'w') as f:
            f.write('n')
    elif spoil == 'root_mode':
        os.chmod(root, 0o711)
    elif spoil == 'body_byte':
        _flip_byte(path, 40)
    elif spoil == 'trailer_byte':
        _flip_byte(path, os.path.getsize(path) - 50)
    elif spoil == 'truncated':
        os.truncate(path, os.path.getsize(path) // 2)
    elif spoil == 'empty':
        os.truncate(path, 0)
    elif spoil == 'world_readable':
        os.chmod(path, 0o644)
    elif spoil == 'symlink':
        os.rename(path, path + '.real')
        os.symlink(path + '.real', path)
    elif spoil == 'missing':
        os.unlink(path)
    assert _transfer.StagedRecords.load(path, migration_id, fingerprint, os.lstat(root)) is None


def test_kept_records_that_cannot_be_written_are_dropped(tmp_path):
    root = str(tmp_path / 'staging')
    os.mkdir(root)
    _staged_tree(root)
    path = str(tmp_path / 'gone' / _transfer.STAGED_RECORDS_NAME)  # its directory does not exist
    writer = _transfer.StagedRecordsWriter(path)
    scan = _transfer.TreeScan(root, spill=writer)
    assert scan.run().entries > 0  # the walk itself is not disturbed
    assert not writer.commit(migration_id='m1', summary=scan.summary.as_dict())
    assert not os.path.exists(path)


def test_discarded_records_leave_nothing(staged):
    root, path = staged
    writer = _transfer.StagedRecordsWriter(path)
    _transfer.TreeScan(root, spill=writer).run()
    assert os.path.exists(path + '.tmp')
    writer.discard()
    assert not os.path.exists(path + '.tmp') and not os.path.exists(path)


# --- run_transfer: a pass planned on stale kept records is repeated on a walk ---------------------------------

class _FakeSender(object):
    def __init__(self, outcome, calls, fresh):
        self.outcome = outcome
        calls.append(fresh)

    def run(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return dict(self.outcome)


def _senders(*outcomes):
    calls = []
    queue = list(outcomes)
    return calls, lambda fresh: _FakeSender(queue.pop(0), calls, fresh)


def test_a_stale_base_is_retried_once_on_a_fresh_walk_and_said():
    calls, new = _senders(_transfer.StaleStagedRecords('Verification failed'), {'verified': True, 'duration': 0.1})
    warnings = []
    result = _transfer.run_transfer(new, warnings.append)
    assert calls == [False, True]
    assert result['verified'] and result['dest_records_rewalked']
    assert len(warnings) == 1 and 'fresh walk' in warnings[0]


def test_a_stale_base_twice_fails_with_the_second_message():
    calls, new = _senders(_transfer.StaleStagedRecords('first'), _transfer.StaleStagedRecords('second'))
    with pytest.raises(_transfer.TransferError, match='second'):
        _transfer.run_transfer(new, [].append)
    assert calls == [False, True]


def test_other_failures_are_not_retried():
    calls, new = _senders(_transfer.TransferError('Verification failed: source modified'))
    with pytest.raises(_transfer.TransferError, match='source modified'):
        _transfer.run_transfer(new, [].append)
    assert calls == [False]


def test_a_pass_without_stale_records_runs_once():
    calls, new = _senders({'verified': True, 'changed': True})
    warnings = []
    assert _transfer.run_transfer(new, warnings.append) == {'verified': True, 'changed': True}
    assert calls == [False] and warnings == []


# --- the delta merge ------------------------------------------------------------------------------------------

def _reference_plan(src, dst):
    """What compute_delta plans, from two dicts (no hard links): the rules in its docstring, by set algebra."""
    send = set(p for p in src if p not in dst or dst[p][0] != src[p][0])
    delete = set(p for p in dst if p not in src)
    delete |= set(p for p in src if p in dst and dst[p][0] != src[p][0] and (src[p][1] != 'd' or dst[p][1] != 'd'))
    removed = delete - send
    for p in list(send) + list(delete):
        parent = _transfer.parent_of(p)
        if parent is not None and parent in src and src[parent][1] == 'd':
            send.add(parent)
    top = _transfer._topmost(sorted(delete, key=_transfer.walk_key))
    return send, top, [p for p in sorted(removed, key=_transfer.walk_key) if p in set(top)]


def _random_tree(rng, size):
    paths = {b'.': 'd'}
    dirs = [b'.']
    for i in range(size):
        parent = rng.choice(dirs)
        name = rng.choice([b'a', b'b', b'a-b', b'a.b', b'z', b'\xc3\xa9', b'n']) + b'%d' % rng.randrange(5)
        rel = (b'./' if parent == b'.' else parent + b'/') + name
        if rel in paths:
            continue
        paths[rel] = rng.choice('ddfffl')
        if paths[rel] == 'd':
            dirs.append(rel)
    return paths


@pytest.mark.parametrize('seed', range(40))
def test_delta_merge_equals_the_set_algebra_on_random_trees(seed):
    rng = random.Random(seed)
    src_types = _random_tree(rng, 60)
    dst_types = dict(src_types)
    for rel in list(dst_types):
        roll = rng.random()
        if rel != b'.' and roll < 0.15:
            del dst_types[rel]  # deleted on the source since (kept below when a child survives: fine either way)
    dst_types.update(_random_tree(rng, 20))  # entries only on the destination
    src = dict((p, (hashlib.md5(p).digest(), t)) for p, t in src_types.items())
    dst = dict((p, (src[p][0] if p in src and rng.random() < 0.8 else b'x' * 16, t)) for p, t in dst_types.items())
    order = _transfer.walk_key
    src_records = [(p, src[p][0], src[p][1], None) for p in sorted(src, key=order)]
    dst_records = [(p, dst[p][0], dst[p][1]) for p in sorted(dst, key=order)]
    plan = _transfer.compute_delta(iter(src_records), iter(dst_records))
    send, delete, removed = _reference_plan(src, dst)
    assert set(plan.send) == send
    assert plan.delete == delete
    assert plan.removed == removed


@pytest.mark.parametrize('dst_paths', [
    [b'.', b'./b', b'./a'],              # back after an aligned record
    [b'.', b'./a0', b'./c', b'./a1'],    # back after a record only on the destination
    [b'.', b'./b', b'./x', b'./w'],      # back among the records after the source's last one
    [b'.', b'./b', b'./b'],              # the same path twice
])
def test_delta_rejects_destination_records_out_of_walk_order(dst_paths):
    src = [(b'.', b'0' * 16, 'd', None), (b'./b', b'1' * 16, 'f', None), (b'./c', b'1' * 16, 'f', None)]
    dst = [(p, b'1' * 16, 'f') for p in dst_paths]
    with pytest.raises(_transfer.TransferError, match='walk order'):
        _transfer.compute_delta(iter(src), iter(dst))


def test_malformed_destination_records_are_a_protocol_error():
    good = _transfer.encode_records([(b'./a', b'0' * 16, 'f')])
    for payload in (good[:16] + b'Q' + good[17:], good[:-1]):  # unknown type code; no terminating NUL
        with pytest.raises(_transfer.TransferError, match='malformed record'):
            _transfer.decode_records(payload)


def test_the_inode_cache_warm_up_lists_the_tree_in_the_background_and_is_optional(staged, monkeypatch):
    root, dummy = staged
    rec = _transfer.Receiver(None)
    rec._warm_inode_cache(root)
    assert len(rec.procs) == 1 and rec.procs[0].wait(timeout=30) == 0  # GNU find read every entry
    monkeypatch.setenv('PATH', '/nonexistent')
    rec._warm_inode_cache(root)  # no find: nothing started, no error
    assert len(rec.procs) == 1


def test_a_record_that_does_not_start_with_its_path_drops_the_kept_records(staged):
    # The file stores each record without its first field (the path again): a record that is not
    # entry_record's shape cannot be stored that way, so nothing is kept rather than something wrong.
    root, path = staged
    writer = _transfer.StagedRecordsWriter(path)
    entry = _tree.Entry(b'.', os.fsencode(root), os.lstat(root))
    writer.add(entry, 'd', b'./elsewhere\0d\0', b'0' * 16)
    assert not writer.commit(migration_id='m1', summary={'fingerprint': 'x'})
    assert not os.path.exists(path) and not os.path.exists(path + '.tmp')
