#!/usr/bin/env bash
# Run one or more integration targets (tests/integration/targets/<name>) against
# the local Docker engine, the same way the full suite does.
# Usage: scripts/run-target.sh TARGET [TARGET...]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VOLUMEOPS_VENV=${VOLUMEOPS_VENV:-/opt/volumeops/venv}
export PATH="$VOLUMEOPS_VENV/bin:$PATH"
coll=$("$here/lib/collection-copy.sh" "${VOLUMEOPS_COPY_ROOT:-/tmp/volumeops-target-$$}")
cd "$coll"
trap 'rm -rf "${VOLUMEOPS_COPY_ROOT:-/tmp/volumeops-target-$$}"' EXIT
ansible-test integration --local --python "$("$VOLUMEOPS_VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" --allow-destructive --color no -v "$@"
