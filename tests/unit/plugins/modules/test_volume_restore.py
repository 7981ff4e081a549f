# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_restore's pure decisions: the member-count safety net and the driver options an archive may choose."""

from __future__ import annotations

import re

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _archive
from ansible_collections.volumeops.docker.plugins.modules import volume_restore

MANIFEST = {'volume': 'v', 'entries': 3, 'fingerprint': 'sha256:f', 'consistency': 'strict'}


def _manager(stream_manifest=None):
    m = volume_restore.RestoreManager.__new__(volume_restore.RestoreManager)
    m.result = {'archive': '/a/v_20250101T000000Z.tar.zst'}
    m.stream_manifest = dict(stream_manifest or MANIFEST)
    return m


def test_member_count_must_equal_the_manifest_entries():
    m = _manager()
    m._check('s', 's', MANIFEST, MANIFEST, 3)
    # One member more than the manifest lists: a member that GNU tar extracts but the validator never saw
    # would not show here (the validator's count), but one it saw and the manifest does not list does.
    with pytest.raises(_archive.StreamRejected, match='3 entries'):
        m._check('s', 's', MANIFEST, MANIFEST, 4)
    with pytest.raises(_archive.StreamRejected, match='checksum mismatch'):
        m._check('s', 't', MANIFEST, MANIFEST, 3)


def test_member_count_of_a_best_effort_backup_that_changed_may_differ():
    sidecar = dict(MANIFEST, consistency='best_effort', tree_changed_during_backup=True)
    _manager(dict(MANIFEST, consistency='best_effort'))._check('s', 's', MANIFEST, sidecar, 5)
    # The flag alone, in the unverified sidecar, does not excuse a strict archive.
    with pytest.raises(_archive.StreamRejected):
        _manager()._check('s', 's', MANIFEST, sidecar, 5)


def test_extracted_tree_must_have_exactly_the_checked_members():
    m = _manager()
    m._check_tree_count(3, 3)
    with pytest.raises(_archive.StreamRejected, match='GNU tar extracted 4 entries where the checked stream has 3'):
        m._check_tree_count(3, 4)


@pytest.mark.parametrize('options, host', [
    ({'type': 'none', 'o': 'bind', 'device': '/srv/data'}, '/srv/data'),
    ({'o': 'ro,rbind', 'device': '/srv/x'}, '/srv/x'),
    ({'type': 'none', 'device': '/srv/y'}, '/srv/y'),
    ({'type': 'ext4', 'device': '/dev/sdb1'}, '/dev/sdb1'),
    ({'type': 'nfs', 'o': 'addr=10.0.0.5,rw', 'device': ':/exports/pg'}, None),
    ({'type': 'cifs', 'o': 'addr=fs,username=u', 'device': '//fs/share'}, None),
    ({'type': 'tmpfs', 'device': 'tmpfs', 'o': 'size=10m'}, None),
    ({}, None),
])
def test_host_path_mounts_are_recognized(options, host):
    assert volume_restore.host_path_mount(options) == host


@pytest.mark.parametrize('options, refused', [
    ({'type': 'none', 'o': 'bind', 'device': '/srv/data'}, 'host path /srv/data'),
    ({'type': 'ext4', 'device': '/dev/sdb1'}, 'host path /dev/sdb1'),
    # overlay mounts the host directories its o names (found by QA: an archive emptied a host directory)
    ({'type': 'overlay', 'device': 'overlay', 'o': 'lowerdir=/a,upperdir=/b,workdir=/c'}, 'type overlay'),
    ({'type': 'btrfs', 'device': 'LABEL=data'}, 'type btrfs'),
    ({'o': 'size=1m'}, r'type \(none\)'),
    ({'type': 'nfs', 'o': 'addr=10.0.0.5,rw', 'device': ':/exports/pg'}, None),
    ({'type': 'nfs4', 'o': 'addr=10.0.0.5', 'device': ':/pg'}, None),
    ({'type': 'cifs', 'o': 'addr=fs,username=u', 'device': '//fs/share'}, None),
    ({'type': 'tmpfs', 'device': 'tmpfs', 'o': 'size=10m'}, None),
    ({}, None),
])
def test_driver_options_an_archive_may_choose(options, refused):
    got = volume_restore.archive_options_refusal(options)
    if refused is None:
        assert got is None
    else:
        assert got is not None and re.search(refused, got)


def test_manifest_copies_must_agree_on_what_decides_the_restore():
    assert volume_restore.manifest_mismatch(MANIFEST, dict(MANIFEST, created='later')) is None
    assert volume_restore.manifest_mismatch(MANIFEST, dict(MANIFEST, fingerprint='sha256:g')) == 'fingerprint'
    assert volume_restore.manifest_mismatch(MANIFEST, dict(MANIFEST, entries=4)) == 'entries'


def test_messages_end_in_one_full_stop():
    assert volume_restore.sentence('zstd: unsupported format ') == 'zstd: unsupported format.'
    assert volume_restore.sentence('refused.') == 'refused.'
