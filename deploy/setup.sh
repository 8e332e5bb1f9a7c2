#!/usr/bin/env bash
# kvmio lab setup: installs what the lab, the tests and the demo need on a Debian 12 host, and
# unpacks a guest kernel into kvmio's cache. Idempotent: a second run changes nothing and takes
# about a second.
#
#   deploy/setup.sh            # packages + guest kernel
#   KVMIO_CACHE_DIR=/path deploy/setup.sh
#
# Why the pinning below: Debian 12 images may carry qemu-utils from backports (10.x). Installing
# qemu-system-x86 7.2 would replace it with nothing, leaving no qemu-img (see shared/lab-notes.md),
# so qemu-utils is pinned to the exact version of qemu-system-x86 in the same apt transaction.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs Debian packages with apt-get)"
command -v apt-get >/dev/null || die "this script supports Debian/Ubuntu hosts (apt-get not found); install qemu-system-x86, qemu-utils, qemu-guest-agent, busybox-static, cpio and prometheus by hand"

cache_dir="${KVMIO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kvmio}"
export DEBIAN_FRONTEND=noninteractive

installed_version() { { dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null || true; } | awk '$3=="installed"{print $4}'; }

updated=0
apt_update() {
    if [ "$updated" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >/dev/null
        updated=1
    fi
}

# Debian starts packaged daemons on install (prometheus on :9090, libvirtd, qemu-guest-agent,
# node-exporter). kvmio runs its own instances on its own sockets and ports, and never starts,
# stops or reconfigures the host's services: a policy-rc.d that refuses every start keeps the
# install from launching them (invoke-rc.d's documented mechanism) and is removed right after.
# A policy-rc.d the host already has is left alone and respected.
apt_install() {
    local policy=/usr/sbin/policy-rc.d own_policy=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# kvmio deploy/setup.sh: no service starts during this install\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    apt-get install -y -qq --no-install-recommends --allow-downgrades "$@" >/dev/null || rc=$?
    if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
    [ "$rc" = 0 ] || die "apt-get install $* failed (exit $rc)"
}

# --- QEMU: system emulator, tools and guest agent at one version ---------------------------
qsys=$(installed_version qemu-system-x86)
qutils=$(installed_version qemu-utils)
qga=$(installed_version qemu-guest-agent)
if [ -z "$qsys" ] || [ "$qsys" != "$qutils" ] || [ "$qsys" != "$qga" ]; then
    apt_update
    want=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
    [ -n "$want" ] && [ "$want" != "(none)" ] || die "apt has no qemu-system-x86 candidate; check /etc/apt/sources.list"
    log "installing qemu-system-x86, qemu-utils, qemu-guest-agent $want"
    apt_install "qemu-system-x86=$want" "qemu-utils=$want" "qemu-guest-agent=$want"
fi

# --- everything else ------------------------------------------------------------------------
# busybox-static and cpio build the guest; prometheus (+promtool) runs the end-to-end tests;
# nbdkit and prometheus-node-exporter are the benchmarks' reference points; ipxe-qemu and
# seabios give QEMU its firmware (recommends, so not pulled by --no-install-recommends);
# systemd provides systemd-analyze, which checks deploy/systemd's units (containers may lack it).
# libvirt: the daemon the libvirt end-to-end tests run (their own instance, never the host's),
# libvirt-dev for the exporter's libvirt source (the `virt` crate links libvirt's C library),
# and prometheus-libvirt-exporter, the benchmark's reference point.
# debhelper and lintian build and check the Debian package (`make deb`, tests/deb.rs).
# chromium renders the crash report (tests/report_html.rs) and the README's screenshots; tmux
# runs kvmio-top in a real terminal (tests/top.rs), aha turns its screen into HTML for a picture.
# e2fsprogs and xfsprogs make and check the crash tester's guest filesystems (mkfs, e2fsck,
# xfs_repair); util-linux brings losetup and mount for verification.
missing=()
for p in busybox-static cpio prometheus prometheus-node-exporter nbdkit seabios ipxe-qemu xz-utils zstd kmod systemd \
         libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config prometheus-libvirt-exporter \
         debhelper lintian \
         chromium tmux aha fonts-dejavu-core e2fsprogs xfsprogs util-linux mount; do
    [ -n "$(installed_version "$p")" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_update
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
fi

# --- guest kernel -----------------------------------------------------------------------------
# Debian's generic kernel, unpacked into the cache, never installed into the host's /boot.
kdir="$cache_dir/kernel"
if [ ! -f "$kdir/current" ] || [ ! -f "$kdir/$(cat "$kdir/current")/vmlinuz" ]; then
    apt_update
    mkdir -p "$kdir"
    tmp=$(mktemp -d)
    chmod 755 "$tmp"  # apt-get download drops privileges to _apt
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -qq linux-image-amd64 >/dev/null)
    meta=$(ls "$tmp"/linux-image-amd64_*.deb)
    dep=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed 's/[ (].*//' | grep -m1 '^linux-image-[0-9]')
    [ -n "$dep" ] || die "could not read the versioned kernel package from linux-image-amd64's Depends"
    log "fetching guest kernel $dep"
    (cd "$tmp" && apt-get download -qq "$dep" >/dev/null)
    rel=${dep#linux-image-}
    rm -rf "$kdir/$rel.partial"
    mkdir -p "$kdir/$rel.partial"
    dpkg-deb -x "$tmp/${dep}"_*.deb "$kdir/$rel.partial/root"
    vmlinuz=$(ls "$kdir/$rel.partial/root/boot/vmlinuz-"* | head -n1)
    mv "$vmlinuz" "$kdir/$rel.partial/vmlinuz"
    mv "$kdir/$rel.partial/root/lib/modules/$rel" "$kdir/$rel.partial/modules"
    rm -rf "$kdir/$rel.partial/root"
    rm -rf "$kdir/$rel"
    mv "$kdir/$rel.partial" "$kdir/$rel"
    echo "$rel" > "$kdir/current"
fi
rel=$(cat "$kdir/current")
log "guest kernel: $kdir/$rel/vmlinuz (modules in $kdir/$rel/modules)"
log "qemu: $(qemu-system-x86_64 --version | head -n1); qemu-img: $(qemu-img --version | head -n1)"
