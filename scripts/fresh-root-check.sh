#!/usr/bin/env bash
# Developer check (not part of the test suite): run README's two set-up commands in a fresh Debian 12
# root made by debootstrap, as on a freshly installed machine. Run as root on a machine where no other
# dockerd and no bench is running (the fresh root's dockerd and benches share this kernel's network).
#   bash scripts/fresh-root-check.sh [ROOT]     # ROOT defaults to /srv/volumeops-fresh; log on stdout
# The root is entered with pivot_root in a private mount namespace, not with chroot: the bench enters
# its hosts with nsenter -m, which sets the root to the mount namespace's root and so escapes a chroot.
# The root's / is a bind mount (dockerd remounts / when it unpacks images).
# FRESH_CA_BUNDLE: a CA bundle pip must trust (only behind a TLS-intercepting proxy; written to the
# fresh root's /etc/pip.conf, which a real machine does not need).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
R=${1:-/srv/volumeops-fresh}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
if [ ! -e "$R/etc/debian_version" ]; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
    debootstrap bookworm "$R" http://deb.debian.org/debian >/dev/null
fi
cp /etc/resolv.conf "$R/etc/resolv.conf"
if [ -n "${FRESH_CA_BUNDLE:-}" ]; then
    mkdir -p "$R/etc/ssl"
    cp "$FRESH_CA_BUNDLE" "$R/etc/ssl/proxy-ca-bundle.crt"
    printf '[global]\ncert = /etc/ssl/proxy-ca-bundle.crt\n' > "$R/etc/pip.conf"
fi
rm -rf "$R/root/volumeops"
git clone -q "$repo" "$R/root/volumeops"
export R
# shellcheck disable=SC2016  # expanded by the inner bash, inside the fresh root
unshare --mount --propagation private bash -c '
    set -e
    mount --bind "$R" "$R"
    mount -t proc proc "$R/proc"
    mount --rbind /sys "$R/sys"
    mount --rbind /dev "$R/dev"
    mount -t tmpfs tmpfs "$R/run"
    cd "$R" && mkdir -p oldroot && pivot_root . oldroot
    exec /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        /bin/bash -c "umount -l /oldroot; rmdir /oldroot; cd /root/volumeops
            echo \"=== bash scripts/demo.sh\"; bash scripts/demo.sh; demo=\$?
            echo \"=== bash scripts/test-all.sh\"; bash scripts/test-all.sh; tests=\$?
            pkill dockerd; pkill containerd; sleep 3
            echo \"=== demo exit \$demo, tests exit \$tests\"; [ \$demo = 0 ] && [ \$tests = 0 ]"
'
