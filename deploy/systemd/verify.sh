#!/usr/bin/env bash
# Checks the systemd units in deploy/systemd with `systemd-analyze verify`, plus the sysusers and
# tmpfiles snippets, and that every flag the units and environment files pass exists.
#
#   deploy/systemd/verify.sh [BIN_DIR]     # BIN_DIR: built binaries (default: cargo's target/debug)
#
# systemd-analyze verify insists that ExecStart= binaries exist and are executable. The units
# name /usr/local/bin/..., where nothing is installed on a build machine, so the check verifies
# copies of the units in a temporary directory whose /usr/local/bin/ paths are rewritten to
# BIN_DIR: the real binaries `cargo build --workspace` just produced, not stubs, so a renamed
# binary fails here. (`--root=DIR` is no way out: it wants a whole unit tree, sysinit.target and
# all, under DIR.) systemd-analyze reports unknown keys and unparsable values as warnings and
# still exits 0, so any output at all fails the check.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

die() { printf 'units-verify: error: %s\n' "$*" >&2; exit 1; }
command -v systemd-analyze >/dev/null || die "systemd-analyze not found: run deploy/setup.sh (Debian package systemd)"

bin_dir=${1:-}
if [ -z "$bin_dir" ]; then
    target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    bin_dir="$target/debug"
fi
bin_dir=$(cd "$bin_dir" && pwd)
for b in kvmio-exporter kvmio-crashtest kvmio-guest; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing: run cargo build --workspace first"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/units"
for unit in "$here"/*.service "$here"/*.timer; do
    sed "s#/usr/local/bin/#$bin_dir/#g" "$unit" > "$tmp/units/$(basename "$unit")"
done

fail=0
for unit in "$tmp"/units/*; do
    name=$(basename "$unit")
    # Run from the copies' directory so a timer finds its service beside it.
    if ! out=$(cd "$tmp/units" && systemd-analyze verify "./$name" 2>&1); then
        printf 'units-verify: %s: systemd-analyze verify failed:\n%s\n' "$name" "$out" >&2
        fail=1
    elif [ -n "$out" ]; then
        printf 'units-verify: %s: systemd-analyze verify warned (treated as an error):\n%s\n' "$name" "$out" >&2
        fail=1
    else
        printf 'units-verify: %s: ok\n' "$name"
    fi
done

# sysusers and tmpfiles snippets, applied to an empty root.
mkdir -p "$tmp/root/etc"
# (systemd-sysusers logs what it creates: only its exit code and result count.)
if ! out=$(systemd-sysusers --root="$tmp/root" "$here/kvmio.sysusers.conf" 2>&1) \
    || ! grep -q '^kvmio:' "$tmp/root/etc/passwd"; then
    printf 'units-verify: kvmio.sysusers.conf: %s\n' "${out:-no kvmio user created}" >&2
    fail=1
else
    printf 'units-verify: kvmio.sysusers.conf: ok\n'
fi
if ! out=$(systemd-tmpfiles --root="$tmp/root" --create "$here/kvmio.tmpfiles.conf" 2>&1) || [ -n "$out" ] \
    || [ ! -d "$tmp/root/run/kvmio" ] || [ ! -d "$tmp/root/var/lib/kvmio/crashtest" ]; then
    printf 'units-verify: kvmio.tmpfiles.conf: %s\n' "${out:-directories not created}" >&2
    fail=1
else
    printf 'units-verify: kvmio.tmpfiles.conf: ok\n'
fi

# Every --flag the units and environment files hand to a binary must be one it knows.
check_flags() { # binary, help text, where, lines
    local bin=$1 help=$2 where=$3 lines=$4
    local flag
    for flag in $(grep -o -- '--[a-z][a-z0-9.-]*' <<<"$lines" | sort -u); do
        if ! grep -q -- "$flag\b" <<<"$help"; then
            printf 'units-verify: %s does not know %s (used in %s)\n' "$bin" "$flag" "$where" >&2
            fail=1
        fi
    done
}
exporter_help=$("$bin_dir/kvmio-exporter" --help)
# (The environment files' comments are examples to copy: their flags are checked too.)
check_flags kvmio-exporter "$exporter_help" "kvmio-exporter.service, kvmio-exporter.default" \
    "$(grep -h 'KVMIO_EXPORTER_ARGS' "$here/kvmio-exporter.service" | grep -v '^#'; cat "$here/kvmio-exporter.default")"
if crashtest_help=$("$bin_dir/kvmio-crashtest" run --help 2>&1); then
    check_flags "kvmio-crashtest run" "$crashtest_help" "kvmio-crashtest.service, kvmio-crashtest.default" \
        "$(grep -h 'KVMIO_CRASHTEST_ARGS\|ExecStart' "$here/kvmio-crashtest.service" | grep -v '^#'; cat "$here/kvmio-crashtest.default")"
else
    printf 'units-verify: kvmio-crashtest has no `run` subcommand (kvmio-crashtest.service runs it):\n%s\n' "$crashtest_help" >&2
    fail=1
fi

[ "$fail" = 0 ] || die "see above"
printf 'units-verify: all units, snippets and flags ok\n'
