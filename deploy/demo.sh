#!/usr/bin/env bash
# kvmio demo: boots lab VMs and serves their metrics with kvmio-exporter, until Ctrl-C.
#
#   deploy/demo.sh [--run-dir DIR] [--vms N] [--cache MODES] [--listen ADDR] [--accel tcg|kvm|auto]
#
# Run by `make demo` after the release build. Both processes are stopped, and every VM reaped,
# on Ctrl-C, SIGTERM, or when either of them fails. Only processes this script started are ever
# signalled. The exporter listens on 127.0.0.1:10990 unless something already does (a host's
# own service): then on the next free port above it, and the banner says which. An address given
# with --listen is used as given (taken: an error that says so).
set -euo pipefail

run_dir=/tmp/kvmio-demo
vms=2
cache=none,unsafe
listen=''
accel=auto
bin=${KVMIO_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}

while [ $# -gt 0 ]; do
    case "$1" in
        --run-dir) run_dir=$2; shift 2 ;;
        --vms) vms=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        --listen) listen=$2; shift 2 ;;
        --accel) accel=$2; shift 2 ;;
        *) echo "demo: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
for b in kvmio-crashtest kvmio-exporter kvmio-guest; do
    [ -x "$bin/$b" ] || { echo "demo: $bin/$b missing: run 'cargo build --release --workspace' (make demo does)" >&2; exit 1; }
done

# Whether something accepts connections on HOST:PORT (bash's /dev/tcp: no extra tool needed).
in_use() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
if [ -z "$listen" ]; then
    port=10990
    while in_use 127.0.0.1 "$port"; do
        [ "$port" -lt 11090 ] || { echo "demo: ports 10990-11090 on 127.0.0.1 are all in use; pass --listen ADDR" >&2; exit 1; }
        port=$((port + 1))
    done
    [ "$port" = 10990 ] || echo "demo: 127.0.0.1:10990 is in use by another program (left alone); the exporter listens on 127.0.0.1:$port" >&2
    listen=127.0.0.1:$port
else
    host=${listen%:*}; host=${host#[}; host=${host%]}
    case "$host" in ''|0.0.0.0) host=127.0.0.1 ;; ::) host=::1 ;; esac
fi
if [ -n "${host:-}" ] && in_use "$host" "${listen##*:}"; then
    echo "demo: $listen is in use by another program (left alone); pass a free --listen ADDR, or none to pick one" >&2
    exit 1
fi

lab_pid=''
exporter_pid=''
stop() {
    trap - INT TERM EXIT
    [ -n "$exporter_pid" ] && kill -TERM "$exporter_pid" 2>/dev/null || true
    [ -n "$lab_pid" ] && kill -INT "$lab_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

mkdir -p "$run_dir"
rm -f "$run_dir/lab.json"
KVMIO_GUEST_BIN="$bin/kvmio-guest" "$bin/kvmio-crashtest" lab \
    --run-dir "$run_dir" --vms "$vms" --cache "$cache" --accel "$accel" &
lab_pid=$!
# The lab writes lab.json once every guest has called back.
while [ ! -f "$run_dir/lab.json" ]; do
    kill -0 "$lab_pid" 2>/dev/null || { echo "demo: the lab failed to start (see above)" >&2; exit 1; }
    sleep 0.2
done

"$bin/kvmio-exporter" --web.listen-address "$listen" --qmp.socket-glob "$run_dir/*.qmp" &
exporter_pid=$!
sleep 1
kill -0 "$exporter_pid" 2>/dev/null || { echo "demo: kvmio-exporter failed to start (see above)" >&2; exit 1; }

cat <<EOT

kvmio demo running:
  metrics:     http://$listen/metrics
  try:         curl -s http://$listen/metrics | grep -E '^kvmio_(qemu_block_info|disk_layer_info|guest_disk_writes_completed_total)'
  Prometheus:  add to prometheus.yml
                 scrape_configs:
                   - job_name: kvmio
                     static_configs: [{targets: ['$listen']}]
               (full example and alert rules: deploy/prometheus/)
Ctrl-C stops the exporter and the lab VMs.
EOT
# Return when either process ends; the trap stops the other.
wait -n "$lab_pid" "$exporter_pid"
