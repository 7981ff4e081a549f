#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: volume_transfer
short_description: Stream a Docker volume's data straight to another Docker host over SSH, verified
version_added: 0.1.0
author:
  - volumeops contributors (@volumeops)
description:
  - Runs on the B(source) Docker host and copies one local volume's data to a volume on a destination host over
    SSH (paramiko, opened from the source host). The data never passes through the Ansible controller and is
    never staged as a full archive on disk on either side.
  - The data is the same full-fidelity GNU tar pax stream as M(volumeops.docker.volume_backup) (numeric owners,
    all mode bits, sub-second mtimes, hard links, sparse files, xattrs incl. C(security.capability), POSIX ACLs),
    compressed with zstd on the wire, in fixed-size buffers (bounded memory).
  - The receiving side is shipped over the same SSH channel and runs under O(dest_python) on the destination
    (the collection need not be installed there). It treats the stream as untrusted (no absolute paths, no
    C(..), nothing written through links, no device nodes unless O(allow_devices)), writes only below the
    destination volume's directory, extracts into a staging directory beside the volume's C(_data), checks entry
    count and tree fingerprint (and with O(verify=content) a digest of every file's content) against the
    source's, and only then swaps the staging tree into the volume and marks it complete.
  - A final pass (O(finalize=true)) writes the tree to the destination's disk (C(syncfs), in the background while it
    arrives and once more during the verification) before the swap and the C(complete) marker. A power loss on the
    destination right after the pass cannot leave a complete-looking volume of empty files while the source is
    removed. The pass's duration includes that write. A warm pass (O(finalize=false)) writes its data to disk the
    same way, while the application still runs, so that the final pass (during the downtime) waits only for
    what it wrote itself.
  - 'Destination state: the staging tree C(<volume dir>/.volumeops-incoming-<migration_id>/) and the marker
    C(<volume dir>/.volumeops-migration.json) with C(migration_id), C(state) (C(staging), C(swapping) or
    C(complete)), the source volume, host and fingerprint, a timestamp and, once complete, the fingerprint of
    the destination''s data at completion, where C(<volume dir>) is the parent of the
    volume''s C(_data) (e.g. C(/var/lib/docker/volumes/<name>)). A destination is complete only when the marker
    says C(complete) for this O(migration_id). For a volume with mount options (see O(helper_image)) the
    staging tree is inside the mounted filesystem, and the marker in C(<volume dir>) on the host.'
  - 'One writer per destination volume: the receiver holds an exclusive lock (C(flock) on
    C(<volume dir>/.volumeops.lock), shared with M(volumeops.docker.volume_restore)) from before it reads the
    marker until it ends. A second transfer or a restore into the same volume meanwhile fails at once with
    "Another restore or transfer of volume X is running"; check mode fails the same way but creates no lock file.'
  - A two-phase migration runs a O(pass=full) transfer with O(finalize=false) while the application is still
    running (warm copy), stops the application, then runs O(pass=delta) with O(finalize=true). Only entries whose
    metadata (type, size, mtime, mode, owner, link target, xattrs/ACLs) changed are sent, and what the source no
    longer has is deleted on the destination.
  - 'A pass with O(finalize=false) keeps the records of its verification walk of the staged tree in
    C(<volume dir>/.volumeops-staged-records) (mode 0600, beside the marker; paths and metadata, no file data,
    about 150 bytes per entry), so that the next pass (the final delta, during the downtime) plans without
    walking the destination first; any pass removes the file before it changes the volume. They are used only while the staged tree''s root and the
    marker are as that pass left them and the file''s checksum is whole; the pass still walks the whole tree
    afterwards to verify it. If something wrote into the staged tree in between, that walk finds it: a final pass
    is then repeated on a fresh walk of the destination (a warning says so, RV(dest_records_rewalked)); a warm
    pass reports RV(verified=false), as when the source changed during it, and the next pass plans on what that
    walk found.'
  - A full pass (not in check mode) starts GNU tar and the compressor on the source at once, beside the source's
    metadata walk and the connection. Their output waits in memory (at most 32 MiB) until the destination has
    answered and the checks passed, and is dropped when one fails, so nothing reaches the destination earlier
    than before. On a volume of many small files the walk no longer delays the stream. tar may read an entry
    before the walk sees it, so the overlap is kept only when that is proven harmless. With O(verify=metadata)
    no entry may have changed from two seconds before tar started on (the walk's change times). With
    O(verify=content) the content digests compared at the end catch any such change. Otherwise the stream is
    dropped and started again after the walk.
options:
  volume:
    description: Source volume on the Docker host the module runs on. Must exist (never created).
    type: str
    required: true
  dest_volume:
    description:
      - Volume name on the destination. Defaults to O(volume).
      - Created when missing (with O(dest_driver), O(dest_driver_options), O(dest_labels); labels default to the
        source volume's labels).
    type: str
  dest_host:
    description: Address of the destination host as reachable from the source host.
    type: str
    required: true
  dest_port:
    description: SSH port of the destination.
    type: int
    default: 22
  dest_user:
    description: SSH user on the destination; it must be able to write the Docker volume directories (root).
    type: str
    default: root
  dest_host_key:
    description:
      - The destination's public SSH host key, C(<type> <base64>), for example C(ssh-ed25519 AAAA...) (from the
        destination's C(ansible_ssh_host_key_ed25519_public) fact prefixed with C(ssh-ed25519)).
      - The key is pinned; a different key fails with a clear message. Keys are never auto-accepted.
    type: str
    required: true
  private_key:
    description: Path on the source host of the private key that authenticates to the destination.
    type: path
  private_key_content:
    description: The private key itself (OpenSSH or PEM format, unencrypted). Never logged.
    type: str
  dest_python:
    description:
      - Python interpreter (3.8 or later) on the destination that runs the receiver. Only the standard library is
        needed; with the docker SDK importable it is used to inspect and create the destination volume, otherwise
        the C(docker) CLI on the destination is used.
    type: str
    default: /usr/bin/python3
  dest_docker_host:
    description: The destination's Docker daemon as seen from the destination; a C(unix://) socket (the receiver
      writes into the volume's mountpoint, so the daemon is the destination host's own).
    type: str
    default: unix:///var/run/docker.sock
  dest_driver:
    description:
      - Driver of the destination volume when it is created. Only C(local) volumes can be written by the receiver.
      - A C(local) volume with mount options (O(dest_driver_options) C(type)/C(device), for example NFS) needs
        O(helper_image). A C(tmpfs) volume is refused (its content is gone when no container uses it).
    type: str
    default: local
  helper_image:
    description:
      - Image (never pulled; it needs C(/usr/bin/python3), which only sleeps) for a holder container that keeps a
        volume mounted while it is read or written. Such a volume is mounted only while a container uses it, and
        its directory on the host is empty otherwise. It must exist on each host that has such a volume.
      - Source side, on the host the module runs on (or O(relay_source_host)) - a volume of the C(local) driver
        with mount options (NFS, CIFS, a block device, a bind mount, tmpfs) or of another driver. Without this
        option such a source is refused (also in check mode), never sent as the empty directory it looks like.
      - Destination side - a C(local) volume with mount options (not C(tmpfs), whose content is gone when no
        container uses it; other drivers are refused). The receiver writes through the holder's view of the mount,
        stages inside the mounted filesystem and swaps entry by entry (renames, rolled back or forward after an
        interruption, as O(volumeops.docker.volume_restore#module:data_path=helper) does).
      - The holder is removed when the transfer ends; one left by a killed receiver is removed by the next
        receiver on that host. Check mode starts holders too (to look at the volumes), and changes nothing in
        them.
      - Not needed (and not used) for plain local volumes.
    type: str
  dest_driver_options:
    description: Driver options of the destination volume when it is created.
    type: dict
  dest_labels:
    description: Labels of the destination volume when it is created (default the source volume's labels).
    type: dict
  pass:
    description:
      - V(full) copies everything into a fresh staging directory.
      - V(delta) compares per-entry metadata records of the source and of what the destination holds for this
        migration (staging tree, or the completed volume) and sends only changed entries (plus the parent
        directories whose mtimes the change disturbs and all paths of affected hard-link groups); it deletes on
        the destination what the source no longer has. Without anything of this migration on the destination,
        a delta sends everything.
    type: str
    choices: [full, delta]
    default: full
  finalize:
    description:
      - After the pass, verify and swap the staging tree into the destination volume and mark it complete.
      - With V(false) (warm copy) the data stays staged (written to disk, so that the final pass waits only for
        what changed) and the destination volume does not look complete;
        files changing while read (tar exit 1) are then a warning, not an error, and a fingerprint mismatch is
        reported as RV(verified=false) instead of failing.
    type: bool
    default: true
  source_in_use:
    description:
      - What to do when a running container uses the source volume.
      - V(ignore) copies it anyway (a warm pass of a two-phase migration, while the application runs).
      - V(fail) refuses before anything is sent, also in check mode. Use it for a final pass after the application
        was stopped; it catches a container that a restart policy, supervisor or orchestrator started again.
    type: str
    choices: [ignore, fail]
    default: ignore
  verify:
    description:
      - V(metadata) requires the destination tree's fingerprint (path, type, size, mtime, mode, owner, link
        target, xattrs incl. ACLs) and entry count to equal the source's. Entries whose inode number and change
        time (ctime) show they were not touched since an earlier walk of the same pass are not read again (see
        RV(source_recheck)); every change of a fingerprinted property moves the ctime.
      - V(content) also compares a digest of every regular file's content (reads all data on both sides once more);
        use it for the final pass, a metadata check misses edits that keep size and mtime.
      - On a destination already complete for this O(migration_id) whose metadata equals the source's,
        V(metadata) changes nothing and reports RV(verified) from the metadata alone. V(content) then reads both
        sides' data and compares their content digests. Equal gives C(changed=false); different fails without
        changing anything (a file's content changed on one side while its size and mtime stayed the same),
        unless O(pass=full) with O(existing=replace), which copies everything again.
      - A delta (O(pass=delta)) chooses what to send by metadata only. A file whose content changed while its size
        and mtime stayed the same is not sent, and O(verify=content) then fails the pass (the data stays staged)
        on every rerun of the delta; the message says so. O(pass=full) copies everything again.
    type: str
    choices: [metadata, content]
    default: metadata
  compression:
    description: Compression on the wire; V(none) for fast links (saves CPU on both sides).
    type: str
    choices: [zstd, none]
    default: zstd
  compression_level:
    description:
      - zstd level (1-19; higher is smaller and slower).
      - The default 1 suits a LAN, where the CPUs of the two hosts, not the link, limit the transfer. Level 3
        (the default of C(zstd) and of O(volumeops.docker.volume_backup#module:compression_level)) sends
        about 10% fewer bytes for about half again as much CPU on the source; raise the level for slow links.
    type: int
    default: 1
  exclude:
    description:
      - Glob patterns of entries to leave out, on both sides (the source's archive stream and the destination's walks),
        with the meaning of O(volumeops.docker.volume_backup#module:exclude). A pattern without C(/) matches an
        entry's name at any depth, one with C(/) the path relative to the volume root (a leading C(/) or C(./)
        changes nothing, a trailing C(/) is ignored); C(*), C(?) and C([...]) never match C(/); the root is never
        left out; an excluded directory is left out with everything below it.
      - Backslash escapes, C([^...]) and classes like C([:alpha:]) are refused (GNU tar and the walk would read
        them differently).
    type: list
    elements: str
    default: []
  migration_id:
    description:
      - Identifies this migration (letters, digits, C(_), C(.), C(-); at most 64). Recorded in the destination's
        marker, so a rerun tells "this migration's data" (resume or no-op) from "other data".
      - A complete destination counts as this migration's only while it holds what the migration left there
        (see O(existing)), and only for the source volume and host the marker names.
    type: str
    required: true
  existing:
    description:
      - What to do when the destination volume exists and holds data that is not this migration's.
      - Also counted as not this migration's - a destination that this O(migration_id) completed but whose data
        changed since (its fingerprint differs from the one recorded at completion, say the application
        already wrote to it on the destination) while the source changed too, and the completed copy of another
        source volume or host under the same O(migration_id). Markers written by versions that did not record
        these are trusted as before.
      - A destination this migration completed and the application wrote to since, with the source unchanged since
        the completion, is left as it is without a failure (nothing to copy; see RV(dest_changed_since_complete)).
      - V(fail) refuses (default), also in check mode; nothing is changed. V(replace) replaces its content
        (explicit opt-in; the old content stays until the new one is verified).
    type: str
    choices: [fail, replace]
    default: fail
  allow_devices:
    description: Accept device nodes in the stream (refused by default, as in restores).
    type: bool
    default: false
  lock_wait:
    description:
      - Seconds to wait when another transfer or restore holds the destination volume's lock (one writer per
        volume) before failing with that message; V(0) fails at once.
      - The default covers a pass whose connection died silently (a link down), whose receiver on the destination
        ends after 30 seconds without a frame from the source, which sends one every 5 seconds.
    type: int
    default: 45
  timeout:
    description:
      - Timeout in seconds for the Docker API and for the SSH connection (connect, banner, authentication).
        Data transfer stalls longer than twice this value (at least 60 seconds) abort the transfer.
    type: int
    default: 60
  relay_source_host:
    description:
      - Relay mode (see notes). Address of the source host as reachable from the controller; the module then runs
        on the controller and relays the stream.
    type: str
  relay_source_port:
    description: SSH port of the source host in relay mode.
    type: int
    default: 22
  relay_source_user:
    description: SSH user on the source host in relay mode (root, to read the volume).
    type: str
    default: root
  relay_source_host_key:
    description: The source's public SSH host key C(<type> <base64>), pinned like O(dest_host_key). Required with
      O(relay_source_host).
    type: str
  relay_source_private_key:
    description: Path on the controller of the private key that authenticates to the source in relay mode.
    type: path
  relay_source_private_key_content:
    description: The private key that authenticates to the source in relay mode. Never logged.
    type: str
  relay_source_python:
    description: Python on the source host that runs the sender in relay mode (needs paramiko).
    type: str
    default: /usr/bin/python3
extends_documentation_fragment:
  - volumeops.docker.docker
attributes:
  check_mode:
    support: full
    description: Connects to the destination (reachability, host key, authentication), inspects it and reports what
      would be sent (entries, bytes; for a delta the changed and deleted paths); nothing is written on either side.
  diff_mode:
    support: full
    description: Returns before/after of the destination (existence, migration, state) and what would be sent.
  idempotent:
    support: full
    description: A destination already complete for this O(migration_id) whose tree fingerprint equals the source's
      (and with O(verify=content) its content digest too) gives C(changed=false) and nothing is sent.
notes:
  - Requires on the source host paramiko, GNU tar and zstd (with O(compression=zstd)), and the Python SDK for Docker
    only when O(tls) or a fixed O(api_version) is set (otherwise the volume is inspected on the local socket directly);
    on the destination GNU tar, zstd and Python 3.8+ at O(dest_python) (standard library only; the receiver asks
    the destination's Docker daemon on its unix socket directly).
  - The source volume must be a local volume whose mountpoint the module can read (the module runs on the source
    Docker host, as root).
  - For the final pass of a migration the writers of the source volume must be stopped; with O(finalize=true)
    a file changing while being read fails the transfer.
  - Relay mode, for hosts that cannot reach each other (slower, the data crosses the controller twice). Run the
    module on the controller (C(delegate_to) set to C(localhost)) with O(relay_source_host) and O(relay_source_host_key).
    The module opens SSH to the source (host key pinned), asks the source's sshd for a remote port forward on the
    source's 127.0.0.1 (the source's sshd needs C(AllowTcpForwarding) yes or remote), and runs the same sender
    code there under O(relay_source_python) (which needs paramiko and the docker SDK or CLI). The sender connects
    through that forward, relayed by the controller to O(dest_host):O(dest_port) as the controller reaches it; it
    still pins O(dest_host_key) end to end. O(private_key) is then a path on the source host; O(docker_host) is
    the source's daemon as seen from the source.
  - Peak memory is bounded by fixed buffers (1 MiB data frames) plus, for O(pass=delta), the list of changed
    paths, the source's directory paths and at most 65,536 source entries walked ahead while the destination
    is still connecting or walking; the receiver's stream validator keeps one set entry per path of the stream.
  - Each tree is walked once to compare (the source while the connection opens, the destination as soon as the
    receiver starts, at the same time; not the destination when the previous pass kept its records, see above),
    and once more after the data was sent to verify (both sides in parallel); a rerun with nothing to send costs
    about one walk of the larger tree plus the SSH connection.
seealso:
  - module: volumeops.docker.volume_backup
  - module: volumeops.docker.volume_restore
'''

EXAMPLES = r'''
- name: Cold migration of one volume from this host to new1 (verified, marked complete)
  volumeops.docker.volume_transfer:
    volume: pgdata
    dest_host: 10.0.0.12
    dest_host_key: "ssh-ed25519 {{ hostvars['new1'].ansible_ssh_host_key_ed25519_public }}"
    private_key: /root/.ssh/volumeops-migration
    migration_id: pgdata-2025-06-01
    verify: content

- name: Two-phase migration, step 1 - warm copy while the application runs
  volumeops.docker.volume_transfer:
    volume: pgdata
    dest_host: 10.0.0.12
    dest_host_key: "{{ new1_host_key }}"
    private_key_content: "{{ migration_key }}"
    migration_id: pgdata-move
    pass: full
    finalize: false

- name: Two-phase migration, step 2 - after stopping the application, send only what changed
  volumeops.docker.volume_transfer:
    volume: pgdata
    dest_host: 10.0.0.12
    dest_host_key: "{{ new1_host_key }}"
    private_key_content: "{{ migration_key }}"
    migration_id: pgdata-move
    pass: delta
    finalize: true
    verify: content
    source_in_use: fail

- name: Fast local link, no compression, into another volume name, replacing foreign data
  volumeops.docker.volume_transfer:
    volume: appdata
    dest_volume: appdata_v2
    dest_host: 10.0.0.13
    dest_host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDc1..."
    private_key: /root/.ssh/volumeops-migration
    migration_id: appdata-v2
    compression: none
    existing: replace
'''

RETURN = r'''
changed:
  description: Whether data was sent (in check mode, whether it would be).
  returned: always
  type: bool
bytes:
  description: Apparent size of the source tree's regular files (hard links counted once).
  returned: always
  type: int
entries:
  description: Entries of the source tree (root included; sockets are not transferable and not counted).
  returned: always
  type: int
bytes_sent:
  description: Bytes written on the SSH channel (compressed data and protocol frames, after the receiver code).
  returned: always
  type: int
duration:
  description: Seconds the whole module took (walk, connection, stream, verification, swap).
  returned: always
  type: float
mb_per_s:
  description: Megabytes (10^6) of file data moved per second of RV(duration) (tree bytes for a full pass, bytes
    of the sent files for a delta).
  returned: always
  type: float
source_fingerprint:
  description: Tree fingerprint of the source (after the stream).
  returned: always
  type: str
dest_fingerprint:
  description: Tree fingerprint of the destination tree that was verified (staging or final).
  returned: when connected and not in check mode
  type: str
verified:
  description:
    - Whether the destination tree matched the source (fingerprint, count, content digest if requested).
    - On a destination already complete, with O(verify=metadata) from the metadata fingerprint alone; with
      O(verify=content) only after the content digests of both sides were compared.
  returned: always
  type: bool
content_digest:
  description: Content digest of the source (sha256 over every file's path and content hash).
  returned: when O(verify=content) and data was sent, or a complete destination's content was compared
  type: str
source_recheck:
  description:
    - How the source was re-checked after streaming, before the destination was declared verified. The
      destination is declared verified only when it matches the source as re-checked after the stream. With
      O(verify=metadata) a change during the pass that the fingerprint cannot see (a content edit that keeps size
      and mtime, made after tar read the file) is not noticed when the source is walked again
      (V(fingerprint) below); use O(verify=content) for the final pass.
    - V(change_token) when a listing of only each entry's inode and change time (ctime) matched the first walk's
      (made by GNU C(find) when there is no O(exclude) and C(find) is usable, else by a walk),
      proving nothing changed since; it is used with O(verify=metadata) when the newest ctime was at least 2 s
      older than the first walk. V(change_token_and_records) when some entries had changed within 2 s of the
      first walk (as in a final pass right after the application stopped) and the same listing matched, and
      those entries' fingerprint records, read again, matched too. V(fingerprint) when the source was walked
      and fingerprinted again.
  returned: when data was sent
  type: str
  choices: [change_token, change_token_and_records, fingerprint]
streamed_beside_walk:
  description:
    - True when the data sent was read by GNU tar while the source was still being walked (a full pass, see the
      description); false for a delta pass, in check mode, when nothing was sent, and when the source had changed
      too recently for the overlap to be proven harmless (then tar ran after the walk).
  returned: always
  type: bool
dest_records_reused:
  description:
    - How many entries the destination's verification did not read again (with O(verify=metadata), a delta pass
      keeps the records of its first walk of the destination, or uses those its previous pass kept; an entry whose
      inode number and ctime are unchanged, and whose ctime was at least 2 s old at that walk, keeps its record).
      0 for a full pass and with O(verify=content).
  returned: when data was sent
  type: int
dest_records_kept:
  description:
    - True when this delta was planned on the records the previous pass (O(finalize=false)) kept of the staged
      tree, without walking the destination first.
  returned: when data was sent
  type: bool
dest_records_rewalked:
  description:
    - True when the records kept by the previous pass no longer described the staged tree (something wrote into
      it since), so the pass was repeated on a fresh walk of the destination; a warning says so.
  returned: when that happened
  type: bool
deleted:
  description:
    - Number of paths a delta pass removed on the destination because the source no longer has them
      (top-most paths only; a removed directory counts once). In check mode, how many would be removed.
    - Entries below a directory that became a non-directory on the source (a symlink, a file) are removed with it
      but not counted here; the directory itself counts in RV(replaced).
  returned: always
  type: int
replaced:
  description: Number of entries a delta pass sent again because the destination held another version of them
    (changed content or metadata, or another type; also the other names of a re-sent hard-link group). Changed
    non-directories are removed on the destination first; these removals are not counted in RV(deleted).
  returned: always
  type: int
sent_entries:
  description: Entries sent (all for a full pass; new and replaced ones plus the parent directories whose mtimes
    they disturb for a delta).
  returned: always
  type: int
dest_state:
  description: State of the destination marker afterwards (V(staging) or V(complete)); in check mode the
    current one.
  returned: always
  type: str
dest_changed_since_complete:
  description:
    - True when this migration had completed on the destination, the destination was written since (its data no
      longer has the fingerprint recorded at completion, as when the application runs there now), and the source is
      unchanged since the completion. Nothing was copied (RV(changed) false, RV(verified) false, since the two sides
      differ by what was written on the destination). When the source changed too, the run fails instead
      (see O(existing)).
  returned: when true
  type: bool
would_send_bytes:
  description: Bytes of file data a real run would send.
  returned: in check mode when data would be sent
  type: int
sample_sent:
  description: Up to 20 paths a delta would send.
  returned: in check mode with O(pass=delta)
  type: list
  elements: str
relayed:
  description: True when the transfer ran in relay mode.
  returned: in relay mode
  type: bool
sample_deleted:
  description: Up to 20 paths a delta would delete on the destination (those the source no longer has).
  returned: in check mode with O(pass=delta)
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.volumeops.docker.plugins.module_utils._docker_client import (
    AnsibleDockerClient, docker_argument_spec,
)
from ansible_collections.volumeops.docker.plugins.module_utils._validation import (
    stringify_labels, volume_name_error,
)
from ansible_collections.volumeops.docker.plugins.module_utils import _archive
from ansible_collections.volumeops.docker.plugins.module_utils import _transfer
from ansible_collections.volumeops.docker.plugins.module_utils import _tree

try:
    import paramiko
    PARAMIKO_VERSION = paramiko.__version__  # checked here for a clear message; used in _transfer
    HAS_PARAMIKO = True
    # paramiko's errors are no OSError: one that _transfer did not word yet is still one message, no traceback.
    SSH_ERRORS = (paramiko.SSHException,)
except ImportError:
    PARAMIKO_VERSION = None
    HAS_PARAMIKO = False
    SSH_ERRORS = ()


class TransferParameters(object):
    def __init__(self, params):
        self.raw = dict(params)
        self.raw['dest_volume'] = params['dest_volume'] or params['volume']


class _DockerClient(AnsibleDockerClient):
    """The shared Docker client on an AnsibleModule built here (relay mode needs no Docker on the controller)."""

    def __init__(self, module):  # pylint: disable=super-init-not-called
        self.module = module
        self.params = module.params
        self._init_connection()


class VolumeTransferManager(object):
    def __init__(self, module, client=None):
        self.client = client
        self.module = module
        self.params = TransferParameters(module.params).raw

    def fail(self, msg):
        self.module.fail_json(msg=msg)

    def validate(self):
        p = self.params
        for key, what in (('volume', 'volume name'), ('dest_volume', 'dest_volume name')):
            err = volume_name_error(p[key], what)
            if err:
                self.fail(err)
        err = _transfer.check_migration_id(p['migration_id'])
        if err:
            self.fail(err)
        for pattern in p['exclude']:
            err = _tree.exclude_pattern_error(pattern)
            if err:
                self.fail(err)
        for key in ('dest_driver_options', 'dest_labels'):
            try:
                p[key] = stringify_labels(p[key], what=key)
            except ValueError as exc:
                self.fail(str(exc))
        err = _transfer.unwritable_volume_error(p['dest_volume'], p['dest_driver'], p['dest_driver_options'],
                                                p['helper_image'])
        if err:
            self.fail(err + ' Nothing was changed.')
        if not 1 <= p['compression_level'] <= 19:
            self.fail('compression_level must be between 1 and 19.')
        if p['lock_wait'] < 0:
            self.fail('lock_wait must be 0 or more seconds.')
        if not HAS_PARAMIKO:
            self.fail(missing_required_lib('paramiko (pip install paramiko, or apt install python3-paramiko)'))
        if not p.get('relay_source_host'):
            missing = _archive.check_tools(p['compression'])
            if missing:
                self.fail('Missing on the source host: %s.' % ', '.join(missing))

    def run_relay(self):
        """Relay mode: this module runs on the controller; the sender runs on the source over SSH."""
        self.validate()
        p = self.params
        if not (p['relay_source_private_key'] or p['relay_source_private_key_content']):
            self.fail('relay_source_host needs relay_source_private_key or relay_source_private_key_content.')
        relay = _transfer.Relay(p, check_mode=self.module.check_mode, diff=self.module._diff)
        try:
            result = relay.run()
        except _transfer.TransferError as exc:
            msg = str(exc)
            # ssh_connect words a mismatch for the destination; here it may be the source's pinned key.
            if msg.startswith('Host key mismatch for %s@%s:' % (p['relay_source_user'], p['relay_source_host'])):
                msg = msg.replace('dest_host_key pins', 'relay_source_host_key pins')
            self.fail('%s (relay %s:%s -> %s:%s)' % (
                msg, p['relay_source_host'], p['volume'], p['dest_host'], p['dest_volume']))
        except SSH_ERRORS as exc:
            self.fail('SSH failed in relay mode (%s: %s); rerun the transfer: it resumes, or finds the destination '
                      'complete. (relay %s:%s -> %s:%s)'
                      % (exc.__class__.__name__, exc, p['relay_source_host'], p['volume'], p['dest_host'],
                         p['dest_volume']))
        for w in result.pop('warnings', None) or []:
            self.module.warn(w)
        result.pop('dest_state_before', None)
        result['relayed'] = True
        self.module.exit_json(**result)

    def run(self):
        self.validate()
        p = self.params
        if not self.client.is_local:
            self.fail('volume_transfer must run on the source Docker host (docker_host must be a local unix socket).')
        with self.client.errors('Inspecting volume %s' % p['volume']):
            info = self.client.inspect_volume(p['volume'])
        if info is None:
            self.fail('Source volume %s does not exist on this host (it is never created by volume_transfer).'
                      % p['volume'])
        if p['source_in_use'] == 'fail':
            with self.client.errors('Listing the containers using volume %s' % p['volume']):
                # A holder container of a killed transfer is no application writing to the volume.
                running = [c['name'] for c in self.client.containers_using_volume(p['volume'])
                           if c['running'] and _transfer.HOLDER_LABEL not in c['labels']]
            if running:
                self.fail(_transfer.source_in_use_message(p['volume'], running))
        warnings = []
        holder = None
        try:
            holder = _transfer.DockerAccess(p['docker_host'])
            root = _transfer.source_root(holder, info, p['helper_image'])
            result = _transfer.run_transfer(
                lambda fresh: _transfer.Sender(dict(p, _fresh_base=fresh), root, volume_info=info,
                                               check_mode=self.module.check_mode, diff=self.module._diff,
                                               warn=warnings.append),
                warnings.append)
        except _transfer.TransferError as exc:
            self.fail('%s (volume %s -> %s:%s)' % (exc, p['volume'], p['dest_host'], p['dest_volume']))
        except OSError as exc:
            self.fail(_archive.describe_os_error(exc, 'Transferring volume %s' % p['volume']))
        except SSH_ERRORS as exc:
            self.fail('SSH failed during the transfer (%s: %s); rerun the transfer: it resumes, or finds the '
                      'destination complete. (volume %s -> %s:%s)'
                      % (exc.__class__.__name__, exc, p['volume'], p['dest_host'], p['dest_volume']))
        finally:
            if holder is not None:
                holder.release()
        for w in warnings:
            self.module.warn(w)
        result.pop('dest_state_before', None)
        self.module.exit_json(**result)


def main():
    argument_spec = dict(
        volume=dict(type='str', required=True),
        dest_volume=dict(type='str'),
        dest_host=dict(type='str', required=True),
        dest_port=dict(type='int', default=22),
        dest_user=dict(type='str', default='root'),
        dest_host_key=dict(type='str', required=True, no_log=False),
        private_key=dict(type='path', no_log=False),
        private_key_content=dict(type='str', no_log=True),
        dest_python=dict(type='str', default='/usr/bin/python3'),
        dest_docker_host=dict(type='str', default='unix:///var/run/docker.sock'),
        dest_driver=dict(type='str', default='local'),
        dest_driver_options=dict(type='dict'),
        dest_labels=dict(type='dict'),
        helper_image=dict(type='str'),
        compression=dict(type='str', choices=['zstd', 'none'], default='zstd'),
        compression_level=dict(type='int', default=1),
        lock_wait=dict(type='int', default=_transfer.LOCK_WAIT_SECONDS),
        exclude=dict(type='list', elements='str', default=[]),
        migration_id=dict(type='str', required=True),
        existing=dict(type='str', choices=['fail', 'replace'], default='fail'),
        allow_devices=dict(type='bool', default=False),
        finalize=dict(type='bool', default=True),
        verify=dict(type='str', choices=['metadata', 'content'], default='metadata'),
        source_in_use=dict(type='str', choices=['ignore', 'fail'], default='ignore'),
    )
    argument_spec['pass'] = dict(type='str', choices=['full', 'delta'], default='full', no_log=False)
    argument_spec.update(
        relay_source_host=dict(type='str'),
        relay_source_port=dict(type='int', default=22),
        relay_source_user=dict(type='str', default='root'),
        relay_source_host_key=dict(type='str', no_log=False),
        relay_source_private_key=dict(type='path', no_log=False),
        relay_source_private_key_content=dict(type='str', no_log=True),
        relay_source_python=dict(type='str', default='/usr/bin/python3'),
    )
    spec = docker_argument_spec()
    spec.update(argument_spec)
    module = AnsibleModule(
        argument_spec=spec,
        supports_check_mode=True,
        mutually_exclusive=[('private_key', 'private_key_content'),
                            ('relay_source_private_key', 'relay_source_private_key_content')],
        required_one_of=[('private_key', 'private_key_content')],
        required_by=dict(relay_source_host=('relay_source_host_key',)),
    )
    if module.params['relay_source_host']:
        VolumeTransferManager(module).run_relay()
    else:
        VolumeTransferManager(module, _DockerClient(module)).run()


if __name__ == '__main__':
    main()
