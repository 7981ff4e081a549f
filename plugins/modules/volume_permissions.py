#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: volume_permissions
short_description: Ensure ownership and modes inside a Docker volume, idempotently
version_added: 0.1.0
author:
  - volumeops contributors (@volumeops)
description:
  - Ensures the owner, group and mode of the files inside a named Docker volume (or under a sub-path of it),
    the declarative replacement for C(docker run --rm -v vol:/data alpine chown -R 1000:1000 /data).
  - Only entries that differ are changed; C(changed) is V(false) when everything already matches. The tree is
    walked once; no process is started per file.
  - With O(like_container), owner and group are those of the user a container (or its image) is configured to
    run as, and user and group names are resolved through that container's own C(/etc/passwd) and
    C(/etc/group), the way the container sees them. The resolved IDs are returned in RV(uid) and RV(gid).
  - Symlinks are never followed. Their own owner and group are set (lchown semantics) when O(owner) or O(group)
    apply; their targets are never touched and they never get a mode.
  - O(path) may not leave the volume; C(..), absolute paths and symlink components that point outside the
    volume are refused.
extends_documentation_fragment:
  - volumeops.docker.docker
attributes:
  check_mode:
    support: full
    description: Reports what would change (counts and a sample of paths) without changing anything; a helper
      container, if one is used, mounts the volume read-only.
  diff_mode:
    support: full
    description: Returns before/after with the number of entries whose owner, group or mode change and a
      bounded sample (O(diff_sample)) of those paths with their old and new owner, group and mode.
  idempotent:
    support: full
    description: A second run with the same parameters changes nothing and reports C(changed=false).
options:
  volume:
    description:
      - Name of the volume. It must exist; it is never created.
    type: str
    required: true
    aliases: [name]
  path:
    description:
      - Sub-path inside the volume to work on, relative to the volume root. V(.) is the volume root itself.
      - It must exist. Absolute paths, C(..) components and symlink components pointing outside the volume are
        refused.
    type: str
    default: .
  owner:
    description:
      - Owner to set, a numeric UID (V(1000) or V("1000")) or a user name.
      - Names are resolved in the C(/etc/passwd) of O(like_container); without O(like_container) only numeric
        IDs are accepted (the host's user database says nothing about the container's users).
      - When not given and O(like_container) is set, the UID the container runs as is used; otherwise owners
        are left alone.
      - Given without O(group), the group becomes the user's primary group (see O(group)).
    type: raw
  group:
    description:
      - Group to set, a numeric GID (V(1000) or V("1000")) or a group name (resolved in the C(/etc/group) of O(like_container)).
      - When not given but O(owner) is, the primary group of that user in the C(/etc/passwd) of O(like_container)
        (as C(chown user:) and C(docker run --user name) do); an owner that file does not list, or no
        O(like_container), leaves groups alone.
      - When neither is given and O(like_container) is set, the GID the container runs as is used (the primary
        group of its user when only a user is configured, as Docker does); otherwise groups are left alone.
    type: raw
  mode:
    description:
      - Mode of the entry at O(path) (the root of the operation).
      - Octal as a quoted string (V("0750"), V("2775")) sets exactly those bits; symbolic
        (V("u=rwX,g=rX,o=")) changes the current mode like C(chmod), except that the umask is never applied
        (a clause without u/g/o/a means all three) and C(X) means execute for directories and for entries
        that already have an execute bit.
      - When not given, the root gets O(dir_mode) (or O(file_mode) if it is not a directory) with
        O(recurse=true), else its mode is left alone.
    type: raw
  dir_mode:
    description:
      - Mode of every directory in the tree (octal or symbolic, see O(mode)). Needs O(recurse=true).
    type: raw
  file_mode:
    description:
      - Mode of every entry in the tree that is neither a directory nor a symlink (regular files, FIFOs,
        sockets, device nodes). Octal or symbolic, see O(mode). Needs O(recurse=true).
    type: raw
  recurse:
    description:
      - Apply O(owner), O(group), O(dir_mode) and O(file_mode) to everything below O(path) as well. With
        V(false), only the entry at O(path) is examined.
    type: bool
    default: false
  like_container:
    description:
      - Name or ID of a container (running or not). Its configured user (C(Config.User), which comes from the
        image's C(USER) unless overridden) gives the default O(owner) and O(group), and user and group names
        are resolved through the container's own C(/etc/passwd) and C(/etc/group), read with the Docker API's
        archive endpoint (nothing is executed in the container).
      - An empty configured user means root (0:0). A user name alone takes its primary group; a numeric UID
        that is not in C(/etc/passwd) runs with GID 0, as in Docker.
    type: str
  data_path:
    description:
      - How the volume's data is reached.
      - V(auto) works directly on the volume's mountpoint when the driver is C(local) without driver options,
        the daemon is reached through a local C(unix://) socket, and user namespace remapping is off;
        otherwise it uses a helper container.
      - V(direct) insists on the mountpoint (fails when it is not usable), V(helper) always uses a helper
        container.
    type: str
    choices: [auto, direct, helper]
    default: auto
  helper_image:
    description:
      - Image of the helper container, which runs the same Python code as the direct path with C(python3)
        (3.7 or newer, standard library only) with the volume mounted at C(/volume), as root, without network.
      - The image must already be present on the Docker host; it is never pulled.
      - Required only when a helper container is used.
    type: str
  workers:
    description:
      - Number of processes that walk the tree in parallel (the top levels are listed first, then the
        subtrees below them are shared out; every entry is still visited once). V(0) means one per CPU,
        at most 4. Inside a helper container the same number is used.
    type: int
    default: 0
  diff_sample:
    description:
      - Maximum number of changed paths reported in the diff and in RV(changes.sample).
    type: int
    default: 20
notes:
  - chown(2) clears setuid/setgid bits and file capabilities (C(security.capability)) of files. This module puts
    them back, so an entry ends up with the mode it had (or the one asked for) and keeps its capabilities.
  - After each change the entry is checked again; a filesystem that accepts a chown without applying it (NFS
    with root_squash, some FUSE or SMB mounts) makes the task fail instead of reporting success.
  - Changes go through a verified file descriptor of each parent directory and never follow a symlink, so a
    container that keeps running and swaps a directory for a symlink cannot redirect them outside the volume;
    the task fails if it notices the swap. Stop writers for a consistent result.
  - A failure part-way (an immutable file, a filesystem that refuses the change) stops the run at that entry;
    the message names it, and when entries were changed before it the task reports C(changed=true) and how many
    (also in RV(changed_entries)). Entries not reached yet are left as they were.
  - Entries are reached through their absolute paths, so a tree deeper than PATH_MAX (4096 bytes of path) fails,
    in check mode too, with a message saying so.
  - A local-driver volume with driver options (NFS, tmpfs, bind devices) is only mounted while a container uses
    it, so it is always handled through a helper container.
  - A memory volume (C(local) driver, C(type=tmpfs) or C(ramfs)) keeps its content only while a container mounts
    it. When no running (or paused, or restarting) container does, the task fails, in check mode too, and changes
    nothing (the helper would mount an empty one whose changes are gone when it ends).
seealso:
  - module: volumeops.docker.volume
  - module: volumeops.docker.volume_info
'''

EXAMPLES = r'''
- name: Make a volume writable by an application that runs as 1000:1000
  volumeops.docker.volume_permissions:
    volume: appdata
    owner: 1000
    group: 1000
    dir_mode: u=rwX,g=rX,o=
    file_mode: u=rwX,g=rX,o=
    recurse: true

- name: PostgreSQL data directory, 0700 and owned by the postgres user (and its primary group) of the image
  volumeops.docker.volume_permissions:
    volume: pgdata
    like_container: postgres       # user "postgres" resolved in the container's own /etc/passwd
    owner: postgres                # without group: postgres's primary group from that file, e.g. 999:999
    mode: "0700"
    dir_mode: "0700"
    file_mode: "0600"
    recurse: true
  register: pg_perms

- name: Show what was resolved
  ansible.builtin.debug:
    msg: "postgres is {{ pg_perms.uid }}:{{ pg_perms.gid }}, {{ pg_perms.changed_entries }} entries fixed"

- name: Whatever user the app container runs as, only one sub-directory, dry run with diff
  volumeops.docker.volume_permissions:
    volume: appdata
    path: uploads
    like_container: web
    recurse: true
  check_mode: true
  diff: true

- name: Volume on an NFS-backed driver, through a local helper image that has python3
  volumeops.docker.volume_permissions:
    volume: shared
    owner: 33
    group: 33
    recurse: true
    helper_image: python:3.12-alpine
'''

RETURN = r'''
volume:
  description: Name of the volume.
  returned: always
  type: str
  sample: pgdata
target_path:
  description: The path worked on, relative to the volume root after resolving symlinks inside the volume.
  returned: success
  type: str
  sample: .
uid:
  description: The UID set (resolved from a name or O(like_container)); null when owners are left alone.
  returned: always
  type: int
  sample: 999
gid:
  description: The GID set; null when groups are left alone.
  returned: always
  type: int
  sample: 999
container_user:
  description: The user O(like_container) is configured to run as (C(Config.User)), empty for root.
  returned: when O(like_container) is set
  type: str
  sample: postgres
data_path:
  description: How the data was reached, V(direct) (the mountpoint) or V(helper) (a helper container).
  returned: success
  type: str
  sample: direct
examined:
  description: Number of entries examined (the root included).
  returned: success
  type: int
  sample: 1532
changed_entries:
  description:
    - Number of entries changed (or that would be changed in check mode).
    - When the run failed part-way, the number of entries changed before the failure.
  returned: success, and on a failure part-way
  type: int
  sample: 12
changes:
  description: What differed.
  returned: success
  type: dict
  contains:
    owner:
      description: Entries whose owner changes.
      type: int
    group:
      description: Entries whose group changes.
      type: int
    mode:
      description: Entries whose mode changes.
      type: int
    sample:
      description: Up to O(diff_sample) changed entries with C(path), C(before) and C(after) (C(uid), C(gid), C(mode)).
      type: list
      elements: dict
    sample_truncated:
      description: Whether more entries changed than the sample shows.
      type: bool
  sample:
    owner: 2
    group: 2
    mode: 1
    sample:
      - path: ./PG_VERSION
        before: {uid: 0, gid: 0, mode: '0644'}
        after: {uid: 999, gid: 999, mode: '0600'}
    sample_truncated: false
root:
  description: Owner, group and mode of the entry at O(path) after the run (as it would be, in check mode).
  returned: success
  type: dict
  sample: {uid: 999, gid: 999, mode: '0700'}
'''

import io
import json
import os
import tarfile

from ansible_collections.volumeops.docker.plugins.module_utils._docker_client import AnsibleDockerClient
from ansible_collections.volumeops.docker.plugins.module_utils._validation import volume_name_error
from ansible_collections.volumeops.docker.plugins.module_utils import _archive
from ansible_collections.volumeops.docker.plugins.module_utils import _permissions
from ansible_collections.volumeops.docker.plugins.module_utils import _tree
from ansible_collections.volumeops.docker.plugins.module_utils._permissions import (
    Plan, PermissionsError, default_workers, parse_group, parse_mode, parse_passwd, plan_to_dict,
    resolve_container_user, resolve_group, resolve_owner, run,
)

HELPER_MOUNT = '/volume'
HELPER_LABEL = 'volumeops.docker.helper'


def _source_of(module):
    """Source text of a module_utils module, also when it was loaded from the AnsiballZ zip."""
    loader = getattr(module, '__loader__', None)
    source = None
    if loader is not None and hasattr(loader, 'get_source'):
        try:
            source = loader.get_source(module.__name__)
        except Exception:  # some loaders raise instead of returning None
            source = None
    if source is None:
        import inspect
        source = inspect.getsource(module)
    return source


def helper_script():
    """A self-contained program for ``python3 -c``: _tree and _permissions registered under their real names."""
    modules = [(_tree.__name__, _source_of(_tree)), (_permissions.__name__, _source_of(_permissions))]
    lines = [
        'import sys, types',
        'def _register(name, source):',
        '    parts = name.split(".")',
        '    for i in range(1, len(parts)):',
        '        pkg = ".".join(parts[:i])',
        '        if pkg not in sys.modules:',
        '            m = types.ModuleType(pkg)',
        '            m.__path__ = []',
        '            sys.modules[pkg] = m',
        '    mod = types.ModuleType(name)',
        '    sys.modules[name] = mod',
        '    exec(compile(source, name, "exec"), mod.__dict__)',
        '    return mod',
    ]
    for name, source in modules:
        lines.append('_register(%r, %r)' % (name, source))
    lines.append('sys.modules[%r].helper_main()' % _permissions.__name__)
    return '\n'.join(lines) + '\n'


class PermissionsParameters(object):
    def __init__(self, client):
        p = client.params
        self.volume = p['volume']
        self.path = p['path']
        self.owner = self._id_param(client, 'owner')
        self.group = self._id_param(client, 'group')
        self.recurse = p['recurse']
        self.like_container = p['like_container']
        self.data_path = p['data_path']
        self.helper_image = p['helper_image']
        self.diff_sample = p['diff_sample']
        self.workers = p['workers'] or default_workers()
        self.check_mode = client.module.check_mode
        self.diff = client.module._diff
        try:
            self.mode = parse_mode(p['mode'], 'mode')
            self.dir_mode = parse_mode(p['dir_mode'], 'dir_mode')
            self.file_mode = parse_mode(p['file_mode'], 'file_mode')
        except PermissionsError as exc:
            client.fail(str(exc))
        if (self.dir_mode or self.file_mode) and not self.recurse:
            client.fail('dir_mode and file_mode apply to the tree below path; set recurse: true '
                        '(or use mode for the entry at path alone).')
        if self.diff_sample < 0:
            client.fail('diff_sample must be 0 or more.')
        if p['workers'] < 0:
            client.fail('workers must be 0 (automatic) or more.')
        error = volume_name_error(self.volume)
        if error:
            client.fail(error)
        if '\0' in (self.path or ''):
            client.fail('path %r contains a NUL character, which no file name can contain.' % self.path)

    @staticmethod
    def _id_param(client, name):
        # raw, so that YAML integers (owner: 1000) are taken as they are, without a conversion warning.
        value = client.params[name]
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            client.fail('%s must be a numeric ID or a name, not %r.' % (name, value))
        return str(value).strip()


class PermissionsManager(object):
    def __init__(self, client):
        self.client = client
        self.params = PermissionsParameters(client)
        self.results = dict(changed=False, volume=self.params.volume, uid=None, gid=None)

    # --- inputs -----------------------------------------------------------------------------------

    def _container_file(self, container, path):
        """Text of a file inside the container via the archive endpoint, or None when it does not exist."""
        try:
            stream, _stat = self.client.api.get_archive(container, path)
            data = b''.join(stream)
        except self.client.NotFound:
            return None
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in archive.getmembers():
                if member.isfile():
                    return archive.extractfile(member).read().decode('utf-8', 'replace')
                if member.issym() or member.islnk():
                    # /etc/passwd as a link: follow it inside the container once.
                    target = member.linkname if member.linkname.startswith('/') else \
                        path.rsplit('/', 1)[0] + '/' + member.linkname
                    if target != path:
                        return self._container_file(container, target)
        return None

    def resolve_ids(self):
        p = self.params
        passwd = groups = None
        where = None
        container_uid = container_gid = None
        if p.like_container:
            with self.client.errors('Inspecting container %s' % p.like_container):
                try:
                    info = self.client.api.inspect_container(p.like_container)
                except self.client.NotFound:
                    self.client.fail('Container %r does not exist (like_container).' % p.like_container)
                name = (info.get('Name') or p.like_container).lstrip('/')
                passwd_text = self._container_file(info['Id'], '/etc/passwd')
                group_text = self._container_file(info['Id'], '/etc/group')
            where = 'container %s' % name
            if passwd_text is None:
                where += ' (it has no /etc/passwd)'
            passwd = parse_passwd(passwd_text or '')
            groups = parse_group(group_text or '')
            user = (info.get('Config') or {}).get('User') or ''
            self.results['container_user'] = user
            try:
                container_uid, container_gid = resolve_container_user(user, passwd, groups, where)
            except PermissionsError as exc:
                self.client.fail('Cannot resolve the user %r that container %s runs as: %s' % (user, name, exc))
        try:
            if p.owner is not None:
                # owner without group: the user's primary group, as "chown user:" and "docker run --user
                # name" take it (not the GID the container happens to run as: root for the official
                # database images, whose entrypoints switch user themselves). A UID that the container's
                # /etc/passwd does not list has no primary group: groups are left alone then.
                uid, default_gid = resolve_owner(p.owner, passwd, where)
            else:
                uid, default_gid = container_uid, container_gid
            gid = resolve_group(p.group, groups, where) if p.group is not None else default_gid
        except PermissionsError as exc:
            self.client.fail(str(exc))
        self.results.update(uid=uid, gid=gid)
        return uid, gid

    # --- data path ------------------------------------------------------------------------------------

    def choose_data_path(self, volume_info):
        p = self.params
        reasons = []
        if volume_info.get('Driver') != 'local':
            reasons.append('its driver is %s' % volume_info.get('Driver'))
        elif volume_info.get('Options'):
            reasons.append('it has driver options (it is only mounted while a container uses it)')
        if not self.client.is_local:
            reasons.append('the Docker daemon is not reached through a local unix socket')
        else:
            with self.client.errors('Reading the Docker daemon information'):
                security = self.client.api.info().get('SecurityOptions') or []
            if any('name=userns' in str(opt) for opt in security):
                reasons.append('the daemon remaps user namespaces (IDs on the host differ from those in containers)')
        mountpoint = volume_info.get('Mountpoint') or ''
        if not reasons:
            if not os.path.isdir(mountpoint):
                reasons.append('its mountpoint %s is not a directory on this host' % mountpoint)
        if p.data_path == 'direct':
            if reasons:
                self.client.fail('data_path=direct is not possible for volume %s: %s.' % (p.volume, '; '.join(reasons)))
            return 'direct'
        if reasons:
            self._helper_reason = '; '.join(reasons)
            return 'helper'
        if p.data_path == 'helper':
            return 'helper'
        return 'direct'

    def run_direct(self, mountpoint, plan):
        p = self.params
        try:
            return run(mountpoint, p.path, plan, check_mode=p.check_mode, workers=p.workers)
        except PermissionsError as exc:
            self.fail_partway(str(exc), exc.changed)

    def run_helper(self, plan):
        p = self.params
        if not p.helper_image:
            self.client.fail('Volume %s needs a helper container because %s, but helper_image is not set: give a local '
                             'image that has python3.' % (p.volume, self._helper_reason))
        self.client.require_local_image(p.helper_image)
        request = dict(root=HELPER_MOUNT, path=p.path, plan=plan_to_dict(plan), check_mode=p.check_mode,
                       workers=p.workers)
        api = self.client.api
        container = None
        with self.client.errors('Running the helper container (%s) for volume %s' % (p.helper_image, p.volume)):
            try:
                host_config = api.create_host_config(
                    mounts=[{'Type': 'volume', 'Source': p.volume, 'Target': HELPER_MOUNT,
                             'ReadOnly': bool(p.check_mode)}],
                    network_mode='none',
                    log_config={'Type': 'json-file', 'Config': {}},
                )
                container = api.create_container(
                    p.helper_image, entrypoint=['python3'], command=['-c', helper_script(), json.dumps(request)],
                    user='0:0', working_dir='/', network_disabled=True, host_config=host_config,
                    labels={HELPER_LABEL: 'volume_permissions'})
                api.start(container)
                status = api.wait(container, timeout=None)
                out = api.logs(container, stdout=True, stderr=False).decode('utf-8', 'replace')
                err = api.logs(container, stdout=False, stderr=True).decode('utf-8', 'replace')
            finally:
                if container is not None:
                    try:
                        api.remove_container(container, force=True, v=False)
                    except Exception:  # best effort; the run's result matters more than this cleanup
                        pass
        code = status.get('StatusCode') if isinstance(status, dict) else status
        lines = [line for line in out.splitlines() if line.startswith('{')]
        if code != 0 or not lines:
            self.client.fail('The helper container (%s) for volume %s failed (exit %s): %s'
                             % (p.helper_image, p.volume, code, (err.strip() or out.strip())[-2000:]))
        answer = json.loads(lines[-1])
        if not answer.get('ok'):
            self.fail_partway(answer.get('msg'), answer.get('changed'))
        return answer['result']

    def fail_partway(self, msg, changed):
        """Fail; when entries were changed before the failure, say how many and report changed=true."""
        p = self.params
        msg = 'Volume %s: %s' % (p.volume, msg)
        if changed:
            msg = msg.rstrip('.') + ('. %d %s changed before the failure; entries not reached were left as they '
                                     'were. Fix the cause and run the task again.'
                                     % (changed, 'entry was' if changed == 1 else 'entries were'))
        self.client.fail(msg, changed=bool(changed), changed_entries=changed or 0)

    # --- main -----------------------------------------------------------------------------------------

    def apply(self):
        p = self.params
        with self.client.errors('Inspecting volume %s' % p.volume):
            volume_info = self.client.inspect_volume(p.volume)
        if volume_info is None:
            self.client.fail('Volume %s does not exist.' % p.volume)
        self.refuse_unmounted_memory_volume(volume_info)
        uid, gid = self.resolve_ids()
        plan = Plan(uid=uid, gid=gid, mode=p.mode, dir_mode=p.dir_mode, file_mode=p.file_mode,
                    recurse=p.recurse, sample_size=p.diff_sample)
        self._helper_reason = 'data_path=helper'
        data_path = self.choose_data_path(volume_info)
        if data_path == 'direct':
            result = self.run_direct(volume_info['Mountpoint'], plan)
        else:
            result = self.run_helper(plan)
        self.results.update(result)
        self.results['data_path'] = data_path
        self.results['changed'] = result['changed_entries'] > 0
        if p.diff:
            self.results['diff'] = self._diff(result)
        return self.results

    def refuse_unmounted_memory_volume(self, volume_info):
        """A tmpfs/ramfs volume that no running container keeps mounted is mounted afresh, empty, for the helper:
        what it changed would be gone when the helper ends (volume_restore refuses the same case)."""
        p = self.params
        options = volume_info.get('Options')
        if not _archive.is_memory_volume(volume_info.get('Driver'), options):
            return
        with self.client.errors('Listing the containers that use volume %s' % p.volume):
            running = [c for c in self.client.containers_using_volume(p.volume) if c['running']]
        if not running:
            self.client.fail('Volume %s (type=%s) keeps its content only while a container mounts it, and no running '
                             'container does: whatever this task changed would be gone when its helper container '
                             'ends. Start a container that uses the volume first. Nothing was changed.'
                             % (p.volume, (options or {}).get('type')))

    def _diff(self, result):
        changes = result['changes']
        head = 'volume %s, path %s: %d of %d entries differ (owner %d, group %d, mode %d)' % (
            self.params.volume, result['target_path'], result['changed_entries'], result['examined'],
            changes['owner'], changes['group'], changes['mode'])
        before = [head]
        after = [head]
        for item in changes['sample']:
            b, a = item['before'], item['after']
            # Control characters escaped as the other modules show paths (a newline would split the line).
            path = _archive.shown(item['path'])[1:-1]
            before.append('%s %d:%d %s' % (path, b['uid'], b['gid'], b['mode']))
            after.append('%s %d:%d %s' % (path, a['uid'], a['gid'], a['mode']))
        if changes['sample_truncated']:
            more = '... and %d more' % (result['changed_entries'] - len(changes['sample']))
            before.append(more)
            after.append(more)
        return dict(before='\n'.join(before) + '\n', after='\n'.join(after) + '\n')


def main():
    argument_spec = dict(
        volume=dict(type='str', required=True, aliases=['name']),
        path=dict(type='str', default='.'),
        owner=dict(type='raw'),
        group=dict(type='raw'),
        mode=dict(type='raw'),
        dir_mode=dict(type='raw'),
        file_mode=dict(type='raw'),
        recurse=dict(type='bool', default=False),
        like_container=dict(type='str'),
        data_path=dict(type='str', choices=['auto', 'direct', 'helper'], default='auto'),
        helper_image=dict(type='str'),
        diff_sample=dict(type='int', default=20),
        workers=dict(type='int', default=0),
    )
    client = AnsibleDockerClient(
        argument_spec,
        supports_check_mode=True,
        required_one_of=[('owner', 'group', 'mode', 'dir_mode', 'file_mode', 'like_container')],
    )
    manager = PermissionsManager(client)
    client.module.exit_json(**manager.apply())


if __name__ == '__main__':
    main()
