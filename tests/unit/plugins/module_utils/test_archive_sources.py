# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The source an archive was made from (manifest_source), and retention counting only that source's archives."""

from __future__ import annotations

import json
import os

from ansible_collections.volumeops.docker.plugins.module_utils import _archive


def test_manifest_source_new_and_old_manifests(tmp_path):
    assert _archive.manifest_source({'volume': 'db', 'source_kind': 'volume', 'source_host': 'h1'}) == ('volume', 'db', 'h1')
    assert _archive.manifest_source({'volume': 'data', 'source_kind': 'path', 'source_real_path': '/srv/a/data',
                                     'source_path': '/srv/a/./data', 'source_host': 'h1'}) == ('path', '/srv/a/data', 'h1')
    # Written before source_kind existed: a volume backup (source_path null) is of the volume ...
    assert _archive.manifest_source({'volume': 'db', 'source_path': None, 'source_host': 'h1'}) == ('volume', 'db', 'h1')
    # ... and a path backup is of the directory it recorded, resolved as it is now.
    (tmp_path / 'real').mkdir()
    os.symlink('real', str(tmp_path / 'link'))
    assert _archive.manifest_source({'volume': 'real', 'source_path': str(tmp_path / 'link'), 'source_host': 'h'}) == (
        'path', str(tmp_path / 'real'), 'h')


def _whole(dest, name, manifest):
    path = os.path.join(str(dest), name)
    with open(path, 'wb') as f:
        f.write(b'x')
    with open(path + '.sha256', 'w') as f:
        f.write('%s  %s\n' % ('0' * 64, name))
    with open(path + '.manifest.json', 'w') as f:
        json.dump(dict(format='volumeops-archive', format_version=_archive.FORMAT_VERSION, entries=1, bytes=0,
                       fingerprint='sha256:x', **manifest), f)


def test_complete_archives_count_only_the_same_source(tmp_path):
    _whole(tmp_path, 'data_20250101T000000.000000Z.tar.zst', dict(volume='data', source_kind='path',
                                                                  source_real_path='/srv/app1/data', source_host='h'))
    _whole(tmp_path, 'data_20250102T000000.000000Z.tar.zst', dict(volume='data', source_kind='path',
                                                                  source_real_path='/srv/app2/data', source_host='h'))
    _whole(tmp_path, 'data_20250103T000000.000000Z.tar.zst', dict(volume='data', source_path=None, source_host='h'))
    _whole(tmp_path, 'data_20250104T000000.000000Z.tar.zst', dict(volume='data', source_kind='volume', source_host='h2'))
    listing = _archive.list_archives(str(tmp_path))

    def names(infos):
        return [i['name'][:13] for i in infos]
    assert names(_archive.complete_archives(listing, 'data', source=('path', '/srv/app1/data', 'h'))) == ['data_20250101']
    assert names(_archive.complete_archives(listing, 'data', source=('path', '/srv/app2/data', 'h'))) == ['data_20250102']
    assert names(_archive.complete_archives(listing, 'data', source=('volume', 'data', 'h'))) == ['data_20250103']
    assert names(_archive.complete_archives(listing, 'data', source=('volume', 'data', 'h2'))) == ['data_20250104']
    assert len(_archive.complete_archives(listing, 'data')) == 4
