#!/usr/bin/env bash
# Run the unit tests (pure logic) with the collection importable as
# ansible_collections.volumeops.docker. Extra arguments go to pytest.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VOLUMEOPS_VENV=${VOLUMEOPS_VENV:-/opt/volumeops/venv}
root=${VOLUMEOPS_COPY_ROOT:-/tmp/volumeops-unit-$$}
coll=$("$here/lib/collection-copy.sh" "$root")
trap 'rm -rf "$root"' EXIT
cd "$coll"
PYTHONPATH="$root" "$VOLUMEOPS_VENV/bin/python" -m pytest -p no:cacheprovider tests/unit "$@"
