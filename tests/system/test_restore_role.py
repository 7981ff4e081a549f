"""Role volumeops.docker.restore / playbooks/restore-volumes.yml on the bench (host h1).

Real ansible-playbook runs against a bench host with its own sshd and dockerd. What the role did is
checked on the host itself, independently of its report: the fidelity oracle's digest of each volume
(tests/support/fidelity.py, every preserved property of every entry), the volumes' labels as Docker
reports them, and whether a volume exists at all.
"""

from __future__ import annotations

import json
import re

from test_backup_role import archives_of, damage_in_place, listing
from test_migrate import assert_same_tree, cleanup, digest, make_volume, rand, recap, sh, volume_inspect

PLAYBOOK = 'playbooks/restore-volumes.yml'

# On the host: copy archive argv[2] of directory argv[1] with its sidecars to the name argv[3], its manifest
# naming argv[4] as the host that made it (the .sha256 names the new file, so the copy is whole).
FOREIGN_COPY = """
import json, shutil, sys
d, src, dst, host = sys.argv[1:]
shutil.copyfile('%s/%s' % (d, src), '%s/%s' % (d, dst))
with open('%s/%s.sha256' % (d, src)) as f:
    digest = f.read().split()[0]
with open('%s/%s.sha256' % (d, dst), 'w') as f:
    f.write('%s  %s\\n' % (digest, dst))
with open('%s/%s.manifest.json' % (d, src)) as f:
    manifest = json.load(f)
manifest['source_host'] = host
with open('%s/%s.manifest.json' % (d, dst), 'w') as f:
    json.dump(manifest, f)
"""


def test_restore_refusal_check_mode_replace_copy_rerun_and_damaged_archive(bench, ansible_run, ansible_env):
    tag = rand('vors')
    app, other, copy, gone, damaged = (tag + s for s in ('app', 'other', 'copy', 'gone', 'damaged'))
    src = '/var/backups/%s' % tag
    env = dict(ansible_env)
    env.pop('ANSIBLE_PIPELINING', None)  # the playbook turns pipelining on itself

    def play(extra, *flags):
        proc = ansible_run(['ansible-playbook', PLAYBOOK, '-e', json.dumps(dict(extra, restore_src=src))]
                           + list(flags), env=env, timeout=600)
        proc.recap = recap(proc.stdout)
        return proc

    try:
        make_volume(bench, 'h1', app, labels={'tier': 'db'})  # the oracle's hard-case tree
        sh(bench, 'h1', ['docker', 'volume', 'create', other])
        sh(bench, 'h1', ['sh', '-c', 'echo data > "$(docker volume inspect -f "{{.Mountpoint}}" "$1")/f"', 'sh', other])
        ansible_run(['ansible', 'h1', '-m', 'volumeops.docker.volume_backup', '-a',
                     json.dumps({'volumes': [app, other], 'dest': src})], env=env, check=True)
        backed_up = digest(bench, 'h1', app)
        other_digest = digest(bench, 'h1', other)
        # The application wrote after the backup: a restore must not silently drop that.
        sh(bench, 'h1', ['sh', '-c', 'echo later > "$(docker volume inspect -f "{{.Mountpoint}}" "$1")/later"',
                         'sh', app])
        written_later = digest(bench, 'h1', app)

        # No restore_hosts: refused on the controller, nothing touched.
        nohosts = ansible_run(['ansible-playbook', PLAYBOOK, '-e', json.dumps({'restore_volumes': [app]})],
                              env=env, timeout=300)
        assert nohosts.returncode != 0 and 'Set restore_hosts' in nohosts.stdout, nohosts.stdout[-3000:]
        # No volumes: refused on the host.
        novols = play({'restore_hosts': 'h1'})
        assert novols.recap['h1']['failed'] == 1 and 'restore_volumes names no volume' in novols.stdout
        # A mistyped key is named, not ignored (it would otherwise restore the newest archive instead).
        typo = play({'restore_hosts': 'h1', 'restore_volumes': [{'name': app, 'archve': '/x'}]})
        assert typo.recap['h1']['failed'] == 1 and "not: {'name': '%s', 'archve': '/x'}" % app in typo.stdout, \
            typo.stdout[-3000:]

        # Default existing=fail, names as one comma-separated string (as from an AWX survey): the changed
        # volume is refused and left as it is, the unchanged one is a no-op, a volume without archives fails
        # on its own; the host fails naming both failures.
        default = play({'restore_hosts': 'h1', 'restore_volumes': '%s, %s, %s' % (app, other, gone)})
        assert default.recap['h1']['failed'] == 1 and default.recap['h1']['changed'] == 0, default.stdout[-6000:]
        assert re.search(r'%s: FAILED: Volume %s is not empty.*existing: replace' % (app, app), default.stdout)
        assert re.search(r'%s: unchanged, already holds %s_\S+\.tar\.zst' % (other, other), default.stdout)
        assert '%s: FAILED: No archive of volume %s' % (gone, gone) in default.stdout, default.stdout[-6000:]
        assert 'Restore failed on h1 for %s, %s' % (app, gone) in default.stdout
        assert_same_tree(written_later, digest(bench, 'h1', app), 'refused volume')
        assert volume_inspect(bench, 'h1', gone) is None

        # existing=replace plus a copy of the volume from its newest archive ("from"), in check mode and
        # check+diff mode first: reported, nothing changed, nothing created.
        replace = {'restore_hosts': 'h1', 'restore_existing': 'replace',
                   'restore_volumes': [app, other, {'name': copy, 'from': app}]}
        for flags in (['--check'], ['--check', '--diff']):
            check = play(replace, *flags)
            assert check.recap['h1']['failed'] == 0 and check.recap['h1']['changed'] == 1, check.stdout[-6000:]
            assert re.search(r'%s: would be restored from %s_\S+\.tar\.zst' % (app, app), check.stdout)
            assert re.search(r'%s: would be restored from %s_\S+ \(\d+ entries, volume created\)' % (copy, app),
                             check.stdout), check.stdout[-6000:]
            assert_same_tree(written_later, digest(bench, 'h1', app), 'volume after --check')
            assert volume_inspect(bench, 'h1', copy) is None
        assert re.search(r'^\+\+\+ after', check.stdout, re.M), check.stdout[-6000:]

        real = play(replace)
        assert real.recap['h1']['failed'] == 0 and real.recap['h1']['changed'] == 1, real.stdout[-6000:]
        assert_same_tree(backed_up, digest(bench, 'h1', app), 'restored volume')
        assert_same_tree(backed_up, digest(bench, 'h1', copy), 'copy restored from the archive')
        assert_same_tree(other_digest, digest(bench, 'h1', other), 'unchanged volume', min_entries=2)
        assert volume_inspect(bench, 'h1', copy)['Labels'] == {'tier': 'db'}  # from the archive's manifest

        # Rerun: every volume already holds its archive's content.
        again = play(replace)
        assert again.recap['h1']['failed'] == 0 and again.recap['h1']['changed'] == 0, again.stdout[-6000:]
        assert len(re.findall(r': unchanged, already holds ', again.stdout)) == 3, again.stdout[-6000:]

        # restore_src shared by several hosts (NFS): a newer archive of `other` from another host (a copy whose
        # manifest names another source_host). Without restore_source_host the role refuses to pick by time
        # across hosts and leaves the volume alone; with it, this host's archive counts (already restored).
        real_archive = archives_of(listing(bench, 'h1', src), other)[0]
        foreign = '%s_29991231T000000.000000Z.tar.zst' % other
        sh(bench, 'h1', ['python3', '-c', FOREIGN_COPY, src, real_archive, foreign, 'other-host.invalid'])
        this_host = sh(bench, 'h1', ['uname', '-n'])
        mixed = play({'restore_hosts': 'h1', 'restore_volumes': [other]})
        assert mixed.recap['h1']['failed'] == 1 and mixed.recap['h1']['changed'] == 0, mixed.stdout[-6000:]
        assert re.search(r'%s: FAILED: The archives of volume %s in \S+ were made on several hosts \((.*, )?'
                         r'other-host\.invalid.*Set source_host' % (other, other), mixed.stdout), mixed.stdout[-6000:]
        assert_same_tree(other_digest, digest(bench, 'h1', other), 'volume after the refusal', min_entries=2)
        chosen = play({'restore_hosts': 'h1', 'restore_volumes': [other], 'restore_source_host': this_host})
        assert chosen.recap['h1']['failed'] == 0 and chosen.recap['h1']['changed'] == 0, chosen.stdout[-6000:]
        assert '%s: unchanged, already holds %s' % (other, real_archive) in chosen.stdout, chosen.stdout[-6000:]
        bench.exec('h1', ['sh', '-c', 'rm -f "$1/$2"*', 'sh', src, foreign], check=False)

        # A damaged archive (one byte changed): refused before anything is written; the volume the
        # restore would have created is not left behind.
        archive = '%s/%s' % (src, archives_of(listing(bench, 'h1', src), other)[0])
        damage_in_place(bench, 'h1', archive, 200)
        bad = play({'restore_hosts': 'h1', 'restore_volumes': [{'name': damaged, 'archive': archive}]})
        assert bad.recap['h1']['failed'] == 1, bad.stdout[-6000:]
        assert re.search(r'%s: FAILED: .*(checksum|corrupt)' % damaged, bad.stdout), bad.stdout[-6000:]
        assert volume_inspect(bench, 'h1', damaged) is None
    finally:
        cleanup(bench, volumes=[app, other, copy, gone, damaged])
        bench.exec('h1', ['rm', '-rf', src], check=False)
