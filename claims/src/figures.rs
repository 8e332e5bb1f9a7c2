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

fn table(
    id: &'static str,
    title: String,
    unit: &'static str,
    rows: &[&Row],
    group: impl Fn(&Row) -> String,
    series: impl Fn(&Row) -> String,
    value: impl Fn(&Row) -> f64,
) -> Table {
    let mut groups: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        let (g, s) = (group(r), series(r));
        if !groups.contains(&g) {
            groups.push(g);
        }
        if !names.contains(&s) {
            names.push(s);
        }
    }
    let values = names
        .iter()
        .map(|s| {
            groups
                .iter()
                .map(|g| {
                    median(
                        rows.iter()
                            .filter(|r| &group(r) == g && &series(r) == s)
                            .map(|r| value(r))
                            .collect(),
                    )
                })
                .collect()
        })
        .collect();
    Table {
        id,
        title,
        unit,
        groups,
        series: names,
        values,
    }
}

/// Every table, in claim order.
pub fn tables(rows: &[Row]) -> Vec<Table> {
    let sched = reference_scheduler(rows);
    let cache = reference_cache(rows);
    let mut out = Vec::new();

    // Claim 1: request size at each layer, per layout, for the sequential workloads.
    let seq: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scheduler == sched && r.cache == cache && r.workload.starts_with("seq-"))
        .collect();
    for (id, layer, pick) in [
        (
            "claim1-guest",
            "guest",
            (|r: &Row| r.guest_avg_request_kib) as fn(&Row) -> f64,
        ),
        ("claim1-qemu", "QEMU device", |r: &Row| {
            r.qemu_avg_request_kib
        }),
        ("claim1-host", "host device", |r: &Row| {
            r.host_avg_request_kib
        }),
    ] {
        out.push(table(
            id,
            format!("Average request size at the {layer} (cache={cache}, scheduler {sched})"),
            "KiB",
            &seq,
            |r| r.workload.clone(),
            |r| r.layout.clone(),
            pick,
        ));
    }
    out.push(table(
        "claim1-split",
        format!("Host-device requests per guest request (cache={cache}, scheduler {sched})"),
        "ratio",
        &seq,
        |r| r.workload.clone(),
        |r| r.layout.clone(),
        |r| {
            if r.guest_requests > 0.0 {
                r.host_requests / r.guest_requests
            } else {
                f64::NAN
            }
        },
    ));

    // Claim 2: schedulers. Throughput and the guest's merges, per workload, over layouts.
    let at_cache: Vec<&Row> = rows.iter().filter(|r| r.cache == cache).collect();
    out.push(table(
        "claim2-throughput",
        format!("Guest throughput by IO scheduler (cache={cache}, median over layouts)"),
        "MiB/s",
        &at_cache,
        |r| r.workload.clone(),
        |r| r.scheduler.clone(),
        |r| r.throughput_mib_s,
    ));
    out.push(table(
        "claim2-merged",
        format!("Merges per completed request in the guest (cache={cache})"),
        "merges",
        &at_cache,
        |r| r.workload.clone(),
        |r| r.scheduler.clone(),
        |r| {
            if r.guest_requests > 0.0 {
                r.guest_merged / r.guest_requests
            } else {
                f64::NAN
            }
        },
    ));
    out.push(table(
        "claim2-latency",
        format!("Guest p99 latency by IO scheduler (cache={cache})"),
        "ms",
        &at_cache,
        |r| r.workload.clone(),
        |r| r.scheduler.clone(),
        |r| r.latency_p99_us / 1e3,
    ));

    // Claims 3 and 4: cache modes, at the reference scheduler, over layouts.
    let at_sched: Vec<&Row> = rows.iter().filter(|r| r.scheduler == sched).collect();
    out.push(table(
        "claim3-cached",
        format!("Image bytes in the host page cache after each workload (scheduler {sched})"),
        "MiB",
        &at_sched,
        |r| r.workload.clone(),
        |r| r.cache.clone(),
        |r| r.host_cached_mib,
    ));
    out.push(table(
        "claim34-throughput",
        format!("Guest throughput by cache mode (scheduler {sched}, median over layouts)"),
        "MiB/s",
        &at_sched,
        |r| r.workload.clone(),
        |r| r.cache.clone(),
        |r| r.throughput_mib_s,
    ));
    out.push(table(
        "claim34-host-reads",
        format!("Host-device bytes read per guest byte read (scheduler {sched})"),
        "ratio",
        &at_sched
            .iter()
            .copied()
            .filter(|r| r.op == "read")
            .collect::<Vec<_>>(),
        |r| r.workload.clone(),
        |r| r.cache.clone(),
        |r| {
            if r.guest_bytes > 0 {
                r.host_requests * r.host_avg_request_kib * 1024.0 / r.guest_bytes as f64
            } else {
                f64::NAN
            }
        },
    ));
    out
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
