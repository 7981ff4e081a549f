#!/usr/bin/env bash
# Copy the working tree into an ansible_collections/volumeops/docker layout, the
# shape ansible-test and ansible-playbook need. Prints the collection path.
# Usage: collection-copy.sh [DEST_ROOT]   (default /tmp/volumeops-test)
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dest_root=${1:-/tmp/volumeops-test}
dest="$dest_root/ansible_collections/volumeops/docker"
mkdir -p "$dest"
rsync -a --delete --exclude .git --exclude tests/output --exclude '__pycache__' \
    --exclude .pytest_cache --exclude '/.bench' --exclude '/benchmarks/results' "$src/" "$dest/"
echo "$dest"
