#!/usr/bin/env bash
# README demo: a real two-host migration of an application's data volume.
#   1. sets the machine up (scripts/lib/bootstrap.sh: packages, venv, dockerd, test image);
#   2. brings up the 2-host bench (h1, h2: own network namespace, sshd and dockerd each);
#   3. puts a PostgreSQL data directory (Debian's initdb when postgresql installs, else a
#      generated tree) into volume "pgdata" on h1, used by a running container "db";
#      creates a stopped container "db" on h2 that is waiting for the data;
#   4. runs `ansible-playbook playbooks/migrate-volumes.yml` (first with --check);
#   5. shows the verified result (equal tree fingerprints, db running on h2) and tears the bench down.
# Run as root on a fresh Debian machine: bash scripts/demo.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=scripts/lib/bootstrap.sh
source "$here/lib/bootstrap.sh" && bootstrap_all

net=${VOLUMEOPS_DEMO_NET:-79}
state=${VOLUMEOPS_DEMO_STATE:-/var/lib/volumeops-demo}
image=$VOLUMEOPS_TEST_IMAGE
py=$VOLUMEOPS_VENV/bin/python
bench() { "$py" "$repo/tests/bench/benchhosts.py" --net "$net" --state-dir "$state" "$@"; }
on() { local h=$1; shift; bench exec "$h" -- "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

work=$(mktemp -d /var/tmp/volumeops-demo.XXXXXX)
chmod 0711 "$work"  # initdb runs as postgres and must reach its directory
cleanup() {
    bench down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

say "Bringing up the bench: h1, h2 (10.$net.0.11/12), each with its own sshd and dockerd"
bench up --hosts 2 >/dev/null

say "Sample application data on h1"
pgdata=$work/pgdata
# The newest initdb, or "": find fails when /usr/lib/postgresql does not exist (a fresh machine), which
# under pipefail would end this script.
find_initdb() { find /usr/lib/postgresql -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1 || true; }
initdb=$(find_initdb)
if [ -z "$initdb" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 || true
    initdb=$(find_initdb)
fi
if [ -n "$initdb" ] && id postgres >/dev/null 2>&1; then
    install -d -o postgres -g postgres -m 0700 "$pgdata"
    # From a directory postgres may enter (else initdb complains that it cannot enter the caller's one).
    (cd "$work" && runuser -u postgres -- "$initdb" -D "$pgdata" --auth=trust --data-checksums >/dev/null)
    echo "real PostgreSQL cluster made by $initdb"
    kind=postgresql
else
    mkdir -p "$pgdata/base/1" "$pgdata/pg_wal"
    for i in $(seq 1 200); do head -c $((RANDOM * 4)) /dev/urandom > "$pgdata/base/1/$((16000 + i))"; done
    head -c 8388608 /dev/urandom > "$pgdata/pg_wal/000000010000000000000001"
    echo "PG_VERSION_DEMO" > "$pgdata/PG_VERSION"
    chown -R 999:999 "$pgdata"; chmod 0700 "$pgdata"
    echo "postgresql not installable here: generated a PostgreSQL-like tree"
    kind=generated
fi
on h1 docker volume create --label app=demo-db pgdata >/dev/null
# The bench host sees the controller's /var/tmp: copy with full fidelity inside a helper container.
on h1 docker run --rm -v "$pgdata:/src:ro" "$image" \
    /usr/bin/tar -C /src --numeric-owner --xattrs --xattrs-include='*' --acls -cf - . \
    | on h1 docker run --rm -i -v pgdata:/data "$image" \
        /usr/bin/tar -C /data --numeric-owner --xattrs --xattrs-include='*' --acls -xpf -
on h1 docker run -d --name db -v pgdata:/var/lib/postgresql/data "$image" \
    /bin/sh -c 'trap "exit 0" TERM; while :; do sleep 1; done' >/dev/null
on h2 docker create --name db -v pgdata:/var/lib/postgresql/data "$image" \
    /bin/sh -c 'trap "exit 0" TERM; while :; do sleep 1; done' >/dev/null
on h1 docker ps --format 'h1: {{.Names}} {{.Status}}'

fingerprint() {
    # The collection's own tree fingerprint (plugins/module_utils/_tree.py), computed inside the host.
    local host=$1 mp
    mp=$(on "$host" docker volume inspect -f '{{.Mountpoint}}' pgdata)
    { cat "$repo/plugins/module_utils/_tree.py"
      printf '\nimport sys\ns = fingerprint(sys.argv[1].encode())\nprint(s.fingerprint, s.entries, "entries", s.bytes, "bytes")\n'
    } | on "$host" "$py" - "$mp"
}
before=$(fingerprint h1)

# ansible-playbook needs the collection in an ansible_collections/ tree.
mkdir -p "$work/collections/ansible_collections/volumeops"
ln -s "$repo" "$work/collections/ansible_collections/volumeops/docker"
export ANSIBLE_COLLECTIONS_PATH=$work/collections ANSIBLE_HOST_KEY_CHECKING=True ANSIBLE_RETRY_FILES_ENABLED=False
cmd=("$VOLUMEOPS_VENV/bin/ansible-playbook" "$repo/playbooks/migrate-volumes.yml" -i "$state/inventory.ini"
     -e migrate_source=h1 -e migrate_destination=h2 -e '{"migrate_volumes": ["pgdata"]}' -e migrate_verify=content)

say "Dry run: ansible-playbook playbooks/migrate-volumes.yml --check"
"${cmd[@]}" --check | grep -E 'Would migrate|PLAY RECAP|^(h1|h2|localhost) ' || true

say "Migration: ansible-playbook playbooks/migrate-volumes.yml -e migrate_source=h1 -e migrate_destination=h2 -e '{\"migrate_volumes\": [\"pgdata\"]}'"
"${cmd[@]}" | sed -n '/Summary of the migration/,$p'

say "Result"
after=$(fingerprint h2)
echo "h1 pgdata: $before"
echo "h2 pgdata: $after"
on h1 docker ps -a --filter name=db --format 'h1: {{.Names}} {{.Status}}'
on h2 docker ps -a --filter name=db --format 'h2: {{.Names}} {{.Status}}'
if [ "$kind" = postgresql ]; then
    mp=$(on h2 docker volume inspect -f '{{.Mountpoint}}' pgdata)
    on h2 "$(dirname "$initdb")/pg_controldata" "$mp" | grep -E 'cluster state|system identifier' | sed 's/^/h2 pg_controldata: /'
fi
[ "$before" = "$after" ] || { echo "FAILED: fingerprints differ"; exit 1; }
[ "$(on h2 docker inspect -f '{{.State.Running}}' db)" = true ] || { echo "FAILED: db not running on h2"; exit 1; }
say "Verified: identical data on h2 and the application runs there. Tearing the bench down."
