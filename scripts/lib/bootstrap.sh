#!/usr/bin/env bash
# Prepare a fresh Debian machine (as root) for the demo and the test suite:
#   - Debian packages: docker.io, GNU tar, zstd, acl/attr tools, sshd, iproute2, busybox-static,
#     strace (tests watch system calls), e2fsprogs (chattr: tests make a file immutable)
#   - a Python venv with the pinned controller tools (scripts/lib/requirements-test.txt)
#   - a running dockerd (started here when none answers; CI has none)
#   - the offline get-pip stand-in that ansible-test needs (see DEVELOPERS.md)
#   - the locally built helper image used by tests (no registry is reachable)
# Idempotent: safe to run again; every step checks before it acts.
# Source it (it exports VOLUMEOPS_VENV and PATH) or run it.
set -euo pipefail

VOLUMEOPS_ROOT=${VOLUMEOPS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
VOLUMEOPS_VENV=${VOLUMEOPS_VENV:-/opt/volumeops/venv}
VOLUMEOPS_TEST_IMAGE=${VOLUMEOPS_TEST_IMAGE:-volumeops-test/busybox:1}
export VOLUMEOPS_ROOT VOLUMEOPS_VENV VOLUMEOPS_TEST_IMAGE

log() { printf '[bootstrap] %s\n' "$*" >&2; }

bootstrap_packages() {
    local pkgs=(docker.io busybox-static openssh-server openssh-client acl attr zstd
                iproute2 iptables python3-venv python3-pip rsync tar gzip procps util-linux
                bridge-utils file shellcheck libcap2-bin strace e2fsprogs)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# venv_current VENV REQ: VENV exists and holds the pinned requirements file REQ (a stamp of its hash).
venv_current() {
    [ -x "$1/bin/python" ] && [ "$(cat "$1/.requirements.sha256" 2>/dev/null)" = "$(sha256sum "$2" | cut -d' ' -f1)" ]
}

# make_venv VENV PYTHON REQ: (re)make VENV with PYTHON and install REQ into it, then stamp it.
make_venv() {
    log "creating venv $1 with $2"
    "$2" -m venv "$1"
    "$1/bin/pip" install -q --upgrade pip >/dev/null
    "$1/bin/pip" install -q -r "$3"
    sha256sum "$3" | cut -d' ' -f1 > "$1/.requirements.sha256"
}

bootstrap_venv() {
    local req="$VOLUMEOPS_ROOT/scripts/lib/requirements-test.txt"
    # Debian's own interpreter: the one Debian hosts will run modules with.
    venv_current "$VOLUMEOPS_VENV" "$req" || make_venv "$VOLUMEOPS_VENV" /usr/bin/python3 "$req"
}

# ansible-test downloads get-pip.py from a host that is unreachable here. It
# first looks in its cache; this stand-in bootstraps pip with ensurepip and then
# installs what it was asked for, dropping flags only get-pip understands.
bootstrap_get_pip_standin() {
    local cache="$HOME/.ansible/test/cache"
    mkdir -p "$cache"
    local versions
    # The pip versions ansible-test bootstraps are pinned in its python_requirements.py.
    versions=$(grep -ho "pip='[0-9.]*'" "$("$VOLUMEOPS_VENV/bin/python" -c \
        'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py" \
        | sed -e "s/^pip='//" -e "s/'$//" | sort -u)
    [ -n "$versions" ] || { log "cannot find ansible-test's pip version"; return 1; }
    for v in $versions; do
        cat > "$cache/get_pip_${v//./_}.py" <<'PY'
# Offline stand-in for get-pip.py written by volumeops' bootstrap.sh.
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
subprocess.check_call([sys.executable, '-m', 'ensurepip', '--upgrade'])
if args:
    subprocess.check_call([sys.executable, '-m', 'pip', 'install'] + args)
PY
    done
}

bootstrap_dockerd() {
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    log "no Docker engine answers: starting dockerd"
    mkdir -p /var/log/volumeops
    # A cgroup v1 hierarchy may lack the systemd named mount dockerd looks for; cgroupfs driver avoids it.
    nohup /usr/sbin/dockerd --exec-opt native.cgroupdriver=cgroupfs \
        >/var/log/volumeops/dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        if docker info >/dev/null 2>&1; then
            # dockerd sets FORWARD to DROP; the multi-host bench adds its own ACCEPT rules.
            return 0
        fi
        sleep 1
    done
    log "dockerd did not come up; last lines of its log:"
    tail -20 /var/log/volumeops/dockerd.log >&2
    return 1
}

# A tiny image with busybox plus the host's GNU tar and zstd (and the libraries
# they link), built with `docker import` because no registry is reachable.
# It doubles as the helper image for the helper-container data path.
bootstrap_test_image() {
    if docker image inspect "$VOLUMEOPS_TEST_IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    log "building $VOLUMEOPS_TEST_IMAGE"
    local root
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,usr/bin,etc,tmp,data,lib,lib64,usr/lib}
    chmod 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    for app in $(/bin/busybox --list); do
        [ -e "$root/bin/$app" ] || ln -s busybox "$root/bin/$app"
    done
    local bin
    for bin in /bin/tar /usr/bin/zstd /usr/bin/python3.11 /usr/bin/getfacl /usr/bin/setfacl; do
        [ -x "$bin" ] || continue
        rm -f "$root/bin/$(basename "$bin")"
        cp -L "$bin" "$root/usr/bin/$(basename "$bin")"
        ldd "$bin" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | while read -r lib; do
            [ -f "$lib" ] || continue
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
    done
    ln -sf /usr/bin/tar "$root/bin/tar"
    # Python's standard library, so helper containers can run the same tree walk as the host.
    mkdir -p "$root/usr/lib"
    cp -a /usr/lib/python3.11 "$root/usr/lib/python3.11"
    rm -rf "$root/usr/lib/python3.11/test" "$root/usr/lib/python3.11/dist-packages"
    ln -s python3.11 "$root/usr/bin/python3"
    cat > "$root/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
postgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
    cat > "$root/etc/group" <<'GR'
root:x:0:
postgres:x:999:
app:x:1000:
nogroup:x:65534:
GR
    tar -C "$root" -c . | docker import \
        --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/usr/bin:/bin' - "$VOLUMEOPS_TEST_IMAGE" >/dev/null
    rm -rf "$root"
}

# Extra venvs for the compatibility tests (tests/suite/test_compat.py), not part of bootstrap_all:
#   newest: the newest ansible-core (scripts/lib/requirements-newest.txt). ansible-core 2.20 and later
#           need Python >= 3.12, which Debian 12 does not ship: made only where such an interpreter is
#           installed (e.g. with pyenv); returns 2 where there is none.
#   oldest: the oldest ansible-core meta/runtime.yml accepts (scripts/lib/requirements-oldest.txt),
#           with Debian's own Python.
# Prints the venv's path (/opt/volumeops/venv-<which>).
bootstrap_extra_venv() {
    local which=$1
    local venv="${VOLUMEOPS_VENV_PREFIX:-/opt/volumeops/venv}-$which"
    local req="$VOLUMEOPS_ROOT/scripts/lib/requirements-$which.txt"
    local py=/usr/bin/python3 cand
    if ! venv_current "$venv" "$req"; then
        if [ "$which" = newest ]; then
            py=""
            for cand in /usr/bin/python3.13 /usr/bin/python3.12 "$HOME"/.pyenv/versions/3.13*/bin/python3 \
                        "$HOME"/.pyenv/versions/3.12*/bin/python3; do
                if [ -x "$cand" ] && "$cand" -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
                    py=$cand
                    break
                fi
            done
            [ -n "$py" ] || { log "no Python >= 3.12 here: no venv with the newest ansible-core"; return 2; }
        fi
        make_venv "$venv" "$py" "$req"
    fi
    VOLUMEOPS_VENV=$venv bootstrap_get_pip_standin
    echo "$venv"
}

bootstrap_all() {
    [ "$(id -u)" = 0 ] || { log "run as root"; return 1; }
    bootstrap_packages
    bootstrap_venv
    export PATH="$VOLUMEOPS_VENV/bin:$PATH"
    bootstrap_get_pip_standin
    bootstrap_dockerd
    bootstrap_test_image
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    bootstrap_all
fi
