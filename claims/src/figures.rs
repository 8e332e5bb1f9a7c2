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
fn distinct<'r>(
    rows: impl IntoIterator<Item = &'r Row>,
    f: impl Fn(&'r Row) -> &'r str,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        let v = f(r);
        if !out.iter().any(|o| o == v) {
            out.push(v.to_string());
        }
    }
    out
}

/// The value of a column a claim that does not vary it is read at: `preferred` if it was
/// measured, else the first one seen.
fn reference(rows: &[Row], column: impl Fn(&Row) -> &str, preferred: &str) -> String {
    let all = distinct(rows, column);
    if all.iter().any(|s| s == preferred) {
        preferred.into()
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

/// The rows one claim reads and the dimension its tables vary.
struct Claim<'a> {
    rows: Vec<&'a Row>,
    by: By,
}

impl Claim<'_> {
    /// The table of `value` (the figure of a row): its median per workload and series.
    fn table(
        &self,
        id: &'static str,
        title: String,
        unit: &'static str,
        value: fn(&Row) -> f64,
    ) -> Table {
        let groups = distinct(self.rows.iter().copied(), |r| &r.workload);
        let series = distinct(self.rows.iter().copied(), |r| self.by.of(r));
        let values = series
            .iter()
            .map(|s| {
                groups
                    .iter()
                    .map(|g| {
                        median(
                            self.rows
                                .iter()
                                .filter(|r| &r.workload == g && self.by.of(r) == s)
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
            series,
            values,
        }
    }
}

/// Every table, in claim order.
pub fn tables(rows: &[Row]) -> Vec<Table> {
    // A claim that is not about schedulers is read at the guest's default if it was measured;
    // one that is not about cache modes at `none` (no host page cache between QEMU and the
    // host device, so the host layer sees QEMU's requests).
    let sched = reference(rows, |r| &r.scheduler, "mq-deadline");
    let cache = reference(rows, |r| &r.cache, "none");
    let claim = |by, keep: &dyn Fn(&Row) -> bool| Claim {
        rows: rows.iter().filter(|r| keep(r)).collect(),
        by,
    };
    // Claim 1: the sequential workloads at the reference scheduler and cache mode, by layout.
    let c1 = claim(By::Layout, &|r| {
        r.scheduler == sched && r.cache == cache && r.workload.starts_with("seq-")
    });
    let at = format!("(cache={cache}, scheduler {sched})");
    // Claim 2: every scheduler at the reference cache mode (medians over layouts).
    let c2 = claim(By::Scheduler, &|r| r.cache == cache);
    // Claims 3 and 4: every cache mode at the reference scheduler (medians over layouts).
    let c34 = claim(By::Cache, &|r| r.scheduler == sched);
    let reads = claim(By::Cache, &|r| r.scheduler == sched && r.op == "read");
    vec![
        c1.table(
            "claim1-guest",
            format!("Average request size at the guest {at}"),
            "KiB",
            |r| r.guest_avg_request_kib,
        ),
        c1.table(
            "claim1-qemu",
            format!("Average request size at the QEMU device {at}"),
            "KiB",
            |r| r.qemu_avg_request_kib,
        ),
        c1.table(
            "claim1-host",
            format!("Average request size at the host device {at}"),
            "KiB",
            |r| r.host_avg_request_kib,
        ),
        c1.table(
            "claim1-split",
            format!("Host-device requests per guest request {at}"),
            "ratio",
            |r| ratio(r.host_requests, r.guest_requests),
        ),
        c2.table(
            "claim2-throughput",
            format!("Guest throughput by IO scheduler (cache={cache}, median over layouts)"),
            "MiB/s",
            |r| r.throughput_mib_s,
        ),
        c2.table(
            "claim2-merged",
            format!("Merges per completed request in the guest (cache={cache})"),
            "merges",
            |r| ratio(r.guest_merged, r.guest_requests),
        ),
        c2.table(
            "claim2-latency",
            format!("Guest p99 latency by IO scheduler (cache={cache})"),
            "ms",
            |r| r.latency_p99_us / 1e3,
        ),
        c34.table(
            "claim3-cached",
            format!("Image bytes in the host page cache after each workload (scheduler {sched})"),
            "MiB",
            |r| r.host_cached_mib,
        ),
        c34.table(
            "claim34-throughput",
            format!("Guest throughput by cache mode (scheduler {sched}, median over layouts)"),
            "MiB/s",
            |r| r.throughput_mib_s,
        ),
        reads.table(
            "claim34-host-reads",
            format!("Host-device bytes read per guest byte read (scheduler {sched})"),
            "ratio",
            |r| {
                ratio(
                    r.host_requests * r.host_avg_request_kib * 1024.0,
                    r.guest_bytes as f64,
                )
            },
        ),
    ]
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
