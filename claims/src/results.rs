//! The experiment's results as data: one row per (cache mode, layout, scheduler, workload),
//! written as `results.csv` and `results.json`; plots and the summary are made from these rows
//! only, so `kvmio-claims plot --from results.json` can redraw them without a VM.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::layers::Layers;

/// One measured phase. Flat, so that a CSV column is one figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub cache: String,
    pub layout: String,
    pub scheduler: String,
    pub workload: String,
    pub op: String,
    /// The guest program's own view.
    pub guest_seconds: f64,
    pub guest_bytes: u64,
    pub throughput_mib_s: f64,
    pub latency_mean_us: f64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    /// The layers below (reads or writes, whichever the workload did).
    pub guest_requests: f64,
    pub guest_merged: f64,
    pub guest_avg_request_kib: f64,
    pub guest_flushes: f64,
    pub qemu_requests: f64,
    pub qemu_merged: f64,
    pub qemu_avg_request_kib: f64,
    pub qemu_mean_latency_ms: f64,
    pub qemu_flushes: f64,
    pub host_requests: f64,
    pub host_merged: f64,
    pub host_avg_request_kib: f64,
    pub host_flushes: f64,
    pub host_cached_mib: f64,
}

/// The figures of a phase's direction.
pub fn row_figures(row: &mut Row, layers: &Layers, reads: bool) {
    let pick = |l: &crate::layers::Layer| if reads { l.read } else { l.write };
    let (g, q, h) = (pick(&layers.guest), pick(&layers.qemu), pick(&layers.host));
    row.guest_requests = g.requests;
    row.guest_merged = g.merged;
    row.guest_avg_request_kib = g.avg_request_kib();
    row.guest_flushes = layers.guest.flushes;
    row.qemu_requests = q.requests;
    row.qemu_merged = q.merged;
    row.qemu_avg_request_kib = q.avg_request_kib();
    row.qemu_mean_latency_ms = q.mean_latency_ms();
    row.qemu_flushes = layers.qemu.flushes;
    row.host_requests = h.requests;
    row.host_merged = h.merged;
    row.host_avg_request_kib = h.avg_request_kib();
    row.host_flushes = layers.host.flushes;
    row.host_cached_mib = layers.host_cached_bytes / (1 << 20) as f64;
}

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write CSV to {path}")]
    Csv {
        path: String,
        #[source]
        source: csv::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a results file")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `results.csv` and `results.json` into `dir`.
pub fn write(dir: &Path, rows: &[Row]) -> Result<(), ResultsError> {
    let csv_path = dir.join("results.csv");
    let shown = csv_path.display().to_string();
    let mut w = csv::Writer::from_path(&csv_path).map_err(|source| ResultsError::Csv {
        path: shown.clone(),
        source,
    })?;
    for row in rows {
        w.serialize(row).map_err(|source| ResultsError::Csv {
            path: shown.clone(),
            source,
        })?;
    }
    w.flush().map_err(|source| ResultsError::Write {
        path: shown.clone(),
        source,
    })?;
    let json_path = dir.join("results.json");
    let json = serde_json::to_vec_pretty(rows).expect("rows serialise");
    std::fs::write(&json_path, json).map_err(|source| ResultsError::Write {
        path: json_path.display().to_string(),
        source,
    })
}

/// The most rows a results file may hold (the full preset has a few hundred).
const MAX_ROWS: usize = 100_000;

/// The largest results file read back.
const MAX_BYTES: u64 = 64 << 20;

/// Reads `results.json` back (bounded: [`MAX_BYTES`], [`MAX_ROWS`] rows).
pub fn read(path: &Path) -> Result<Vec<Row>, ResultsError> {
    let shown = path.display().to_string();
    let read_err = |source| ResultsError::Read {
        path: shown.clone(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BYTES + 1).read_to_string(&mut text))
        .map_err(read_err)?;
    if text.len() as u64 > MAX_BYTES {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_BYTES} bytes"),
        )));
    }
    let rows: Vec<Row> = serde_json::from_str(&text).map_err(|source| ResultsError::Json {
        path: shown.clone(),
        source,
    })?;
    if rows.len() > MAX_ROWS {
        return Err(ResultsError::Read {
            path: shown,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("more than {MAX_ROWS} rows"),
            ),
        });
    }
    Ok(rows)
}
