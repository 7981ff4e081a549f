#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: backup_info
short_description: List volumeops backup archives in a directory, optionally verifying them
version_added: 0.1.0
author:
  - volumeops contributors (@volumeops)
description:
  - Lists the archives written by M(volumeops.docker.volume_backup) in a directory on the managed host, newest
    last, with their manifest (read from the C(<archive>.manifest.json) sidecar, or from the start of the stream).
  - With O(verify=true) every archive is re-hashed and compared with its C(<archive>.sha256) sidecar.
options:
  path:
    description: Directory holding the archives.
    type: path
    required: true
  volume:
    description: Only archives of this volume.
    type: str
  verify:
    description: Re-hash each archive and report V(good) or V(bad) (or V(unverifiable) without a sidecar).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  idempotent:
    support: full
    description: Never changes anything.
notes:
  - Does not need the Docker daemon.
seealso:
  - module: volumeops.docker.volume_backup
  - module: volumeops.docker.volume_restore
'''

EXAMPLES = r'''
- name: List the archives of pgdata
  volumeops.docker.backup_info:
    path: /var/backups/volumes
    volume: pgdata
  register: backups

- name: Verify every archive in a directory
  volumeops.docker.backup_info:
    path: /var/backups/volumes
    verify: true
  register: check

- name: Fail when an archive is bad
  ansible.builtin.assert:
    that: check.archives | selectattr('verified', 'equalto', 'bad') | list | length == 0
'''

RETURN = r'''
archives:
  description: The archives, oldest first.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: Path of the archive.
      type: str
    volume:
      description: Volume name from the file name.
      type: str
    created:
      description: Creation time (UTC, ISO 8601) from the file name.
      type: str
    age_seconds:
      description: Seconds since creation.
      type: float
    size:
      description: Size of the archive file in bytes.
      type: int
    compression:
      description: V(zstd), V(gzip) or V(none).
      type: str
    sha256:
      description: Checksum recorded in the sidecar (None without a sidecar).
      type: str
    manifest:
      description: The archive's manifest (None when unreadable; see RV(archives[].error)).
      type: dict
    verified:
      description: With O(verify=true), V(good), V(bad) or V(unverifiable).
      type: str
    error:
      description: Why the manifest could not be read or the archive is bad.
      type: str
  sample:
    - path: /var/backups/volumes/pgdata_20250101T120000.000000Z.tar.zst
      volume: pgdata
      created: '2025-01-01T12:00:00+00:00'
      age_seconds: 3600.0
      size: 123456
      compression: zstd
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      manifest: {volume: pgdata, entries: 1234, bytes: 45678901}
      verified: good
newest:
  description: The newest archive per volume (path).
  returned: always
  type: dict
'''

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.volumeops.docker.plugins.module_utils import _archive


def describe(info, verify):
    path = info['path']
    item = dict(path=path, volume=info['volume'], created=info['created'],
                age_seconds=round(time.time() - info['epoch'], 3), size=os.path.getsize(path),
                compression=info['compression'], sha256=None, manifest=None)
    try:
        item['sha256'] = _archive.read_sidecar_sha256(path)
        item['manifest'] = _archive.read_sidecar_manifest(path) or _archive.read_stream_manifest(path, info['compression'])
    except _archive.ArchiveError as exc:
        item['error'] = str(exc)
    if verify:
        if item['sha256'] is None:
            item['verified'] = 'unverifiable'
        else:
            actual = _archive.sha256_file(path)
            item['verified'] = 'good' if actual == item['sha256'] else 'bad'
            if actual != item['sha256']:
                item['error'] = 'checksum mismatch: the file hashes to %s, the sidecar says %s' % (actual, item['sha256'])
    return item


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type='path', required=True), volume=dict(type='str'),
                           verify=dict(type='bool', default=False)),
        supports_check_mode=True,
    )
    p = module.params
    if not os.path.isdir(p['path']):
        module.fail_json(msg='path %s is not a directory.' % p['path'])
    try:
        archives = [describe(info, p['verify']) for info in _archive.list_archives(p['path'], p['volume'])]
    except OSError as exc:
        module.fail_json(msg='Reading archives in %s failed: %s' % (p['path'], exc))
    newest = {}
    for a in archives:
        newest[a['volume']] = a['path']
    module.exit_json(changed=False, archives=archives, newest=newest)


if __name__ == '__main__':
    main()
