#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: volume_info
short_description: Inspect Docker volumes, who uses them and how full they are
version_added: 0.1.0
author:
  - volumeops contributors (@volumeops)
description:
  - Returns one named volume, every volume, or the volumes matching O(filters), each with its driver, options,
    labels, mountpoint, scope, creation time and the containers that use it (RV(volumes[].in_use_by)).
  - With O(usage=true), adds the size of each volume and, for volumes whose mountpoint is on the managed host's
    own filesystem, the size/used/free/percent of the filesystem holding it.
  - A named volume that does not exist is reported with RV(exists=false); that is not a failure.
  - Drop-in for M(community.docker.docker_volume_info) when O(name) is given (same RV(exists) and RV(volume)).
extends_documentation_fragment:
  - volumeops.docker.docker
attributes:
  check_mode:
    support: full
    description: Read-only; runs normally in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff.
  idempotent:
    support: full
    description: Read-only; never changes anything.
options:
  name:
    description:
      - Name of one volume to inspect. Without it, all volumes (or those matching O(filters)) are returned.
      - Cannot be combined with O(filters).
    type: str
    aliases: [volume_name]
  filters:
    description:
      - Filters applied by the Docker daemon when listing volumes. Cannot be combined with O(name).
      - C(label) - C(key) or C(key=value); a string, a list of them (all must match), or a dict of label keys and
        values (a key with a value is C(key=value), a key with a null value matches the key with any value).
      - C(driver) - a driver name, or a list of them.
      - C(dangling) - boolean; V(true) lists only volumes no container uses.
      - C(name) - volumes whose name contains the value (a string, or a list of them).
      - A value of another shape, or an empty one (for example C(label=[]) from a template that came out empty), is
        refused instead of being dropped or turned into text.
    type: dict
  usage:
    description:
      - Add RV(volumes[].size_bytes) and RV(volumes[].filesystem).
      - The sizes come from ONE C(GET /system/df?type=volume) call for all returned volumes. That call makes the
        daemon compute the size of every local volume on the host (daemons older than Engine API 1.42 ignore
        C(type) and also size the images and containers), which can take seconds to minutes on hosts with many
        files; it is never made per volume, and only when O(usage=true).
      - The filesystem figures cost one C(statvfs) per volume and need no Docker call.
    type: bool
    default: false
notes:
  - Docker does not compute sizes for volumes with driver options (tmpfs, nfs, ...) or non-local drivers;
    their RV(volumes[].size_bytes) is null. RV(volumes[].filesystem) still reports a mounted tmpfs/nfs volume, and is
    null for one that no container uses now (it is not mounted then).
  - RV(volumes[].filesystem) is only given when O(docker_host) is a local C(unix://) socket and the mountpoint
    exists on the managed host; volumes that share the Docker data filesystem report that whole filesystem
    (RV(volumes[].filesystem.dedicated=false)).
seealso:
  - module: volumeops.docker.volume
  - module: community.docker.docker_volume_info
'''

EXAMPLES = r'''
- name: Inspect one volume
  volumeops.docker.volume_info:
    name: pgdata
  register: pg

- name: Fail early when it is missing
  ansible.builtin.assert:
    that: pg.exists

- name: Volumes of an application, with sizes and filesystem fill level
  volumeops.docker.volume_info:
    filters:
      label: app=postgres
    usage: true
  register: app_volumes

- name: Warn about volumes on filesystems over 80%
  ansible.builtin.debug:
    msg: "{{ item.name }} is on a filesystem {{ item.filesystem.percent_used }}% full"
  loop: "{{ app_volumes.volumes | selectattr('filesystem') | selectattr('filesystem.percent_used', '>', 80) }}"
  loop_control:
    label: "{{ item.name }}"

- name: Volumes no container uses
  volumeops.docker.volume_info:
    filters:
      dangling: true
'''

RETURN = r'''
exists:
  description: Whether the named volume exists. With no O(name), whether any volume was found.
  returned: always
  type: bool
  sample: true
volume:
  description: The raw C(docker volume inspect) of the named volume; null when it does not exist.
  returned: when O(name) is given
  type: dict
  sample:
    Name: pgdata
    Driver: local
    Mountpoint: /var/lib/docker/volumes/pgdata/_data
    Labels: null
    Options: null
    Scope: local
    CreatedAt: '2024-01-01T00:00:00Z'
volumes:
  description: The volumes found (one or none with O(name)), sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Volume name.
      type: str
      sample: pgdata
    driver:
      description: Volume driver.
      type: str
      sample: local
    options:
      description: Driver options (empty when none).
      type: dict
      sample: {type: tmpfs, device: tmpfs, o: size=100m}
    labels:
      description: Labels (empty when none).
      type: dict
      sample: {app: postgres}
    mountpoint:
      description: Where the volume's data is on the Docker host.
      type: str
      sample: /var/lib/docker/volumes/pgdata/_data
    scope:
      description: C(local) or C(global).
      type: str
      sample: local
    created:
      description: Creation time as the daemon reports it.
      type: str
      sample: '2024-01-01T00:00:00Z'
    in_use_by:
      description: Containers (running or not) that mount the volume.
      type: list
      elements: dict
      contains:
        name:
          description: Container name.
          type: str
        id:
          description: Container id.
          type: str
        running:
          description:
            - Whether the container holds the volume mounted now, that is, its state is C(running), C(paused)
              or C(restarting) (a paused container resumes where it was). C(state) gives the exact state.
          type: bool
        state:
          description: Container state (running, exited, created, ...).
          type: str
        destination:
          description: Mount path inside the container.
          type: str
        read_only:
          description: Whether the volume is mounted read-only.
          type: bool
    size_bytes:
      description: Bytes used by the volume's data, from the daemon; null where Docker does not compute it.
      type: int
      returned: when O(usage=true)
      sample: 104857600
    ref_count:
      description: Number of containers referencing the volume, as counted by the daemon (null when unknown).
      type: int
      returned: when O(usage=true)
      sample: 1
    filesystem:
      description:
        - The filesystem holding the volume's mountpoint on the managed host (like C(df)); null when the mountpoint is
          not on this host.
        - Null also for a C(local) volume with driver options (tmpfs, NFS, a device) that is not mounted now (the
          daemon mounts such a volume only while a container uses it, and its mountpoint is otherwise a plain
          directory on the Docker root filesystem, which says nothing about the volume).
      type: dict
      returned: when O(usage=true)
      contains:
        size_bytes:
          description: Filesystem size.
          type: int
        used_bytes:
          description: Bytes in use.
          type: int
        free_bytes:
          description: Bytes available to unprivileged writers.
          type: int
        percent_used:
          description: used / (used + free) in percent, as C(df) prints it.
          type: float
          sample: 81.5
        dedicated:
          description: Whether the mountpoint is itself a mount (tmpfs, nfs, ...) rather than a directory on a shared filesystem.
          type: bool
'''

from ansible_collections.volumeops.docker.plugins.module_utils._validation import volume_name_error
from ansible_collections.volumeops.docker.plugins.module_utils._volume import (
    PrecheckedDockerClient,
    filter_values,
    local_filesystem_usage,
    mounts_by_volume,
    sizes_from_df,
    volume_facts,
)

LIST_FILTER_KEYS = ('label', 'driver', 'dangling', 'name')


def precheck(params):
    if params['name'] is not None:
        return volume_name_error(params['name'])
    unknown = sorted(set(params['filters'] or {}) - set(LIST_FILTER_KEYS))
    if unknown:
        return 'Unsupported filter(s) %s; volume_info supports %s.' % (', '.join(unknown), ', '.join(LIST_FILTER_KEYS))
    try:
        api_filters(params['filters'])
    except ValueError as exc:
        return str(exc)
    return None


BOOLEAN_TEXT = {'true': 'true', 'yes': 'true', '1': 'true', 'false': 'false', 'no': 'false', '0': 'false'}


def api_filters(filters):
    """The daemon's list filters for ``filters``; ValueError (the message) for a value of the wrong shape."""
    result = {}
    for key, value in (filters or {}).items():
        if key == 'dangling':
            # The API wants the strings true/false; YAML gives booleans.
            if isinstance(value, bool):
                result[key] = ['true' if value else 'false']
            elif isinstance(value, str) and value.lower() in BOOLEAN_TEXT:
                result[key] = [BOOLEAN_TEXT[value.lower()]]
            else:
                raise ValueError('Filter dangling must be a boolean, not %r.' % (value,))
        else:
            result[key] = filter_values(key, value)
    return result


class VolumeInfoManager(object):
    def __init__(self, client):
        self.client = client
        self.params = client.params

    def run(self):
        name = self.params['name']
        result = dict(changed=False)
        if name is not None:
            with self.client.errors('Inspecting volume %s' % name):
                raw = self.client.inspect_volume(name)
            inspects = [raw] if raw else []
            result['volume'] = raw
        else:
            with self.client.errors('Listing volumes'):
                answer = self.client.list_volumes(api_filters(self.params['filters']) or None)
            inspects = sorted(answer.get('Volumes') or [], key=lambda v: v.get('Name') or '')
        volumes = []
        if inspects:
            # One container listing for all volumes, not one query per volume.
            with self.client.errors('Listing containers'):
                users = mounts_by_volume(self.client.list_containers())
            volumes = [volume_facts(v, users.get(v.get('Name'))) for v in inspects]
            if self.params['usage']:
                self.add_usage(volumes)
        result['exists'] = bool(volumes)
        result['volumes'] = volumes
        self.client.module.exit_json(**result)

    def add_usage(self, volumes):
        with self.client.errors('Querying disk usage (GET /system/df)'):
            sizes = sizes_from_df(self.client.volume_disk_usage())
        local = self.client.is_local
        for vol in volumes:
            vol['size_bytes'], vol['ref_count'] = sizes.get(vol['name'], (None, None))
            vol['filesystem'] = local_filesystem_usage(vol['mountpoint'], vol['driver'], vol['options']) \
                if local else None


def main():
    argument_spec = dict(
        name=dict(type='str', aliases=['volume_name']),
        filters=dict(type='dict'),
        usage=dict(type='bool', default=False),
    )
    client = PrecheckedDockerClient(argument_spec, precheck=precheck, supports_check_mode=True,
                                    mutually_exclusive=[('name', 'filters')])
    VolumeInfoManager(client).run()


if __name__ == '__main__':
    main()
