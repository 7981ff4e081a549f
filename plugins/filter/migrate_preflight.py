# Copyright (c) volumeops.docker contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The migrate_preflight filter: what the migrate role's pre-flight found for one pair.

It reads the source probe's lines, the destination check's JSON and the SSH scan, and names every
problem in one list. Python rather than a Jinja template in the role: Ansible compiles a task's
templates again for every task it runs, and this logic as Jinja cost about 0.1 s of every pair.
"""

from __future__ import annotations

import json
import re

from ansible.module_utils.common.text.formatters import bytes_to_human
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.volumeops.docker.plugins.filter.command_error import command_error

TOOLS_HINT = ('Install GNU tar, zstd, the docker CLI, openssh-client and iproute2 on the source, GNU tar, zstd, the '
              'docker CLI and Python 3.8+ as %s on the destination.')


def _lines(text, pattern):
    return re.findall(pattern, text or '', re.M)


def _dest_report(dest_check):
    stdout = dest_check.get('stdout') or ''
    if dest_check.get('rc', 1) == 0 and stdout.startswith('{'):
        return json.loads(stdout)
    return {}


def _engine_id(probe):
    """The source daemon's ID from the probe's "engine:" line, '' when unknown."""
    for line in _lines(probe.get('stdout'), r'^engine: (.*)$'):
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, str):
            return found
    return ''


def _sized_volumes(vols, probe, dest):
    """The volumes with the probe's sizes: size (bytes, 0 when unknown), sized, and the plan line."""
    out = []
    stdout = probe.get('stdout') or ''
    for index, v in enumerate(vols):
        found = _lines(stdout, r'^size:%d:([0-9]+)$' % index)
        size = int(found[0]) if found else 0
        what = ('size unknown: mounted only while a container uses it' if v['src_mounted'] and not found
                else bytes_to_human(size))
        out.append(dict(v, size=size, sized=bool(found),
                        plan='%s -> %s:%s (%s)' % (v['name'], dest, v['dest_name'], what)))
    return out


def _dest_state(report, vols):
    """Per existing destination volume: ours-<marker state> (this migration's), empty, or other."""
    out = {}
    for name, dvol in (report.get('volumes') or {}).items():
        if not dvol.get('exists'):
            continue
        mine = [v for v in vols if v['dest_name'] == name]
        if not mine:  # the destination reports only the volumes it was asked about
            continue
        v = mine[0]
        marker = dvol.get('marker') or {}
        if marker.get('migration_id', '') == v['migration_id']:
            state = 'ours-' + marker.get('state', 'staging')
        elif dvol.get('empty') and not marker:
            state = 'empty'
        else:
            state = 'other'
        out[name] = {'state': state, 'other_id': marker.get('migration_id', '')}
    return out


def _space_problems(report, vols, dest_state, factor):
    need, avail = {}, {}
    for v in vols:
        f = (report.get('volumes') or {}).get(v['dest_name'])
        if not f or 'fs' not in f:
            continue
        done = dest_state.get(v['dest_name'], {}).get('state') == 'ours-complete'
        need[f['fs']] = need.get(f['fs'], 0) + (0 if done else int(float(v['size']) * float(factor)))
        avail[f['fs']] = int(f['avail'])
    return ['%s has %s free, needs %s' % (fs, bytes_to_human(avail[fs]), bytes_to_human(n))
            for fs, n in need.items() if n > avail[fs]]


def _key_problem(f, pair, presented):
    dest, address, port = f['dest'], f['dest_address'], pair['dest_port']
    scan = f['scan']
    host_key = f['dest_host_key']
    who = 'the controller' if f['relay_mode'] else pair['source']
    if not host_key:
        return ('No ed25519 SSH host key found for %s (no ansible_ssh_host_key_ed25519_public fact and no '
                'ssh_host_ed25519_key.pub in /etc/ssh, /etc/openssh or /etc); give migrate_dest_host_key '
                '("ssh-ed25519 AAAA...").' % dest)
    # ssh-keyscan notes the server's banner on stderr when the server answered.
    if not presented and 'SSH-' not in (scan.get('stderr') or ''):
        return ('%s cannot reach the SSH server of %s at %s:%s within %ss (%s). Check routing/firewalls%s.'
                % ('The controller (relay mode)' if f['relay_mode'] else pair['source'], dest, address, port,
                   f['connect_timeout'], (scan.get('stderr') or '').strip(),
                   '' if f['relay_mode'] else ', or use migrate_transfer=controller'))
    if ' '.join(host_key.split()[:2]) not in presented:
        return ('Host key mismatch: %s (%s:%s) presents %s to %s, but the pinned host key is %s (%s). Refusing to '
                'connect (possible man-in-the-middle, or the pinned key is wrong).'
                % (dest, address, port, ', '.join(presented) or 'no %s key' % host_key.split()[0], who, host_key,
                   f['dest_host_key_from']))
    return ''


def migrate_preflight(vols, facts):
    """What the pre-flight of one pair found.

    ``vols``: the pair's volumes to copy; ``facts``: pair, dest, dest_address, probe (the source probe's
    registered result), scan (the probe whose ssh-keyscan and route lines count), dest_check (the
    destination check's registered result), dest_host_key (pinned so far, '' when none), dest_host_key_from,
    source_address, relay_mode, check_mode, key_made (the temporary key pair was made), helper_image,
    dest_docker_root, connect_timeout.
    Returns dest_report (the destination check's JSON, {} when it did not run), dest_host_key (pinned, else
    the one the destination read), presented (the host keys the destination's sshd presented), vols (with
    size, sized and plan), dest_state, to_start (the existing destination containers that are not running)
    and problems (every problem, each one message; a finding that depends on another is judged only when
    that one is fine).
    """
    pair, dest, probe, dest_check = facts['pair'], facts['dest'], facts['probe'], facts['dest_check']
    relay_mode = boolean(facts['relay_mode'], strict=False)
    report = _dest_report(dest_check)
    host_key = facts['dest_host_key'] or report.get('host_key', '')
    presented = _lines(facts['scan'].get('stdout'), r'^key \S+ (\S+ \S+)$')
    vols = _sized_volumes(vols, probe, dest)
    dest_state = _dest_state(report, vols)
    to_start = [name for name, c in (report.get('containers') or {}).items() if not c.get('running')]
    f = dict(facts, dest_host_key=host_key, relay_mode=relay_mode)

    probe_ran = probe.get('rc', 1) == 0
    if probe_ran:
        src_missing = ((_lines(probe.get('stdout'), r'^missing:(.*)$') + [''])[0]).split()
    else:
        src_missing = ['(/bin/sh did not run%s)' % (': ' + probe['msg'] if 'msg' in probe else '')]
    dest_ran = dest_check.get('rc', 1) == 0 and len(report) > 0
    problems, missing = [], []
    if src_missing:
        missing.append('%s: %s' % (pair['source'], ' '.join(src_missing)))
    if dest_check.get('unreachable'):
        problems.append('Destination %s is unreachable from the controller: %s.' % (dest, dest_check.get('msg', '')))
    elif not dest_ran:
        missing.append('%s: %s does not run (%s)' % (dest, pair['dest_python'],
                                                     command_error(dest_check, 1) or dest_check.get('msg', '')))
    elif report.get('missing'):
        missing.append('%s: %s' % (dest, ' '.join(report['missing'])))
    if missing:
        problems.append('Missing tools: %s. %s' % ('; '.join(missing), TOOLS_HINT % pair['dest_python']))
    devices = ['%s (%s)' % (v['name'], found[0]) for index, v in enumerate(vols)
               for found in [_lines(probe.get('stdout'), r'^device:%d:(.*)$' % index)] if found]
    if devices:
        problems.append('Source volume(s) on %s hold device nodes: %s. volume_transfer refuses them unless '
                        'migrate_allow_devices is true (per pair allow_devices); set it to migrate them, or remove '
                        'them.' % (pair['source'], ', '.join(devices)))
    if not boolean(facts['check_mode'], strict=False) and not boolean(facts['key_made'], strict=False):
        problems.append('ssh-keygen on the controller could not make the temporary key (its message is above; the '
                        'controller needs openssh-client).')
    if not facts['source_address'] and probe_ran:
        route = (_lines(facts['scan'].get('stdout'), r'^route: (.*)$') + ['no route found'])[0].strip()
        problems.append('Cannot tell which address %s reaches %s from at %s (%s); the temporary key is restricted to '
                        'that address. Set migrate_source_address (or migrate_dest_address to an address the source '
                        'resolves).' % ('the controller (relay mode)' if relay_mode else pair['source'], dest,
                                        facts['dest_address'], route))
    src_engine = _engine_id(probe)
    same_daemon = bool(src_engine) and src_engine == report.get('engine_id')
    if same_daemon:  # the destination's volume findings would be about the source's own volumes: not judged
        problems.append('Source %s and destination %s are the same Docker daemon (engine ID %s): one host under two '
                        'inventory names, or an address that leads back to the source. Migrating onto itself would '
                        'overwrite or remove the only copy; refusing. Check the inventory (ansible_host) and '
                        'migrate_dest_address.' % (pair['source'], dest, src_engine))
    if report.get('authorize_error'):
        problems.append('Cannot authorize the temporary key on %s: %s.' % (dest, report['authorize_error']))
    if report.get('docker_error'):
        problems.append('Docker on %s does not answer: %s' % (dest, report['docker_error']))
    elif dest_ran and not same_daemon:
        problems.extend(_volume_problems(f, pair, report, vols, dest_state, probe_ran))
    key_problem = _key_problem(f, pair, presented)
    if not src_missing and (dest_ran or host_key) and key_problem:
        problems.append(key_problem)
    return {'dest_report': report, 'dest_host_key': host_key, 'presented': presented, 'vols': vols,
            'dest_state': dest_state, 'to_start': to_start, 'problems': problems}


def _volume_problems(f, pair, report, vols, dest_state, probe_ran):
    dest, helper_image = f['dest'], f['helper_image']
    problems = []
    taken = [name for name, s in dest_state.items() if s['state'] == 'other']
    if pair['existing'] == 'fail' and taken:
        problems.append('Destination volume(s) on %s already exist with other data: %s. Choose another dest_name, '
                        'remove them, or set migrate_existing=replace to overwrite them.' % (dest, ', '.join(taken)))
    unreadable_src = ['%s (%s)' % (v['name'], v['src_unreadable']) for v in vols if v.get('src_unreadable')]
    if unreadable_src:
        problems.append('Source volume(s) on %s that cannot be migrated: %s. Stopping the containers that use them '
                        '(which the copy needs) would wipe them, and an empty volume would be copied. Move such data '
                        'into a volume that keeps it first.' % (pair['source'], ', '.join(unreadable_src)))
    mounted_src = [v['name'] for v in vols if v['src_mounted'] and not v.get('src_unreadable')]
    unsized_src = [v['name'] for v in vols if v['src_mounted'] and not v['sized'] and not v.get('src_unreadable')]
    if mounted_src and not helper_image:
        problems.append('Source volume(s) on %s mounted only while a container uses them (mount options such as '
                        'NFS, or another driver): %s. Their directory on the host does not show their data; set '
                        'migrate_helper_image to a local image with /usr/bin/python3 (never pulled) whose container '
                        'keeps them mounted while they are read.' % (pair['source'], ', '.join(mounted_src)))
    elif unsized_src and probe_ran:
        problems.append('Cannot read source volume(s) %s on %s through a holder container of migrate_helper_image=%s '
                        '(is the image on %s? It is never pulled).'
                        % (', '.join(unsized_src), pair['source'], helper_image, pair['source']))
    # What volume_transfer cannot write (tmpfs, other drivers, mount options without migrate_helper_image). The
    # destination's program judges existing volumes as they are and missing ones as the transfer would create them.
    unwritable = []
    for v in vols:
        dvol = (report.get('volumes') or {}).get(v['dest_name']) or {}
        if dvol.get('unwritable'):
            unwritable.append('%s (%s: %s)' % (v['dest_name'], 'exists' if dvol.get('exists') else 'would be created',
                                               dvol['unwritable']))
    if unwritable:
        problems.append('Destination volume(s) on %s that the transfer cannot write: %s. volume_transfer writes plain '
                        'local volumes, and local volumes with mount options such as NFS through a holder container of '
                        'migrate_helper_image. Migrate into such a volume (another dest_name or driver_options), or '
                        'move the data with volume_backup and volume_restore (its helper container path writes any '
                        'driver).' % (dest, ', '.join(unwritable)))
    # Not one complete for this migration: the application runs there since an earlier run, and the transfer copies
    # nothing when the source is as it was then (a rerun after success).
    in_use = ['%s (%s)' % (v['dest_name'], ', '.join(sorted(report['in_use'][v['dest_name']])))
              for v in vols if (report.get('in_use') or {}).get(v['dest_name'])
              and dest_state.get(v['dest_name'], {}).get('state') != 'ours-complete']
    if in_use:
        problems.append('Destination volume(s) on %s in use by running container(s): %s. volume_transfer refuses to '
                        'write a volume that a running container uses; stop those containers on %s first.'
                        % (dest, ', '.join(in_use), dest))
    if report.get('look_error'):
        problems.append('Cannot look into the destination volume %s on %s through a holder container of '
                        'migrate_helper_image=%s (a local image with /usr/bin/python3 on each host; never pulled).'
                        % (report['look_error'], dest, helper_image))
    if report.get('space_error'):
        problems.append('Cannot measure the free space on %s: %s (is migrate_dest_docker_root=%s the Docker data root '
                        'there?).' % (dest, report['space_error'], f['dest_docker_root']))
    else:
        short = _space_problems(report, vols, dest_state, pair['free_space_factor'])
        if short:
            problems.append("Not enough free space on %s: %s (need %s x the source's used bytes)."
                            % (dest, '; '.join(short), pair['free_space_factor']))
    return problems


class FilterModule(object):
    def filters(self):
        return {'migrate_preflight': migrate_preflight}
