//! kvmio's Grafana dashboards, as code: `grafana/dashboards/*.json` is what this crate generates.
//!
//! ```text
//! cargo run -p kvmio-dashboards             # rewrites grafana/dashboards/*.json
//! cargo run -p kvmio-dashboards -- --check  # exit status 1 if a committed file differs
//! ```
//!
//! Change the dashboards here, never in the JSON (nor in Grafana's UI: they are provisioned
//! read-only). `tests/grafana.rs` fails when the committed JSON differs from [`rendered`], and
//! checks every dashboard against the dashboard-linter conventions (datasource variable, units,
//! `$__rate_interval`, `job`/`instance` selectors, stable uids); `tests/prometheus.rs` runs every
//! panel query against a real Prometheus.
//!
//! Shape: one function a dashboard ([`storage_layers`], [`crash_consistency`]); panels from a
//! few builders (`timeseries`, `stat`, `table`, `layers_panel` for one figure at every layer)
//! placed on Grafana's grid by `Board`; the PromQL selectors and rates as constants and `Layer`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// A crash-test verdict's colour, in the "Crash consistency" dashboard and wherever else a verdict
/// is drawn (kvmio-crashtest's `report.html`): one table, so the two never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerdictColour {
    /// The value the dashboard's verdict query gives (0, 1, 2).
    pub value: &'static str,
    /// The verdict as `report.json` spells it.
    pub verdict: &'static str,
    /// Grafana's colour name (what the dashboard JSON says).
    pub grafana: &'static str,
    /// The colour Grafana draws for that name (the primary shade of its named-colour palette,
    /// `namedColorsPalette.ts`), for renderers outside Grafana.
    pub hex: &'static str,
}

/// ok, loss-allowed and VIOLATION, in the dashboard's order.
pub const VERDICT_COLOURS: [VerdictColour; 3] = [
    VerdictColour {
        value: "0",
        verdict: "ok",
        grafana: "green",
        hex: "#73BF69",
    },
    VerdictColour {
        value: "1",
        verdict: "loss-allowed",
        grafana: "orange",
        hex: "#FF9830",
    },
    VerdictColour {
        value: "2",
        verdict: "VIOLATION",
        grafana: "red",
        hex: "#F2495C",
    },
];

/// `grafana/dashboards` in this checkout.
pub fn dashboards_dir() -> PathBuf {
    let gen = Path::new(env!("CARGO_MANIFEST_DIR"));
    gen.parent().unwrap_or(gen).join("dashboards")
}

/// Every generated dashboard: file name (in [`dashboards_dir`]) and JSON.
pub fn generated() -> Vec<(String, Value)> {
    vec![
        ("kvmio-storage-layers.json".into(), storage_layers()),
        ("kvmio-crash-consistency.json".into(), crash_consistency()),
    ]
}

/// Every generated dashboard as the committed file's text: pretty JSON, keys sorted, one final
/// newline.
pub fn rendered() -> Vec<(String, String)> {
    generated()
        .into_iter()
        .map(|(file, dash)| (file, render(&dash)))
        .collect()
}

/// Pretty JSON with keys sorted at every level, whether or not another crate in the build turns on
/// `serde_json/preserve_order` (which would keep insertion order instead).
pub fn render(dash: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&map[k])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string_pretty(&sorted(dash)).expect("JSON values serialise") + "\n"
}

const DATASOURCE: &str = "${datasource}";
/// Selectors: host (job, instance), VM, VM disk.
const J: &str = r#"job=~"$job", instance=~"$instance""#;
const S: &str = r#"job=~"$job", instance=~"$instance", vm=~"$vm""#;
const SD: &str = r#"job=~"$job", instance=~"$instance", vm=~"$vm", device=~"$device""#;
const RATE: &str = "$__rate_interval";

fn ds() -> Value {
    json!({"type": "prometheus", "uid": DATASOURCE})
}

/// The layers of a VM disk, each as a PromQL rate of one diskstats-style counter, all
/// `by (instance, vm, device)` (+ `host_device` for the host) so that they can be divided by
/// each other and drawn side by side. QEMU counts requests only at the block backend (the QEMU
/// device): its protocol nodes have discard counters and nothing else, so the protocol layer
/// appears in the discard panel, and the bytes QEMU's protocol nodes move are shown per VM from
/// the QEMU process's IO accounting ([`process_target`]).
#[derive(Debug, Clone, Copy)]
enum Layer {
    Guest,
    QemuDevice,
    QemuProtocol,
    HostDevice,
}

/// Layers with read/write/flush counters.
const IO_LAYERS: [Layer; 3] = [Layer::Guest, Layer::QemuDevice, Layer::HostDevice];
/// Layers with discard counters.
const DISCARD_LAYERS: [Layer; 4] = [
    Layer::Guest,
    Layer::QemuDevice,
    Layer::QemuProtocol,
    Layer::HostDevice,
];

impl Layer {
    fn legend(self) -> &'static str {
        match self {
            Layer::Guest => "{{instance}} {{vm}}/{{device}} · guest",
            Layer::QemuDevice => "{{instance}} {{vm}}/{{device}} · QEMU device",
            Layer::QemuProtocol => "{{instance}} {{vm}}/{{device}} · QEMU protocol node",
            Layer::HostDevice => "{{instance}} {{vm}}/{{device}} · host {{host_device}}",
        }
    }

    /// `rate()` of the counter with this diskstats suffix (without `_total`) at this layer.
    fn rate(self, suffix: &str) -> String {
        match self {
            Layer::Guest => format!(
                "sum by (instance, vm, device) (rate(kvmio_guest_disk_{suffix}_total{{{S}}}[{RATE}]) \
                 * on (job, instance, vm, disk) group_left (device) \
                 max by (job, instance, vm, disk, device) (kvmio_disk_layer_info{{{SD}, disk!=\"\"}}))"
            ),
            Layer::QemuDevice => format!(
                "sum by (instance, vm, device) (rate(kvmio_qemu_block_{suffix}_total{{{SD}}}[{RATE}]))"
            ),
            Layer::QemuProtocol => format!(
                "sum by (instance, vm, device) (rate(kvmio_qemu_node_{suffix}_total{{{SD}}}[{RATE}]))"
            ),
            Layer::HostDevice => format!(
                "sum by (instance, vm, device, host_device) (\
                 max by (job, instance, vm, device, host_device) (kvmio_disk_layer_info{{{SD}, host_device!=\"\"}}) \
                 * on (job, instance, host_device) group_left () \
                 label_replace(sum by (job, instance, device) (rate(kvmio_host_disk_{suffix}_total{{{J}}}[{RATE}])), \
                 \"host_device\", \"$1\", \"device\", \"(.+)\"))"
            ),
        }
    }

    /// `num / den` per second at this layer, absent where `den` is 0.
    fn ratio(self, num: &str, den: &str) -> String {
        format!("{} / ({} > 0)", self.rate(num), self.rate(den))
    }

    /// Merged requests per submitted request (merged + completed).
    fn merge_ratio(self, merged: &str, completed: &str) -> String {
        format!(
            "{m} / (({m} + {c}) > 0)",
            m = self.rate(merged),
            c = self.rate(completed)
        )
    }
}

fn target(ref_id: &str, expr: String, legend: &str) -> Value {
    json!({
        "refId": ref_id,
        "datasource": ds(),
        "expr": expr,
        "legendFormat": legend,
        "range": true,
        "instant": false,
    })
}

fn table_target(ref_id: &str, expr: String) -> Value {
    json!({
        "refId": ref_id,
        "datasource": ds(),
        "expr": expr,
        "format": "table",
        "range": false,
        "instant": true,
    })
}

fn ref_id(i: usize) -> String {
    ((b'A' + i as u8) as char).to_string()
}

/// Lays panels out on Grafana's 24-column grid: rows full width, other panels by their width.
#[derive(Debug, Default)]
struct Board {
    panels: Vec<Value>,
    x: u64,
    y: u64,
    row_height: u64,
}

impl Board {
    fn row(&mut self, title: &str) {
        self.newline();
        let id = self.panels.len() as u64 + 1;
        self.panels.push(json!({
            "id": id,
            "type": "row",
            "title": title,
            "collapsed": false,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            "panels": [],
        }));
        self.y += 1;
    }

    fn newline(&mut self) {
        if self.x > 0 {
            self.y += self.row_height;
            self.x = 0;
            self.row_height = 0;
        }
    }

    fn add(&mut self, w: u64, h: u64, mut panel: Value) {
        if self.x + w > 24 {
            self.newline();
        }
        let id = self.panels.len() as u64 + 1;
        panel["id"] = json!(id);
        panel["gridPos"] = json!({"h": h, "w": w, "x": self.x, "y": self.y});
        panel["datasource"] = ds();
        self.x += w;
        self.row_height = self.row_height.max(h);
        self.panels.push(panel);
    }
}

/// A stat panel: each target's last value, with the field `defaults` (unit, thresholds) and
/// Grafana's colour and text modes (`modes`).
fn stat(
    title: &str,
    description: &str,
    defaults: Value,
    (colour, text): (&str, &str),
    targets: Vec<Value>,
) -> Value {
    json!({
        "type": "stat",
        "title": title,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": false},
            "colorMode": colour,
            "graphMode": "none",
            "textMode": text,
            "justifyMode": "auto",
            "orientation": "auto",
        },
        "targets": targets,
    })
}

fn timeseries(title: &str, description: &str, unit: &str, targets: Vec<Value>) -> Value {
    json!({
        "type": "timeseries",
        "title": title,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never", "spanNulls": false},
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": true, "calcs": ["mean", "max", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    })
}

/// One target per layer, the same quantity at each.
fn layers_panel(
    title: &str,
    description: &str,
    unit: &str,
    layers: &[Layer],
    expr: impl Fn(Layer) -> String,
) -> Value {
    let targets = layers
        .iter()
        .enumerate()
        .map(|(i, &l)| target(&ref_id(i), expr(l), l.legend()))
        .collect();
    timeseries(title, description, unit, targets)
}

/// The QEMU process's storage bytes (`read` or `written`) per VM: what its protocol nodes moved
/// to and from the host, all the VM's images together (`/proc/PID/io`).
fn process_target(ref_id: &str, what: &str) -> Value {
    target(
        ref_id,
        format!(
            "sum by (instance, vm) (rate(kvmio_qemu_process_{what}_bytes_total{{{S}}}[{RATE}]))"
        ),
        "{{instance}} {{vm}} · QEMU process (image files, all disks)",
    )
}

fn query_variable(name: &str, label: &str, query: &str) -> Value {
    json!({
        "name": name,
        "label": label,
        "type": "query",
        "datasource": ds(),
        "query": query,
        "definition": query,
        "refresh": 2,
        "multi": true,
        "includeAll": true,
        "allValue": ".+",
        "current": {"selected": true, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    })
}

fn datasource_variable() -> Value {
    json!({
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "regex": "",
        "refresh": 1,
        "hide": 0,
        "includeAll": false,
        "multi": false,
        "options": [],
    })
}

fn host_variables() -> Vec<Value> {
    vec![
        datasource_variable(),
        query_variable("job", "Job", "label_values(kvmio_exporter_build_info, job)"),
        query_variable(
            "instance",
            "Instance",
            r#"label_values(kvmio_exporter_build_info{job=~"$job"}, instance)"#,
        ),
    ]
}

fn dashboard(
    uid: &str,
    title: &str,
    description: &str,
    variables: Vec<Value>,
    board: Board,
) -> Value {
    let other = if uid == "kvmio-storage-layers" {
        ("kvmio / Crash consistency", "kvmio-crash-consistency")
    } else {
        ("kvmio / Storage layers", "kvmio-storage-layers")
    };
    json!({
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["kvmio"],
        "editable": false,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": false,
        "annotations": {"list": []},
        "links": [{
            "title": other.0,
            "type": "link",
            "url": format!("/d/{}?${{__url_time_range}}&${{__all_variables}}", other.1),
            "icon": "dashboard",
            "keepTime": true,
            "includeVars": false,
            "targetBlank": false,
            "tooltip": "",
            "asDropdown": false,
            "tags": [],
        }],
        "templating": {"list": variables},
        "panels": board.panels,
    })
}

fn mapping(entries: &[(&str, &str, &str)]) -> Value {
    let mut options = serde_json::Map::new();
    for (i, (value, text, color)) in entries.iter().enumerate() {
        options.insert(
            (*value).to_string(),
            json!({"text": text, "color": color, "index": i}),
        );
    }
    json!([{"type": "value", "options": options}])
}

fn table(
    title: &str,
    description: &str,
    unit: &str,
    targets: Vec<Value>,
    transformations: Value,
    overrides: Value,
) -> Value {
    json!({
        "type": "table",
        "title": title,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": true},
            },
            "overrides": overrides,
        },
        "options": {"showHeader": true, "cellHeight": "sm", "footer": {"show": false, "reducer": ["sum"], "fields": ""}},
        "targets": targets,
        "transformations": transformations,
    })
}

/// "kvmio / Storage layers": per host, VM and disk, each layer side by side.
pub fn storage_layers() -> Value {
    let mut b = Board::default();
    let layers_note = "Layers: guest (guest agent: the guest kernel's view), QEMU device (what the \
        guest's virtual disk asked of QEMU; QEMU keeps no request counters below it), host device \
        (/proc/diskstats of the block device under the image: the whole device, shared by everything \
        on it).";

    b.row("Configuration");
    let block_info = format!(
        "max by (instance, vm, device, cache_mode, driver, format, aio, iothread, detect_zeroes, discard, bus, file) \
         (kvmio_qemu_block_info{{{SD}}})"
    );
    let device_info = format!(
        "max by (instance, vm, device, model, storage_mode) (kvmio_qemu_device_info{{{SD}}})"
    );
    let run_state = format!(
        "max by (instance, vm, device, state) (kvmio_qemu_block_info{{{SD}}} \
         * on (job, instance, vm) group_left (state) kvmio_vm_state_info{{{S}}})"
    );
    let guest_sched = format!(
        "max by (instance, vm, device, disk, guest_scheduler, write_cache) (\
         label_replace(kvmio_guest_disk_queue_info{{{S}}}, \"guest_scheduler\", \"$1\", \"scheduler\", \"(.*)\") \
         * on (job, instance, vm, disk) group_left (device) \
         max by (job, instance, vm, disk, device) (kvmio_disk_layer_info{{{SD}, disk!=\"\"}}))"
    );
    let host_sched = format!(
        "max by (instance, vm, device, host_device, host_scheduler) (\
         max by (job, instance, vm, device, host_device) (kvmio_disk_layer_info{{{SD}, host_device!=\"\"}}) \
         * on (job, instance, host_device) group_left (host_scheduler) \
         label_replace(label_replace(kvmio_host_disk_queue_info{{{J}}}, \"host_device\", \"$1\", \"device\", \"(.+)\"), \
         \"host_scheduler\", \"$1\", \"scheduler\", \"(.*)\"))"
    );
    let cache_colours = mapping(&[
        ("unsafe", "unsafe", "red"),
        ("writeback", "writeback", "transparent"),
        ("writethrough", "writethrough", "transparent"),
        ("none", "none", "transparent"),
        ("directsync", "directsync", "transparent"),
    ]);
    let state_colours = mapping(&[
        ("io-error", "io-error", "red"),
        ("running", "running", "transparent"),
        ("paused", "paused", "orange"),
    ]);
    b.add(
        24,
        8,
        table(
            "Disk configuration",
            "One row per VM disk: the VM's run state (io-error in red: QEMU stopped it on a disk \
             error, see KvmioVmStoppedOnIoError), the device model and the storage mode it makes \
             (the seed article's list: virtio-blk, its dataplane with an iothread, virtio-scsi, \
             vhost-user-blk, passthrough, NVMe, IDE, USB), QEMU's cache mode (unsafe in red: QEMU \
             ignores the guest's flushes, see KvmioUnsafeCacheMode), block driver and image format, \
             aio mode, iothread, discard and detect-zeroes settings, the guest disk and its IO \
             scheduler and write-cache type, and the host device under the image with its \
             scheduler. The seed article advises none or (mq-)deadline inside the guest, since the \
             host schedules the same IO again.",
            "string",
            vec![
                table_target("A", block_info),
                table_target("B", guest_sched),
                table_target("C", host_sched),
                table_target("D", device_info),
                table_target("E", run_state),
            ],
            json!([
                {"id": "merge", "options": {}},
                {"id": "organize", "options": {
                    "excludeByName": {
                        "Time": true, "Value #A": true, "Value #B": true, "Value #C": true,
                        "Value #D": true, "Value #E": true
                    },
                    "indexByName": {
                        "instance": 0, "vm": 1, "device": 2, "state": 3, "model": 4,
                        "storage_mode": 5, "cache_mode": 6, "driver": 7, "format": 8,
                        "aio": 9, "iothread": 10, "discard": 11, "detect_zeroes": 12, "bus": 13,
                        "disk": 14, "guest_scheduler": 15, "write_cache": 16,
                        "host_device": 17, "host_scheduler": 18, "file": 19
                    },
                    "renameByName": {}
                }}
            ]),
            json!([{
                "matcher": {"id": "byName", "options": "cache_mode"},
                "properties": [
                    {"id": "mappings", "value": cache_colours},
                    {"id": "custom.cellOptions", "value": {"type": "color-background", "mode": "basic"}}
                ]
            }, {
                "matcher": {"id": "byName", "options": "state"},
                "properties": [
                    {"id": "mappings", "value": state_colours},
                    {"id": "custom.cellOptions", "value": {"type": "color-background", "mode": "basic"}}
                ]
            }]),
        ),
    );

    // (title, description, unit, quantity at each IO layer)
    type Quantity = fn(Layer) -> String;
    let io_panels: [(&str, &str, &str, &str, Quantity); 10] = [
        ("IOPS", "Read IOPS by layer",
         "Reads completed per second at each layer of the disk.",
         "iops", |l| l.rate("reads_completed")),
        ("", "Write IOPS by layer",
         "Writes completed per second at each layer. Guest IOPS below QEMU's mean the guest merged \
          requests; host IOPS are the whole host device's.",
         "iops", |l| l.rate("writes_completed")),
        ("Latency", "Average read latency by layer",
         "Time per completed read (read time / reads) at each layer; the gap between two layers is \
          the time spent between them.",
         "s", |l| l.ratio("read_time_seconds", "reads_completed")),
        ("", "Average write latency by layer",
         "Time per completed write (write time / writes) at each layer.",
         "s", |l| l.ratio("write_time_seconds", "writes_completed")),
        ("Request size", "Average read request size by layer",
         "Bytes per completed read at each layer.",
         "bytes", |l| l.ratio("read_bytes", "reads_completed")),
        ("", "Average write request size by layer",
         "Bytes per completed write at each layer. Large requests in the guest that arrive small on \
          the host were split on the way (thin provisioning: adjacent guest blocks are not adjacent \
          on the host).",
         "bytes", |l| l.ratio("written_bytes", "writes_completed")),
        ("Merges", "Read merge ratio by layer",
         "Share of submitted reads merged into a neighbouring request: merged / (merged + \
          completed). Merging in the guest and again on the host means the elevator runs twice.",
         "percentunit", |l| l.merge_ratio("reads_merged", "reads_completed")),
        ("", "Write merge ratio by layer",
         "Share of submitted writes merged into a neighbouring request: merged / (merged + \
          completed).",
         "percentunit", |l| l.merge_ratio("writes_merged", "writes_completed")),
        ("Flushes and discards", "Flush requests by layer",
         "Flush (cache barrier) requests per second: the guest's fsync/fdatasync reaching its \
          virtual disk, QEMU's flushes of the image (QEMU still counts them under cache=unsafe, \
          which then does nothing), the host device's.",
         "reqps", |l| l.rate("flush_requests")),
        ("", "Discards by layer",
         "Discard (TRIM/UNMAP) requests per second: issued by the guest, accepted by the QEMU \
          device (QEMU drops them under discard=ignore, its default), punched into the image file \
          by QEMU's protocol node, and reaching the host device. Thin provisioning gives space \
          back to the host only when discards get through every layer.",
         "reqps", |l| l.rate("discards_completed")),
    ];
    for (row, title, description, unit, quantity) in io_panels {
        if !row.is_empty() {
            b.row(row);
        }
        let layers: &[Layer] = if title.starts_with("Discards") {
            &DISCARD_LAYERS
        } else {
            &IO_LAYERS
        };
        let description = format!("{description} {layers_note}");
        b.add(
            12,
            8,
            layers_panel(title, &description, unit, layers, quantity),
        );
        if title == "Write IOPS by layer" {
            // Throughput: the IO layers, and the bytes QEMU's protocol nodes moved per VM.
            b.row("Throughput");
            for (what, suffix, dir) in [
                ("Read", "read_bytes", "read"),
                ("Write", "written_bytes", "written"),
            ] {
                let mut panel = layers_panel(
                    &format!("{what} throughput by layer"),
                    &format!(
                        "Bytes {dir} per second at each layer, and by the VM's QEMU process to or \
                         from storage (its image files, through QEMU's protocol nodes, all its \
                         disks together; reads served by the host page cache are not counted). \
                         {layers_note}"
                    ),
                    "Bps",
                    &IO_LAYERS,
                    |l| l.rate(suffix),
                );
                panel["targets"]
                    .as_array_mut()
                    .expect("targets")
                    .push(process_target("D", dir));
                b.add(12, 8, panel);
            }
        }
        if title == "Average write latency by layer" {
            let quantiles = ["read", "write", "flush"]
                .iter()
                .enumerate()
                .map(|(i, op)| {
                    target(
                        &ref_id(i),
                        format!(
                            "histogram_quantile(0.99, sum by (instance, vm, device, le) \
                             (rate(kvmio_qemu_block_{op}_latency_seconds_bucket{{{SD}}}[{RATE}])))"
                        ),
                        &format!("{{{{instance}}}} {{{{vm}}}}/{{{{device}}}} · {op} p99"),
                    )
                })
                .collect();
            b.add(24, 8, timeseries(
                "QEMU device latency, 99th percentile",
                "99th percentile of read, write and flush latency at the QEMU device, from QEMU's \
                 block latency histograms. Empty unless kvmio-exporter runs with \
                 --qmp.latency-buckets (off by default: it changes QEMU's histogram state).",
                "s",
                quantiles,
            ));
        }
    }

    b.row("Write amplification");
    let amplification = format!(
        "sum by (instance, vm) (rate(kvmio_qemu_process_written_bytes_total{{{S}}}[{RATE}])) \
         / (sum by (instance, vm) (rate(kvmio_qemu_block_written_bytes_total{{{S}}}[{RATE}])) > 0)"
    );
    b.add(24, 8, timeseries(
        "Write amplification of the image formats",
        "Per VM: bytes the QEMU process wrote to storage (its image files, through QEMU's protocol \
         nodes; /proc/PID/io) per byte the guest wrote to its virtual disks. Above 1: qcow2 \
         metadata and cluster allocation. QEMU keeps no per-node request counters, so this is per \
         VM, not per disk. Exact under cache=none/directsync (O_DIRECT); with the host page cache \
         (writeback, writethrough, unsafe) a page rewritten before writeback counts once, so it \
         can read below 1.",
        "none",
        vec![target("A", amplification, "{{instance}} {{vm}}")],
    ));

    b.row("Images: thin provisioning and host page cache");
    b.add(8, 8, timeseries(
        "Image size: virtual vs allocated",
        "The disk's virtual size (what the guest sees) and the bytes its image file occupies on the \
         host. Allocated far below virtual is thin provisioning: the host can run out of space the \
         guest believes it has.",
        "bytes",
        vec![
            target(
                "A",
                format!("max by (instance, vm, device) (kvmio_qemu_image_virtual_size_bytes{{{SD}}})"),
                "{{instance}} {{vm}}/{{device}} · virtual",
            ),
            target(
                "B",
                format!("max by (instance, vm, device) (kvmio_qemu_image_allocated_bytes{{{SD}}})"),
                "{{instance}} {{vm}}/{{device}} · allocated",
            ),
        ],
    ));
    b.add(8, 8, timeseries(
        "Written extent: virtual disk vs image file",
        "Highest offset written so far, in the virtual disk (QEMU device) and in the image file \
         (QEMU protocol node). A qcow2 file grows as clusters are allocated, wherever the guest \
         writes; for raw both are the same.",
        "bytes",
        vec![
            target(
                "A",
                format!(
                    "max by (instance, vm, device) (kvmio_qemu_block_highest_written_offset_bytes{{{SD}}})"
                ),
                "{{instance}} {{vm}}/{{device}} · virtual disk",
            ),
            target(
                "B",
                format!(
                    "max by (instance, vm, device) (kvmio_qemu_node_highest_written_offset_bytes{{{SD}}} \
                     unless on (job, instance, vm, device, node) kvmio_qemu_block_info{{{SD}}})"
                ),
                "{{instance}} {{vm}}/{{device}} · image file",
            ),
        ],
    ));
    b.add(8, 8, timeseries(
        "Host page cache held by the image",
        "Bytes of each image file in the host page cache, and how many of them are dirty (written, \
         not yet on the device: lost if the host crashes). Large under cache=writeback, \
         writethrough and unsafe, which go through the host page cache: the data then sits in two \
         page caches, the guest's and the host's (KvmioDoubleCaching). Dirty bytes need Linux 6.5+ \
         (cachestat).",
        "bytes",
        vec![
            target(
                "A",
                format!("sum by (instance, vm, device) (kvmio_host_image_cached_bytes{{{SD}}})"),
                "{{instance}} {{vm}}/{{device}} · cached",
            ),
            target(
                "B",
                format!("sum by (instance, vm, device) (kvmio_host_image_dirty_bytes{{{SD}}})"),
                "{{instance}} {{vm}}/{{device}} · dirty",
            ),
        ],
    ));
    // What docs/seed-claims.md showed operators should watch: a fragmented thin image turns each
    // guest request into many host requests below QEMU (15.7 per 950 KiB write measured there).
    let host_requests = format!(
        "sum by (instance, host_device) (label_replace(\
         rate(kvmio_host_disk_reads_completed_total{{{J}}}[{RATE}]) \
         + rate(kvmio_host_disk_writes_completed_total{{{J}}}[{RATE}]), \
         \"host_device\", \"$1\", \"device\", \"(.+)\"))"
    );
    let qemu_requests = format!(
        "sum by (instance, host_device) ((\
         rate(kvmio_qemu_block_reads_completed_total{{{S}}}[{RATE}]) \
         + rate(kvmio_qemu_block_writes_completed_total{{{S}}}[{RATE}])) \
         * on (job, instance, vm, device) group_left (host_device) \
         max by (job, instance, vm, device, host_device) (kvmio_disk_layer_info{{{S}, host_device!=\"\"}}))"
    );
    b.add(24, 8, timeseries(
        "Host-device requests per QEMU request",
        "For each host device holding images: requests it completed per request the QEMU devices \
         of those images completed (reads and writes). About 1: requests pass through unchanged \
         (raw, preallocated or freshly written qcow2). Far above 1: the images split requests \
         below QEMU, as a fragmented thin qcow2 does at every 64 KiB cluster (the seed's \
         thin-provisioning claim, measured in docs/seed-claims.md: 15.7 host requests per guest \
         write), or other IO shares the device. Below 1: the host merged requests or served them \
         from its page cache (cache=writeback, writethrough, unsafe).",
        "none",
        vec![target(
            "A",
            format!("{host_requests} / on (instance, host_device) ({qemu_requests} > 0)"),
            "{{instance}} {{host_device}}",
        )],
    ));

    b.row("Exporter health");
    b.add(12, 6, timeseries(
        "QMP and guest agent reachable",
        "1 when kvmio-exporter's last scrape could query the VM's QMP monitor (qmp) or guest agent \
         (qga). 0: KvmioQmpDown / KvmioGuestAgentDown.",
        "bool_yes_no",
        vec![
            target("A", format!("max by (instance, vm) (kvmio_qmp_up{{{S}}})"), "{{instance}} {{vm}} · qmp"),
            target("B", format!("max by (instance, vm) (kvmio_qga_up{{{S}}})"), "{{instance}} {{vm}} · qga"),
        ],
    ));
    b.add(12, 6, timeseries(
        "Collector duration",
        "How long each of kvmio-exporter's collectors took in the last scrape. The whole scrape is \
         bounded by --scrape.timeout.",
        "s",
        vec![target(
            "A",
            format!("max by (instance, collector) (kvmio_collector_duration_seconds{{{J}}})"),
            "{{instance}} {{collector}}",
        )],
    ));

    let mut vars = host_variables();
    vars.push(query_variable(
        "vm",
        "VM",
        r#"label_values(kvmio_qemu_block_info{job=~"$job", instance=~"$instance"}, vm)"#,
    ));
    vars.push(query_variable(
        "device",
        "Device",
        r#"label_values(kvmio_qemu_block_info{job=~"$job", instance=~"$instance", vm=~"$vm"}, device)"#,
    ));
    dashboard(
        "kvmio-storage-layers",
        "kvmio / Storage layers",
        "Where a VM's IO goes: guest, QEMU device, QEMU protocol node (image file) and host device side by side, per host, VM and disk, with each disk's cache mode, schedulers and image state.",
        vars,
        b,
    )
}

/// "kvmio / Crash consistency": the latest matrix and losses over time.
pub fn crash_consistency() -> Value {
    let mut b = Board::default();
    let cell = "cache_mode, fault, sync, format, workload";
    let verdict = format!(
        "max by ({cell}) (2 * (kvmio_crashtest_violations{{{J}}} > bool 0) \
         + on (job, instance, {cell}) (kvmio_crashtest_violations{{{J}}} == bool 0) \
         * on (job, instance, {cell}) (kvmio_crashtest_lost_acked_writes{{{J}}} > bool 0))"
    );
    let verdict_colours = mapping(&VERDICT_COLOURS.map(|c| (c.value, c.verdict, c.grafana)));

    b.row("Latest run");
    b.add(6, 5, stat(
        "Newest result age",
        "Time since the newest crash-test run finished (kvmio-crashtest.timer runs it daily). KvmioCrashtestStale fires past kvmio:crashtest_max_age_seconds (36 h by default).",
        json!({"unit": "s", "thresholds": {"mode": "absolute", "steps": [
            {"color": "green", "value": null}, {"color": "orange", "value": 129600}]}}),
        ("value", "auto"),
        vec![target("A", format!("time() - max (kvmio_crashtest_last_run_timestamp_seconds{{{J}}})"), "age")],
    ));
    b.add(6, 5, stat(
        "Cells with a VIOLATION",
        "Cells (cache mode x fault x sync x format x workload) of the latest runs where acknowledged writes were lost or corrupted although the cache mode promises they survive. Anything above 0 is KvmioCrashtestViolation.",
        json!({"unit": "none", "thresholds": {"mode": "absolute", "steps": [
            {"color": "green", "value": null}, {"color": "red", "value": 1}]}}),
        ("background", "auto"),
        vec![target("A", format!("count (kvmio_crashtest_violations{{{J}}} > 0) or sum (kvmio_crashtest_violations{{{J}}} * 0)"), "cells")],
    ));
    b.add(12, 5, stat(
        "Acknowledged writes checked / lost",
        "Across all cells of the latest runs: acknowledged writes the crash test verified after the fault, and how many of them were lost (allowed where the cache mode promises nothing, a VIOLATION where it does).",
        json!({"unit": "short"}),
        ("none", "value_and_name"),
        vec![
            target("A", format!("sum (kvmio_crashtest_acked_writes{{{J}}})"), "acknowledged"),
            target("B", format!("sum (kvmio_crashtest_lost_acked_writes{{{J}}})"), "lost"),
        ],
    ));
    b.add(24, 10, table(
        "Verdict matrix: cache mode x fault / sync / format / workload",
        "The latest verdict of every cell: ok (nothing lost), loss-allowed (acknowledged writes lost \
         where the cache mode promises nothing, e.g. unsafe under power loss), VIOLATION (lost or \
         corrupted where survival was promised). With several hosts selected, each cell shows the \
         worst of them.",
        "none",
        vec![table_target(
            "A",
            format!("label_join({verdict}, \"cell\", \" / \", \"fault\", \"sync\", \"format\", \"workload\")"),
        )],
        json!([{"id": "groupingToMatrix", "options": {
            "columnField": "cell", "rowField": "cache_mode", "valueField": "Value", "emptyValue": "null"}}]),
        json!([
            {"matcher": {"id": "byRegexp", "options": "^(kill|power).*"},
             "properties": [
                {"id": "mappings", "value": verdict_colours},
                {"id": "custom.cellOptions", "value": {"type": "color-background", "mode": "basic"}}
             ]}
        ]),
    ));
    b.add(24, 10, table(
        "Cells of the latest runs",
        "Every cell of the latest run on each host: the verdict, iterations, acknowledged writes \
         verified, acknowledged writes lost (absent or damaged), corrupted records (damaged \
         acknowledged ones plus data nobody wrote: a VIOLATION under every mode) and iterations \
         with a VIOLATION.",
        "none",
        vec![
            table_target("A", format!("max by (instance, {cell}) (kvmio_crashtest_acked_writes{{{J}}})")),
            table_target("B", format!("max by (instance, {cell}) (kvmio_crashtest_lost_acked_writes{{{J}}})")),
            table_target("C", format!("max by (instance, {cell}) (kvmio_crashtest_violations{{{J}}})")),
            table_target("D", verdict.replace(&format!("max by ({cell})"), &format!("max by (instance, {cell})"))),
            table_target("E", format!("max by (instance, {cell}) (kvmio_crashtest_iterations{{{J}}})")),
            table_target("F", format!("max by (instance, {cell}) (kvmio_crashtest_corrupted_writes{{{J}}})")),
        ],
        json!([
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": true},
                "indexByName": {"instance": 0, "cache_mode": 1, "fault": 2, "sync": 3, "format": 4,
                                "workload": 5, "Value #D": 6, "Value #E": 7, "Value #A": 8, "Value #B": 9,
                                "Value #F": 10, "Value #C": 11},
                "renameByName": {"Value #A": "acknowledged", "Value #B": "lost", "Value #C": "violations",
                                 "Value #D": "verdict", "Value #E": "iterations", "Value #F": "corrupted"}
            }}
        ]),
        json!([
            {"matcher": {"id": "byName", "options": "verdict"},
             "properties": [
                {"id": "mappings", "value": verdict_colours},
                {"id": "custom.cellOptions", "value": {"type": "color-background", "mode": "basic"}}
             ]}
        ]),
    ));

    b.row("Over time");
    b.add(12, 8, timeseries(
        "Acknowledged writes lost",
        "Acknowledged writes lost per cell, as each run reported them: a step at every run. Under \
         unsafe and power loss losses are expected; anywhere a cache mode promises survival, a loss \
         is a VIOLATION.",
        "short",
        vec![target("A", format!("sum by (instance, {cell}) (kvmio_crashtest_lost_acked_writes{{{J}}})"),
                    "{{instance}} {{cache_mode}} {{fault}} {{sync}} {{format}} {{workload}}")],
    ));
    b.add(
        12,
        8,
        timeseries(
            "Share of acknowledged writes lost",
            "Lost / acknowledged per cell for each run.",
            "percentunit",
            vec![target(
                "A",
                format!(
                    "sum by (instance, {cell}) (kvmio_crashtest_lost_acked_writes{{{J}}}) \
             / (sum by (instance, {cell}) (kvmio_crashtest_acked_writes{{{J}}}) > 0)"
                ),
                "{{instance}} {{cache_mode}} {{fault}} {{sync}} {{format}} {{workload}}",
            )],
        ),
    );
    b.add(24, 8, timeseries(
        "Violations",
        "Iterations with a VIOLATION per cell, as each run reported them. Should be 0 everywhere.",
        "short",
        vec![target("A", format!("sum by (instance, {cell}) (kvmio_crashtest_violations{{{J}}})"),
                    "{{instance}} {{cache_mode}} {{fault}} {{sync}} {{format}} {{workload}}")],
    ));

    dashboard(
        "kvmio-crash-consistency",
        "kvmio / Crash consistency",
        "Which acknowledged writes survive a crash under each QEMU cache mode, as measured by kvmio-crashtest runs on each host.",
        host_variables(),
        b,
    )
}
