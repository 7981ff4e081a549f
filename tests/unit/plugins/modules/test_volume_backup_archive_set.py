# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_backup's set of archives: a damaged newest archive (truncated after its sidecars were written) is
never "unchanged" nor counted by retention."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _archive
from ansible_collections.volumeops.docker.plugins.modules import volume_backup


def _sidecar(archive, manifest):
    with open(archive + '.sha256', 'w') as f:
        f.write('%s  %s\n' % ('0' * 64, os.path.basename(archive)))
    with open(archive + '.manifest.json', 'w') as f:
        json.dump(dict(dict(format='volumeops-archive', format_version=_archive.FORMAT_VERSION, volume='db',
                            entries=1, bytes=0, fingerprint='sha256:x'), **manifest), f)


@pytest.mark.parametrize('size, manifest, problem', [
    (10, dict(archive_size=10), None),
    (9, dict(archive_size=10), 'it is 9 bytes, its manifest says 10'),
    (0, dict(archive_size=10), 'it is 0 bytes, its manifest says 10'),
    (11, dict(archive_size=10), 'it is 11 bytes, its manifest says 10'),
    # Manifests written before archive_size: a non-empty file is trusted, an empty one is not.
    (10, dict(), None),
    (0, dict(), 'it is empty (0 bytes)'),
    (0, dict(archive_size=True), 'it is empty (0 bytes)'),  # not a size
])
def test_archive_size_problem(tmp_path, size, manifest, problem):
    path = tmp_path / 'db_20250101T000000.000000Z.tar'
    path.write_bytes(b'x' * size)
    assert _archive.archive_size_problem(str(path), manifest) == problem


def test_archive_size_problem_of_a_missing_file(tmp_path):
    assert _archive.archive_size_problem(str(tmp_path / 'gone.tar'), dict(archive_size=1)).startswith('it cannot be read')


def test_damaged_archives_are_not_whole_and_never_counted_by_retention(tmp_path):
    names = ['db_2025010%dT000000.000000Z.tar' % i for i in (1, 2, 3, 4)]
    contents = (b'a' * 5, b'b' * 5, b'', b'd' * 3)
    manifests = (dict(archive_size=5), dict(archive_size=5), dict(), dict(archive_size=5))
    for name, data, manifest in zip(names, contents, manifests):
        (tmp_path / name).write_bytes(data)
        _sidecar(str(tmp_path / name), manifest)
    paths = [str(tmp_path / n) for n in names]
    assert _archive.whole_archive_manifest(paths[0])['archive_size'] == 5
    assert _archive.whole_archive_manifest(paths[2]) is None  # empty, written before archive_size
    assert _archive.whole_archive_manifest(paths[3]) is None  # truncated
    assert _archive.paired_archive_manifest(paths[3])['archive_size'] == 5
    damaged = []
    whole = _archive.complete_archives(_archive.list_archives(str(tmp_path)), 'db', damaged=damaged)
    assert [i['path'] for i in whole] == paths[:2]
    assert [(i['path'], problem) for i, problem in damaged] == [
        (paths[2], 'it is empty (0 bytes)'), (paths[3], 'it is 3 bytes, its manifest says 5')]
    # keep=1 with this run's archive the newest: the whole ones go, the damaged ones stay.
    expired = _archive.expired_archives(whole, 1, current=str(tmp_path / 'db_20250105T000000.000000Z.tar'))
    assert [i['path'] for i in expired] == paths[:2]


@pytest.mark.skipif(not shutil.which('tar'), reason='needs GNU tar (the test bootstrap installs it)')
def test_sidecar_records_the_size_and_a_truncated_newest_archive_is_not_trusted(tmp_path, backup_manager):
    root = tmp_path / 'vol'
    root.mkdir()
    (root / 'db').write_bytes(b'v1' * 1000)
    manager = backup_manager()
    src = volume_backup.Source('db', root=str(root), data_path='local')
    final, res = manager.write(src, manager.summary(src))
    manifest = _archive.read_sidecar_manifest(final)
    assert manifest['archive_size'] == os.path.getsize(final) == res['size'] > 0
    assert 'archive_size' not in _archive.read_stream_manifest(final, 'none')  # only in the sidecar

    archives = {'db': _archive.list_archives(manager.p['dest'])}
    assert manager.newest(src, archives) == (archives['db'][0], manifest)
    assert manager.warnings == []

    with open(final, 'r+b') as f:
        f.truncate(res['size'] // 2)
    assert manager.newest(src, archives) == (None, None)  # so the run writes a new archive
    assert len(manager.warnings) == 1
    assert '%s is damaged (it is %d bytes, its manifest says %d)' % (final, res['size'] // 2, res['size']) \
        in manager.warnings[0]
    manager.newest(src, archives)
    assert len(manager.warnings) == 1  # once per run and archive


@pytest.mark.skipif(not shutil.which('tar'), reason='needs GNU tar (the test bootstrap installs it)')
@pytest.mark.parametrize('consistent', [True, False])
def test_sidecar_keeps_the_size_beside_the_best_effort_mark(tmp_path, monkeypatch, consistent, backup_manager):
    root = tmp_path / 'vol'
    root.mkdir()
    (root / 'db').write_bytes(b'v1')
    manager = backup_manager(consistency='best_effort')
    monkeypatch.setattr(manager, 'still_as_walked', lambda src, summary: consistent)
    src = volume_backup.Source('db', root=str(root), data_path='local')
    final, res = manager.write(src, manager.summary(src))
    manifest = _archive.read_sidecar_manifest(final)
    assert manifest['archive_size'] == os.path.getsize(final) == res['size']
    # A restore relaxes its tree check only for an archive whose sidecar manifest records the change.
    assert manifest.get('tree_changed_during_backup', False) is (not consistent)
