#!/bin/bash
# Side-by-side qemu-img bench: kvmio-nbd (examples/nbd-serve) vs nbdkit's file plugin, same
# workload, same backing filesystem. Prints every run and the median per server.
#
#   crashtest/nbd/scripts/bench.sh [RUNS] [DIR]
#
# RUNS defaults to 5; DIR (default: a temporary directory under /var/tmp, i.e. the root
# filesystem) holds the backing file and socket and is removed afterwards. Both servers use the
# same backing file, written in full once beforehand so that no run pays for block allocation,
# and the runs alternate between the servers so that background load hits both alike.
# The workload can be changed with BENCH_ARGS (qemu-img bench arguments), COUNT and SIZE.
set -euo pipefail

RUNS=${1:-5}
DIR=${2:-}
COUNT=${COUNT:-50000}
SIZE=${SIZE:-1G}
BENCH_ARGS=${BENCH_ARGS:-"-w -t none -c $COUNT -d 16 -s 4k --flush-interval 64 -f raw"}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
SERVE="$ROOT/target/release/examples/nbd-serve"

for tool in qemu-img nbdkit; do
    command -v "$tool" >/dev/null || { echo "bench.sh: $tool not found" >&2; exit 1; }
done
(cd "$ROOT" && cargo build --release -q -p kvmio-nbd --example nbd-serve)

OWN_DIR=0
if [ -z "$DIR" ]; then
    DIR=$(mktemp -d /var/tmp/kvmio-nbd-bench.XXXXXX)
    OWN_DIR=1
elif [ -e "$DIR/disk.img" ] || [ -e "$DIR/sock" ]; then
    echo "bench.sh: $DIR/disk.img or $DIR/sock exists; refusing to overwrite it" >&2
    exit 1
fi
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -f "$DIR/sock" "$DIR/disk.img"
    if [ "$OWN_DIR" = 1 ]; then rm -rf "$DIR"; fi
}
trap cleanup EXIT

wait_for_socket() {
    for _ in $(seq 100); do
        [ -S "$DIR/sock" ] && return 0
        sleep 0.05
    done
    echo "bench.sh: server did not create $DIR/sock" >&2
    return 1
}

# Runs one benchmark against the server started by "$@"; prints the seconds qemu-img reports.
one_run() {
    sync "$DIR/disk.img"
    "$@" &
    SERVER_PID=$!
    wait_for_socket
    # shellcheck disable=SC2086
    out=$(qemu-img bench $BENCH_ARGS "nbd+unix:///?socket=$DIR/sock")
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    rm -f "$DIR/sock"
    echo "$out" | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

dd if=/dev/zero of="$DIR/disk.img" bs=1M count=$(($(numfmt --from=iec "$SIZE") >> 20)) \
    conv=fsync status=none

declare -a KV NB
for i in $(seq "$RUNS"); do
    KV+=("$(one_run "$SERVE" --socket "$DIR/sock" --file "$DIR/disk.img" --discard-on-exit \
        2>/dev/null)")
    NB+=("$(one_run nbdkit -f -U "$DIR/sock" file "$DIR/disk.img")")
    echo "run $i: kvmio-nbd ${KV[-1]} s, nbdkit-file ${NB[-1]} s"
done
kv=$(printf '%s\n' "${KV[@]}" | median)
nb=$(printf '%s\n' "${NB[@]}" | median)
echo "workload: qemu-img bench $BENCH_ARGS"
echo "median of $RUNS: kvmio-nbd $kv s, nbdkit-file $nb s, speed ratio (nbdkit/kvmio) $(awk -v a="$nb" -v b="$kv" 'BEGIN {printf "%.2f", a/b}')x"
