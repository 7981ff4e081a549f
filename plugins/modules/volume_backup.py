#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: volume_backup
short_description: Back up Docker volumes into full-fidelity, verifiable archives
version_added: 0.1.0
author:
  - volumeops contributors (@volumeops)
description:
  - Writes one archive per volume, C(<volume>_<UTC timestamp>.tar.zst) (or C(.tar.gz), C(.tar)), in O(dest) on the
    managed host. The archive is a standard pax tar stream written by GNU tar with
    C(--xattrs --xattrs-include=* --acls --sparse --numeric-owner), so ownership (numeric, also IDs at or above 2^24),
    every permission bit, sub-second mtimes, hard links, sparse files, FIFOs, symlinks, xattrs including
    C(security.capability), POSIX ACLs and the volume root's own owner and mode are kept.
  - The first member of the archive is C(.volumeops-manifest.json) (volume name, driver, driver options, labels,
    source host, creation time, entry count, total bytes, tree fingerprint). Next to each archive are
    C(<archive>.sha256) (C(sha256sum -c) format) and C(<archive>.manifest.json).
  - Idempotent. When the newest archive of a volume in O(dest) has the same tree fingerprint (path, type, size,
    mtime, mode, owner, link target, xattrs of every entry, from one metadata walk without reading content),
    nothing is written and the result is not changed.
  - The sidecar manifest records the archive's size (C(archive_size)). An archive whose file is not of that size
    (truncated or emptied after it was written, for example by a copy cut short; for archives written before the
    field existed, an empty file) is damaged - found with one C(stat), without reading the archive. A damaged
    newest archive is never taken as unchanged; a warning names it and a new archive is written. Retention never
    counts nor deletes a damaged archive (a warning names it); remove it yourself. A corruption that keeps the
    size is found by M(volumeops.docker.backup_info) with O(volumeops.docker.backup_info#module:verify=true);
    M(volumeops.docker.volume_restore) checks the checksum and refuses a damaged archive (with
    O(volumeops.docker.volume_restore#module:archive=latest) it picks the newest by name, damaged or not).
  - The manifest records the source (C(source_kind) volume or path, C(source_real_path) for a path, and
    C(source_host)). The unchanged check and retention consider only archives of the same source, so a volume
    backed up by several hosts into one shared O(dest), or a volume and a directory of the same name, never
    count as each other's archives (archives written before these fields existed count as volume archives, or
    as path archives when they recorded C(source_path)).
  - For a plain local volume read in place, the sidecar manifest also keeps a change token of that walk (the path,
    inode number and ctime of every entry). The kernel moves an entry's ctime on every change of its content, mode,
    owner, link count or xattrs, so when a later listing that only reads inode metadata (no xattrs, no link targets)
    finds the same token, the volume is proven unchanged at a fraction of the cost of the full walk. Without
    O(exclude), for a volume of 2048 entries or more, GNU C(find) lists the entries (on a second CPU while the
    module walks for the fingerprint); for smaller volumes, with O(exclude) and without a usable C(find), the
    module's walk makes the token. Tokens younger
    than two seconds are not trusted (ctime comes from a clock that ticks every few milliseconds), and whenever a
    token cannot prove it, the full fingerprint decides (see RV(backups[].unchanged_proof)).
  - When an archive is written whatever the walk finds (no archive of the volume with the same settings in O(dest)
    yet, or O(force=true)), for a plain local volume whose entries all changed more than two seconds before
    (checked by that walk's change token), the walk runs while GNU tar already reads the volume, and the manifest
    is written ahead of the compressed stream as its own zstd frame (gzip member); decompressed, the archive is the
    same tar stream. When an entry changed just before or during the walk, that stream is dropped before anything
    is written and the backup runs walk first, then tar. Not in check mode, and not with O(stop_containers=true).
  - Archives are written under a temporary name (mode 0600 from the first byte), hashed while written, fsynced and
    then renamed; an interrupted run never leaves a file under a final name, and the next run removes the stale
    temporary files.
options:
  volume:
    description:
      - Name of one volume to back up. It must exist; it is never created.
      - O(volume), O(volumes), O(container) and O(path) must not be empty (an empty string or list, say an
        unset variable, fails the task instead of backing up nothing).
    type: str
  volumes:
    description: Names of several volumes; one task, one result per volume. At least one.
    type: list
    elements: str
  container:
    description: Back up every named volume mounted by this container (the classic C(--volumes-from) case).
    type: str
  path:
    description:
      - A directory on the managed host (for example a bind-mount source) to back up instead of a volume.
      - The archive is named after O(name), or after the directory's base name. When O(dest) already holds
        archives of that name made from another source (another directory, a volume, another host), the backup
        fails before writing anything; set O(name) to a name of its own.
      - Like GNU tar's C(--one-file-system), another filesystem mounted below the directory is not entered; the
        archive holds its mount point as an empty directory, and a warning names it.
    type: path
  name:
    description: Name recorded in the manifest and used in the archive file name when O(path) is used.
    type: str
  dest:
    description: Directory for the archives; created with mode 0700 when missing.
    type: path
    required: true
  compression:
    description: Compression of the archive. C(zstd) is multi-threaded and 10-50 times faster than C(gzip).
    type: str
    choices: [zstd, gzip, none]
    default: zstd
  compression_level:
    description: Compression level (zstd 1-22, default 3; gzip 1-9, default 6).
    type: int
  exclude:
    description:
      - Glob patterns of entries to leave out. A pattern without C(/) matches an entry's name at any depth, a
        pattern with C(/) matches the path relative to the volume root (for example C(cache/*)); a leading C(/)
        or C(./) changes nothing, so C(/cache) is only the C(cache) at the top. A trailing C(/) is ignored
        (C(cache/) leaves out every entry named C(cache)). An excluded directory is left out with everything below it.
      - C(*), C(?) and C([...]) never match C(/), and match a leading C(.) (C(.*) leaves out hidden entries). The
        volume root itself is never left out. Backslash escapes, C([^...]) and classes like C([:alpha:]) are refused
        (write C([*]) for a literal C(*), C([!...]) to negate).
      - The metadata walk (manifest) and GNU tar apply the same patterns; in addition the number of members of
        the written tar stream is checked against the manifest's entry count before the archive gets its final
        name.
    type: list
    elements: str
    default: []
  stop_containers:
    description:
      - Stop the running containers that use the volume while it is archived, and start exactly those again
        afterwards, also when the backup fails. Only done when a new archive is needed. Paused and restarting
        containers count as running (a paused one is started again running, not paused).
      - With several volumes, volumes that share a running container form a group, and each group's containers
        are stopped only while that group's volumes are archived; they run again before the next group's
        containers stop. Each application is down for the backup of its own volumes, not for the whole task's.
      - Refused (the group's volumes fail, nothing is stopped) when the containers to stop are the last running
        users of a local volume of type C(tmpfs) or C(ramfs), the backed-up one or another they mount. Such a
        volume is empty again once no container mounts it, so stopping them would destroy its content.
      - Refused for a volume read with O(data_path=local) that is mounted only while a container uses it (see
        O(data_path)).
    type: bool
    default: false
  force:
    description: Write a new archive even when the volume is unchanged since the newest archive.
    type: bool
    default: false
  keep:
    description:
      - Retention. After every backup of the task succeeded, keep only the O(keep) newest archives of each of
        its volumes in O(dest) and delete the older ones with their sidecars. This run's archive (written, or
        the unchanged newest one) always stays and counts as one of them.
      - Only whole archives of the volume count and are ever deleted (both sidecars present, the file of the size
        the manifest copy records, the manifest copy naming the same source - the same volume, or for O(path) the
        same directory, backed up on the same host); archives of other sources that share the name, damaged
        archives of the volume (a warning names them) and other files in O(dest) are never touched.
      - Unset (the default), nothing is deleted. In check mode the archives that would be deleted are listed in
        RV(backups[].removed_archives), and diff mode shows them.
    type: int
  on_error:
    description:
      - What a failure of one volume's backup does to the others of the task (a volume that does not exist, a
        file changing while read, a volume that needs O(helper_image), a full disk, ...).
      - V(stop) fails the task at once; volumes after the failed one are not backed up.
      - V(continue) backs up every other volume, then fails the task naming each failed volume, with a result per
        volume (RV(backups[].failed), RV(backups[].error)). A nightly fleet backup then still protects the
        healthy volumes of a host when one of them fails. Retention (O(keep)) runs only when no volume failed.
      - A failure that concerns every volume (O(dest) not writable, the daemon not answering) always stops.
    type: str
    choices: [stop, continue]
    default: stop
  consistency:
    description:
      - V(strict) fails the backup when a file changes while it is read (GNU tar's "file changed as we read it")
        or when the tree changed during the backup.
      - V(best_effort) keeps such an archive with a warning; its manifest records C(consistency=best_effort), and
        the tree check on restore then only warns.
    type: str
    choices: [strict, best_effort]
    default: strict
  mode:
    description: Permissions of the archive and its sidecar files.
    type: raw
    default: '0600'
  owner:
    description: Owner of the archive and its sidecar files.
    type: str
  group:
    description: Group of the archive and its sidecar files.
    type: str
  data_path:
    description:
      - How the volume's data is read. V(auto) reads the mountpoint directly for C(local) volumes without mount
        options when the daemon is local, and uses a helper container otherwise.
      - V(local) forces the direct path, V(helper) forces the helper container.
      - V(local) on a volume with mount options (NFS, a bind mount, ...) or of another driver works only while a
        container uses it (mounted); otherwise its directory on the host is not its data, and it fails.
        With O(stop_containers=true) such a volume fails up front, before anything is stopped, since stopping its
        containers unmounts it. V(auto) reads such a volume through the helper container, which mounts it
        itself (also after its containers were stopped).
    type: str
    choices: [auto, local, helper]
    default: auto
  helper_image:
    description:
      - Image for the helper container (needs GNU tar at C(/usr/bin/tar) and C(/usr/bin/python3)). Required
        only when the helper path is used. It is never pulled.
    type: str
extends_documentation_fragment:
  - volumeops.docker.docker
attributes:
  check_mode:
    support: full
    description: Reports which archives would be written; writes nothing.
  diff_mode:
    support: full
    description: The diff shows, per volume, the archive that would be written (or none).
  idempotent:
    support: full
    description: An unchanged volume (same tree fingerprint as its newest archive in O(dest)) writes nothing.
notes:
  - GNU tar and, for O(compression=zstd), C(zstd) are needed on the managed host for the direct path. Without
    them use O(compression=gzip), install them, or use the helper container path (O(data_path=helper)).
  - An empty volume is backed up with a warning. A missing volume is an error.
seealso:
  - module: volumeops.docker.volume_restore
  - module: volumeops.docker.backup_info
'''

EXAMPLES = r'''
- name: Back up one volume
  volumeops.docker.volume_backup:
    volume: pgdata
    dest: /var/backups/volumes

- name: Back up many volumes in one task, stopping their containers for a consistent copy
  volumeops.docker.volume_backup:
    volumes: [pgdata, redisdata, uploads]
    dest: /var/backups/volumes
    stop_containers: true

- name: Nightly backup that keeps the 7 newest archives of each volume
  volumeops.docker.volume_backup:
    volumes: [pgdata, uploads]
    dest: /var/backups/volumes
    keep: 7

- name: Back up all volumes of a container, gzip, readable by the backup group
  volumeops.docker.volume_backup:
    container: wiki
    dest: /srv/backups
    compression: gzip
    mode: '0640'
    group: backup

- name: Back up a volume of another driver through a helper container
  volumeops.docker.volume_backup:
    volume: nfsdata
    dest: /var/backups/volumes
    data_path: helper
    helper_image: registry.example.com/tools/gnu-tar:1
'''

RETURN = r'''
backups:
  description: One entry per volume (or path).
  returned: always
  type: list
  elements: dict
  contains:
    volume:
      description: Volume name (or the name given for O(path)).
      type: str
    archive:
      description: Path of the archive written, or of the newest archive when skipped.
      type: str
    sha256:
      description: SHA-256 of the archive file.
      type: str
    size:
      description: Size of the archive file in bytes.
      type: int
    entries:
      description: Number of entries (files, directories, links, ...) including the volume root.
      type: int
    bytes:
      description: Total apparent size of the regular files (hard links counted once).
      type: int
    fingerprint:
      description: Tree fingerprint recorded in the manifest.
      type: str
    skipped:
      description: True when no archive was written.
      type: bool
    reason:
      description: Why it was skipped (for example C(unchanged)).
      type: str
    unchanged_proof:
      description:
        - For a volume skipped as unchanged, what showed it. C(change_token) means inode metadata equal to the
          newest archive's walk (see the description), C(fingerprint) means the full metadata walk.
      type: str
      choices: [change_token, fingerprint]
    attributes_changed:
      description: For a skipped volume, whether the mode, owner or group of its newest archive and sidecars
        was (or would be) changed to the requested ones.
      type: bool
    removed_archives:
      description:
        - Archives of this volume that retention (O(keep)) deleted, or in check mode would delete, oldest first.
          Their sidecars went with them. Empty without O(keep).
      type: list
      elements: str
    changed:
      description: Whether an archive was (or in check mode would be) written or deleted, or its file attributes
        changed.
      type: bool
    duration:
      description: Seconds spent on this volume.
      type: float
    failed:
      description: True when this volume's backup failed (only with O(on_error=continue); the task then fails).
      type: bool
    error:
      description: Why this volume's backup failed; absent when it did not.
      type: str
    data_path:
      description: V(local) or V(helper).
      type: str
  sample:
    - volume: pgdata
      archive: /var/backups/volumes/pgdata_20250101T120000.000000Z.tar.zst
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      size: 123456
      entries: 1234
      bytes: 45678901
      fingerprint: sha256:0b3f...
      skipped: false
      changed: true
      duration: 1.2
      data_path: local
stopped_containers:
  description: Containers stopped for the backup (and started again); in check mode, those that would be.
  returned: always
  type: list
  elements: str
removed_temp_files:
  description:
    - Names of leftover files in O(dest) that this run removed first - temporary archives of runs that were
      interrupted (their process is gone) and sidecars of archives that do not exist. Always empty in check mode.
  returned: always
  type: list
  elements: str
'''

import grp
import json
import os
import pwd
import stat
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.volumeops.docker.plugins.module_utils._docker_client import ACTIVE_STATES, AnsibleDockerClient
from ansible_collections.volumeops.docker.plugins.module_utils._validation import volume_name_error
from ansible_collections.volumeops.docker.plugins.module_utils import _archive, _tree
from ansible_collections.volumeops.docker.plugins.module_utils._helper import (
    Helper, HelperError, local_path_error, mount_points)

DEFAULT_LEVELS = {'zstd': 3, 'gzip': 6, 'none': None}


class VolumeFailure(Exception):
    """The backup of one volume failed; with on_error=continue the task goes on with the others."""


class Source(object):
    """One thing to back up: a volume (inspect dict) or a host path."""

    def __init__(self, name, root=None, inspect=None, data_path='local', kind='volume'):
        self.name = name
        self.root = root
        self.inspect = inspect or {}
        self.data_path = data_path
        self.kind = kind  # 'volume' or 'path'

    @property
    def identity(self):
        """What the archives of this source record as their source (_archive.manifest_source): the unchanged
        check and retention only consider archives of the same source, whatever their name."""
        return (self.kind, self.root if self.kind == 'path' else self.name, os.uname()[1])

    @property
    def driver(self):
        return self.inspect.get('Driver') if self.inspect else None

    @property
    def options(self):
        return self.inspect.get('Options') or {} if self.inspect else {}

    @property
    def labels(self):
        return self.inspect.get('Labels') or {} if self.inspect else {}

    @property
    def ctime_trusted(self):
        """True for a plain local volume read in place: its tree lives on the Docker host's own
        filesystem, where ctime is kept by the kernel (a bind-mounted path or a mounted volume may be
        a network or foreign filesystem), so change tokens may stand in for a full metadata walk."""
        return self.data_path == 'local' and self.driver == 'local' and not self.options


def sentence(text):
    """``text`` ending with a full stop (tool messages often end without one), for the message that follows."""
    text = str(text).rstrip()
    return text if text.endswith(('.', '!', '?')) else text + '.'


def failed_volumes_message(errors, total, check_mode):
    """The task's message when ``errors`` (results of failed volumes) of ``total`` failed (on_error=continue)."""
    return ('The backup of %d of %d volumes failed (the others were %s; no archive was expired): %s'
            % (len(errors), total, 'checked' if check_mode else 'backed up',
               ' '.join('[%s] %s' % (r['volume'], sentence(r['error'])) for r in errors)))


def file_attributes_error(mode, owner, group):
    """Why mode/owner/group cannot be applied to the archive files, or None.

    Checked before anything is read: AnsibleModule finds out only when it applies them, after the whole
    archive (of the first of many volumes, maybe) has been written for nothing.
    """
    if isinstance(mode, int):
        pass
    elif not isinstance(mode, str):
        return 'mode must be in octal or symbolic form, not %r.' % (mode,)
    else:
        try:
            int(mode, 8)
        except ValueError:
            try:
                # The parser set_mode_if_different uses; it needs a stat result to work relative to.
                # (Private to ansible-core: should it go, the check is left to set_mode_if_different.)
                AnsibleModule._symbolic_mode_to_octal(os.stat('/'), mode)  # pylint: disable=protected-access
            except AttributeError:
                pass
            except ValueError as exc:
                return 'mode %r must be in octal or symbolic form: %s.' % (mode, exc)
    for what, value, lookup in (('owner', owner, pwd.getpwnam), ('group', group, grp.getgrnam)):
        if value is None or value.isdigit():
            continue
        try:
            lookup(value)
        except KeyError:
            return '%s %r is not known on the managed host (a name from its %s, or a number).' % (
                what, value, '/etc/passwd' if what == 'owner' else '/etc/group')
    return None


def skipped_mount_points(root, exclude=None):
    """Paths (relative to ``root``, bytes) of the mount points below ``root`` that a backup does not enter.

    GNU tar (--one-file-system) and the metadata walk both archive such a directory as an empty one
    and leave out what is mounted there; the user must hear of it. Only mount points on another
    filesystem than the root count (a bind mount of the same filesystem is entered), only the
    topmost of nested ones, and none that an exclude pattern leaves out anyway.
    """
    root_b = os.fsencode(os.path.realpath(root))
    prefix = root_b.rstrip(b'/') + b'/'
    try:
        root_dev = os.lstat(root_b).st_dev
    except OSError:
        return []
    found = set()
    for point in mount_points():
        if not point.startswith(prefix):
            continue
        try:
            st = os.lstat(point)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_dev != root_dev:
            found.add(point[len(prefix):])
    excluded = _tree.exclude_matcher(exclude)
    result = []
    for rel in sorted(found):
        if any(rel.startswith(top + b'/') for top in result):
            continue
        parts = rel.split(b'/')
        if excluded is not None and any(excluded(b'./' + b'/'.join(parts[:i])) for i in range(1, len(parts) + 1)):
            continue
        result.append(rel)
    return result


class BackupManager(object):
    def __init__(self, client):
        self.client = client
        self.module = client.module
        self.p = client.params
        self.check_mode = self.module.check_mode
        self.level = self.p['compression_level']
        if self.level is None:
            self.level = DEFAULT_LEVELS[self.p['compression']]
        self.results = []
        self.stopped = []
        self.warnings = []
        self._helper = None
        self.order = {}
        self.by_name = {}
        self.damaged = set()  # damaged archives warned about (warn_damaged)

    def volume_failed(self, name, msg, start=None):
        """Record one volume's failure, or fail the task at once with on_error=stop."""
        if self.p['on_error'] == 'stop':
            self.client.fail(msg, backups=self.results)
        self.results.append(dict(volume=name, archive=None, sha256=None, size=None, entries=None, bytes=None,
                                 fingerprint=None, skipped=True, reason='failed', failed=True, error=msg,
                                 changed=False, removed_archives=[],
                                 duration=round(time.time() - start, 3) if start else 0.0, data_path=None))

    # -- sources
    def helper(self, src):
        if self._helper is None:
            if not self.p['helper_image']:
                raise VolumeFailure('Volume %s needs the helper container path (data_path=helper, a non-local '
                                    'driver or daemon, or a local volume with mount options): set helper_image.'
                                    % src.name)
            with self.client.errors('Inspecting the helper image'):
                self.client.require_local_image(self.p['helper_image'])
            self._helper = Helper(self.client, self.p['helper_image'])
        return self._helper

    def _volume_source(self, name):
        err = volume_name_error(name)
        if err:
            self.client.fail(err)
        with self.client.errors('Inspecting volume %s' % name):
            info = self.client.inspect_volume(name)
        if info is None:
            raise VolumeFailure('Volume %s does not exist; nothing was backed up (volumes are never created by a '
                                'backup: a mistyped name would otherwise back up an empty volume).' % name)
        mode = self.p['data_path']
        mountpoint = info.get('Mountpoint')
        direct_ok = (self.client.is_local and info.get('Driver') == 'local' and not info.get('Options')
                     and mountpoint and os.path.isdir(mountpoint))
        if mode == 'local':
            if not (self.client.is_local and mountpoint and os.path.isdir(mountpoint)):
                raise VolumeFailure('data_path=local needs a local daemon and a volume mountpoint on this host; '
                                    'volume %s has mountpoint %r.' % (name, mountpoint))
            err = local_path_error(name, info.get('Driver'), info.get('Options'), mountpoint)
            if err:
                raise VolumeFailure(err)
            if self.p['stop_containers'] and _archive.mounted_only_in_use(info.get('Driver'), info.get('Options')):
                # Mounted now (local_path_error), but by the containers that stop_containers would stop: tar
                # would then read the empty directory below the mount, and keep would expire the good archives.
                raise VolumeFailure(
                    'Volume %s (driver %s, options %s) is mounted only while a container uses it: stop_containers '
                    'would unmount it, and data_path=local would then archive its empty directory on this host '
                    'instead of its data. Nothing was stopped or written. Use data_path=auto or data_path=helper '
                    '(with helper_image; the helper container mounts the volume itself), or leave stop_containers '
                    'false.' % (name, info.get('Driver') or 'local', json.dumps(info.get('Options') or {}, sort_keys=True)))
        use_local = mode == 'local' or (mode == 'auto' and direct_ok)
        return Source(name, root=mountpoint if use_local else None, inspect=info,
                      data_path='local' if use_local else 'helper')

    def sources(self):
        p = self.p
        if p['path']:
            if not os.path.isdir(p['path']):
                self.client.fail('path %s is not a directory.' % p['path'])
            name = p['name'] or os.path.basename(os.path.normpath(p['path']))
            err = volume_name_error(name, 'archive name')
            if err:
                self.client.fail(err + ' Set name to a valid one for path backups.')
            return [Source(name, root=os.path.realpath(p['path']), data_path='local', kind='path')]
        names = []
        if p['volume']:
            names = [p['volume']]
        elif p['volumes']:
            names = list(p['volumes'])
        elif p['container']:
            with self.client.errors('Inspecting container %s' % p['container']):
                c = self.client.api.inspect_container(p['container'])
            names = [m['Name'] for m in c.get('Mounts') or [] if m.get('Type') == 'volume']
            if not names:
                self.client.fail('Container %s mounts no named volumes.' % p['container'])
        seen = set()
        result = []
        self.order = dict((n, i) for i, n in reversed(list(enumerate(names))))
        for n in names:
            if n not in seen:
                seen.add(n)
                try:
                    result.append(self._volume_source(n))
                except VolumeFailure as exc:
                    self.volume_failed(n, str(exc))
        return result

    # -- idempotency
    def summary(self, src):
        if src.data_path == 'local':
            return _archive.tree_summary(src.root, exclude=self.p['exclude'], with_change_token=src.ctime_trusted)
        try:
            return self.helper(src).fingerprint(src.name, exclude=self.p['exclude'])
        except HelperError as exc:
            raise VolumeFailure(str(exc))

    def proven_unchanged(self, src, manifest):
        """The manifest's TreeSummary when a change-token walk proves the volume unchanged since it, else None.

        The newest backup stored the change token of the walk its manifest was made from (only
        when the volume did not change during that backup). Same paths, inodes and ctimes now means
        no fingerprinted property changed, found without reading extended attributes or link
        targets: about half the cost of the full walk, which is most of an idempotent run.
        """
        if manifest is None or not src.ctime_trusted:
            return None
        token = _tree.ChangeToken.from_dict(manifest.get('change_token'))
        if token is None or token.recheck(src.root, self.p['exclude']) is None:  # a stored token keeps no records
            return None
        return _tree.TreeSummary(manifest['fingerprint'], manifest['entries'], manifest['bytes'])

    def still_as_walked(self, src, summary):
        """True when the volume is still as the walk that made ``summary`` saw it.

        A settled change token answers with a cheaper listing. When entries changed just before the
        walk (a backup right after stop_containers stopped the writers), the same listing plus the
        records of just those entries answers. When neither can prove it (a harmless ctime change),
        the full fingerprint decides.
        """
        token = summary.change_token
        if token is not None and token.recheck(src.root, self.p['exclude']) is not None:
            return True
        return self.summary(src).fingerprint == summary.fingerprint

    def settings_match(self, src, manifest):
        """True when the newest archive was made with the same settings as this run would use."""
        return (manifest is not None and manifest.get('exclude') == list(self.p['exclude'])
                and manifest.get('compression') == self.p['compression']
                and manifest.get('driver') == src.driver and manifest.get('driver_options') == src.options
                and manifest.get('labels') == src.labels)

    def newest(self, src, archives):
        """The newest archive of ``src`` (both sidecars, its manifest names the same source) and its manifest, when
        it is whole; (None, None) when there is none, or when it is damaged (a warning names it): a damaged
        newest archive must not pass for "unchanged", so a new archive is written."""
        for info in reversed(archives.get(src.name, [])):
            manifest = _archive.paired_archive_manifest(info['path'])
            if manifest is None or manifest.get('volume') != src.name or \
                    _archive.manifest_source(manifest) != src.identity:
                continue
            problem = _archive.archive_size_problem(info['path'], manifest)  # one stat, no read
            if problem is not None:
                self.warn_damaged(src.name, info['path'], problem, 'it is not taken as the newest backup, a new archive '
                                  'is written')
                return None, None
            return info, manifest
        return None, None

    def warn_damaged(self, name, path, problem, what):
        """Warn once per run about the damaged archive ``path`` of the volume (or path backup) ``name``."""
        if path in self.damaged:
            return
        self.damaged.add(path)
        self.warnings.append('%s: the archive %s is damaged (%s): %s; retention (keep) neither counts nor deletes '
                             'it. Check it with backup_info (verify: true) and remove it with its sidecars.'
                             % (name, path, problem, what))

    def name_taken(self, src, archives):
        """For a path backup: a message when ``dest`` holds whole archives of the same name from another source.

        Their names would be indistinguishable (a restore by name, a person picking the newest file). Volume
        names cannot be chosen, so volume archives sharing a name with another source's are only kept apart
        (newest, retention)."""
        for info in archives.get(src.name, []):
            manifest = _archive.paired_archive_manifest(info['path'])  # damaged or not, it has the name
            if manifest is None or manifest.get('volume') != src.name:
                continue
            other = _archive.manifest_source(manifest)
            if other != src.identity:
                return ('%s already holds archives named %s of another source (%s, e.g. %s); this backup of %s '
                        'would share their name. Set name to a name of its own for this path.'
                        % (self.p['dest'], src.name, _archive.describe_source(other), info['name'], src.root))
        return None

    def unchanged(self, src, summary, manifest):
        return (self.settings_match(src, manifest) and manifest.get('fingerprint') == summary.fingerprint
                and manifest.get('entries') == summary.entries)

    # -- containers
    def stop_groups(self, todo):
        """[(items of todo, running containers to stop for them)], in the order of ``todo``.

        With stop_containers, volumes that share a running container form one group; each group's
        containers are stopped only while its own volumes are archived. A host's applications are
        then each down for the backup of their own volumes, not for the whole task's."""
        if not self.p['stop_containers']:
            return [(todo, [])]
        users = []
        for src, _summary, _start in todo:
            found = []
            if src.inspect:
                with self.client.errors('Listing containers using %s' % src.name):
                    found = [c for c in self.client.containers_using_volume(src.name) if c['running']]
            users.append(found)
        parent = list(range(len(todo)))

        def root(i):
            while parent[i] != i:
                i = parent[i]
            return i
        first_user = {}
        for i, found in enumerate(users):
            for c in found:
                if c['id'] in first_user:
                    a, b = root(i), root(first_user[c['id']])
                    parent[max(a, b)] = min(a, b)  # a group's root is its first volume: groups keep the task's order
                else:
                    first_user[c['id']] = i
        groups = {}
        for i in range(len(todo)):
            items, containers = groups.setdefault(root(i), ([], {}))
            items.append(todo[i])
            for c in users[i]:
                containers.setdefault(c['id'], c)
        return [(items, list(containers.values())) for _root, (items, containers) in sorted(groups.items())]

    def refuse_memory_volumes(self, items, containers):
        """True (each volume of ``items`` recorded as failed) when stopping ``containers`` would unmount a volume
        whose content lives only while it is mounted.

        A local volume of type tmpfs (or ramfs) is mounted while a container uses it and is empty again
        the next time: stopping its last running user for a backup destroys what the backup was to keep,
        and also the content of such a volume that only shares a container with the volumes backed up.
        """
        if not containers:
            return False
        stopping = set(c['id'] for c in containers)
        with self.client.errors('Listing containers'):
            summaries = self.client.list_containers()
        users = {}  # volume name -> ids of its running users
        for summary in summaries:
            if summary.get('State') not in ACTIVE_STATES:
                continue
            for mount in summary.get('Mounts') or []:
                if mount.get('Type') == 'volume' and mount.get('Name'):
                    users.setdefault(mount['Name'], set()).add(summary['Id'])
        lost = []
        for name in sorted(users):
            if not users[name] & stopping or users[name] - stopping:
                continue  # not unmounted by this stop: no user stopped, or another keeps it mounted
            with self.client.errors('Inspecting volume %s' % name):
                info = self.client.inspect_volume(name) or {}
            if _archive.is_memory_volume(info.get('Driver'), info.get('Options')):
                lost.append('%s (type=%s)' % (name, info['Options']['type']))
        if not lost:
            return False
        msg = ('stop_containers would stop %s, the last running user(s) of %s: the content of such a volume lives '
               'only while a container mounts it, and stopping them would destroy it. Nothing was stopped. Back up '
               'without stop_containers (with consistency: best_effort if it is written meanwhile), or stop the '
               'writers yourself while another container keeps the volume mounted.'
               % (', '.join(sorted(c['name'] for c in containers)), ', '.join(lost)))
        for src, _summary, start in items:
            self.volume_failed(src.name, msg, start)
        return True

    def stop_containers(self, containers, stopped):
        """Stop ``containers``, appending each one stopped to ``stopped`` at once (so that it is started
        again even when stopping the next one fails)."""
        for c in containers:
            with self.client.errors('Stopping container %s' % c['name']):
                self.client.api.stop(c['id'])
            stopped.append(c)
            self.stopped.append(c)

    def start_containers(self, stopped):
        errors = []
        for c in stopped:
            try:
                self.client.api.start(c['id'])
            except Exception as exc:  # keep starting the others; report all
                errors.append('%s: %s' % (c['name'], exc))
        return errors

    def report_unchanged(self, src, info, summary, proof, start):
        """Record ``src`` as unchanged since the archive ``info``."""
        # The data is archived already; the files still get the requested mode/owner/group
        # (check mode: predicted only, AnsibleModule's set_*_if_different honour it).
        attrs = False
        for path in (info['path'],) + _archive.sidecar_paths(info['path']):
            if os.path.exists(path):
                attrs = self._set_attrs(path) or attrs
        self.results.append(dict(volume=src.name, archive=info['path'], sha256=_archive.read_sidecar_sha256(info['path']),
                                 size=os.path.getsize(info['path']), entries=summary.entries,
                                 bytes=summary.bytes, fingerprint=summary.fingerprint, skipped=True,
                                 reason='unchanged', unchanged_proof=proof, changed=attrs, attributes_changed=attrs,
                                 duration=round(time.time() - start, 3), data_path=src.data_path))

    def warn_if_empty(self, src, summary):
        if summary.entries <= 1:
            self.warnings.append('Volume %s is empty; backing it up anyway.' % src.name)

    # -- writing
    def walks_beside_stream(self, src):
        """True when the metadata walk for ``src`` may run while tar already reads it (write_walking).

        Only where a change token can prove the overlap harmless (a plain local volume read in place),
        only for real runs (check mode reports the walk's result), and not when containers are to be
        stopped (their writers were just stopped then, which a change token cannot prove harmless).
        The caller asks only when the archive is written whatever the walk finds (no archive of the
        volume with the same settings yet, or force): when the walk decides whether to write, tar would
        compete with it for the CPU in every run that then writes nothing.
        """
        return not self.check_mode and not self.p['stop_containers'] and src.ctime_trusted

    def write_walking(self, src):
        """Back up ``src`` while its metadata walk runs; (final, res, summary).

        The manifest (the archive's first member) needs the walk's result, but the stream need not wait
        for it: tar starts first, its compressed output waits in memory (bounded) until the walk is done,
        then the manifest is written ahead of it. On a 2-CPU host this takes the walk (about 0.3-0.4 s per
        GB of mixed files) out of the backup's time.

        Sound only when no entry changed from tar's start on, or tar may have read an entry before the
        walk saw it changed. The walk's change token starts at tar's start, so it is settled only when
        every entry's ctime lies well before that; otherwise the stream is dropped (nothing was written)
        and the backup runs as usual after the walk (``write``). The re-check after the stream is the
        same as for ``write``.
        """
        found = {}
        started_ns = time.time_ns()

        def make_head():
            summary = _archive.tree_summary(src.root, exclude=self.p['exclude'], with_change_token=True,
                                            started_ns=started_ns)
            found['summary'] = summary
            if summary.change_token is None or not summary.change_token.settled:
                raise _archive.HeadDeclined('changed shortly before or during the walk')
            self.warn_if_empty(src, summary)
            found['manifest'] = self.new_manifest(src, summary)
            return _archive.manifest_member(found['manifest'], mtime=time.time())

        try:
            final, res = self.write(src, None, head=make_head, found=found)
        except _archive.HeadDeclined:
            self.warn_if_empty(src, found['summary'])
            final, res = self.write(src, found['summary'])
        return final, res, found['summary']

    def new_manifest(self, src, summary):
        p = self.p
        extra = dict(data_path=src.data_path, source_path=p['path'], source_kind=src.kind)
        if src.kind == 'path':
            extra['source_real_path'] = src.root
        return _archive.build_manifest(src.name, summary, driver=src.driver, driver_options=src.options,
                                       labels=src.labels, compression=p['compression'], exclude=p['exclude'],
                                       consistency=p['consistency'], source_host=src.identity[2], extra=extra)

    def write(self, src, summary, head=None, found=None):
        """Write the archive of ``src`` as walked (``summary``); (final path, stream result).

        ``head`` and ``found``: see write_walking (``summary`` is None then; the walk beside the stream
        puts its summary and manifest into ``found``).
        """
        p = self.p
        dest = p['dest']
        name = _archive.archive_name(src.name, p['compression'])
        final = os.path.join(dest, name)
        tmp = _archive.temp_archive_path(dest, name)
        if head is None:
            manifest = self.new_manifest(src, summary)
            head = _archive.manifest_member(manifest, mtime=time.time())
        written = []
        try:
            with _archive.open_private(tmp) as out:
                written.append(tmp)
                if src.data_path == 'local':
                    counter = _archive.TarMemberCount()
                    try:
                        argv = _archive.tar_create_argv(src.root, p['exclude'], index_fd=counter.fd)
                        res = _archive.write_compressed_stream(out, p['compression'], self.level, head=head,
                                                               producer_argv=argv, producer_pass_fds=(counter.fd,),
                                                               read_ahead=dict(root=src.root, exclude=p['exclude']))
                    finally:
                        members = counter.result()
                    res.update(members=members, members_error=None)
                else:
                    res = self._write_via_helper(out, src, head)
                if summary is None:
                    summary, manifest = found['summary'], found['manifest']
                rc = res['producer_rc']
                if rc not in (0, None):
                    text = res['producer_stderr']
                    if rc == 1 and p['consistency'] == 'best_effort':
                        self.warnings.append('Volume %s changed while being archived (tar: %s); kept because '
                                             'consistency=best_effort.' % (src.name, text))
                    elif rc == 1:
                        raise _archive.ArchiveError(
                            'Files of %s changed while being archived (tar: %s). Stop the writers '
                            '(stop_containers: true) or set consistency: best_effort.' % (src.name, text))
                    else:
                        raise _archive.ArchiveError('tar failed on %s (exit %s): %s' % (src.name, rc, text))
                if res['members_error'] is not None:
                    raise _archive.ArchiveError('The tar stream of %s is not acceptable: %s' % (src.name, res['members_error']))
                out.flush()
                # The archive's fsync (waiting on the disk) and the second metadata walk (is the volume
                # still as it was?) are independent: overlap them.
                consistent = _archive.run_beside(lambda: os.fsync(out.fileno()), lambda: self.still_as_walked(src, summary))
            if consistent and summary.change_token is not None:
                # Kept in the sidecar manifest only: it names inodes of this host's filesystem, and
                # serves the next run's "unchanged?" check on this host (proven_unchanged).
                sidecar_manifest = dict(manifest, change_token=summary.change_token.as_dict())
            else:
                sidecar_manifest = manifest
            if res['members'] != summary.entries and (consistent or p['consistency'] == 'strict'):
                # The safety net under the walk and tar agreeing on what to archive (exclusions,
                # mount points): a manifest must never promise entries the archive does not hold.
                raise _archive.ArchiveError(
                    'The archive of %s would hold %d entries, but the metadata walk found %d: GNU tar and the walk '
                    'disagree on what to archive (an exclude pattern or a mount point below the root?). The '
                    'archive was not kept.' % (src.name, res['members'], summary.entries))
            if not consistent:
                if p['consistency'] == 'strict':
                    raise _archive.ArchiveError(
                        'Volume %s changed during the backup (the tree fingerprint differs before and after). '
                        'Stop the writers (stop_containers: true) or set consistency: best_effort.' % src.name)
                self.warnings.append('Volume %s changed during the backup; the archive holds a mix of both states '
                                     '(consistency=best_effort).' % src.name)
                manifest['tree_changed_during_backup'] = True  # in sidecar_manifest too (the same dict then)
            # The archive's size, in the sidecar manifest only (the stream cannot hold its own size): a later
            # run trusts this archive as the newest, or counts it for retention, only while the file is of
            # that size (_archive.archive_size_problem; one stat, no read).
            sidecar_manifest = dict(sidecar_manifest, archive_size=os.stat(tmp).st_size)
            sha_path, man_path = _archive.sidecar_paths(final)
            sidecar_text = ('%s  %s\n' % (res['sha256'], name)).encode('utf-8')
            # Sidecars first, archive last: a final-named archive always has its sidecars.
            _archive.write_private_file(sha_path, sidecar_text)
            written.append(sha_path)
            _archive.write_private_file(man_path, _archive.manifest_bytes(sidecar_manifest))
            written.append(man_path)
            for path in (tmp, sha_path, man_path):
                self._set_attrs(path)
            os.rename(tmp, final)
            written[0] = final
            _archive.fsync_dir(dest)
        except OSError as exc:
            self._remove(written)
            raise VolumeFailure(_archive.describe_os_error(exc, 'Writing the archive of %s to %s' % (src.name, dest)))
        except (_archive.ArchiveError, HelperError) as exc:
            self._remove(written)
            raise VolumeFailure(str(exc))
        except BaseException:
            self._remove(written)
            raise
        return final, res

    def _write_via_helper(self, out, src, head):
        runner = self.helper(src).backup_chunks(src.name, exclude=self.p['exclude'])
        # The helper's stdout frames go into the compressor from a thread-fed pipe.
        import queue
        import threading
        q = queue.Queue(maxsize=64)
        box = {}

        def run():
            try:
                box['result'] = runner(q.put)
            except Exception as exc:
                box['error'] = exc
            finally:
                q.put(None)
        t = threading.Thread(target=run)
        t.daemon = True
        t.start()
        # The members of the helper's tar stream are counted as the stream passes (headers only; see
        # write's check against the manifest). A refusal must not stop the chunks: the helper's thread
        # would wait on the full queue forever. It is reported once the stream ended.
        validator = _archive.TarStreamValidator(allow_devices=True, strip_manifest=False, require_manifest=False)
        problem = []

        def counted(chunks):
            for chunk in chunks:
                if not problem:
                    try:
                        validator.feed(chunk)
                    except _archive.StreamRejected as exc:
                        problem.append(str(exc))
                yield chunk
            if not problem:
                try:
                    validator.finish()
                except _archive.StreamRejected as exc:
                    problem.append(str(exc))
        res = _archive.write_compressed_stream(out, self.p['compression'], self.level, head=head,
                                               producer_chunks=counted(iter(q.get, None)))
        t.join()
        if 'error' in box:
            raise box['error']
        rc, _out, err = box['result']
        res['producer_rc'] = rc
        res['producer_stderr'] = err
        res['members'] = validator.entries
        res['members_error'] = problem[0] if problem else None
        return res

    def _set_attrs(self, path):
        """Apply mode/owner/group to ``path``; True when something was (in check mode: would be) changed."""
        changed = self.module.set_mode_if_different(path, self.p['mode'], False)
        if self.p['owner']:
            changed = self.module.set_owner_if_different(path, self.p['owner'], changed)
        if self.p['group']:
            changed = self.module.set_group_if_different(path, self.p['group'], changed)
        return changed

    @staticmethod
    def _remove(paths):
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- retention
    def expire(self, dest):
        """keep: per volume of this task, delete (check mode: list) its whole archives beyond the keep newest.

        Runs only after every backup of the task succeeded (a failed one fails the module before)."""
        listing = _archive.list_archives(dest) if self.p['keep'] is not None else []  # once for all volumes
        for r in self.results:
            r['removed_archives'] = []
            if self.p['keep'] is None:
                continue
            src = self.by_name.get(r['volume'])
            damaged = []
            whole = _archive.complete_archives(listing, r['volume'], source=src.identity if src else None,
                                               damaged=damaged)
            for info, problem in damaged:
                self.warn_damaged(r['volume'], info['path'], problem, 'it was left in place')
            for info in _archive.expired_archives(whole, self.p['keep'], current=r['archive']):
                if not self.check_mode:
                    try:
                        _archive.remove_archive(info['path'])
                    except OSError as exc:
                        self.client.fail(_archive.describe_os_error(exc, 'Removing the expired archive %s' % info['path']),
                                         backups=self.results)
                r['removed_archives'].append(info['path'])
                r['changed'] = True

    # -- main
    def run(self):
        p = self.p
        sources = self.sources()
        dest = p['dest']
        for src in sources:
            if src.root and (os.path.realpath(dest) + '/').startswith(os.path.realpath(src.root) + '/'):
                self.client.fail('dest %s is inside the data being backed up (%s).' % (dest, src.root))
        try:
            created_dest = _archive.ensure_dest_dir(dest, self.check_mode)
        except OSError as exc:
            self.client.fail(_archive.describe_os_error(exc, 'Creating %s' % dest))
        except _archive.ArchiveError as exc:
            self.client.fail(str(exc))
        removed = [] if self.check_mode else _archive.cleanup_stale_temp(dest)
        existing = {}
        for info in _archive.list_archives(dest):
            existing.setdefault(info['volume'], []).append(info)
        self.by_name = dict((src.name, src) for src in sources)
        for src in sources:
            if src.kind == 'path':
                taken = self.name_taken(src, existing)
                if taken:
                    self.client.fail(taken)

        todo = []  # (source, its summary (None: walked beside the stream), start)
        for src in sources:
            start = time.time()
            if src.root:
                mounts = skipped_mount_points(src.root, p['exclude'])
                if mounts:
                    self.warnings.append(
                        '%s: what is mounted at %s below %s is not backed up (another filesystem: the archive holds '
                        'only the empty mount point, as GNU tar --one-file-system does). Back it up with its own task.'
                        % (src.name, ', '.join(os.fsdecode(m) for m in mounts), src.root))
            info, manifest = self.newest(src, existing)
            must_write = p['force'] or not self.settings_match(src, manifest)
            summary = None if must_write else self.proven_unchanged(src, manifest)
            if must_write and self.walks_beside_stream(src):
                todo.append((src, None, start))  # walked while tar reads it (write_walking)
                continue
            proof = 'change_token'
            if summary is None:
                try:
                    summary = self.summary(src)
                except VolumeFailure as exc:
                    self.volume_failed(src.name, str(exc), start)
                    continue
                proof = 'fingerprint'
            if not p['force'] and self.unchanged(src, summary, manifest):
                self.report_unchanged(src, info, summary, proof, start)
            else:
                todo.append((src, summary, start))
        if self.check_mode:
            refused = set()
            for items, containers in self.stop_groups(todo):
                if self.refuse_memory_volumes(items, containers):
                    refused.update(src.name for src, _summary, _start in items)
                    continue
                self.stopped.extend(containers)  # reported as the containers that would be stopped
            for src, summary, start in todo:
                if src.name in refused:
                    continue
                self.results.append(dict(volume=src.name, archive=os.path.join(dest, _archive.archive_name(src.name, p['compression'])),
                                         sha256=None, size=None, entries=summary.entries, bytes=summary.bytes,
                                         fingerprint=summary.fingerprint, skipped=False, changed=True,
                                         duration=round(time.time() - start, 3), data_path=src.data_path))
        elif todo:
            start_errors = []
            stop_failure = None  # on_error=stop: the failure, reported once this group's containers run again
            for items, containers in self.stop_groups(todo):
                if self.refuse_memory_volumes(items, containers):
                    continue
                stopped = []
                try:
                    self.stop_containers(containers, stopped)
                    for src, summary, start in items:
                        try:
                            if stopped:
                                summary = self.summary(src)  # the writers are stopped now: this is the state to archive
                            if summary is None:
                                final, res, summary = self.write_walking(src)
                            else:
                                self.warn_if_empty(src, summary)
                                final, res = self.write(src, summary)
                        except VolumeFailure as exc:
                            if p['on_error'] == 'stop':
                                stop_failure = str(exc)
                                break
                            self.volume_failed(src.name, str(exc), start)
                            continue
                        self.results.append(dict(volume=src.name, archive=final, sha256=res['sha256'], size=res['size'],
                                                 entries=summary.entries, bytes=summary.bytes,
                                                 fingerprint=summary.fingerprint, skipped=False, changed=True,
                                                 duration=round(time.time() - start, 3), data_path=src.data_path))
                finally:
                    start_errors.extend(self.start_containers(stopped))
                if stop_failure is not None:
                    break
            if start_errors or stop_failure is not None:
                msg = ('Could not start again containers stopped for the backup: %s.' % '; '.join(start_errors)
                       if start_errors else '')
                self.client.fail(' '.join(m for m in (stop_failure and sentence(stop_failure), msg) if m), backups=self.results,
                                 stopped_containers=[c['name'] for c in self.stopped])
        self.results.sort(key=lambda r: self.order.get(r['volume'], 0))  # the task's order, failures included
        errors = [r for r in self.results if r.get('failed')]
        if errors:
            for r in self.results:
                r.setdefault('removed_archives', [])
        else:
            self.expire(dest)
        changed = any(r['changed'] for r in self.results) or created_dest
        for w in self.warnings:
            self.module.warn(w)
        diff = dict(before=dict((r['volume'], r['archive'] if r['skipped'] else None) for r in self.results if r['changed']),
                    after=dict((r['volume'], r['archive']) for r in self.results if r['changed']))
        for r in self.results:
            if r['removed_archives']:
                diff['before'][r['volume'] + ' (expired archives)'] = r['removed_archives']
                diff['after'][r['volume'] + ' (expired archives)'] = []
        result = dict(changed=changed, backups=self.results, stopped_containers=[c['name'] for c in self.stopped],
                      removed_temp_files=removed)
        if self.module._diff:
            result['diff'] = diff
        if errors:
            self.client.fail(failed_volumes_message(errors, len(self.results), self.check_mode), **result)
        self.module.exit_json(**result)


def main():
    argument_spec = dict(
        volume=dict(type='str'),
        volumes=dict(type='list', elements='str'),
        container=dict(type='str'),
        path=dict(type='path'),
        name=dict(type='str'),
        dest=dict(type='path', required=True),
        compression=dict(type='str', choices=['zstd', 'gzip', 'none'], default='zstd'),
        compression_level=dict(type='int'),
        exclude=dict(type='list', elements='str', default=[]),
        stop_containers=dict(type='bool', default=False),
        force=dict(type='bool', default=False),
        consistency=dict(type='str', choices=['strict', 'best_effort'], default='strict'),
        mode=dict(type='raw', default='0600'),
        owner=dict(type='str'),
        group=dict(type='str'),
        data_path=dict(type='str', choices=['auto', 'local', 'helper'], default='auto'),
        helper_image=dict(type='str'),
        keep=dict(type='int'),
        on_error=dict(type='str', choices=['stop', 'continue'], default='stop'),
    )
    client = AnsibleDockerClient(
        argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[('volume', 'volumes', 'container', 'path')],
        required_one_of=[('volume', 'volumes', 'container', 'path')],
    )
    p = client.params
    for key, what in (('volume', 'a volume'), ('volumes', 'at least one volume'), ('container', 'a container'),
                      ('path', 'a directory')):
        if p[key] is not None and not p[key]:
            # Not a silent success that backed up nothing (an unset variable, an empty selection).
            client.fail('%s is empty: name %s to back up. Nothing was backed up.' % (key, what))
    if p['path'] and p['data_path'] == 'helper':
        client.fail('path backups read the directory directly; data_path=helper applies to volumes only.')
    for pattern in p['exclude']:
        err = _tree.exclude_pattern_error(pattern)
        if err:
            client.fail(err)
    err = file_attributes_error(p['mode'], p['owner'], p['group'])
    if err:
        client.fail(err)
    if p['keep'] is not None and p['keep'] < 1:
        client.fail('keep must be 1 or more (the archive of this run always stays); leave it unset to keep all.')
    lvl = p['compression_level']
    if lvl is not None:
        bounds = {'zstd': (1, 22), 'gzip': (1, 9)}.get(p['compression'])
        if bounds is None or not bounds[0] <= lvl <= bounds[1]:
            client.fail('compression_level %d is not valid for compression=%s%s.'
                        % (lvl, p['compression'], ' (range %d-%d)' % bounds if bounds else ''))
    missing = _archive.check_tools(p['compression'], need_tar=p['data_path'] != 'helper')
    if missing:
        client.fail('Missing on the managed host: %s. Install them (GNU tar, zstd), choose compression=gzip, or '
                    'use data_path=helper with a helper_image.' % ', '.join(missing))
    BackupManager(client).run()


if __name__ == '__main__':
    main()
