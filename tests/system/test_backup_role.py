"""Role volumeops.docker.backup / playbooks/backup-volumes.yml on the two-host bench.

Real ansible-playbook runs against bench hosts h1 and h2 (own sshd + dockerd each). What the role did
is checked on the hosts themselves, independently of its report: the files in the backup directory,
`sha256sum -c` of every archive, and a restore of one archive whose tree is compared with the source's
by the fidelity oracle (tests/support/fidelity.py), property by property.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from test_migrate import (IMAGE, assert_same_tree, cleanup, digest, make_volume, rand, recap, run_container, running,
                          sh, volume_inspect)

import fidelity  # tests/support, put on sys.path by test_migrate

PLAYBOOK = 'playbooks/backup-volumes.yml'
RESTORE_PLAYBOOK = 'playbooks/restore-volumes.yml'


def listing(bench, host, dest):
    """Sorted file names in dest on host; None when dest does not exist."""
    proc = bench.exec(host, ['ls', '-1', dest], check=False)
    if proc.returncode != 0:
        return None
    return sorted(proc.stdout.decode().split())


FLIP_BYTE = ('import sys\nwith open(sys.argv[1], "r+b") as f:\n'
             '    f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0xff]))')


def damage_in_place(bench, host, path, offset):
    """Change the byte at ``offset`` of ``path`` on host (inverted, so it differs whatever it was; writing a
    fixed byte left a compressed archive intact once in 256 runs)."""
    bench.exec(host, ['python3', '-c', FLIP_BYTE, path, str(offset)])


def archives_of(files, volume):
    return [f for f in files or [] if re.match(r'^%s_\d{8}T\d{6}\.\d{6}Z\.tar\.zst$' % re.escape(volume), f)]


def checksums_ok(bench, host, dest):
    """sha256sum -c of every sidecar in dest, run on the host."""
    proc = bench.exec(host, ['sh', '-c', 'cd "$1" && for f in *.sha256; do sha256sum -c --quiet "$f" || exit 1; done',
                             'sh', dest], check=False)
    return proc.returncode == 0


def test_fleet_backup_selection_failure_isolation_check_mode_and_retention(bench, ansible_run, ansible_env):
    tag = rand('vobk')
    bk1, bk2, bk3, bk4, bk5, bkt = (tag + s for s in ('one', 'two', 'three', 'four', 'five', 'tmpfs'))
    dest = '/var/backups/%s' % tag
    nightly = {'backup': 'nightly'}
    env = dict(ansible_env)  # no ANSIBLE_PIPELINING: the playbook turns pipelining on itself
    env.pop('ANSIBLE_PIPELINING', None)

    def play(extra, *flags):
        proc = ansible_run(['ansible-playbook', PLAYBOOK, '-e', json.dumps(dict(extra, backup_dest=dest))] + list(flags),
                           env=env, timeout=600)
        proc.recap = recap(proc.stdout)
        return proc

    anonymous = None
    try:
        make_volume(bench, 'h1', bk1, labels=nightly)  # the oracle's hard-case tree
        sh(bench, 'h1', ['docker', 'volume', 'create', '--label', 'backup=nightly', bk2])
        sh(bench, 'h1', ['docker', 'volume', 'create', bk3])
        sh(bench, 'h1', ['docker', 'volume', 'create', '--label', 'com.docker.compose.project=%sshop' % tag, bk5])
        anonymous = sh(bench, 'h1', ['docker', 'volume', 'create', '--label', 'backup=nightly'])
        assert re.match(r'^[0-9a-f]{64}$', anonymous), anonymous
        for vol in (bk2, bk3):
            sh(bench, 'h1', ['sh', '-c', 'echo data > "$(docker volume inspect -f "{{.Mountpoint}}" "$1")/f"', 'sh', vol])
        sh(bench, 'h2', ['docker', 'volume', 'create', '--label', 'backup=nightly', bk4])
        # Needs the helper container path (mount options) and no helper image is set: this volume fails.
        sh(bench, 'h2', ['docker', 'volume', 'create', '--label', 'backup=nightly', '--opt', 'type=tmpfs',
                         '--opt', 'device=tmpfs', bkt])
        src_digest = digest(bench, 'h1', bk1)
        labelled = {'backup_volume_labels': ['backup=nightly'], 'backup_skip_anonymous': True, 'backup_keep': 2}

        # --check and --check --diff: report what would be written, write nothing.
        check = play(labelled, '--check')
        check_diff = play(labelled, '--check', '--diff')
        for proc in (check, check_diff):
            assert proc.recap['h1']['failed'] == 0 and proc.recap['h2']['failed'] == 1, proc.stdout[-6000:]
            assert re.search(r'%s: would write %s_\S+\.tar\.zst' % (bk1, bk1), proc.stdout), proc.stdout[-6000:]
            assert re.search(r'%s: would write' % bk4, proc.stdout), proc.stdout[-6000:]
            assert '%s: FAILED: Volume %s needs the helper container path' % (bkt, bkt) in proc.stdout
            assert bk3 not in proc.stdout and bk5 not in proc.stdout and anonymous not in proc.stdout
            assert listing(bench, 'h1', dest) is None and listing(bench, 'h2', dest) is None
        assert re.search(r'^\+\+\+ after', check_diff.stdout, re.M) and '"%s"' % bk1 in check_diff.stdout, \
            check_diff.stdout[-6000:]

        # Real run: h1 backs up bk1 and bk2 (not the unlabelled bk3, not the anonymous volume); on h2 the
        # tmpfs volume fails, bk4 is backed up all the same, and h2 fails naming the failed volume.
        real = play(labelled)
        assert real.recap['h1']['failed'] == 0 and real.recap['h1']['changed'] > 0, real.stdout[-6000:]
        # bk4's archive was written: h2 counts as changed although the task that wrote it failed on bkt.
        assert real.recap['h2']['failed'] == 1 and real.recap['h2']['changed'] > 0, real.stdout[-6000:]
        assert 'The backup of 1 of 2 volumes failed' in real.stdout and 'set helper_image' in real.stdout
        h1_files, h2_files = listing(bench, 'h1', dest), listing(bench, 'h2', dest)
        assert len(archives_of(h1_files, bk1)) == 1 and len(archives_of(h1_files, bk2)) == 1, h1_files
        assert not archives_of(h1_files, bk3) and not archives_of(h1_files, anonymous), h1_files
        assert len(archives_of(h2_files, bk4)) == 1 and not archives_of(h2_files, bkt), h2_files
        assert checksums_ok(bench, 'h1', dest) and checksums_ok(bench, 'h2', dest)
        mode = sh(bench, 'h1', ['stat', '-c', '%a', '%s/%s' % (dest, archives_of(h1_files, bk1)[0])])
        assert mode == '600', mode

        # Rerun: nothing changes on h1; h2 still fails on the same volume and changes nothing. -vvv shows that
        # the playbook pipelines its modules (no module file is put on the hosts) ...
        again = play(labelled, '-vvv')
        assert 'PUT ' not in again.stdout and 'EXEC' in again.stdout, again.stdout[-3000:]
        assert again.recap['h1']['changed'] == 0 and again.recap['h1']['failed'] == 0, again.stdout[-6000:]
        assert again.recap['h2']['changed'] == 0 and again.recap['h2']['failed'] == 1, again.stdout[-6000:]
        assert re.search(r'%s: unchanged since %s' % (bk1, re.escape(archives_of(h1_files, bk1)[0])), again.stdout)
        assert listing(bench, 'h1', dest) == h1_files and listing(bench, 'h2', dest) == h2_files

        # ... unless told not to (backup_pipelining=false, for hosts whose sudo requires a tty).
        unpiped = play(dict(labelled, backup_hosts='h1', backup_pipelining=False), '-vvv')
        assert unpiped.recap['h1']['failed'] == 0 and re.search(r'PUT .*AnsiballZ_volume_backup', unpiped.stdout), \
            unpiped.stdout[-3000:]

        # The archive restores to the very tree (restore into a new volume, which gets the
        # archived labels too, oracle digest compared).
        restored = tag + 'restored'
        ansible_run(['ansible', 'h1', '-m', 'volumeops.docker.volume_restore', '-a', json.dumps(
            {'volume': restored, 'archive': '%s/%s' % (dest, archives_of(h1_files, bk1)[0]), 'create': True})],
            env=env, check=True)
        assert_same_tree(src_digest, digest(bench, 'h1', restored), 'restored volume')

        # Retention with every volume of h1 selected (minus an excluded one and the anonymous volumes),
        # h1 only (backup_hosts): bk2 changes twice, keep=2 leaves its two newest archives.
        # The excluded names come as one comma-separated string, as from `-e` or an AWX survey's text field.
        # A container uses bk2 and bk1: with backup_stop_containers it stops for bk2's backup (bk1 is unchanged,
        # so not for that) and runs again afterwards.
        app = tag + 'app'
        sh(bench, 'h1', ['docker', 'run', '-d', '--name', app, '-v', '%s:/two' % bk2, '-v', '%s:/one:ro' % bk1, IMAGE,
                         'sh', '-c', 'trap "exit 0" TERM; while :; do sleep 0.2; done'])
        every = {'backup_hosts': 'h1', 'backup_exclude_volumes': '%s, %s, %s' % (bk3, bk5, restored),
                 'backup_skip_anonymous': True, 'backup_stop_containers': True,
                 'backup_keep': 2}
        for n in (1, 2):
            sh(bench, 'h1', ['sh', '-c', 'echo change%d >> "$(docker volume inspect -f "{{.Mountpoint}}" "$1")/f"' % n,
                             'sh', bk2])
            run = play(every)
            assert set(run.recap) == {'h1'} and run.recap['h1']['failed'] == 0, run.stdout[-6000:]
            assert re.search(r'%s: wrote %s_' % (bk2, bk2), run.stdout), run.stdout[-6000:]
            assert re.search(r'%s: unchanged since' % bk1, run.stdout), run.stdout[-6000:]
            assert 'containers stopped for the backup and started again: %s' % app in run.stdout, run.stdout[-6000:]
            assert running(bench, 'h1', app)
        assert '%s: wrote' % bk2 in run.stdout and '1 expired archive(s) deleted' in run.stdout
        files = listing(bench, 'h1', dest)
        bk2_archives = archives_of(files, bk2)
        assert len(bk2_archives) == 2 and archives_of(h1_files, bk2)[0] not in bk2_archives, files
        assert archives_of(files, bk1) == archives_of(h1_files, bk1), files
        assert not archives_of(files, bk3) and not archives_of(files, restored) and not archives_of(files, anonymous)
        for archive in bk2_archives:  # every archive kept still has both sidecars
            assert archive + '.sha256' in files and archive + '.manifest.json' in files, files
        assert len([f for f in files if f.startswith(bk2)]) == 6, files
        assert checksums_ok(bench, 'h1', dest)
        # The source volumes were only read.
        assert_same_tree(src_digest, digest(bench, 'h1', bk1), 'source volume after the backups')

        # A Compose project: only its volume.
        shop = play({'backup_hosts': 'h1', 'backup_compose_project': tag + 'shop'})
        assert shop.recap['h1']['failed'] == 0 and shop.recap['h1']['changed'] > 0, shop.stdout[-6000:]
        assert re.search(r'%s: wrote %s_' % (bk5, bk5), shop.stdout) and '%s:' % bk1 not in shop.stdout, shop.stdout[-6000:]
        assert len(archives_of(listing(bench, 'h1', dest), bk5)) == 1

        # backup_verify: an older archive of bk2 damaged since it was written is found (with the others good),
        # fails the host, and the backup of the selected volume still happens first. In check mode too
        # (read-only); a destination that does not exist yet is nothing to verify there.
        damaged = sorted(archives_of(listing(bench, 'h1', dest), bk2))[0]
        damage_in_place(bench, 'h1', '%s/%s' % (dest, damaged), 100)
        # A copy of an archive cut short at a member boundary (end marker added), its sidecars written for the
        # cut file: sha256sum -c passes, only reading the stream finds it.
        cut = '%scut_20250101T000000.000000Z.tar.zst' % tag
        with open(str(Path(__file__).parents[1] / 'integration' / 'targets' / 'backup_info' / 'files' / 'damage.py'),
                  'rb') as f:
            bench.exec('h1', ['python3', '-', 'cut', '%s/%s' % (dest, archives_of(listing(bench, 'h1', dest), bk1)[0]),
                              '%s/%s' % (dest, cut)], input=f.read())
        assert bench.exec('h1', ['sh', '-c', 'cd "$1" && sha256sum -c --quiet "$2"', 'sh', dest, cut + '.sha256'],
                          check=False).returncode == 0
        for flags in (('--check',), ()):
            verify = play({'backup_hosts': 'h1', 'backup_volumes': [bk1], 'backup_verify': True}, *flags)
            assert verify.recap['h1']['failed'] == 1, verify.stdout[-6000:]
            assert 'verify: BAD archive %s/%s: checksum mismatch' % (dest, damaged) in verify.stdout, verify.stdout[-6000:]
            assert re.search(r'verify: BAD archive %s/%s: stream: \d+ members, but its manifest lists \d+ entries'
                             % (re.escape(dest), re.escape(cut)), verify.stdout), verify.stdout[-6000:]
            good = len([f for f in listing(bench, 'h1', dest) if f.endswith('.tar.zst')]) - 2
            assert 'verify: %d archive(s) in %s good' % (good, dest) in verify.stdout, verify.stdout[-6000:]
            assert re.search(r'%s: unchanged since' % bk1, verify.stdout), verify.stdout[-6000:]
        bench.exec('h1', ['sh', '-c', 'rm -f "$1"/"$2"*', 'sh', dest, cut])
        fresh = ansible_run(['ansible-playbook', PLAYBOOK, '--check', '-e', json.dumps(
            {'backup_hosts': 'h1', 'backup_volumes': [bk1], 'backup_verify': True, 'backup_dest': dest + '-new'})],
            env=env, timeout=600)
        assert recap(fresh.stdout)['h1']['failed'] == 0, fresh.stdout[-6000:]
        assert 'verify: 0 archive(s) in %s-new good' % dest in fresh.stdout, fresh.stdout[-6000:]
        assert listing(bench, 'h1', dest + '-new') is None

        # A destination that cannot be created (below a regular file): one clear message for the host.
        bad = ansible_run(['ansible-playbook', PLAYBOOK, '-e', json.dumps(
            {'backup_hosts': 'h1', 'backup_volumes': [bk1], 'backup_dest': '/etc/hostname/backups'})],
            env=env, timeout=600)
        assert recap(bad.stdout)['h1']['failed'] == 1, bad.stdout[-6000:]
        assert 'No volume was backed up: Creating /etc/hostname/backups' in bad.stdout, bad.stdout[-6000:]
    finally:
        bench.exec('h1', ['docker', 'rm', '-f', tag + 'app'], check=False)
        cleanup(bench, volumes=[v for v in (bk1, bk2, bk3, bk4, bk5, bkt, tag + 'restored', anonymous) if v])
        for host in ('h1', 'h2'):
            bench.exec(host, ['rm', '-rf', dest], check=False)


def test_backup_and_restore_roles_pass_their_options_through(bench, ansible_run, ansible_env):
    """The options the backup and restore roles hand to the modules, each checked on the host: compression
    and level, exclude, mode/owner/group of the archive and its sidecars, data_path/helper_image (a helper
    path without an image fails naming it), force; restore_create=false, restore_require_checksum=false,
    restore_stop_containers, restore_existing=replace through the helper path."""
    tag = rand('vopt')
    vol, copy, app = tag + 'v', tag + 'copy', tag + 'app'
    dest = '/var/backups/%s' % tag
    env = dict(ansible_env)
    env.pop('ANSIBLE_PIPELINING', None)

    def play(playbook, extra):
        proc = ansible_run(['ansible-playbook', playbook, '-e', json.dumps(extra)], env=env, timeout=600)
        proc.recap = recap(proc.stdout)
        return proc

    backup_vars = {'backup_hosts': 'h1', 'backup_volumes': [vol], 'backup_dest': dest, 'backup_compression': 'gzip',
                   'backup_compression_level': 9, 'backup_exclude': ['*.log'], 'backup_mode': '0640',
                   'backup_owner': 'nobody', 'backup_group': 'nogroup', 'backup_consistency': 'best_effort',
                   'backup_data_path': 'helper'}
    try:
        mp = make_volume(bench, 'h1', vol)
        sh(bench, 'h1', ['sh', '-c', 'cd "$0" && echo log > run.log && mkdir extra && echo kept > extra/kept.txt', mp])
        run_container(bench, 'h1', app, vol)
        src = digest(bench, 'h1', vol)

        # The helper path without its image: the volume fails, naming what is missing.
        noimage = play(PLAYBOOK, backup_vars)
        assert noimage.recap['h1']['failed'] == 1 and 'set helper_image' in noimage.stdout, noimage.stdout[-4000:]
        assert not archives_of(listing(bench, 'h1', dest), vol)

        backup_vars['backup_helper_image'] = IMAGE
        first = play(PLAYBOOK, backup_vars)
        assert first.recap['h1']['failed'] == 0, first.stdout[-4000:]
        files = listing(bench, 'h1', dest)
        gz = [f for f in files if re.match(r'^%s_\S+\.tar\.gz$' % re.escape(vol), f)]
        assert len(gz) == 1 and not archives_of(files, vol), files
        for name in (gz[0], gz[0] + '.sha256', gz[0] + '.manifest.json'):
            assert sh(bench, 'h1', ['stat', '-c', '%a %U:%G', '%s/%s' % (dest, name)]) == '640 nobody:nogroup', name
        members = sh(bench, 'h1', ['tar', '-tzf', '%s/%s' % (dest, gz[0])]).split('\n')
        assert './extra/kept.txt' in members and './run.log' not in members, members[:20]
        assert sh(bench, 'h1', ['sh', '-c', 'gzip -l "$0" >/dev/null && echo gzip', '%s/%s' % (dest, gz[0])]) == 'gzip'

        again = play(PLAYBOOK, backup_vars)  # unchanged: nothing written
        assert again.recap['h1']['changed'] == 0 and len(listing(bench, 'h1', dest)) == 3, again.stdout[-4000:]
        forced = play(PLAYBOOK, dict(backup_vars, backup_force=True))
        assert forced.recap['h1']['failed'] == 0 and len(listing(bench, 'h1', dest)) == 6, forced.stdout[-4000:]

        # Restore: a missing volume with restore_create=false is refused and not created.
        restore_vars = {'restore_hosts': 'h1', 'restore_src': dest, 'restore_volumes': [{'name': copy, 'from': vol}]}
        nocreate = play(RESTORE_PLAYBOOK, dict(restore_vars, restore_create=False))
        assert nocreate.recap['h1']['failed'] == 1 and 'does not exist' in nocreate.stdout, nocreate.stdout[-4000:]
        assert volume_inspect(bench, 'h1', copy) is None
        # An archive named by path without its checksum file: refused by default, restored with the opt-out.
        older, newest = sorted(f for f in listing(bench, 'h1', dest) if f.endswith('.tar.gz'))
        sh(bench, 'h1', ['rm', '%s/%s.sha256' % (dest, newest)])
        by_path = dict(restore_vars, restore_volumes=[{'name': copy, 'archive': '%s/%s' % (dest, newest)}])
        nosum = play(RESTORE_PLAYBOOK, by_path)
        assert nosum.recap['h1']['failed'] == 1 and 'no checksum file' in nosum.stdout, nosum.stdout[-4000:]
        assert volume_inspect(bench, 'h1', copy) is None
        restored = play(RESTORE_PLAYBOOK, dict(by_path, restore_require_checksum=False))
        assert restored.recap['h1']['failed'] == 0, restored.stdout[-4000:]
        diffs = fidelity.compare(src, digest(bench, 'h1', copy), ignore_paths=['run.log'])
        assert not diffs and 'run.log' not in digest(bench, 'h1', copy)['entries'], '\n'.join(diffs[:40])

        # Replace the source volume's content through the helper path, its running container stopped and
        # started again: the volume ends with exactly the archive's content (run.log gone).
        started_at = sh(bench, 'h1', ['docker', 'container', 'inspect', '-f', '{{.State.StartedAt}}', app])
        replace = play(RESTORE_PLAYBOOK, dict(restore_vars, restore_volumes=[vol], restore_existing='replace',
                                              restore_stop_containers=True,
                                              restore_data_path='helper', restore_helper_image=IMAGE))
        assert replace.recap['h1']['failed'] == 0 and replace.recap['h1']['changed'] > 0, replace.stdout[-4000:]
        # By volume name (restore_require_checksum left true) the newest archive with its checksum file is
        # chosen: the newer one without it is passed over.
        chosen = re.findall(r'%s: restored from (\S+)' % re.escape(vol), replace.stdout)
        assert chosen == [older], (chosen, older, newest)
        assert running(bench, 'h1', app), 'the container stopped for the restore was not started again'
        assert sh(bench, 'h1', ['docker', 'container', 'inspect', '-f', '{{.State.StartedAt}}', app]) != started_at, \
            'restore_stop_containers: the container was not stopped and started again'
        after = digest(bench, 'h1', vol)
        assert not fidelity.compare(src, after, ignore_paths=['run.log']) and 'run.log' not in after['entries']
    finally:
        cleanup(bench, containers=[app], volumes=[vol, copy])
        bench.exec('h1', ['rm', '-rf', dest], check=False)
