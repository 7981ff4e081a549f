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
  - With O(verify_stream=true) every archive is also read to its end the way M(volumeops.docker.volume_restore)
    reads it, without writing anything. It is decompressed, every tar member is checked by the same untrusted-archive
    rules, and the end-of-archive marker must be present. The number of members must equal the manifest's entry
    count, and the manifest in the stream must name the same tree (fingerprint, entries) as the sidecar copy.
    This catches what a checksum alone cannot, for example an archive without its C(.sha256) sidecar, or one whose
    sidecar was written for a file that was already cut short or damaged. A tar stream cut at a file boundary with an
    end marker added extracts "successfully" with GNU tar.
options:
  path:
    description: Directory holding the archives.
    type: path
    required: true
  volume:
    description: Only archives of this volume.
    type: str
  verify:
    description:
      - Re-hash each archive and report V(good) or V(bad) (or V(unverifiable) without a sidecar; a damaged
        checksum sidecar is V(bad), and so is a manifest sidecar that is there but not a readable manifest).
    type: bool
    default: false
  verify_stream:
    description:
      - Read each archive's whole stream as described above. Implies the checksum comparison of O(verify) (the hash is
        computed in the same read).
      - Without a sidecar, V(good) then means the stream is complete and agrees with its own manifest.
      - Costs about what reading the archive for a restore costs (decompression and parsing, nothing written).
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
- name: Read the newest archive of pgdata to its end, as a restore would (nothing is written)
  volumeops.docker.backup_info:
    path: /var/backups/volumes
    volume: pgdata
    verify_stream: true
  register: deep
- name: Fail unless the newest archive of pgdata would restore
  ansible.builtin.assert:
    that: (deep.archives | last).verified == 'good'
    fail_msg: "{{ (deep.archives | last).error | default('no archive') }}"
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
      description:
        - With O(verify=true) or O(verify_stream=true), V(good), V(bad) or V(unverifiable) (only the checksum was asked
          for and there is no sidecar).
        - A checksum sidecar that exists but is not in C(sha256sum) format makes the archive V(bad).
      type: str
    stream_entries:
      description: With O(verify_stream=true), the number of members read from the stream (the manifest not counted).
      type: int
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
  description:
    - The newest archive per volume name (path), whichever host made it. In a directory shared by several hosts,
      choose from RV(archives) by C(manifest.source_host) instead.
  returned: always
  type: dict
'''

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.volumeops.docker.plugins.module_utils import _archive


def describe(info, verify, verify_stream):
    path = info['path']
    item = dict(path=path, volume=info['volume'], created=info['created'],
                age_seconds=round(time.time() - info['epoch'], 3), size=os.path.getsize(path),
                compression=info['compression'], sha256=None, manifest=None)
    sidecar_manifest = None
    # Each file read on its own: a damaged checksum sidecar must neither hide the manifest nor pass for a
    # missing one (that is "unverifiable", and a check for "bad" would let the archive through).
    sidecar_problem = None
    try:
        item['sha256'] = _archive.read_sidecar_sha256(path)
    except _archive.ArchiveError as exc:
        sidecar_problem = str(exc)
        item['error'] = sidecar_problem
    try:
        sidecar_manifest = _archive.read_sidecar_manifest(path)
        if sidecar_manifest is None and os.path.lexists(path + '.manifest.json'):
            # There but unreadable: retention and the unchanged check pass over such an archive for good.
            sidecar_problem = '; '.join(e for e in (sidecar_problem, 'the manifest sidecar %s.manifest.json is not a '
                                                    'readable volumeops manifest' % path) if e)
            item['error'] = sidecar_problem
        item['manifest'] = sidecar_manifest or _archive.read_stream_manifest(path, info['compression'])
    except _archive.ArchiveError as exc:
        item['error'] = '; '.join(e for e in (item.get('error'), str(exc)) if e)
    if not (verify or verify_stream):
        return item
    if item['sha256'] is None and sidecar_problem is None and not verify_stream:
        item['verified'] = 'unverifiable'
        return item
    actual, stream_problem = read_whole_stream(item, sidecar_manifest) if verify_stream else (None, None)
    if actual is None and item['sha256'] is not None:
        # Only the checksum was asked for, or the stream was not read to its end: hash the whole file on
        # its own, so that a file changed since it was written is named as such first.
        actual = _archive.sha256_file(path)
    problems = [pr for pr in (sidecar_problem, checksum_problem(item['sha256'], actual), stream_problem)
                if pr is not None]
    item['verified'] = 'bad' if problems else 'good'
    if problems:
        item['error'] = '; '.join(problems)
    return item


def checksum_problem(expected, actual):
    """Why the archive's hash ``actual`` disagrees with its sidecar's ``expected``, or None (also without a sidecar)."""
    if expected is None or actual == expected:
        return None
    return 'checksum mismatch: the file hashes to %s, the sidecar says %s' % (actual, expected)


def read_whole_stream(item, sidecar_manifest):
    """Read the archive to its end as a restore would, hashing it meanwhile.

    (sha256 of the file, or None when the stream was not read to its end; why it is bad, or None).
    """
    try:
        with open(item['path'], 'rb') as f:
            seen = _archive.list_stream(_archive.file_chunks(f), item['compression'], allow_devices=True)
    except _archive.ArchiveError as exc:  # corrupt compression, a hostile or cut member, no end marker
        return None, 'stream: %s' % exc
    except OSError as exc:
        return None, 'stream: %s' % _archive.describe_os_error(exc, 'Reading %s' % item['path'])
    item['stream_entries'] = seen['entries']
    inside = seen['manifest']
    if seen['entries'] != inside.get('entries'):
        # A stream cut at a member boundary, even with an end marker added, holds fewer members.
        return seen['sha256'], ('stream: %d members, but its manifest lists %s entries (the archive is incomplete)'
                                % (seen['entries'], inside.get('entries')))
    if sidecar_manifest is not None and (sidecar_manifest.get('fingerprint'), sidecar_manifest.get('entries')) != \
            (inside.get('fingerprint'), inside.get('entries')):
        return seen['sha256'], ('stream: its manifest (%s entries, %s) differs from the sidecar manifest (%s entries, %s)'
                                % (inside.get('entries'), inside.get('fingerprint'), sidecar_manifest.get('entries'),
                                   sidecar_manifest.get('fingerprint')))
    return seen['sha256'], None


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type='path', required=True), volume=dict(type='str'),
                           verify=dict(type='bool', default=False), verify_stream=dict(type='bool', default=False)),
        supports_check_mode=True,
    )
    p = module.params
    if not os.path.isdir(p['path']):
        module.fail_json(msg='path %s is not a directory.' % p['path'])
    try:
        archives = [describe(info, p['verify'], p['verify_stream'])
                    for info in _archive.list_archives(p['path'], p['volume'])]
    except OSError as exc:
        module.fail_json(msg='Reading archives in %s failed: %s' % (p['path'], exc))
    newest = {}
    for a in archives:
        newest[a['volume']] = a['path']
    module.exit_json(changed=False, archives=archives, newest=newest)


if __name__ == '__main__':
    main()
