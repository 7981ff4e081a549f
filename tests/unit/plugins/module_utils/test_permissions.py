# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _permissions as perm
from ansible_collections.volumeops.docker.plugins.module_utils._permissions import (
    Plan, PermissionsError, parse_group, parse_mode, parse_passwd, resolve_container_user, resolve_group,
    resolve_owner, resolve_target, run,
)

ROOT = os.geteuid() == 0


# --- modes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('text, current, is_dir, expected', [
    ('0750', 0o644, False, 0o750),
    ('750', 0o4777, False, 0o750),
    ('2775', 0o755, True, 0o2775),
    ('0', 0o777, True, 0),
    ('u=rwX,g=rX,o=', 0o644, False, 0o640),
    ('u=rwX,g=rX,o=', 0o744, False, 0o750),
    ('u=rwX,g=rX,o=', 0o600, True, 0o750),
    ('u=rwX,g=rX,o=', 0o2777, True, 0o2750),   # '=' keeps a directory's setgid (chmod(1) rule)
    ('u=rwX,g=rX,o=', 0o4755, False, 0o750),   # ... but not a file's setuid
    ('g+s', 0o755, True, 0o2755),
    ('g-s', 0o2755, True, 0o755),
    ('u+s', 0o755, False, 0o4755),
    ('+t', 0o777, True, 0o1777),
    ('o-t', 0o1777, True, 0o777),
    ('a=r', 0o777, False, 0o444),
    ('=r', 0o777, False, 0o444),               # no umask: empty who means all
    ('go-w', 0o777, False, 0o755),
    ('u+x,g+x', 0o600, False, 0o710),
    ('g=u', 0o640, False, 0o660),
    ('o=g', 0o750, False, 0o755),
    ('u=rw,go=', 0o777, False, 0o600),
    ('a+X', 0o644, False, 0o644),               # no x anywhere on a file: X adds nothing
    ('a+X', 0o744, False, 0o755),
    ('a+X', 0o600, True, 0o711),
    ('u-w+x', 0o644, False, 0o544),             # several actions in one clause
])
def test_parse_and_apply_modes(text, current, is_dir, expected):
    spec = parse_mode(text)
    assert spec.apply(current | (stat.S_IFDIR if is_dir else stat.S_IFREG), is_dir) == expected, \
        '%s on %o -> %o' % (text, current, spec.apply(current, is_dir))


@pytest.mark.parametrize('bad', ['u=rwz', '8', '07777x', '77777', 'q+r', 'u', 'u=r,,g=r', '', 'u=rw g=r', 'u+ug'])
def test_invalid_modes_are_refused(bad):
    with pytest.raises(PermissionsError) as exc:
        parse_mode(bad, 'dir_mode')
    assert 'dir_mode' in str(exc.value)


@pytest.mark.parametrize('bad', [755, 0o755, True, 1.5, ['0755']])
def test_non_string_modes_are_refused(bad):
    with pytest.raises(PermissionsError) as exc:
        parse_mode(bad)
    assert 'quoted' in str(exc.value)


# --- users and groups -----------------------------------------------------------------------------

PASSWD = 'root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\npostgres:x:999:999::/var/lib/postgresql:/bin/sh\n' \
         'app:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n'
GROUP = 'root:x:0:\npostgres:x:999:\napp:x:1000:\nstaff:x:50:app\nbad\n'


def test_parse_passwd_and_group():
    passwd = parse_passwd(PASSWD)
    assert passwd['postgres'] == (999, 999)
    assert passwd['nobody'] == (65534, 65534)
    assert 'broken line' not in passwd and len(passwd) == 4
    assert parse_group(GROUP) == {'root': 0, 'postgres': 999, 'app': 1000, 'staff': 50}


@pytest.mark.parametrize('spec, expected', [
    ('', (0, 0)),
    ('postgres', (999, 999)),
    ('1000', (1000, 1000)),          # numeric, known: its primary group
    ('4242', (4242, 0)),             # numeric, unknown: GID 0 as Docker does
    ('app:staff', (1000, 50)),
    ('1000:4000', (1000, 4000)),
    ('postgres:0', (999, 0)),
])
def test_resolve_container_user(spec, expected):
    assert resolve_container_user(spec, parse_passwd(PASSWD), parse_group(GROUP), 'container c') == expected


def test_unknown_names_are_refused():
    passwd, groups = parse_passwd(PASSWD), parse_group(GROUP)
    with pytest.raises(PermissionsError, match="Unknown user 'mysql'.*container c"):
        resolve_owner('mysql', passwd, 'container c')
    with pytest.raises(PermissionsError, match="Unknown group 'wheel'"):
        resolve_group('wheel', groups, 'container c')
    with pytest.raises(PermissionsError, match='like_container'):
        resolve_owner('postgres', None, None)
    with pytest.raises(PermissionsError, match='like_container'):
        resolve_group('postgres', None, None)
    with pytest.raises(PermissionsError, match='out of range'):
        resolve_owner('4294967295', passwd, 'c')
    assert resolve_owner('123', None, None) == (123, None)


@pytest.mark.parametrize('value', ['\u00b2', '\u0661\u0662\u0663\u0664', '\uff11\uff12'])
def test_non_ascii_digits_are_not_ids(value):
    # '²' made int() raise (a traceback); Arabic-Indic digits were read as 1234.
    with pytest.raises(PermissionsError, match='is not a numeric ID'):
        resolve_owner(value, None, None)
    with pytest.raises(PermissionsError, match='is not a numeric ID'):
        resolve_group(value, None, None)
    with pytest.raises(PermissionsError, match='Unknown user'):
        resolve_owner(value, parse_passwd(PASSWD), 'container c')
    text = 'odd:x:%s:%s::/:/bin/sh\n' % (value, value)
    assert parse_passwd(text) == {}
    assert parse_group('odd:x:%s:\n' % value) == {}


# --- target path ----------------------------------------------------------------------------------

def test_resolve_target_refusals(tmp_path):
    root = tmp_path / 'vol'
    (root / 'sub' / 'deep').mkdir(parents=True)
    outside = tmp_path / 'outside'
    outside.mkdir()
    (root / 'up').symlink_to('../outside')
    (root / 'abs').symlink_to(str(outside))
    (root / 'inner').symlink_to('sub')
    assert resolve_target(str(root), '.') == str(root)
    assert resolve_target(str(root), 'sub/deep/') == str(root / 'sub' / 'deep')
    assert resolve_target(str(root), 'inner/deep') == str(root / 'sub' / 'deep')
    for bad, words in [('/etc', 'absolute'), ('sub/../..', "'..'"), ('..', "'..'"), ('up', 'outside'),
                       ('abs/x', 'outside'), ('missing', 'does not exist')]:
        with pytest.raises(PermissionsError, match=words):
            resolve_target(str(root), bad)


# --- plan and apply (as an unprivileged user only modes can change; as root everything) ------------

def _tree(tmp_path):
    root = tmp_path / 'vol'
    (root / 'd' / 'e').mkdir(parents=True)
    for rel in ('f', 'd/g', 'd/e/h'):
        (root / rel).write_text('x')
        os.chmod(str(root / rel), 0o644)
    os.chmod(str(root / 'd'), 0o755)
    outside = tmp_path / 'outside.txt'
    outside.write_text('secret')
    os.chmod(str(outside), 0o600)
    (root / 'link').symlink_to(str(outside))
    return root, outside


def _modes(root):
    return {os.path.relpath(os.path.join(d, n), str(root)): stat.S_IMODE(os.lstat(os.path.join(d, n)).st_mode)
            for d, dirs, files in os.walk(str(root)) for n in dirs + files}


def test_modes_check_mode_then_apply_then_idempotent(tmp_path):
    root, outside = _tree(tmp_path)
    plan = Plan(mode=parse_mode('0700'), dir_mode=parse_mode('u=rwX,g=rX,o='),
                file_mode=parse_mode('u=rw,g=r,o='), recurse=True, sample_size=2)
    before = _modes(root)
    result = run(str(root), '.', plan, check_mode=True)
    assert _modes(root) == before, 'check mode changed something'
    assert result['examined'] == 7
    # root (0755->0700), d, d/e (0755->0750), f, d/g, d/e/h (0644->0640); the symlink is never chmod-ed
    assert result['changed_entries'] == 6 and result['changes']['mode'] == 6
    assert result['changes']['owner'] == 0 and result['changes']['group'] == 0
    assert len(result['changes']['sample']) == 2 and result['changes']['sample_truncated'] is True
    assert result['changes']['sample'][0] == dict(path='.', before=dict(uid=os.getuid(), gid=os.getgid(), mode='0755'),
                                                  after=dict(uid=os.getuid(), gid=os.getgid(), mode='0700'))
    assert result['root']['mode'] == '0700'

    result = run(str(root), '.', plan)
    assert result['changed_entries'] == 6
    modes = _modes(root)
    assert stat.S_IMODE(os.lstat(str(root)).st_mode) == 0o700
    assert modes['d'] == 0o750 and modes['d/e'] == 0o750
    assert modes['f'] == 0o640 and modes['d/e/h'] == 0o640
    assert stat.S_IMODE(os.stat(str(outside)).st_mode) == 0o600, 'followed the symlink'

    again = run(str(root), '.', plan)
    assert again['changed_entries'] == 0 and again['examined'] == 7


def test_without_recurse_only_the_target_is_examined(tmp_path):
    root, _outside = _tree(tmp_path)
    result = run(str(root), 'd', Plan(mode=parse_mode('0711')))
    assert result['examined'] == 1 and result['changed_entries'] == 1 and result['target_path'] == 'd'
    assert stat.S_IMODE(os.lstat(str(root / 'd')).st_mode) == 0o711
    assert stat.S_IMODE(os.lstat(str(root / 'd' / 'g')).st_mode) == 0o644


@pytest.mark.skipif(not ROOT, reason='chown needs root')
def test_ownership_symlinks_and_setuid_kept(tmp_path):
    root, outside = _tree(tmp_path)
    os.chmod(str(root / 'f'), 0o4755)
    plan = Plan(uid=1000, gid=1001, recurse=True)
    result = run(str(root), '.', plan)
    assert result['changes']['owner'] == 7 and result['changes']['mode'] == 0
    for rel in ('', 'f', 'd', 'd/e/h', 'link'):
        st = os.lstat(str(root / rel))
        assert (st.st_uid, st.st_gid) == (1000, 1001), rel
    assert stat.S_IMODE(os.lstat(str(root / 'f')).st_mode) == 0o4755, 'chown cleared setuid and it was not restored'
    st = os.stat(str(outside))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600), 'symlink target touched'
    assert run(str(root), '.', plan)['changed_entries'] == 0


@pytest.mark.skipif(not ROOT, reason='chown needs root')
def test_group_only_leaves_owner(tmp_path):
    root, _outside = _tree(tmp_path)
    run(str(root), '.', Plan(gid=50, recurse=True))
    st = os.lstat(str(root / 'd' / 'g'))
    assert (st.st_uid, st.st_gid) == (0, 50)


def test_plan_round_trip():
    plan = Plan(uid=1, gid=None, mode=parse_mode('0700'), dir_mode=None, file_mode=parse_mode('a=r'),
                recurse=True, sample_size=3)
    again = perm.plan_from_dict(json.loads(json.dumps(perm.plan_to_dict(plan))))
    assert perm.plan_to_dict(again) == perm.plan_to_dict(plan)


def test_helper_main_reports_errors_as_json(tmp_path, capsys):
    request = dict(root=str(tmp_path), path='nope', plan=perm.plan_to_dict(Plan(uid=1)), check_mode=True)
    assert perm.helper_main(['x', json.dumps(request)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == dict(ok=False, msg="path 'nope' does not exist in the volume.")


# --- the parallel split ---------------------------------------------------------------------------

def _wide_tree(root, dirs=12, files=5, depth=3):
    os.makedirs(str(root))
    count = 1
    for d in range(dirs):
        path = root
        for level in range(depth):
            path = path / ('l%d_%d' % (level, d))
            path.mkdir()
            count += 1
            for f in range(files):
                (path / ('f%d' % f)).write_text('x')
                count += 1
    (root / 'top').write_text('y')
    (root / 'lnk').symlink_to('/etc/passwd')
    return count + 2


@pytest.mark.parametrize('workers', [2, 3])
def test_parallel_walk_visits_every_entry_once_and_matches_sequential(tmp_path, workers):
    seq_root, par_root = tmp_path / 'seq', tmp_path / 'par'
    total = _wide_tree(seq_root)
    assert _wide_tree(par_root) == total
    plan = Plan(mode=parse_mode('0711'), dir_mode=parse_mode('u=rwx,g=rx,o='), file_mode=parse_mode('0600'),
                recurse=True, sample_size=1000)
    check = run(str(par_root), '.', plan, check_mode=True, workers=workers)
    assert _modes(par_root) == _modes(seq_root), 'check mode changed something'
    seq = run(str(seq_root), '.', plan, workers=1)
    par = run(str(par_root), '.', plan, workers=workers)
    for result in (check, seq, par):
        assert result['examined'] == total
        assert result['changed_entries'] == total - 1       # all but the symlink
        assert result['changes']['mode'] == total - 1
        assert result['root'] == seq['root']
    assert sorted(s['path'] for s in par['changes']['sample']) == sorted(s['path'] for s in seq['changes']['sample'])
    assert len(set(s['path'] for s in par['changes']['sample'])) == total - 1, 'an entry was visited twice'
    assert _modes(par_root) == _modes(seq_root)
    assert run(str(par_root), '.', plan, workers=workers)['changed_entries'] == 0


def test_parallel_sample_is_bounded_and_deterministic(tmp_path):
    root = tmp_path / 'vol'
    _wide_tree(root)
    plan = Plan(file_mode=parse_mode('0600'), recurse=True, sample_size=7)
    first = run(str(root), '.', plan, check_mode=True, workers=3)
    second = run(str(root), '.', plan, check_mode=True, workers=3)
    assert len(first['changes']['sample']) == 7 and first['changes']['sample_truncated']
    assert first['changes']['sample'] == second['changes']['sample']


def test_walk_descend_callback_stops_descending(tmp_path):
    from ansible_collections.volumeops.docker.plugins.module_utils._tree import walk
    root = tmp_path / 'vol'
    (root / 'a' / 'b').mkdir(parents=True)
    (root / 'a' / 'f').write_text('x')
    (root / 'c').mkdir()
    names = [e.relpath for e in walk(str(root), descend=lambda e: e.relpath != b'./a')]
    assert names == [b'.', b'./a', b'./c']
    assert [e.relpath for e in walk(str(root))] == [b'.', b'./a', b'./c', b'./a/b', b'./a/f']


def test_recurse_on_a_file_target(tmp_path):
    root, _outside = _tree(tmp_path)
    plan = Plan(mode=parse_mode('0600'), file_mode=parse_mode('0640'), recurse=True)
    result = run(str(root), 'd/g', plan, workers=2)
    assert result['examined'] == 1 and result['target_path'] == 'd/g'
    assert stat.S_IMODE(os.lstat(str(root / 'd' / 'g')).st_mode) == 0o600


# --- a failure part-way: the entry is named, the changes already made are counted ---------------------

def _refuse_fchmod_of(monkeypatch, victim):
    """fchmod fails like on an immutable file (EPERM, and no file name, as fchmod(2) errors have none)."""
    victim_ino = os.lstat(str(victim)).st_ino
    real_fchmod = os.fchmod

    def fchmod(fd, mode):
        if os.fstat(fd).st_ino == victim_ino:
            raise PermissionError(1, 'Operation not permitted')
        return real_fchmod(fd, mode)
    monkeypatch.setattr(perm.os, 'fchmod', fchmod)


def test_a_failed_entry_is_named_and_earlier_changes_are_counted(tmp_path, monkeypatch):
    root = tmp_path / 'vol'
    for name in ('a', 'b', 'c'):
        (root / name).mkdir(parents=True)
        (root / name / 'x').write_text('x')
        os.chmod(str(root / name / 'x'), 0o644)
    _refuse_fchmod_of(monkeypatch, root / 'b' / 'x')
    plan = Plan(file_mode=parse_mode('0600'), recurse=True)
    with pytest.raises(PermissionsError) as info:
        run(str(root), '.', plan, workers=1)
    assert 'Changing %s failed: Operation not permitted' % (root / 'b' / 'x') in str(info.value)
    changed_now = sum(1 for n in ('a', 'b', 'c') if stat.S_IMODE(os.lstat(str(root / n / 'x')).st_mode) == 0o600)
    assert changed_now >= 1
    assert info.value.changed == changed_now
    # Check mode changes nothing, so it fails nowhere and counts no change.
    assert run(str(root), '.', plan, check_mode=True)['changed_entries'] == 3 - changed_now


@pytest.mark.parametrize('workers', [2, 3])
def test_a_failed_entry_in_a_worker_counts_every_change_made(tmp_path, monkeypatch, workers):
    root = tmp_path / 'vol'
    _wide_tree(root)
    victim = root / 'l0_1' / 'l1_1' / 'l2_1' / 'f0'
    _refuse_fchmod_of(monkeypatch, victim)
    plan = Plan(file_mode=parse_mode('0600'), recurse=True)
    before = _modes(root)
    with pytest.raises(PermissionsError) as info:
        run(str(root), '.', plan, workers=workers)
    assert str(victim) in str(info.value)
    after = _modes(root)
    assert info.value.changed == sum(1 for k in after if after[k] != before[k])
    assert info.value.changed > 0


def test_helper_main_reports_the_changes_made_before_a_failure(tmp_path, monkeypatch, capsys):
    root = tmp_path / 'vol'
    root.mkdir()
    for name in ('a', 'b'):
        (root / name).write_text('x')
        os.chmod(str(root / name), 0o644)
    _refuse_fchmod_of(monkeypatch, root / 'b')
    plan = Plan(file_mode=parse_mode('0600'), recurse=True)
    request = dict(root=str(root), path='.', plan=perm.plan_to_dict(plan), check_mode=False)
    perm.helper_main(['x', json.dumps(request)])
    out = json.loads(capsys.readouterr().out)
    assert out['ok'] is False and out['changed'] == 1 and str(root / 'b') in out['msg']


def _deep_tree(root, levels=250):
    """A chain of 30-character directories deeper than PATH_MAX, made relative to descriptors."""
    root.mkdir()
    fd = os.open(str(root), os.O_RDONLY)
    for _i in range(levels):
        os.mkdir('d' * 30, dir_fd=fd)
        child = os.open('d' * 30, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open('leaf', os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    os.close(fd)


@pytest.mark.parametrize('check_mode', [True, False])
def test_a_tree_deeper_than_path_max_fails_with_one_short_message(tmp_path, check_mode):
    root = tmp_path / 'vol'
    _deep_tree(root)
    plan = Plan(dir_mode=parse_mode('0700'), recurse=True)
    with pytest.raises(PermissionsError) as info:
        run(str(root), '.', plan, check_mode=check_mode, workers=1)
    msg = str(info.value)
    assert msg.startswith('The tree is too deep: an entry ') and 'PATH_MAX' in msg
    assert len(msg) < 600, 'the 4 KB path is not in the message'
    if check_mode:
        assert info.value.changed == 0
    else:
        assert info.value.changed > 100  # what was reached was changed, and is counted
