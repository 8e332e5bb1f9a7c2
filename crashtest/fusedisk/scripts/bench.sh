#!/bin/bash
# Side-by-side qemu-img bench: a file on kvmio-fusedisk (the power fault's host) vs a plain file
# on the filesystem under it, the workload of crashtest/nbd/scripts/bench.sh (4 KiB O_DIRECT
# writes, depth 16, a flush every 64). Runs alternate; prints every run and the medians.
#
#   crashtest/fusedisk/scripts/bench.sh [RUNS]
#
# Needs root and /dev/fuse. COUNT, SIZE and BENCH_ARGS change the workload.
set -euo pipefail

RUNS=${1:-5}
COUNT=${COUNT:-50000}
SIZE=${SIZE:-1G}
BENCH_ARGS=${BENCH_ARGS:-"-w -t none -c $COUNT -d 16 -s 4k --flush-interval 64 -f raw"}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
MOUNT="$ROOT/target/release/examples/fusedisk-mount"
(cd "$ROOT" && cargo build --release -q -p kvmio-fusedisk --example fusedisk-mount)

DIR=$(mktemp -d /var/tmp/kvmio-fusedisk-bench.XXXXXX)
MOUNT_PID=
cleanup() {
    if [ -n "$MOUNT_PID" ]; then
        exec 3>&- || true
        wait "$MOUNT_PID" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT
mkdir "$DIR/mnt" "$DIR/backing"

secs() { "$@" 2>&1 | sed -n 's/.*Run completed in \([0-9.]*\) seconds.*/\1/p'; }

plain=()
fuse=()
for i in $(seq "$RUNS"); do
    rm -f "$DIR/plain.img"
    qemu-img create -q -f raw "$DIR/plain.img" "$SIZE"
    p=$(secs qemu-img bench $BENCH_ARGS "$DIR/plain.img")
    # A fresh mount and image per run: the volatile layer starts empty.
    exec 3> >("$MOUNT" "$DIR/mnt" "$DIR/backing" >/dev/null)
    MOUNT_PID=$!
    for _ in $(seq 100); do mountpoint -q "$DIR/mnt" && break; sleep 0.05; done
    qemu-img create -q -f raw "$DIR/mnt/fuse.img" "$SIZE"
    f=$(secs qemu-img bench $BENCH_ARGS "$DIR/mnt/fuse.img")
    exec 3>&-
    wait "$MOUNT_PID" 2>/dev/null || true
    for _ in $(seq 100); do mountpoint -q "$DIR/mnt" || break; sleep 0.05; done
    MOUNT_PID=
    rm -f "$DIR/backing/fuse.img"
    echo "run $i: plain ${p}s  fusedisk ${f}s"
    plain+=("$p")
    fuse+=("$f")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mp=$(median "${plain[@]}")
mf=$(median "${fuse[@]}")
echo "median: plain ${mp}s  fusedisk ${mf}s  ratio $(awk -v a="$mf" -v b="$mp" 'BEGIN {printf "%.2f", a/b}')"
