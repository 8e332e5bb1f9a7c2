//! The figures each claim is judged by, computed from the result rows: tables of medians
//! (over the dimensions a claim does not vary) that both the plots and the summary use.

use crate::results::Row;

/// A table: one value per (group, series); NaN where no row matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub id: &'static str,
    pub title: String,
    pub unit: &'static str,
    pub groups: Vec<String>,
    pub series: Vec<String>,
    /// `values[series][group]`.
    pub values: Vec<Vec<f64>>,
}

/// The median of `values` (NaN when empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Distinct values of a column, in first-seen order.
fn distinct(rows: &[Row], f: impl Fn(&Row) -> &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        let v = f(r);
        if !out.iter().any(|o| o == v) {
            out.push(v.to_string());
        }
    }
    out
}

/// The scheduler a claim that is not about schedulers is read at: the guest's default if it
/// was measured, else the first one.
fn reference_scheduler(rows: &[Row]) -> String {
    let all = distinct(rows, |r| &r.scheduler);
    if all.iter().any(|s| s == "mq-deadline") {
        "mq-deadline".into()
    } else {
        all.first().cloned().unwrap_or_default()
    }
}

/// The cache mode a claim that is not about cache modes is read at: `none` (no host page
/// cache between QEMU and the host device, so the host layer sees QEMU's requests).
fn reference_cache(rows: &[Row]) -> String {
    let all = distinct(rows, |r| &r.cache);
    if all.iter().any(|s| s == "none") {
        "none".into()
    } else {
        all.first().cloned().unwrap_or_default()
    }
}

/// What a table's series are: the one dimension a claim varies (its groups are the workloads).
#[derive(Debug, Clone, Copy)]
enum By {
    Layout,
    Scheduler,
    Cache,
}

impl By {
    fn of(self, r: &Row) -> &str {
        match self {
            By::Layout => &r.layout,
            By::Scheduler => &r.scheduler,
            By::Cache => &r.cache,
        }
    }
}

/// `num / den`, NaN (an empty cell) when nothing was counted.
fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        f64::NAN
    }
}

/// One table to make: the rows it reads, its series dimension and the figure of a row.
struct Spec<'a> {
    id: &'static str,
    title: String,
    unit: &'static str,
    rows: Vec<&'a Row>,
    by: By,
    value: fn(&Row) -> f64,
}

fn table(spec: Spec<'_>) -> Table {
    let groups = distinct_refs(&spec.rows, |r| &r.workload);
    let series = distinct_refs(&spec.rows, |r| spec.by.of(r));
    let values = series
        .iter()
        .map(|s| {
            groups
                .iter()
                .map(|g| {
                    median(
                        spec.rows
                            .iter()
                            .filter(|r| &r.workload == g && spec.by.of(r) == s)
                            .map(|r| (spec.value)(r))
                            .collect(),
                    )
                })
                .collect()
        })
        .collect();
    Table {
        id: spec.id,
        title: spec.title,
        unit: spec.unit,
        groups,
        series,
        values,
    }
}

fn distinct_refs<'r>(rows: &[&'r Row], f: impl Fn(&'r Row) -> &'r str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        let v = f(r);
        if !out.iter().any(|o| o == v) {
            out.push(v.to_string());
        }
    }
    out
}

/// Every table, in claim order.
pub fn tables(rows: &[Row]) -> Vec<Table> {
    let sched = reference_scheduler(rows);
    let cache = reference_cache(rows);
    let select = |keep: &dyn Fn(&Row) -> bool| rows.iter().filter(|r| keep(r)).collect::<Vec<_>>();
    // Claim 1: the sequential workloads at the reference scheduler and cache mode, by layout.
    let seq =
        || select(&|r| r.scheduler == sched && r.cache == cache && r.workload.starts_with("seq-"));
    // Claim 2: every scheduler at the reference cache mode (medians over layouts).
    let at_cache = || select(&|r| r.cache == cache);
    // Claims 3 and 4: every cache mode at the reference scheduler (medians over layouts).
    let at_sched = || select(&|r| r.scheduler == sched);
    let specs = vec![
        Spec {
            id: "claim1-guest",
            title: format!("Average request size at the guest (cache={cache}, scheduler {sched})"),
            unit: "KiB",
            rows: seq(),
            by: By::Layout,
            value: |r| r.guest_avg_request_kib,
        },
        Spec {
            id: "claim1-qemu",
            title: format!(
                "Average request size at the QEMU device (cache={cache}, scheduler {sched})"
            ),
            unit: "KiB",
            rows: seq(),
            by: By::Layout,
            value: |r| r.qemu_avg_request_kib,
        },
        Spec {
            id: "claim1-host",
            title: format!(
                "Average request size at the host device (cache={cache}, scheduler {sched})"
            ),
            unit: "KiB",
            rows: seq(),
            by: By::Layout,
            value: |r| r.host_avg_request_kib,
        },
        Spec {
            id: "claim1-split",
            title: format!(
                "Host-device requests per guest request (cache={cache}, scheduler {sched})"
            ),
            unit: "ratio",
            rows: seq(),
            by: By::Layout,
            value: |r| ratio(r.host_requests, r.guest_requests),
        },
        Spec {
            id: "claim2-throughput",
            title: format!("Guest throughput by IO scheduler (cache={cache}, median over layouts)"),
            unit: "MiB/s",
            rows: at_cache(),
            by: By::Scheduler,
            value: |r| r.throughput_mib_s,
        },
        Spec {
            id: "claim2-merged",
            title: format!("Merges per completed request in the guest (cache={cache})"),
            unit: "merges",
            rows: at_cache(),
            by: By::Scheduler,
            value: |r| ratio(r.guest_merged, r.guest_requests),
        },
        Spec {
            id: "claim2-latency",
            title: format!("Guest p99 latency by IO scheduler (cache={cache})"),
            unit: "ms",
            rows: at_cache(),
            by: By::Scheduler,
            value: |r| r.latency_p99_us / 1e3,
        },
        Spec {
            id: "claim3-cached",
            title: format!(
                "Image bytes in the host page cache after each workload (scheduler {sched})"
            ),
            unit: "MiB",
            rows: at_sched(),
            by: By::Cache,
            value: |r| r.host_cached_mib,
        },
        Spec {
            id: "claim34-throughput",
            title: format!(
                "Guest throughput by cache mode (scheduler {sched}, median over layouts)"
            ),
            unit: "MiB/s",
            rows: at_sched(),
            by: By::Cache,
            value: |r| r.throughput_mib_s,
        },
        Spec {
            id: "claim34-host-reads",
            title: format!("Host-device bytes read per guest byte read (scheduler {sched})"),
            unit: "ratio",
            rows: select(&|r| r.scheduler == sched && r.op == "read"),
            by: By::Cache,
            value: |r| {
                ratio(
                    r.host_requests * r.host_avg_request_kib * 1024.0,
                    r.guest_bytes as f64,
                )
            },
        },
    ];
    specs.into_iter().map(table).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cache: &str, layout: &str, sched: &str, workload: &str, v: f64) -> Row {
        Row {
            cache: cache.into(),
            layout: layout.into(),
            scheduler: sched.into(),
            workload: workload.into(),
            op: "write".into(),
            guest_seconds: 1.0,
            guest_bytes: 1,
            throughput_mib_s: v,
            latency_mean_us: 0.0,
            latency_p50_us: 0.0,
            latency_p99_us: 0.0,
            guest_requests: 10.0,
            guest_merged: 5.0,
            guest_avg_request_kib: v,
            guest_flushes: 0.0,
            qemu_requests: 10.0,
            qemu_merged: 0.0,
            qemu_avg_request_kib: v,
            qemu_mean_latency_ms: 0.0,
            qemu_flushes: 0.0,
            host_requests: 20.0,
            host_merged: 0.0,
            host_avg_request_kib: v / 2.0,
            host_flushes: 0.0,
            host_cached_mib: 0.0,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
        assert_eq!(median(vec![f64::NAN, 1.0]), 1.0);
    }

    #[test]
    fn tables_take_medians_over_the_other_dimensions() {
        let rows = vec![
            row("none", "raw-sparse", "none", "seq-write-buffered", 10.0),
            row("none", "qcow2-thin", "none", "seq-write-buffered", 30.0),
            row("none", "raw-sparse", "bfq", "seq-write-buffered", 5.0),
            row(
                "writeback",
                "raw-sparse",
                "none",
                "seq-write-buffered",
                100.0,
            ),
        ];
        let t = tables(&rows);
        let tp = t.iter().find(|t| t.id == "claim2-throughput").unwrap();
        assert_eq!(tp.series, ["none", "bfq"]);
        assert_eq!(tp.values[0][0], 20.0);
        assert_eq!(tp.values[1][0], 5.0);
        let split = t.iter().find(|t| t.id == "claim1-split").unwrap();
        assert_eq!(split.series, ["raw-sparse", "qcow2-thin"]);
        assert_eq!(split.values[0][0], 2.0);
        let by_cache = t.iter().find(|t| t.id == "claim34-throughput").unwrap();
        assert_eq!(by_cache.series, ["none", "writeback"]);
        assert_eq!(by_cache.values[1][0], 100.0);
    }
}
