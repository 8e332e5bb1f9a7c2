#!/usr/bin/env bash
# Builds kvmio's Debian package from binaries already built, writing nothing into the source tree.
#
#   deploy/deb.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds kvmio-exporter, kvmio-crashtest, kvmio-top, kvmio-guest and kvmio-mangen
# (`make deb` passes target/release, the package test target/debug). dpkg-buildpackage runs on a
# copy of debian/ in a temporary directory (its files, debian/kvmio/ and the like, would otherwise
# land in a tree other builds share, and its results in the tree's parent); the .deb, .buildinfo
# and .changes are moved to OUT_DIR. `-d`: the toolchain comes from rustup, not from Debian's
# cargo/rustc that Build-Depends names.
set -euo pipefail
die() { printf 'deb: error: %s\n' "$*" >&2; exit 1; }
[ $# = 2 ] || die "usage: deploy/deb.sh BIN_DIR OUT_DIR"
repo=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=$(cd "$1" && pwd)
mkdir -p "$2"
out_dir=$(cd "$2" && pwd)
command -v dpkg-buildpackage >/dev/null && command -v dh >/dev/null \
    || die "dpkg-buildpackage or dh missing: run deploy/setup.sh (installs debhelper)"
for b in kvmio-exporter kvmio-crashtest kvmio-top kvmio-guest kvmio-mangen; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing: build the workspace first"
done

stage=$(mktemp -d "${TMPDIR:-/tmp}/kvmio-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/src"
cp -r "$repo/debian" "$stage/src/debian"
(cd "$stage/src" && KVMIO_SRC="$repo" KVMIO_BIN_DIR="$bin_dir" \
    dpkg-buildpackage --build=binary --no-sign -d) > "$stage/build.log" 2>&1 \
    || { cat "$stage/build.log" >&2; die "dpkg-buildpackage failed (log above)"; }
version=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)
arch=$(dpkg-architecture -q DEB_HOST_ARCH)
deb="kvmio_${version}_${arch}.deb"
[ -f "$stage/$deb" ] || die "dpkg-buildpackage wrote no $deb"
rm -f "$out_dir"/kvmio_*.deb "$out_dir"/kvmio_*.buildinfo "$out_dir"/kvmio_*.changes
mv "$stage"/kvmio_*.deb "$stage"/kvmio_*.buildinfo "$stage"/kvmio_*.changes "$out_dir/"
printf '%s\n' "$out_dir/$deb"
