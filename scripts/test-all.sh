#!/usr/bin/env bash
# The one test command (README "Run all tests"; .ci/run calls it).
# On a fresh Debian machine as root: installs what the tests need, starts dockerd
# when none answers, builds the local test image, then runs every test:
#   tests/unit          pure-logic unit tests (pytest)
#   tests/suite         ansible-test sanity, ansible-lint, changelog lint, build+install,
#                       and every integration target against the real engine
#   tests/system        multi-host tests on the namespaced bench (real sshd + dockerd per host)
# Prints a closing line "N passed, M failed" and exits non-zero on any failure.
# Extra arguments are passed to pytest (e.g. -k volume_backup).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib/bootstrap.sh
source "$here/lib/bootstrap.sh"
bootstrap_all || { echo "0 passed, 1 failed (bootstrap failed)"; exit 1; }

root=${VOLUMEOPS_COPY_ROOT:-/tmp/volumeops-suite}
rm -rf "$root"
coll=$("$here/lib/collection-copy.sh" "$root")
report="$root/junit.xml"
cd "$coll"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
status=0
"$VOLUMEOPS_VENV/bin/python" -m pytest -p no:cacheprovider -rfE --durations=15 \
    --junitxml="$report" --rootdir "$coll" tests/unit tests/suite tests/system "$@" || status=$?

summary=$("$VOLUMEOPS_VENV/bin/python" - "$report" <<'PY'
import sys
import xml.etree.ElementTree as ET
try:
    suites = ET.parse(sys.argv[1]).getroot()
except Exception:
    print('0 passed, 1 failed (no test report)')
    sys.exit()
tests = failures = errors = skipped = 0
for s in suites.iter('testsuite'):
    tests += int(s.get('tests', 0)); failures += int(s.get('failures', 0))
    errors += int(s.get('errors', 0)); skipped += int(s.get('skipped', 0))
passed = tests - failures - errors - skipped
print('%d passed, %d failed, %d skipped' % (passed, failures + errors, skipped))
PY
)
echo "volumeops.docker tests: $summary"
if [ "$status" -eq 5 ]; then status=1; fi  # pytest: no tests collected is a failure too
exit "$status"
