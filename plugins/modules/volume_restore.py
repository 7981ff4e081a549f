#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: volume_restore
short_description: Restore a Docker volume from a volumeops archive, verified before anything changes
version_added: 0.1.0
author:
  - volumeops contributors (@volumeops)
description:
  - Restores an archive written by M(volumeops.docker.volume_backup) into a volume, keeping every property the
    archive holds (numeric owners, all permission bits, sub-second mtimes, hard links, sparse files, FIFOs,
    symlinks as they are, xattrs including C(security.capability), POSIX ACLs, the volume root's owner and mode).
  - The restore itself reads the archive once (besides its first member, the manifest, read before anything
    else). Its compressed bytes are hashed while it is decompressed; every tar header is
    checked (the archive is treated as untrusted) before GNU tar extracts it into a staging directory on the
    same filesystem as the volume. Only when the checksum matches the C(.sha256) sidecar and the staged tree
    matches the manifest's entry count and tree fingerprint is the staging directory swapped in (atomically with
    C(renameat2(RENAME_EXCHANGE)) where available). On any failure the staging directory is removed and the volume
    is as it was.
  - The checks before the restore read and decompress the whole archive once more in two cases, O(existing=merge)
    on a volume that is not empty (for the list of the archive's paths, to see whether the volume already holds
    them as archived) and diff mode (for the paths that would change). On a big archive that is 2 to 3 times the
    reading time of the restore alone. Each read is checked like the restore's.
  - Check mode reads and checks the whole archive as a real run does (checksum, manifests, every member, with
    O(allow_devices) as given) whenever it would restore, so an archive a real run refuses fails in check mode
    too.
  - The manifest sidecar (C(<archive>.manifest.json)) must agree with the checksummed manifest inside the archive
    (volume, entry count, fingerprint) before anything is decided on it.
  - The staged tree is written to disk (C(syncfs), in the background while it is extracted and once more before the
    swap; C(sync) inside the helper container on that path) before it replaces the old content, so a power loss
    right after the restore cannot leave empty files where the old content was. The restore's duration includes
    that write.
  - Refused archives are those with absolute paths, C(..), entries below a symlink or hard link, hard links to anything but an
    earlier member, device nodes (unless O(allow_devices=true)), unknown member types, global pax headers with
    records other than comments, two extended headers of one kind before a member, truncated streams (also
    when cut at a file boundary), checksum or manifest mismatches, and archives whose member count differs from
    their manifest's entry count or from what GNU tar extracted.
  - On the local data path the restore holds the volume's lock, C(.volumeops.lock) beside its C(_data). A second
    restore of the same volume then fails at once instead of running alongside.
    Leftovers of an interrupted restore beside C(_data) are removed under that lock (reported in RV(recovered);
    check mode only reports them); when C(_data) is missing because a swap was interrupted between its two
    renames, the parked old content is moved back.
options:
  volume:
    description: Volume to restore into.
    type: str
    required: true
  archive:
    description:
      - Path of the archive on the managed host, or V(latest) for the newest archive of O(source_volume) in O(src).
      - V(latest) passes over archives without their C(.sha256) sidecar (a final-named archive always gets one, so
        such a file was copied in by hand or lost it), unless O(require_checksum=false).
    type: str
    required: true
  src:
    description: Directory searched when O(archive=latest).
    type: path
  source_volume:
    description: Volume name whose newest archive O(archive=latest) picks. Defaults to O(volume).
    type: str
  source_host:
    description:
      - With O(archive=latest), pick only among archives made on this host (the C(source_host) of their manifest,
        the backup host's node name as C(uname -n) gives it).
      - Without it, O(archive=latest) fails when the archives of O(source_volume) in O(src) come from more than one
        host (a directory shared by several hosts), instead of restoring whichever host's data is newest.
      - Only with O(archive=latest).
    type: str
  create:
    description:
      - Create the volume when it does not exist, with the driver, driver options and labels from the archive's
        manifest (the checksummed one inside the archive), or from O(driver), O(driver_options), O(labels) when
        given. A volume created by a restore that then fails is removed again.
      - Driver options from the archive are used only for C(nfs), C(nfs4), C(cifs), C(smb3) and C(tmpfs) mounts
        that mount no path of this host. Others are refused (a bind mount, C(o) with C(bind) or C(rbind),
        C(type=none), a C(device) that is an absolute local path, an C(overlay) mount, which names host
        directories); give O(driver_options) to create such a volume.
      - A created volume with driver options (NFS, CIFS, a bind mount) or of another driver shows what its
        mount source already holds. It is treated like an existing volume (O(existing), idempotency); when
        that refuses, the volume is removed again, which leaves the data at its source alone. Check mode cannot
        see that content and says so in a warning.
    type: bool
    default: true
  driver:
    description: Driver for a volume created by the restore (overrides the manifest's).
    type: str
  driver_options:
    description: Driver options for a volume created by the restore (override the manifest's; needed for options
      that mount a host path, see O(create)).
    type: dict
  labels:
    description: Labels for a volume created by the restore (override the manifest's).
    type: dict
  existing:
    description:
      - What to do when the volume is not empty. V(fail) refuses. V(replace) makes the volume hold exactly the
        archive's content (old content removed only after the new content is verified). V(merge) adds the
        archive's entries, replacing entries of the same path, keeping others; not changed when every archived
        entry is already in the volume as archived.
      - With the helper container path V(replace) swaps the top-level entries by renames inside the volume; an
        error during the swap moves everything back, and a swap interrupted by a killed helper is resolved by
        the next restore of the volume (rolled back before the point of no return, completed after it). During
        the swap the volume shows a mix of old and new top-level entries, so use O(stop_containers=true).
        On that path the volume's top-level names starting with C(.volumeops-staging-), C(.volumeops-old-) and
        C(.volumeops-ready-) are reserved; a directory of the volume's own data named so is taken for a leftover.
      - V(merge) is not atomic on either path; a failure part-way keeps the entries moved so far (and reports
        C(changed) when there were any). Where the archive has a directory and the volume a file or symlink (or
        the reverse), the volume's entry is replaced; a symlink is never followed.
      - Except with V(merge), the local data path exchanges the volume's directory. Containers that use it would
        keep the old directory, which is then deleted under them. A volume used by running containers is
        therefore refused there unless O(stop_containers=true).
    type: str
    choices: [fail, replace, merge]
    default: fail
  stop_containers:
    description:
      - Stop the running containers that use the volume during the restore and start exactly those again
        afterwards, also when the restore fails. Paused and restarting containers count as running (a paused one is
        started again running, not paused).
      - Refused for a memory volume (C(type=tmpfs) or C(ramfs)), whose content lives only while a container mounts
        it. A restore into such a volume needs a running container that keeps it mounted (otherwise it is refused
        too, since what it wrote would be gone when it ends).
    type: bool
    default: false
  force:
    description:
      - Restore even when the volume already matches the archive's tree fingerprint. That fingerprint covers
        metadata only (paths, types, sizes, modification times, permissions, owners, link targets, extended
        attributes), not file content; a file damaged in place with its size and mtime kept matches. O(existing)
        still applies (V(fail) refuses a volume that is not empty).
    type: bool
    default: false
  allow_devices:
    description: Allow character and block device nodes in the archive.
    type: bool
    default: false
  require_checksum:
    description: Fail when the archive has no C(<archive>.sha256) sidecar. With V(false) a missing sidecar is a
      warning and the manifest checks remain.
    type: bool
    default: true
  data_path:
    description:
      - V(auto) writes the mountpoint directly for C(local) volumes without mount options when the daemon is local,
        and uses a helper container otherwise. V(local) and V(helper) force one path.
      - V(local) is refused for a volume with mount options (NFS, a bind mount, tmpfs, ...) or of another driver,
        before anything changes, because the local path stages beside the volume's directory and exchanges it whole, which
        a filesystem mounted there cannot be (and stopping its containers would unmount it).
    type: str
    choices: [auto, local, helper]
    default: auto
  helper_image:
    description: Image for the helper container (GNU tar at C(/usr/bin/tar), C(/usr/bin/python3)); never pulled.
    type: str
extends_documentation_fragment:
  - volumeops.docker.docker
attributes:
  check_mode:
    support: full
    description: Predicts the result (creation, no change, refusal, replacement) without writing anything.
  diff_mode:
    support: full
    description: With O(existing=replace) or O(existing=merge) the diff gives counts of added, changed and removed
      paths and a sample of them, on both data paths (the helper path lists the volume with a metadata walk in a
      helper container).
  idempotent:
    support: full
    description: Not changed when the volume already matches the archive's tree fingerprint (equal metadata of
      every entry; file content is not compared, see O(force)).
notes:
  - GNU tar (and zstd or gzip for compressed archives) are needed on the managed host.
  - The staging directory lives next to the volume's data (same filesystem); the volume's filesystem needs room
    for a second copy during O(existing=replace).
seealso:
  - module: volumeops.docker.volume_backup
  - module: volumeops.docker.backup_info
'''

EXAMPLES = r'''
- name: Restore the newest archive of pgdata into a new volume
  volumeops.docker.volume_restore:
    volume: pgdata
    archive: latest
    src: /var/backups/volumes

- name: Replace the content of a volume, stopping its containers meanwhile
  volumeops.docker.volume_restore:
    volume: pgdata
    archive: /var/backups/volumes/pgdata_20250101T120000.000000Z.tar.zst
    existing: replace
    stop_containers: true

- name: Move data from a local volume to an NFS-backed one
  volumeops.docker.volume_restore:
    volume: pgdata-nfs
    source_volume: pgdata
    archive: latest
    src: /var/backups/volumes
    driver: local
    driver_options:
      type: nfs
      o: addr=10.0.0.5,rw
      device: ':/exports/pgdata'
    helper_image: registry.example.com/tools/gnu-tar:1
'''

RETURN = r'''
archive:
  description: The archive restored (or that would be).
  returned: always
  type: str
volume:
  description: The volume name.
  returned: always
  type: str
created:
  description: Whether the volume was (or would be) created.
  returned: always
  type: bool
sha256:
  description: SHA-256 of the archive as read.
  returned: when the archive was read
  type: str
entries:
  description: Entries in the archive (manifest).
  returned: always
  type: int
fingerprint:
  description: Tree fingerprint from the manifest; the volume's tree equals it after a replace.
  returned: always
  type: str
data_path:
  description: V(local) or V(helper).
  returned: always
  type: str
stopped_containers:
  description: Containers stopped for the restore and started again.
  returned: always
  type: list
  elements: str
recovered:
  description: What was done (in check mode, what would be done) to resolve the leftovers of an interrupted
    restore found in the volume (helper path) or beside its data (local path).
  returned: when there were leftovers
  type: list
  elements: str
duration:
  description: Seconds the module took (reading, checking and, unless in check mode, writing).
  returned: success
  type: float
  sample: 8.7
changes:
  description: With diff mode, counts and a sample of the paths that would change.
  returned: when diff mode is on and the volume would change
  type: dict
  sample: {added: 3, changed: 1, removed: 0, sample: ['./a', './b']}
'''

import json
import os
import time
import uuid

from ansible_collections.volumeops.docker.plugins.module_utils._docker_client import AnsibleDockerClient
from ansible_collections.volumeops.docker.plugins.module_utils._validation import volume_name_error, stringify_labels
from ansible_collections.volumeops.docker.plugins.module_utils import _archive, _tree
from ansible_collections.volumeops.docker.plugins.module_utils._helper import (
    Helper, HelperError, MergeStopped, local_path_error)

SAMPLE = 20
UNCHANGED_MSG = ('The volume already matches the archive\'s tree fingerprint (paths, types, sizes, modification '
                 'times, permissions, owners, link targets, extended attributes): nothing was restored. File '
                 'content is not compared; set force: true to restore anyway.')
UNCHANGED_MERGE_MSG = ('Every entry of the archive is already in the volume with the archived metadata (tree '
                       'fingerprint of those entries): nothing was merged. File content is not compared; set '
                       'force: true to merge anyway.')


def host_path_mount(options):
    """The host path that local driver ``options`` would mount into the volume, or None.

    A bind mount (``o`` with ``bind``/``rbind``, or ``type: none``) mounts a directory of this host; a
    ``device`` that is an absolute local path mounts a block device or directory of this host. NFS
    (``host:/path``, ``:/path``), CIFS (``//server/share``) and tmpfs mount nothing of the host's.
    """
    words = [w.strip() for w in str(options.get('o', '')).split(',')]
    device = str(options.get('device', ''))
    if 'bind' in words or 'rbind' in words or str(options.get('type', '')).strip() == 'none':
        return device or '(no device given)'
    if device.startswith('/') and not device.startswith('//'):
        return device
    return None


# The fields of the two manifest copies (in the stream, and the sidecar) that decide what a restore does.
MANIFEST_DECIDING_KEYS = ('volume', 'entries', 'fingerprint')


def manifest_mismatch(stream_manifest, sidecar_manifest):
    """The first deciding field in which the sidecar copy differs from the in-stream manifest, or None."""
    for key in MANIFEST_DECIDING_KEYS:
        if stream_manifest.get(key) != sidecar_manifest.get(key):
            return key
    return None


def sentence(text):
    """``text`` ending with a full stop (tool messages often end without one), for the message that follows."""
    text = str(text).rstrip()
    return text if text.endswith(('.', '!', '?')) else text + '.'


# Mount types whose local driver options a restore takes from an archive's manifest: they mount nothing of this
# host's (overlay, for one, mounts host directories named in its ``o``; a block device type names a host device).
ARCHIVE_MOUNT_TYPES = ('nfs', 'nfs4', 'cifs', 'smb3', 'tmpfs')


def archive_options_refusal(options):
    """Why a volume must not be created with the local driver ``options`` an archive's manifest gives, or None."""
    host = host_path_mount(options)
    if host is not None:
        return ('which mount the host path %s into it: the restore would write into that host directory (and empty '
                'it with existing: replace)' % host)
    kind = str(options.get('type', '')).strip()
    if options and kind not in ARCHIVE_MOUNT_TYPES:
        return ('which mount a filesystem of type %s: of an archive\'s options only %s mounts are used (others, '
                'such as overlay, can mount directories of this host)' % (kind or '(none)', ', '.join(ARCHIVE_MOUNT_TYPES)))
    return None


def _mtime_ns(text):
    """Nanoseconds from a pax/ustar mtime string ('1700000000.5', '1700000000')."""
    whole, _sep, frac = str(text).partition('.')
    return int(whole) * 10 ** 9 + int((frac + '000000000')[:9])


def _show(path):
    text = path.decode('utf-8', 'backslashreplace')
    return text if text.startswith('./') or text == '.' else './' + text


class RestoreManager(object):
    def __init__(self, client):
        self.client = client
        self.module = client.module
        self.p = client.params
        self.check_mode = self.module.check_mode
        self.stopped = []
        self.current_listing = None  # diff mode, local path: the volume's listing from the summary's walk
        self.warnings = []
        self.merging = False  # set once a merge starts moving entries (a merge is not atomic)
        self.merge_progress = []  # paths a local merge changed so far (merge_into)
        self.stream_manifest = None
        self.stream_checked = False  # the whole archive was read and checked (check and diff modes)
        self.lock = None  # the volume's lock (local data path)
        self.remove_on_fail = False  # the volume was created by this run: a refusal removes it again
        self.result = dict(changed=False, volume=self.p['volume'], created=False, stopped_containers=[])
        self.started = time.time()

    def fail(self, msg):
        if self.remove_on_fail:
            self._remove_volume()
            self.result.update(changed=bool(self.result.get('recovered')), created=False)
        for w in self.warnings:
            self.module.warn(w)
        self.warnings = []
        self.client.fail(msg, **self.result)

    # -- archive
    def resolve_archive(self):
        p = self.p
        if p['archive'] == 'latest':
            if not p['src']:
                self.fail('archive=latest needs src (the directory holding the archives).')
            source = p['source_volume'] or p['volume']
            archives = [a for a in _archive.list_archives(p['src'], source) if os.path.exists(a['path'] + '.sha256')
                        or not p['require_checksum']]
            if not archives:
                self.fail('No archive of volume %s in %s.' % (source, p['src']))
            return self.latest_of_one_host(archives, source)['path']
        if p['source_host']:
            # Not silently ignored: whoever sets it expects the archive to be that host's.
            self.fail('source_host chooses among the archives of archive=latest; with an archive path, leave it out.')
        path = p['archive']
        if os.path.isdir(path):
            self.fail('Archive %s is a directory, not an archive file (name the file, or use archive: latest with '
                      'src: %s).' % (path, path))
        if not os.path.isfile(path):
            self.fail('Archive %s does not exist.' % path)
        return path

    def latest_of_one_host(self, archives, source):
        """The newest of ``archives`` (oldest first), when they are one host's or O(source_host) chose one.

        A volume of one name on several hosts backed up into one shared directory: by time alone, a restore
        would give one host's volume another host's data."""
        p = self.p
        for a in archives:
            manifest = _archive.read_sidecar_manifest(a['path'])
            a['source_host'] = _archive.manifest_source(manifest)[2] if manifest else None
        if p['source_host']:
            archives = [a for a in archives if a['source_host'] == p['source_host']]
            if not archives:
                self.fail('No archive of volume %s made on host %s in %s.' % (source, p['source_host'], p['src']))
            return archives[-1]
        hosts = sorted(set(a['source_host'] for a in archives if a['source_host']))
        if len(hosts) > 1:
            self.fail('The archives of volume %s in %s were made on several hosts (%s): archive=latest would pick '
                      'whichever is newest. Set source_host to the host whose data this volume gets, or give the '
                      "archive's path." % (source, p['src'], ', '.join(hosts)))
        return archives[-1]

    # -- volume
    def helper(self):
        if not self.p['helper_image']:
            self.fail('This volume needs the helper container path (data_path=helper, a non-local driver or '
                      'daemon, or a local volume with mount options): set helper_image.')
        with self.client.errors('Inspecting the helper image'):
            self.client.require_local_image(self.p['helper_image'])
        return Helper(self.client, self.p['helper_image'])

    def data_path(self, info, driver, options):
        mode = self.p['data_path']
        mp = None  # a volume still to be created is judged by the driver and options it will get
        if info is not None:
            driver, options, mp = info.get('Driver'), info.get('Options'), info.get('Mountpoint')
        direct_ok = (self.client.is_local and driver == 'local' and not options
                     and (info is None or (mp and os.path.isdir(mp))))
        if mode == 'local':
            if not self.client.is_local:
                self.fail('data_path=local needs a local daemon (docker_host unix://).')
            if _archive.mounted_only_in_use(driver, options):
                # The local path stages beside _data and exchanges the directory whole: a filesystem mounted
                # on _data can be neither exchanged nor reached by a rename from beside it, and stopping its
                # containers (stop_containers) would unmount it under the restore.
                err = local_path_error(self.p['volume'], driver, options, mp) or (
                    'Volume %s (driver %s, options %s) is a filesystem mounted on its directory while a container '
                    'uses it: data_path=local restores only plain local volumes (it exchanges their directory '
                    'whole). Use data_path=auto or data_path=helper (with helper_image).'
                    % (self.p['volume'], driver or 'local', json.dumps(options or {}, sort_keys=True)))
                self.fail(err + ' Nothing was changed.')
            return 'local'
        if mode == 'helper':
            return 'helper'
        return 'local' if direct_ok else 'helper'

    def refuse_memory_volume(self, info, driver, options):
        """Fail for a memory volume (tmpfs) whose restored content would not outlive the restore.

        Its content lives only while a container mounts it: with no running user, each helper container mounts
        a new empty one (what the restore wrote is gone when it ends), and stopping its users (stop_containers)
        destroys what it held and then what the restore wrote.
        """
        p = self.p
        if info is not None:
            driver, options = info.get('Driver'), info.get('Options')
        if not _archive.is_memory_volume(driver, options):
            return
        users = []
        if info is not None:
            with self.client.errors('Listing containers using %s' % p['volume']):
                users = [c['name'] for c in self.client.containers_using_volume(p['volume']) if c['running']]
        what = 'volume %s (type=%s)' % (p['volume'], (options or {}).get('type'))
        if not users:
            self.fail('The %s keeps its content only while a container mounts it, and no running container does: what '
                      'the restore wrote would be gone when it ends. Start a container that uses the volume first '
                      '(and restore without stop_containers). Nothing was changed.' % what)
        if p['stop_containers']:
            self.fail('stop_containers would stop %s, the last running user(s) of %s, which keeps its content only '
                      'while a container mounts it: its content, and then what the restore wrote, would be gone. '
                      'Nothing was stopped or changed. Restore without stop_containers.'
                      % (', '.join(sorted(users)), what))

    def current_summary(self, info, path_kind, helper, version):
        """The volume's TreeSummary, of fingerprint ``version`` (the manifest's, which it is compared with)."""
        if info is None:
            return None
        if path_kind == 'local':
            if self.module._diff:  # the diff needs the listing too: one walk for both
                summary, self.current_listing = _tree.fingerprint_and_listing(info['Mountpoint'], _archive.SKIP_TYPES,
                                                                              version=version)
                return summary
            return _archive.tree_summary(info['Mountpoint'], version=version)
        # What an interrupted restore left in the volume (staging, parked old content, a half-done swap) is
        # resolved first, so that it neither counts in the comparison nor lingers; not in check mode.
        summary = helper.fingerprint(self.p['volume'], recover=not self.check_mode, version=version)
        for action in helper.recovered:
            self.warnings.append('Volume %s: %s left by an interrupted restore.' % (self.p['volume'], action))
        if helper.recovered:
            self.result['changed'] = True
            self.result['recovered'] = helper.recovered
        return summary

    def merged_summary(self, info, path_kind, helper, archive, compression, version):
        """Summary of only the volume's entries that the archive has (merge idempotency)."""
        paths = set()

        def on_member(m):
            paths.add(m.path)
        with open(archive, 'rb') as f:
            _archive.list_stream(_archive.file_chunks(f), compression, allow_devices=True, on_member=on_member)
        paths.add(b'.')
        if path_kind == 'local':
            return _archive.subset_summary(info['Mountpoint'], paths, version=version)
        return helper.subset_fingerprint(self.p['volume'], paths, version=version)

    # -- containers
    def stop_containers(self):
        if not self.p['stop_containers']:
            return
        with self.client.errors('Listing containers using %s' % self.p['volume']):
            users = self.client.containers_using_volume(self.p['volume'])
        for c in users:
            if c['running']:
                with self.client.errors('Stopping container %s' % c['name']):
                    self.client.api.stop(c['id'])
                self.stopped.append(c)
                self.result['stopped_containers'].append(c['name'])

    def start_containers(self):
        errors = []
        for c in self.stopped:
            try:
                self.client.api.start(c['id'])
            except Exception as exc:
                errors.append('%s: %s' % (c['name'], exc))
        return errors

    # -- diff
    def changes(self, archive, compression, current, existing):
        """Counts and a sample of what restoring ``archive`` would do to a volume whose ``_tree.listing`` is ``current``."""
        members = {}

        def on_member(m):
            mt = m.mtime.decode() if isinstance(m.mtime, bytes) else str(m.mtime)
            members[m.path] = (m.type, m.size if m.type == 'f' else 0, _mtime_ns(mt), m.mode & 0o7777, m.uid, m.gid,
                               m.linkname if m.type == 'l' else b'')
        self.check_stream(archive, compression, on_member=on_member)
        added, changed, removed = [], [], []
        for path, rec in members.items():
            cur = current.get(path)
            if cur is None:
                added.append(path)
            elif rec[0] == 'h':
                continue  # a hard link's properties are those of its target, compared there
            elif rec != cur:
                changed.append(path)
        if existing != 'merge':
            removed = [p for p in current if p not in members]
        sample = [('+ ' + _show(x)) for x in sorted(added)[:SAMPLE]] + \
                 [('~ ' + _show(x)) for x in sorted(changed)[:SAMPLE]] + \
                 [('- ' + _show(x)) for x in sorted(removed)[:SAMPLE]]
        return dict(added=len(added), changed=len(changed), removed=len(removed), sample=sample[:SAMPLE])

    def check_stream(self, archive, compression, on_member=None):
        """Read the whole archive and check it as a restore would, writing nothing (check and diff modes): the
        checksum, the manifests, every member (allow_devices as given). Raises ArchiveError."""
        with open(archive, 'rb') as f:
            res = _archive.list_stream(_archive.file_chunks(f), compression, allow_devices=self.p['allow_devices'],
                                       on_member=on_member)
        self._check(res['sha256'], self.expected_sha, res['manifest'], self.manifest, res['entries'])
        self.stream_checked = True

    # -- main
    def run(self):
        p = self.p
        archive = self.resolve_archive()
        self.result['archive'] = archive
        compression = _archive.compression_from_path(archive)
        try:
            expected_sha = _archive.read_sidecar_sha256(archive)
            # The in-stream manifest (the first member, covered by the checksum) decides how a volume is
            # created; the sidecar copy, which nothing verifies, only serves the cheap comparisons and is
            # checked against the in-stream one when the archive is read.
            self.stream_manifest = _archive.read_stream_manifest(archive, compression)
            sidecar = _archive.read_sidecar_manifest(archive)
            mismatch = manifest_mismatch(self.stream_manifest, sidecar) if sidecar is not None else None
            if mismatch:
                # Before anything is decided on it: "already matches" on a sidecar swapped in from another
                # archive would silently skip the restore (a rollback that does not happen).
                raise _archive.StreamRejected('the manifest inside the archive does not match %s.manifest.json '
                                              '(%s).' % (archive, mismatch))
            manifest = sidecar or self.stream_manifest
        except _archive.ArchiveError as exc:
            self.fail('Restore of %s from %s refused: %s Nothing was changed.' % (p['volume'], archive, sentence(exc)))
        self.expected_sha, self.manifest = expected_sha, manifest
        if expected_sha is None:
            if p['require_checksum']:
                self.fail('Archive %s has no checksum file %s.sha256; refusing to restore an unverifiable archive '
                          '(set require_checksum: false to rely on the manifest checks only).' % (archive, archive))
            self.warnings.append('Archive %s has no checksum file; only the manifest checks apply.' % archive)
        self.result.update(entries=manifest['entries'], fingerprint=manifest['fingerprint'])

        with self.client.errors('Inspecting volume %s' % p['volume']):
            info = self.client.inspect_volume(p['volume'])
        if info is None and not p['create']:
            self.fail('Volume %s does not exist (set create: true to create it).' % p['volume'])
        driver, options, labels = self.creation_args(info)
        if info is not None and self.client.is_local and info.get('Mountpoint') \
                and not _archive.mounted_only_in_use(info.get('Driver'), info.get('Options')):
            # Before the data path is chosen: an interrupted swap may have left the volume without _data.
            self.local_leftovers(info)
        path_kind = self.data_path(info, driver, options)
        self.result['data_path'] = path_kind
        self.refuse_memory_volume(info, driver, options)
        helper = self.helper() if path_kind == 'helper' else None
        if path_kind == 'local':
            missing = _archive.check_tools(compression)
            if missing:
                self.fail('Missing on the managed host: %s.' % ', '.join(missing))

        if info is not None:
            if self.decide(info, path_kind, helper, archive, compression, manifest):
                return self.finish()
        elif _archive.mounted_only_in_use(driver, options) and self.check_mode:
            self.warnings.append(
                'Volume %s would be created with driver %s and options %s: whatever its mount source already '
                'holds cannot be seen before it exists. A real run checks it like an existing volume (existing: '
                '%s) and removes the volume again when it refuses.'
                % (p['volume'], driver, json.dumps(options, sort_keys=True), p['existing']))
        self.result['changed'] = True
        self.result['created'] = info is None
        if info is not None and not p['stop_containers']:
            with self.client.errors('Listing containers using %s' % p['volume']):
                running = [c['name'] for c in self.client.containers_using_volume(p['volume']) if c['running']]
            if running and path_kind == 'local' and p['existing'] != 'merge':
                # The swap exchanges the volume's directory: the containers keep the old one, which is then
                # deleted under them (their files vanish, what they write is lost until they restart).
                self.result['changed'] = bool(self.result.get('recovered'))
                self.fail('Volume %s is used by running containers (%s): replacing its content would delete the '
                          'directory they are using (they keep the old one until restarted, and anything they '
                          'write meanwhile is lost). Set stop_containers: true to stop them for the restore and '
                          'start them again afterwards. Nothing was changed.' % (p['volume'], ', '.join(running)))
            if running and _archive.is_memory_volume(info.get('Driver'), info.get('Options')):
                self.warnings.append(
                    'Running containers use volume %s (%s): the content changes underneath them (a memory volume '
                    'cannot be restored with stop_containers: its content lives only while they run).'
                    % (p['volume'], ', '.join(running)))
            elif running:
                self.warnings.append(
                    'Running containers use volume %s (%s): the content changes underneath them. Use '
                    'stop_containers: true.' % (p['volume'], ', '.join(running)))
        if self.check_mode:
            if not self.stream_checked:
                try:
                    self.check_stream(archive, compression)
                except _archive.ArchiveError as exc:
                    self.result.update(changed=bool(self.result.get('recovered')), created=False)
                    self.fail('Restore of %s from %s refused: %s Nothing was changed.'
                              % (p['volume'], archive, sentence(exc)))
            return self.finish()

        created = False
        if info is None:
            with self.client.errors('Creating volume %s' % p['volume']):
                self.client.api.create_volume(p['volume'], driver=driver, driver_opts=options or None,
                                              labels=labels or None)
                info = self.client.api.inspect_volume(p['volume'])
            created = True
            self.remove_on_fail = True
            if path_kind == 'local':  # a volume that did not exist: local_leftovers took no lock
                self.take_lock(info, created=True)
            if _archive.mounted_only_in_use(driver, options):
                # A volume mounting NFS, CIFS or a directory shows what its source already holds: it is
                # judged like an existing volume (existing, idempotency) and removed again when refused;
                # removing such a volume leaves the data at its source alone.
                if self.decide(info, path_kind, helper, archive, compression, manifest):
                    self.result['changed'] = True
                    self.result['msg'] = 'Created volume %s; %s' % (p['volume'], self.result['msg'][0].lower()
                                                                    + self.result['msg'][1:])
                    return self.finish()
        try:
            self.stop_containers()
            if path_kind == 'local':
                res = self.restore_local(info, archive, compression, expected_sha, manifest)
            else:
                res = self.restore_helper(helper, archive, compression, expected_sha, manifest)
            self.result['sha256'] = res
            self.remove_on_fail = False
        except (_archive.ArchiveError, HelperError, OSError) as exc:
            if created:
                self._remove_volume()
            if isinstance(exc, OSError):
                msg = _archive.describe_os_error(exc, 'Restoring %s' % p['volume'])
            elif _archive.is_no_space(str(exc)) or str(exc).startswith('No space left on'):
                text = str(exc)
                if not text.startswith('No space left on'):  # the helper path words it already
                    text = '%s (%s)' % (_archive.NO_SPACE_RESTORE % ('volume ' + p['volume']), text)
                msg = 'Restore of %s from %s failed: %s.' % (p['volume'], archive, text)
            else:
                msg = 'Restore of %s from %s refused: %s' % (p['volume'], archive, sentence(exc))
            merged = exc.changed if isinstance(exc, MergeStopped) else len(self.merge_progress)
            self.result['changed'] = bool(self.result.get('recovered')) or (self.merging and merged > 0)
            self._restart_or_fail()
            if self.merging and merged:
                self.fail(msg + ' The merge stopped part-way: %d path(s) of the volume were already changed and '
                                'stay so (run the restore again once the cause is fixed).' % merged)
            self.fail(msg + ' The volume was left as it was.')
        except BaseException:
            if created:
                self._remove_volume()
            raise
        finally:
            if self.stopped:
                self._restart_or_fail()
        return self.finish()

    def creation_args(self, info):
        """Driver, options and labels for a volume the restore creates (refusing host paths from the archive)."""
        p = self.p
        manifest = self.stream_manifest
        driver = p['driver'] or manifest.get('driver') or 'local'
        options = p['driver_options'] if p['driver_options'] is not None else (manifest.get('driver_options') or {})
        labels = p['labels'] if p['labels'] is not None else (manifest.get('labels') or {})
        if p['driver'] is None and p['driver_options'] is None and manifest.get('driver') not in (None, 'local'):
            # A backup of another driver restores into a local volume unless told otherwise.
            driver, options = 'local', {}
        try:
            labels = stringify_labels(labels)
        except ValueError as exc:
            self.fail(str(exc))
        options = dict((str(k), str(v)) for k, v in (options or {}).items())
        if info is None and p['driver_options'] is None:
            refusal = archive_options_refusal(options)
            if refusal is not None:
                self.fail('The archive\'s manifest would create volume %s with driver options %s, %s. An archive '
                          'does not choose host paths: give driver_options yourself to create the volume that way '
                          '(the same options to confirm them, or {} for a plain local volume). Nothing was changed.'
                          % (p['volume'], json.dumps(options, sort_keys=True), refusal))
        return driver, options, labels

    def take_lock(self, info, created=False):
        """Hold the volume's lock (check mode only probes it); returns the directory holding ``_data``.

        ``created``: the volume was just created by this run; when another run holds its lock, that run
        got there first and the volume is its now (not removed by our failure)."""
        p = self.p
        parent = os.path.dirname(info['Mountpoint'].rstrip('/'))
        try:
            if self.check_mode:
                _archive.VolumeLock.probe(parent, p['volume'])
            else:
                self.lock = _archive.VolumeLock(parent, p['volume'])
        except _archive.VolumeBusy as exc:
            if created:
                self.remove_on_fail = False
            self.fail(str(exc))
        except OSError as exc:
            self.fail('Could not take the lock of volume %s in %s: %s' % (p['volume'], parent, exc))
        return parent

    def local_leftovers(self, info):
        """Resolve what interrupted restores left beside the volume's _data, holding the volume's lock
        (a restore running now keeps its staging directory there too). Check mode only reports."""
        p = self.p
        parent = self.take_lock(info)
        actions, problems = _archive.cleanup_stale(parent, dry_run=self.check_mode)
        self.warnings.extend(problems)
        if actions:
            self.warnings.append('Volume %s: leftovers of an interrupted restore beside its data: %s.'
                                 % (p['volume'], '; '.join(actions)))
            self.result['recovered'] = actions
            self.result['changed'] = True

    def decide(self, info, path_kind, helper, archive, compression, manifest):
        """Apply ``existing`` and the idempotency checks to a volume that exists (or was just created with a
        mount source): True when there is nothing to restore (msg set), fails when refused."""
        p = self.p
        version = _archive.manifest_fingerprint_version(manifest)  # compare like with like (archives made before)
        try:
            current = self.current_summary(info, path_kind, helper, version)
        except HelperError as exc:
            self.fail(str(exc))
        if not p['force'] and current.fingerprint == manifest['fingerprint'] and current.entries == manifest['entries']:
            self.result['msg'] = UNCHANGED_MSG
            return True
        if p['existing'] == 'merge' and current.entries > 1 and not p['force']:
            try:
                merged = self.merged_summary(info, path_kind, helper, archive, compression, version)
            except (_archive.ArchiveError, HelperError) as exc:
                self.fail('Restore of %s from %s refused: %s Nothing was changed.' % (p['volume'], archive, sentence(exc)))
            if merged.fingerprint == manifest['fingerprint'] and merged.entries == manifest['entries']:
                self.result['msg'] = UNCHANGED_MERGE_MSG
                return True
        if current.entries > 1 and p['existing'] == 'fail':
            self.fail('Volume %s is not empty (%d entries); set existing: replace (the volume ends with exactly '
                      'the archive content) or existing: merge.' % (p['volume'], current.entries - 1))
        if self.module._diff:
            try:
                listing = helper.listing(p['volume']) if helper is not None else self.current_listing
                self.result['changes'] = self.changes(archive, compression, listing, p['existing'])
            except (_archive.ArchiveError, HelperError) as exc:
                self.fail('Restore of %s from %s refused: %s Nothing was changed.' % (p['volume'], archive, sentence(exc)))
        return False

    def _restart_or_fail(self):
        errors = self.start_containers()
        self.stopped = []
        if errors:
            self.fail('Could not start again containers stopped for the restore: %s' % '; '.join(errors))

    def _remove_volume(self):
        self.remove_on_fail = False
        try:
            self.client.api.remove_volume(self.p['volume'])
        except Exception as exc:
            self.warnings.append('Could not remove the volume created for the failed restore: %s' % exc)

    def _check(self, got_sha, expected_sha, stream_manifest, manifest, members):
        """After the archive was read: checksum, manifests, and the validator's member count.

        ``members``: what the validator passed on (root and hard links included, the manifest member not),
        which equals the manifest's entry count (root included, sockets never archived) for an archive
        read as GNU tar reads it.
        """
        if expected_sha is not None and got_sha != expected_sha:
            raise _archive.StreamRejected('checksum mismatch: the archive hashes to %s, its .sha256 file says %s '
                                          '(corrupted or altered archive).' % (got_sha, expected_sha))
        mismatch = manifest_mismatch(stream_manifest, manifest)
        if mismatch:
            raise _archive.StreamRejected('the manifest inside the archive does not match %s.manifest.json (%s).'
                                          % (self.result['archive'], mismatch))
        if members != manifest['entries'] and not self._tree_mismatch_ok(manifest):
            raise _archive.StreamRejected('the archive has %d members but its manifest lists %d entries.'
                                          % (members, manifest['entries']))

    def _check_tree_count(self, members, tree_entries):
        """GNU tar extracts one entry per member: a member tar saw but the validator did not (a parser
        disagreement, which would also have skipped every check of that member) makes the extracted tree
        bigger than the checked stream, whatever the archive's author wrote in its manifest."""
        if tree_entries != members:
            raise _archive.StreamRejected('GNU tar extracted %d entries where the checked stream has %d members '
                                          '(a member that escaped the checks).' % (tree_entries, members))

    def _tree_mismatch_ok(self, manifest):
        # The flag is set in the sidecar only (after the stream was written); the consistency mode must be
        # the checksummed in-stream manifest's too.
        return bool(manifest.get('tree_changed_during_backup') and manifest.get('consistency') == 'best_effort'
                    and (self.stream_manifest or manifest).get('consistency') == 'best_effort')

    def restore_local(self, info, archive, compression, expected_sha, manifest):
        mountpoint = info['Mountpoint'].rstrip('/')
        staging = _archive.new_staging_dir(os.path.dirname(mountpoint))
        swapped = False
        try:
            writeback = _archive.EarlyWriteback.for_tree(staging)
            try:
                with open(archive, 'rb') as f:
                    res = _archive.extract_stream(writeback.counted(_archive.file_chunks(f)), compression, staging,
                                                  allow_devices=self.p['allow_devices'])
            finally:
                error = writeback.stop()  # after an error, the extraction's own error is the one to report
            if error is not None:
                raise error
            self._check(res['sha256'], expected_sha, res['manifest'], manifest, res['entries'])
            tree = []

            def verify():
                try:
                    tree.append(_archive.verify_tree(staging, res['manifest']))
                except _archive.StreamRejected:
                    if not self._tree_mismatch_ok(manifest):
                        raise
                    self.warnings.append('The restored tree differs from the manifest: the backup was taken with '
                                         'consistency=best_effort while the volume changed.')
                    tree.append(_archive.tree_summary(staging))
            # The restored tree is on disk before it replaces anything (a power loss after the swap must
            # not leave empty files where the old content was); the sync waits on the disk while the
            # verification walk uses the CPU.
            _archive.run_beside(lambda: _archive.sync_filesystem(staging), verify)
            self._check_tree_count(res['entries'], tree[0].entries)
            if self.p['existing'] == 'merge':
                self.merging = True
                _archive.merge_into(staging, mountpoint, self.merge_progress)
            else:
                _archive.exchange_dirs(staging, mountpoint)
                swapped = True
            return res['sha256']
        finally:
            try:
                _archive.remove_tree(staging)
            except OSError as exc:
                # Once swapped in, the restore has succeeded: the old content left in the staging directory
                # is only clutter (the next restore of the volume removes it), not a reason to fail.
                what = 'the old content' if swapped else 'the staging directory'
                self.warnings.append('Could not remove %s of volume %s at %s: %s. The next restore of the volume '
                                     'removes it.' % (what, self.p['volume'], staging, exc))

    def restore_helper(self, helper, archive, compression, expected_sha, manifest):
        import hashlib
        hasher = hashlib.sha256()
        validator = _archive.TarStreamValidator(allow_devices=self.p['allow_devices'])
        name = _archive.STAGING_MARKER + uuid.uuid4().hex[:12]
        try:
            with open(archive, 'rb') as f:
                stream = _archive.validated_stream(
                    _archive.plain_stream(_archive.file_chunks(f), compression, hasher), validator)
                summary = helper.extract(self.p['volume'], name, stream,
                                         version=_archive.manifest_fingerprint_version(manifest))
            self._check(hasher.hexdigest(), expected_sha, validator.manifest, manifest, validator.entries)
            self._check_tree_count(validator.entries, summary.entries)
            if summary.entries != manifest['entries'] or summary.fingerprint != manifest['fingerprint']:
                if not self._tree_mismatch_ok(manifest):
                    raise _archive.StreamRejected('the extracted tree (%d entries, %s) does not match the manifest '
                                                  '(%d entries, %s).' % (summary.entries, summary.fingerprint,
                                                                         manifest['entries'], manifest['fingerprint']))
            self.merging = self.p['existing'] == 'merge'
            helper.finish(self.p['volume'], name, 'merge' if self.merging else 'replace')
            return hasher.hexdigest()
        except BaseException:
            try:
                helper.finish(self.p['volume'], name, 'abort')
            except Exception as exc:
                self.warnings.append('Could not remove the staging directory %s in volume %s: %s'
                                     % (name, self.p['volume'], exc))
            raise

    def finish(self):
        self.result['duration'] = round(time.time() - self.started, 3)
        for w in self.warnings:
            self.module.warn(w)
        if self.module._diff and 'changes' in self.result:
            self.result['diff'] = dict(before=dict(volume=self.p['volume']),
                                       after=dict(volume=self.p['volume'], changes=self.result['changes']))
        self.module.exit_json(**self.result)


def main():
    argument_spec = dict(
        volume=dict(type='str', required=True),
        archive=dict(type='str', required=True),
        src=dict(type='path'),
        source_volume=dict(type='str'),
        create=dict(type='bool', default=True),
        driver=dict(type='str'),
        driver_options=dict(type='dict'),
        labels=dict(type='dict'),
        existing=dict(type='str', choices=['fail', 'replace', 'merge'], default='fail'),
        stop_containers=dict(type='bool', default=False),
        allow_devices=dict(type='bool', default=False),
        require_checksum=dict(type='bool', default=True),
        data_path=dict(type='str', choices=['auto', 'local', 'helper'], default='auto'),
        helper_image=dict(type='str'),
        force=dict(type='bool', default=False),
        source_host=dict(type='str'),
    )
    client = AnsibleDockerClient(argument_spec, supports_check_mode=True,
                                 required_if=[('archive', 'latest', ('src',))])
    err = volume_name_error(client.params['volume'])
    if err:
        client.fail(err)
    RestoreManager(client).run()


if __name__ == '__main__':
    main()
