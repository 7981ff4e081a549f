#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: volume
short_description: Create, remove or recreate a named Docker volume
version_added: 0.1.0
author:
  - volumeops contributors (@volumeops)
description:
  - Ensures a named Docker volume is present with the requested driver, driver options and labels, or absent.
  - Parameter names are those of M(community.docker.docker_volume), so a task switches by changing the module name.
  - Deliberately stricter than M(community.docker.docker_volume), which compares labels and driver options as
    subsets. This module compares the driver, the driver options and the labels B(exactly) - a label or driver
    option that exists on the volume but is no longer requested B(is a difference).
  - Docker cannot change a volume in place. With O(recreate=never) (the default) a difference is never applied;
    the task returns C(changed=false) and a warning naming every differing key and how to apply it.
  - B(Recreating a volume destroys all the data in it.) O(recreate=options-changed) and O(recreate=always)
    remove the volume and create an empty one. Back the data up first (M(volumeops.docker.volume_backup)).
  - Removing (or recreating) a volume that a container uses, running or stopped, fails with a message naming
    those containers; the volume is left untouched.
extends_documentation_fragment:
  - volumeops.docker.docker
attributes:
  check_mode:
    support: full
    description: Reports what would change (and fails where the real run would fail) without changing anything.
  diff_mode:
    support: full
    description: Returns before/after with the existence, driver, driver options and labels of the volume.
  idempotent:
    support: full
    description: Running the same task again reports C(changed=false), except with O(recreate=always).
options:
  name:
    description:
      - Name of the volume. Must match C([a-zA-Z0-9][a-zA-Z0-9_.-]+); it is checked before the Docker daemon is contacted.
    type: str
    required: true
    aliases: [volume_name]
  state:
    description:
      - V(present) creates the volume when it does not exist.
      - V(absent) removes it. Fails, without removing anything, when a container (running or stopped) uses it.
    type: str
    choices: [present, absent]
    default: present
  driver:
    description:
      - Volume driver. Compared with the existing volume.
    type: str
    default: local
  driver_options:
    description:
      - Driver options, for example C(type), C(device) and C(o) of the C(local) driver.
      - When given, compared exactly with the volume's options (an option no longer listed is a difference).
        When not given, the options of an existing volume are not compared (and are kept when it is recreated).
      - Values must be strings or integers; booleans and floats are refused (quote them in YAML).
      - For the C(local) driver the option keys are checked before the daemon is contacted, in check mode too, as
        Docker 20.10 and later check them. It accepts only C(type), C(device), C(o) and C(size); C(type) and
        C(device) go together, and C(o) needs both.
      - Before a volume of the C(local) driver is removed to be recreated with options, a throw-away volume with
        those options is created and removed again (not in check mode), so that an option the daemon refuses on
        this host (such as C(size) without quota support) fails the task with the volume still there. No such
        test is made for other drivers, whose create could provision real storage.
    type: dict
    aliases: [options]
  labels:
    description:
      - Labels of the volume.
      - When given, compared exactly with the volume's labels - a label the volume has but that is not listed here
        is a difference (M(community.docker.docker_volume) ignores it). V({}) means "no labels". When not given,
        the labels of an existing volume are not compared (and are kept when it is recreated).
      - Values must be strings or integers; booleans and floats are refused (quote them in YAML), with a message
        naming the key and the value.
    type: dict
  recreate:
    description:
      - What to do when the existing volume differs from the request.
      - V(never) leaves it alone and warns, naming each difference.
      - V(options-changed) removes the volume B(with all its data) and creates it again when the driver, driver
        options or labels differ.
      - V(always) removes the volume B(with all its data) and creates it again on every run.
      - Recreating fails, without removing anything, when a container uses the volume.
      - When the create fails after the removal, the task fails with C(changed=true) and a message saying that
        the volume was removed and could not be created again, with the daemon's reason.
    type: str
    choices: [never, options-changed, always]
    default: never
notes:
  - Docker returns C(Options) as null or an empty object for a local volume created without options; both
    mean "no options" for the comparison.
  - In check mode, RV(volume) is the volume as it is now (null when it would be created).
  - Check mode fails exactly where the real run would refuse (volume in use, unavailable driver for a recreate).
  - The C(CreatedAt) that Docker reports for C(local) volumes comes from the volume directory's timestamps, so it is
    not a reliable "was it recreated" signal.
seealso:
  - module: volumeops.docker.volume_info
  - module: volumeops.docker.volume_prune
  - module: volumeops.docker.volume_backup
  - module: community.docker.docker_volume
'''

EXAMPLES = r'''
- name: Create a volume for a database
  volumeops.docker.volume:
    name: pgdata
    labels:
      app: postgres
      backup: daily

- name: A tmpfs-backed volume (size in the local driver's o option)
  volumeops.docker.volume:
    name: scratch
    driver_options:
      type: tmpfs
      device: tmpfs
      o: size=100m

- name: Apply new options - DESTROYS the data in the volume
  volumeops.docker.volume:
    name: scratch
    driver_options:
      type: tmpfs
      device: tmpfs
      o: size=200m
    recreate: options-changed

- name: Remove a volume (fails, naming them, if containers use it)
  volumeops.docker.volume:
    name: old-cache
    state: absent
'''

RETURN = r'''
volume:
  description:
    - The volume as C(docker volume inspect) shows it after the task. Null when absent, and in check mode when
      it would be created.
  returned: always
  type: dict
  sample:
    Name: pgdata
    Driver: local
    Mountpoint: /var/lib/docker/volumes/pgdata/_data
    Labels:
      app: postgres
    Options: null
    Scope: local
    CreatedAt: '2024-01-01T00:00:00Z'
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: ['Removed volume scratch', 'Created volume scratch']
differences:
  description:
    - Every difference between the existing volume and the request (empty when none or when the volume
      does not exist). C(current)/C(wanted) are null where the key is not set on that side.
  returned: always
  type: list
  elements: dict
  sample:
    - key: driver_options.o
      current: size=100m
      wanted: size=200m
    - key: labels.obsolete
      current: 'yes'
      wanted: null
'''

import uuid

from ansible_collections.volumeops.docker.plugins.module_utils._docker_client import describe_docker_error
from ansible_collections.volumeops.docker.plugins.module_utils._validation import (
    local_driver_options_error,
    stringify_labels,
    volume_name_error,
)
from ansible_collections.volumeops.docker.plugins.module_utils._volume import (
    PrecheckedDockerClient,
    describe_containers,
    normalize_volume,
    public_differences,
    recreate_warning,
    volume_differences,
    wanted_state,
)


def precheck(params):
    """Input validation that must happen before the daemon is contacted."""
    error = volume_name_error(params['name'])
    if error:
        return error
    try:
        stringify_labels(params['labels'])
        options = stringify_labels(params['driver_options'], what='driver_options')
    except ValueError as exc:
        return str(exc)
    if params['state'] == 'present' and params['driver'] == 'local' and params['driver_options'] is not None:
        return local_driver_options_error(options)
    return None


class VolumeParameters(object):
    def __init__(self, params):
        self.name = params['name']
        self.state = params['state']
        self.driver = params['driver']
        self.recreate = params['recreate']
        # None = not managed; validated in precheck, so no ValueError here.
        self.labels = None if params['labels'] is None else stringify_labels(params['labels'])
        self.options = None if params['driver_options'] is None else \
            stringify_labels(params['driver_options'], what='driver_options')


class VolumeManager(object):
    def __init__(self, client):
        self.client = client
        self.module = client.module
        self.check_mode = client.module.check_mode
        self.p = VolumeParameters(client.params)
        self.actions = []
        self.changed = False
        self.differences = []

    def run(self):
        p = self.p
        with self.client.errors('Inspecting volume %s' % p.name):
            current_inspect = self.client.inspect_volume(p.name)
        before = normalize_volume(current_inspect)
        if p.state == 'absent':
            after = self.ensure_absent(current_inspect)
        else:
            after = self.ensure_present(current_inspect, before)
        result = dict(changed=self.changed, actions=self.actions,
                      differences=public_differences(self.differences))
        if self.changed and not self.check_mode:
            with self.client.errors('Inspecting volume %s' % p.name):
                result['volume'] = self.client.inspect_volume(p.name)
        else:
            result['volume'] = current_inspect
        if self.module._diff:
            result['diff'] = dict(before=before, after=after)
        self.module.exit_json(**result)

    def _refuse_if_in_use(self, what):
        with self.client.errors('Listing the containers that use volume %s' % self.p.name):
            users = self.client.containers_using_volume(self.p.name)
        if users:
            self.client.fail('Cannot %s volume %s: it is used by container(s) %s. Remove those containers first '
                             '(stopped containers count too); nothing was changed.'
                             % (what, self.p.name, describe_containers(users)),
                             in_use_by=users)

    def _remove(self, what):
        self._refuse_if_in_use(what)
        self.actions.append('Removed volume %s' % self.p.name)
        self.changed = True
        if not self.check_mode:
            with self.client.errors('Removing volume %s' % self.p.name):
                try:
                    self.client.api.remove_volume(self.p.name)
                except Exception as exc:
                    # A container started using it since the check above: name it, like the check does.
                    if getattr(getattr(exc, 'response', None), 'status_code', None) == 409:
                        self._refuse_if_in_use(what)
                    raise

    def _create(self, wanted, after_removal=False):
        p = self.p
        self.actions.append('Created volume %s' % p.name)
        self.changed = True
        if self.check_mode:
            return
        if not after_removal:
            with self.client.errors('Creating volume %s' % p.name):
                self.client.api.create_volume(p.name, driver=wanted['driver'],
                                              driver_opts=wanted['options'] or None, labels=wanted['labels'] or None)
            return
        try:
            # Unmanaged options/labels (parameter not given) keep the old volume's values on recreate.
            self.client.api.create_volume(p.name, driver=wanted['driver'], driver_opts=wanted['options'] or None,
                                          labels=wanted['labels'] or None)
        except Exception as exc:  # the old volume is gone whatever went wrong: say so, and that it changed
            self.actions[-1] = 'Could not create volume %s again' % p.name
            self.client.fail('Volume %s was REMOVED, with all its data, but could not be created again: %s. '
                             'Fix the cause and run the task again to create it.'
                             % (p.name, describe_docker_error(exc, 'the Docker daemon refused the create')),
                             changed=True, actions=self.actions, differences=public_differences(self.differences))

    def _probe_local_options(self, wanted):
        """Create and remove a throw-away local volume with the wanted options before removing the real one.

        The local driver checks its options at create time only (an unknown key, a size quota on a filesystem
        without quota support): a refusal found here leaves the volume and its data alone. Only for the local
        driver, whose create mounts nothing; a plugin's create could provision real storage.
        """
        if self.check_mode or self.p.driver != 'local' or not wanted['options']:
            return
        probe = '%s-volumeops-probe-%s' % (self.p.name, uuid.uuid4().hex[:12])
        try:
            self.client.api.create_volume(probe, driver='local', driver_opts=wanted['options'])
        except Exception as exc:
            self.client.fail('Volume %s was not touched: the local driver refuses the requested driver_options (%s).'
                             % (self.p.name, describe_docker_error(exc, 'a test create with them')),
                             differences=public_differences(self.differences))
        with self.client.errors('Removing the test volume %s' % probe):
            self.client.api.remove_volume(probe)

    def _check_driver_available(self):
        """Before destroying a volume to recreate it, make sure the driver exists."""
        if self.p.driver == 'local':
            return
        with self.client.errors('Querying the Docker daemon for volume plugins'):
            info = self.client.api.info()
        drivers = ((info.get('Plugins') or {}).get('Volume') or [])
        if self.p.driver not in drivers:
            self.client.fail('Volume driver %r is not available on the Docker host (it has: %s); refusing to remove '
                             'volume %s to recreate it.' % (self.p.driver, ', '.join(drivers) or 'none', self.p.name))

    def ensure_absent(self, current_inspect):
        if current_inspect is None:
            return dict(exists=False)
        self._remove('remove')
        return dict(exists=False)

    def ensure_present(self, current_inspect, before):
        p = self.p
        wanted = wanted_state(p.driver, p.options, p.labels, before)
        if current_inspect is None:
            self._create(wanted)
            return wanted
        self.differences = volume_differences(before, wanted)
        if p.recreate == 'always' or (p.recreate == 'options-changed' and self.differences):
            self._check_driver_available()
            self._refuse_if_in_use('recreate')
            self._probe_local_options(wanted)
            self._remove('recreate')
            self._create(wanted, after_removal=True)
            return wanted
        if self.differences:
            self.module.warn(recreate_warning(p.name, self.differences))
        return before


def main():
    argument_spec = dict(
        name=dict(type='str', required=True, aliases=['volume_name']),
        state=dict(type='str', default='present', choices=['present', 'absent']),
        driver=dict(type='str', default='local'),
        driver_options=dict(type='dict', aliases=['options']),
        labels=dict(type='dict'),
        recreate=dict(type='str', default='never', choices=['never', 'options-changed', 'always']),
    )
    client = PrecheckedDockerClient(argument_spec, precheck=precheck, supports_check_mode=True)
    VolumeManager(client).run()


if __name__ == '__main__':
    main()
