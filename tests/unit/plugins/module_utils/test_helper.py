# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which volumes data_path=local may read or write through their mountpoint (pure logic, /proc of this process)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _archive, _helper

MOUNTINFO = (b'22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n'
             b'40 22 8:1 /srv/export /var/lib/docker/volumes/nfs\\040data/_data rw - ext4 /dev/sda1 rw\n')


@pytest.mark.parametrize('driver, options, mounted', [
    ('local', {}, False), (None, None, False), ('local', {'o': 'uid=1'}, False),
    ('local', {'type': 'nfs', 'device': ':/x'}, True), ('local', {'device': '/dev/sdb'}, True),
    ('rexray', {}, True),
])
def test_mounted_only_in_use(driver, options, mounted):
    assert _archive.mounted_only_in_use(driver, options) is mounted


def test_mount_points_read_from_mountinfo_with_escapes(monkeypatch, tmp_path):
    info = tmp_path / 'mountinfo'
    info.write_bytes(MOUNTINFO)
    real_open = open
    monkeypatch.setattr('builtins.open', lambda path, *a, **k: real_open(
        str(info) if path == '/proc/self/mountinfo' else path, *a, **k))
    monkeypatch.setattr(_helper.os.path, 'realpath', lambda p: p)
    assert _helper.is_mount_point('/var/lib/docker/volumes/nfs data/_data')
    assert not _helper.is_mount_point('/var/lib/docker/volumes/other/_data')
    nfs = {'type': 'nfs', 'device': ':/x'}
    assert _helper.local_path_error('v', 'local', nfs, '/var/lib/docker/volumes/nfs data/_data') is None
    err = _helper.local_path_error('v', 'local', nfs, '/var/lib/docker/volumes/other/_data')
    assert 'mounted only while a container uses it' in err and 'data_path=helper' in err
    assert _helper.local_path_error('v', 'local', {}, '/var/lib/docker/volumes/other/_data') is None
    assert 'would be mounted only while' in _helper.local_path_error('v', 'local', nfs, None)


@pytest.mark.parametrize('version', [1, 2])
@pytest.mark.parametrize('main, with_merge', [(_helper.FINGERPRINT_MAIN, False), (_helper.RECOVER_MAIN, True)])
def test_helper_scripts_run_on_their_own(tmp_path, main, with_merge, version):
    """The scripts the helper container runs need nothing but the standard library: run here by a bare
    interpreter (isolated mode, no PYTHONPATH, so no collection importable), they give the same
    fingerprint as _tree does in this process, of the fingerprint version asked for (a hard link makes
    versions 1 and 2 differ)."""
    import json
    import subprocess
    import sys
    from ansible_collections.volumeops.docker.plugins.module_utils import _tree
    (tmp_path / 'd').mkdir()
    (tmp_path / 'd' / 'f').write_bytes(b'x')
    os.symlink('d/f', str(tmp_path / 'l'))
    os.link(str(tmp_path / 'd' / 'f'), str(tmp_path / 'd' / 'g'))
    script = _helper._script(main, with_merge=with_merge)
    proc = subprocess.run([sys.executable, '-I', '-c', script, str(tmp_path), '[]', '[]', str(version)],
                          capture_output=True, check=False, env={'PATH': os.environ.get('PATH', '/usr/bin:/bin')})
    assert proc.returncode == 0, proc.stderr.decode(errors='replace')
    got = json.loads(proc.stdout)
    want = _tree.fingerprint(str(tmp_path), skip_types=(), version=version)
    assert (got['fingerprint'], got['entries']) == (want.fingerprint, want.entries) and want.entries == 5
    other = _tree.fingerprint(str(tmp_path), skip_types=(), version=3 - version)
    assert got['fingerprint'] != other.fingerprint


def test_helper_tar_script_streams_tars_archive_and_offsets_its_status(tmp_path):
    """TAR_MAIN (GNU tar with the read-ahead, in the helper container) run here by a bare interpreter: the archive
    is tar's own, the status is TAR_STATUS_BASE + tar's, and a failure of the wrapper itself is none of those
    (the runner then reports it instead of taking Python's exit 1 for tar's "file changed")."""
    import io
    import json
    import subprocess
    import sys
    import tarfile
    (tmp_path / 'd').mkdir()
    (tmp_path / 'd' / 'f').write_bytes(b'x' * 5000)
    (tmp_path / 'skip.log').write_bytes(b'y')
    script = _helper._script(_helper.TAR_MAIN)
    env = {'PATH': os.environ.get('PATH', '/usr/bin:/bin')}

    def run(root, exclude, tar_argv=None):
        argv = tar_argv or _archive.tar_create_argv(str(root), exclude=exclude)
        return subprocess.run([sys.executable, '-I', '-c', script, str(root), json.dumps(argv), json.dumps(exclude)],
                              capture_output=True, check=False, env=env)

    proc = run(tmp_path, ['*.log'])
    assert proc.returncode == _helper.TAR_STATUS_BASE, proc.stderr.decode(errors='replace')
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tf:
        assert sorted(m.name for m in tf.getmembers()) == ['.', './d', './d/f']
    # tar's own failure (a missing directory: exit 2) comes out offset.
    assert run(tmp_path / 'missing', []).returncode == _helper.TAR_STATUS_BASE + 2
    # The wrapper's own failures are outside the range.
    assert run(tmp_path, [], tar_argv=['/nonexistent/tar']).returncode == 2
    bad = subprocess.run([sys.executable, '-I', '-c', script, str(tmp_path), 'not json', '[]'],
                         capture_output=True, check=False, env=env)
    assert not _helper.TAR_STATUS_BASE <= bad.returncode <= _helper.TAR_STATUS_BASE + 2
