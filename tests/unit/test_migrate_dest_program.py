# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migrate role's destination program (roles/migrate/vars/main.yml: migrate__dest_program),
run as the role runs it (``python -c PROGRAM JSON``), on authorized_keys files in tmp_path.

Its authorized_keys part: adding the temporary key, removing it, keeping every other line, and
staying correct when pairs from several sources edit one destination's file at once (without the
program's lock, the concurrent test lost lines in 5 runs of 5). And its judgement of which
destination volumes the transfer can write, against volume_transfer's own rule.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROLE_VARS = Path(__file__).resolve().parents[2] / 'roles' / 'migrate' / 'vars' / 'main.yml'
PROGRAM = yaml.safe_load(ROLE_VARS.read_text())['migrate__dest_program']


def start(args, program=PROGRAM):
    return subprocess.Popen([sys.executable, '-c', program, json.dumps(args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def answer(proc):
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)


def authorize_args(path, comment, root):
    # No volumes, containers or tools: the program then touches nothing but authorized_keys.
    return {'tools': [], 'root': str(root), 'volumes': [], 'containers': [], 'host_key': False,
            'authorize': {'path': str(path), 'comment': comment,
                          'line': 'from="10.0.0.1",no-pty ssh-ed25519 AAAAkey%s %s' % (comment[-2:], comment)}}


def revoke_args(path, comment):
    return {'revoke': {'path': str(path), 'comment': comment}}


def test_authorize_replaces_only_its_own_line_and_keeps_the_file_mode(tmp_path):
    keys = tmp_path / 'ssh' / 'authorized_keys'
    keys.parent.mkdir()
    # An admin's key, a stale line of this pair from an interrupted run, a comment; no final newline.
    keys.write_text('ssh-ed25519 AAAAadmin admin@host\nssh-ed25519 AAAAold volumeops-migrate-aa\n# keep me')
    keys.chmod(0o640)
    res = answer(start(authorize_args(keys, 'volumeops-migrate-aa', tmp_path)))
    assert res['authorized'] is True and res['missing'] == [] and res['volumes'] == {}
    assert keys.read_text() == ('ssh-ed25519 AAAAadmin admin@host\n# keep me\n'
                                'from="10.0.0.1",no-pty ssh-ed25519 AAAAkeyaa volumeops-migrate-aa\n')
    assert stat.S_IMODE(keys.stat().st_mode) == 0o640
    assert sorted(os.listdir(keys.parent)) == ['authorized_keys']  # no temp file left

    res = answer(start(revoke_args(keys, 'volumeops-migrate-aa')))
    assert res == {'revoked': True}
    assert keys.read_text() == 'ssh-ed25519 AAAAadmin admin@host\n# keep me\n'


def test_authorize_creates_a_private_file_and_revoke_never_creates_one(tmp_path):
    keys = tmp_path / 'new' / 'authorized_keys'
    assert answer(start(revoke_args(keys, 'volumeops-migrate-bb'))) == {'revoked': True}
    assert not keys.parent.exists()  # nothing to revoke: nothing made
    res = answer(start(authorize_args(keys, 'volumeops-migrate-bb', tmp_path)))
    assert res['authorized'] is True
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600 and stat.S_IMODE(keys.parent.stat().st_mode) == 0o700
    before = keys.stat()
    assert answer(start(revoke_args(keys, 'volumeops-migrate-other'))) == {'revoked': True}
    after = keys.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # no line of its own: untouched


def test_a_file_that_cannot_be_edited_is_reported_not_raised(tmp_path):
    keys = tmp_path / 'file-not-dir' / 'authorized_keys'
    (tmp_path / 'file-not-dir').write_text('')
    res = answer(start(authorize_args(keys, 'volumeops-migrate-cc', tmp_path)))
    assert 'authorized' not in res and 'file-not-dir' in res['authorize_error']
    keys = tmp_path / 'dir-not-file'
    keys.mkdir()
    res = answer(start(revoke_args(keys, 'volumeops-migrate-cc')))
    assert 'revoked' not in res and 'dir-not-file' in res['revoke_error']


def _concurrent_edits(tmp_path, program):
    keys = tmp_path / 'authorized_keys'
    keys.write_text('ssh-ed25519 AAAAadmin admin@host\n')
    comments = ['volumeops-migrate-%02d' % n for n in range(24)]
    for proc in [start(authorize_args(keys, c, tmp_path), program) for c in comments]:
        assert answer(proc)['authorized'] is True
    added = keys.read_text().splitlines()
    for proc in [start(revoke_args(keys, c), program) for c in comments[::2]]:
        assert answer(proc) == {'revoked': True}
    return added, keys.read_text().splitlines(), comments


def test_pairs_from_several_sources_editing_one_file_at_once_lose_no_line(tmp_path):
    added, left, comments = _concurrent_edits(tmp_path, PROGRAM)
    assert added[0] == 'ssh-ed25519 AAAAadmin admin@host'
    assert sorted(line.split()[-1] for line in added[1:]) == comments
    assert left[0] == 'ssh-ed25519 AAAAadmin admin@host'
    assert sorted(line.split()[-1] for line in left[1:]) == comments[1::2]


def test_authorize_with_expires_in_adds_sshds_expiry_time_in_local_time(tmp_path):
    keys = tmp_path / 'authorized_keys'
    args = authorize_args(keys, 'volumeops-migrate-ee', tmp_path)
    args['authorize']['expires_in'] = 2 * 3600
    before = time.time()
    assert answer(start(args))['authorized'] is True
    line = keys.read_text().splitlines()[-1]
    assert line.endswith('from="10.0.0.1",no-pty ssh-ed25519 AAAAkeyee volumeops-migrate-ee'), line
    stamp = line.split('"')[1]
    assert line.startswith('expiry-time="%s",' % stamp) and len(stamp) == 14, line
    ahead = time.mktime(time.strptime(stamp, '%Y%m%d%H%M%S')) - before  # sshd reads it in local time
    assert 2 * 3600 - 2 <= ahead <= 2 * 3600 + 2, ahead
    # expires_in 0 (migrate_key_lifetime_hours: 0): no expiry option.
    args['authorize']['expires_in'] = 0
    assert answer(start(args))['authorized'] is True
    assert keys.read_text().splitlines() == ['from="10.0.0.1",no-pty ssh-ed25519 AAAAkeyee volumeops-migrate-ee']


NFS = {'type': 'nfs', 'device': ':/export', 'o': 'addr=10.0.0.1'}


def test_which_volumes_the_transfer_can_write_is_judged_as_volume_transfer_judges_it(tmp_path):
    """The pre-flight's copy of the rule (the destination program cannot import the collection) agrees with
    volume_transfer's unwritable_volume_error for every kind of volume, with and without a helper image.
    No docker CLI on PATH: every volume counts as missing and is judged as the transfer would create it."""
    from ansible_collections.volumeops.docker.plugins.module_utils import _archive, _transfer
    cases = {'plain': ('local', {}), 'uid': ('local', {'o': 'uid=1000'}), 'nfs': ('local', NFS),
             'block': ('local', {'device': '/dev/sdb1'}), 'tmpfs': ('local', {'type': 'tmpfs', 'device': 'tmpfs'}),
             'plugin': ('rexray', {}), 'default': ('', {})}
    empty_path = tmp_path / 'bin'
    empty_path.mkdir()
    (tmp_path / 'volumes').mkdir()  # the Docker root's volumes directory, measured for plain volumes
    for image in ('', 'img'):
        args = {'tools': [], 'root': str(tmp_path), 'volumes': sorted(cases), 'containers': [], 'host_key': False,
                'helper_image': image,
                'create': {name: {'driver': d, 'options': o} for name, (d, o) in cases.items()}}
        proc = subprocess.run([sys.executable, '-c', PROGRAM, json.dumps(args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ, PATH=str(empty_path)),
                              check=False)
        assert proc.returncode == 0, proc.stderr
        volumes = json.loads(proc.stdout)['volumes']
        for name, (driver, options) in cases.items():
            refusal = _transfer.unwritable_volume_error(name, driver, options, image or None)
            got = volumes[name]
            assert (got['unwritable'] == '') == (refusal is None), (name, image, got, refusal)
            assert got['mounted'] == _archive.is_mounted_volume(driver, options), (name, got)
            assert ('avail' in got) == (not got['mounted']), (name, got)  # a mounted one's space is unknown here


def test_the_programs_survive_ansible_templating():
    """The role passes its programs through Jinja (variables in a task's argv): no Jinja markers in them."""
    programs = {k: v for k, v in yaml.safe_load(ROLE_VARS.read_text()).items() if k.endswith('_program')}
    assert 'migrate__dest_program' in programs and len(programs) >= 2
    for name, text in programs.items():
        for marker in ('{{', '{%', '{#'):
            assert marker not in text, (name, marker)


FAKE_DOCKER = r'''#!/bin/sh
# A docker CLI stand-in: no volumes, two running containers (one a transfer's holder), a daemon ID.
echo "$*" >> "$(dirname "$0")/calls"
case "$1" in
  volume) echo "[]"; echo "Error: No such volume: $4" >&2; exit 1 ;;
  container) echo "[]"; echo "Error: No such container: $4" >&2; exit 1 ;;
  info) echo '"ENGINE:ID:1"' ;;
  ps)
    printf '%s\t%s\t%s\n' '"web,web-alias"' '"a=b"' '"app-data,/srv/conf,/var/lib/app,cache"'
    printf '%s\t%s\t%s\n' '"volumeops-holder-1"' '"io.volumeops.holder=42"' '"app-data"'
    printf '%s\t%s\t%s\n' '"db"' '""' '"db-data"' ;;
esac
'''


def test_running_users_of_the_destination_volumes_and_the_daemon_id(tmp_path):
    """The destination's running containers that mount a destination volume (the transfer's holders left out),
    found by one docker ps, and the daemon's ID (the pre-flight refuses a destination that is the source's daemon)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'docker').write_text(FAKE_DOCKER)
    (bin_dir / 'docker').chmod(0o755)
    (tmp_path / 'volumes').mkdir()
    args = {'tools': [], 'root': str(tmp_path), 'volumes': ['app-data', 'cache', 'free'], 'containers': [],
            'host_key': False}
    proc = subprocess.run([sys.executable, '-c', PROGRAM, json.dumps(args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False,
                          env=dict(os.environ, PATH='%s:%s' % (bin_dir, os.environ['PATH'])))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res['docker_error'] == ''
    assert res['in_use'] == {'app-data': ['web'], 'cache': ['web']}
    assert res['engine_id'] == 'ENGINE:ID:1'
    ps, = [line for line in (bin_dir / 'calls').read_text().splitlines() if line.startswith('ps ')]
    assert ps.endswith('--filter volume=app-data --filter volume=cache --filter volume=free')
