#!/usr/bin/env bash
# Run `ansible-test sanity` locally (no containers, no delegation) on the
# collection, or on the given paths. Needs the offline get-pip stand-in that
# scripts/lib/bootstrap.sh installs (see DEVELOPERS.md).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VOLUMEOPS_VENV=${VOLUMEOPS_VENV:-/opt/volumeops/venv}
export PATH="$VOLUMEOPS_VENV/bin:$PATH"
root=${VOLUMEOPS_COPY_ROOT:-/tmp/volumeops-sanity-$$}
coll=$("$here/lib/collection-copy.sh" "$root")
trap 'rm -rf "$root"' EXIT
cd "$coll"
ansible-test sanity --local --python "$("$VOLUMEOPS_VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" --color no "$@"
