#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
---
module: volume_prune
short_description: Remove unused Docker volumes, with a check mode that lists them first
version_added: 0.1.0
author:
  - volumeops contributors (@volumeops)
description:
  - Removes the local-driver volumes without driver options that no container (running or stopped) uses and that
    match O(filters), like C(docker volume prune). B(The data in removed volumes is lost.)
  - Check mode lists exactly the volumes that would be removed and the space that would be reclaimed,
    computed the way the engine decides (label filters, unused, local driver, anonymous-only where the engine
    does that). Run it first.
  - "Which volumes the engine prunes depends on its API version: from API 1.42 (Docker 23.0) it removes only
    B(anonymous) volumes unless C(filters.all=true); before that (Docker 20.10 and older, API 1.41) it removes
    B(every) unused local volume, named ones included, and an anonymous-only prune is impossible."
  - "So that one task never removes named volumes on one engine and not on another: on an engine older than API
    1.42 the module fails without removing anything unless the prune is restricted by a C(label) filter or
    C(filters.all=true) asks for every unused volume (C(filters.all=false) fails there too)."
  - RV(anonymous_only) tells which of the two applied.
extends_documentation_fragment:
  - volumeops.docker.docker
attributes:
  check_mode:
    support: full
    description: Lists the volumes that would be removed and the space that would be reclaimed; removes nothing.
  diff_mode:
    support: full
    description: Before/after lists of the names of the matching unused volumes.
  idempotent:
    support: full
    description: A second run finds nothing left to remove and reports C(changed=false).
options:
  filters:
    description:
      - Restrict which unused volumes are removed. Keys, as in C(docker volume prune --filter)
      - C(label) - C(key) or C(key=value), a string or a list; a volume is removed only when it matches B(all) of them.
      - C(label!) - C(key) or C(key=value), a string or a list; a volume is kept when it matches B(all) of them
        (the engine's rule - with one expression, volumes matching it are kept).
      - C(label) and C(label!) also take a dict of label keys and values, a key with a value meaning C(key=value)
        and a key with a null value meaning the key with any value. Any other shape (a number, a list of lists, ...) and an
        empty value (C(label=[]), C(label=null), for example from a template that came out empty) are refused and
        nothing is removed.
      - C(all) - boolean. V(true) removes named volumes too. V(false) removes only anonymous volumes, which needs
        API 1.42 or newer. Not set - only anonymous volumes from API 1.42; before API 1.42 a C(label) filter is then
        required (see the description).
      - Use a label filter on shared hosts, so that volumes of other users are never touched.
    type: dict
    default: {}
notes:
  - Like the engine, only volumes of the C(local) driver without driver options are pruned; volumes with options
    (tmpfs, nfs, cifs, ...) are never removed by a prune, since their data does not live on the Docker host's disk.
  - Space reclaimed in check mode is estimated from one C(GET /system/df) call (which makes the daemon compute
    the size of every local volume; it is made only in check mode and only when something would be removed).
  - The volumes are removed by the engine's own prune call with the same filters; RV(volumes_removed) is what the
    engine reports, so a volume created or released between the check and the run is reported truthfully.
seealso:
  - module: volumeops.docker.volume
  - module: volumeops.docker.volume_info
  - module: community.docker.docker_prune
'''

EXAMPLES = r'''
- name: See what would be removed
  volumeops.docker.volume_prune:
    filters:
      label: project=ci
  check_mode: true
  register: would_prune

- name: Show it
  ansible.builtin.debug:
    var: would_prune.volumes_removed

- name: Remove unused CI volumes, but keep the ones marked keep
  volumeops.docker.volume_prune:
    filters:
      label: project=ci
      label!: keep
      all: true

- name: Labels written as a dict
  volumeops.docker.volume_prune:
    filters:
      label:
        project: ci
      label!:
        keep: 'yes'
      all: true

- name: Remove every unused volume of the host, named ones included (all=true is required before API 1.42)
  volumeops.docker.volume_prune:
    filters:
      all: true
'''

RETURN = r'''
volumes_removed:
  description: Names of the removed volumes (in check mode, of the volumes that would be removed), sorted.
  returned: always
  type: list
  elements: str
  sample: [ci-cache-1, ci-cache-2]
space_reclaimed:
  description: Bytes freed, as reported by the engine (in check mode, estimated from C(/system/df)).
  returned: always
  type: int
  sample: 1048576
anonymous_only:
  description: Whether only anonymous volumes were considered (engine API 1.42+ without C(filters.all=true)).
  returned: always
  type: bool
  sample: false
api_version:
  description: The Docker API version used, which decides the prune semantics.
  returned: always
  type: str
  sample: '1.41'
'''

from ansible_collections.volumeops.docker.plugins.module_utils._volume import (
    LABEL_FILTER_KEYS,
    PRUNE_FILTER_KEYS,
    PrecheckedDockerClient,
    filter_values,
    prune_candidates,
    prune_settings,
    sizes_from_df,
)


def precheck(params):
    filters = params['filters'] or {}
    unknown = sorted(set(filters) - set(PRUNE_FILTER_KEYS))
    if unknown:
        return 'Unsupported filter(s) %s; volume_prune supports %s.' % (', '.join(unknown), ', '.join(PRUNE_FILTER_KEYS))
    for key in LABEL_FILTER_KEYS:
        if key in filters:
            try:
                filter_values(key, filters[key])
            except ValueError as exc:
                return str(exc)
    return None


class VolumePruneManager(object):
    def __init__(self, client):
        self.client = client
        self.module = client.module

    def candidates(self, api_filters, anonymous_only):
        # dangling=true is the engine's own "no container references it" test, the one prune applies.
        with self.client.errors('Listing unused volumes'):
            answer = self.client.list_volumes({'dangling': ['true']})
        return prune_candidates(answer.get('Volumes') or [], set(), api_filters, anonymous_only)

    def run(self):
        api_version = self.client.api.api_version
        api_filters, anonymous_only, error = prune_settings(self.client.params['filters'], api_version)
        if error:
            self.client.fail(error)
        before = self.candidates(api_filters, anonymous_only)
        result = dict(anonymous_only=anonymous_only, api_version=api_version)
        if self.module.check_mode:
            removed = before
            reclaimed = 0
            if removed:
                with self.client.errors('Querying disk usage (GET /system/df)'):
                    sizes = sizes_from_df(self.client.volume_disk_usage())
                reclaimed = sum(sizes.get(n, (None, None))[0] or 0 for n in removed)
        elif before:
            with self.client.errors('Pruning volumes'):
                answer = self.client.api.prune_volumes(filters=api_filters or None)
            removed = sorted(answer.get('VolumesDeleted') or [])
            reclaimed = answer.get('SpaceReclaimed') or 0
        else:
            # Nothing matches: no prune call, so nothing can be removed by a race either.
            removed, reclaimed = [], 0
        result.update(changed=bool(removed), volumes_removed=removed, space_reclaimed=reclaimed)
        if self.module._diff:
            result['diff'] = dict(before=dict(volumes=before),
                                  after=dict(volumes=sorted(set(before) - set(removed))))
        self.module.exit_json(**result)


def main():
    argument_spec = dict(
        filters=dict(type='dict', default={}),
    )
    client = PrecheckedDockerClient(argument_spec, precheck=precheck, supports_check_mode=True)
    VolumePruneManager(client).run()


if __name__ == '__main__':
    main()
