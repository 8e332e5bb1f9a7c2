//! `/proc/diskstats` parser for every kernel field count.
//!
//! Each line is `major minor name` followed by N statistics (Documentation/admin-guide/iostats.rst):
//!
//! | N  | kernels          | statistics                                                        |
//! |----|------------------|-------------------------------------------------------------------|
//! | 4  | < 2.6.25, partitions only | reads, sectors read, writes, sectors written             |
//! | 11 | < 4.18           | reads, reads merged, sectors read, ms reading, writes, writes merged, sectors written, ms writing, IOs in progress, ms doing IO, weighted ms doing IO |
//! | 15 | 4.18 - 5.4       | + discards, discards merged, sectors discarded, ms discarding       |
//! | 17 | 5.5 +            | + flushes, ms flushing                                              |
//!
//! A longer line (a future kernel) is read as its known prefix; a line with another count below 11
//! is skipped. Sectors are always 512 bytes, whatever the device's sector size; times are in
//! milliseconds.

use std::fmt;

/// Bytes per diskstats sector (fixed by the kernel, independent of the logical block size).
pub const SECTOR_BYTES: u64 = 512;

/// One statistic of a diskstats line, in kernel order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Field {
    /// Reads completed successfully.
    ReadsCompleted = 0,
    /// Reads merged.
    ReadsMerged,
    /// Sectors read.
    SectorsRead,
    /// Milliseconds spent reading.
    ReadTimeMs,
    /// Writes completed.
    WritesCompleted,
    /// Writes merged.
    WritesMerged,
    /// Sectors written.
    SectorsWritten,
    /// Milliseconds spent writing.
    WriteTimeMs,
    /// I/Os currently in progress (a gauge).
    IoInProgress,
    /// Milliseconds spent doing I/Os.
    IoTimeMs,
    /// Weighted milliseconds spent doing I/Os.
    IoWeightedTimeMs,
    /// Discards completed (4.18+).
    DiscardsCompleted,
    /// Discards merged (4.18+).
    DiscardsMerged,
    /// Sectors discarded (4.18+).
    SectorsDiscarded,
    /// Milliseconds spent discarding (4.18+).
    DiscardTimeMs,
    /// Flush requests completed (5.5+).
    FlushesCompleted,
    /// Milliseconds spent flushing (5.5+).
    FlushTimeMs,
}

/// Number of statistics the newest known format has.
pub const MAX_FIELDS: usize = 17;

/// Where the 4 statistics of the pre-2.6.25 partition format go.
const LEGACY_PARTITION_FIELDS: [Field; 4] = [
    Field::ReadsCompleted,
    Field::SectorsRead,
    Field::WritesCompleted,
    Field::SectorsWritten,
];

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskStats {
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Kernel device name (`vda`, `vda1`, `dm-0`, `nvme0n1`).
    pub name: String,
    /// How many statistics the line had (4, 11, 15, 17, or more from a future kernel).
    pub stat_count: usize,
    values: [Option<u64>; MAX_FIELDS],
}

impl DiskStats {
    /// The value of a statistic, if this line's format has it.
    pub fn get(&self, field: Field) -> Option<u64> {
        self.values[field as usize]
    }
}

/// Why a line was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "diskstats line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// Parses one line (without its number; see [`parse_diskstats`]).
pub fn parse_line(line: &str) -> Result<DiskStats, String> {
    let mut it = line.split_ascii_whitespace();
    let major = it
        .next()
        .ok_or("empty line")?
        .parse()
        .map_err(|_| "bad major number")?;
    let minor = it
        .next()
        .ok_or("no minor number")?
        .parse()
        .map_err(|_| "bad minor number")?;
    let name = it.next().ok_or("no device name")?;
    let mut raw = [0u64; MAX_FIELDS];
    let mut count = 0usize;
    for tok in it {
        let v: u64 = tok
            .parse()
            .map_err(|_| format!("statistic {:?} is not an unsigned integer", tok))?;
        if count < MAX_FIELDS {
            raw[count] = v;
        }
        count += 1;
    }
    let mut values = [None; MAX_FIELDS];
    match count {
        4 => {
            for (field, v) in LEGACY_PARTITION_FIELDS.iter().zip(raw) {
                values[*field as usize] = Some(v);
            }
        }
        n if n >= 11 => {
            // Known formats are prefixes of each other: take the largest known one that fits.
            let known = if n >= 17 {
                17
            } else if n >= 15 {
                15
            } else {
                11
            };
            for (slot, v) in values.iter_mut().zip(raw).take(known) {
                *slot = Some(v);
            }
        }
        n => return Err(format!("{n} statistics (expected 4, 11, 15, 17 or more)")),
    }
    Ok(DiskStats {
        major,
        minor,
        name: name.to_owned(),
        stat_count: count,
        values,
    })
}

/// Parses a whole `/proc/diskstats`: the good lines, and why the others were skipped.
pub fn parse_diskstats(text: &str) -> (Vec<DiskStats>, Vec<ParseError>) {
    let mut disks = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(d) => disks.push(d),
            Err(reason) => errors.push(ParseError {
                line: i + 1,
                reason,
            }),
        }
    }
    (disks, errors)
}

/// How a statistic is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A count, exported as is.
    Count,
    /// Sectors, exported as bytes (x512).
    Sectors,
    /// Milliseconds, exported as seconds.
    Millis,
}

/// A statistic's export description.
#[derive(Debug, Clone, Copy)]
pub struct DiskMetric {
    /// Source statistic.
    pub field: Field,
    /// Metric name suffix shared by every layer (`kvmio_<layer>_disk_<suffix>`).
    pub suffix: &'static str,
    /// Counter (`true`) or gauge.
    pub counter: bool,
    /// Conversion to base units.
    pub unit: Unit,
    /// HELP text (without the layer's prefix).
    pub help: &'static str,
}

impl DiskMetric {
    /// The statistic in base units.
    pub fn convert(&self, raw: u64) -> f64 {
        match self.unit {
            Unit::Count => raw as f64,
            // x512 is exact in f64 (a power of two) and cannot overflow like u64 could.
            Unit::Sectors => raw as f64 * SECTOR_BYTES as f64,
            Unit::Millis => raw as f64 / 1000.0,
        }
    }
}

/// The exported statistics, in kernel order. Discards merged is not part of kvmio's metric
/// contract (issue 3) and is not exported.
pub const DISK_METRICS: &[DiskMetric] = &[
    DiskMetric {
        field: Field::ReadsCompleted,
        suffix: "reads_completed_total",
        counter: true,
        unit: Unit::Count,
        help: "Reads completed successfully.",
    },
    DiskMetric {
        field: Field::ReadsMerged,
        suffix: "reads_merged_total",
        counter: true,
        unit: Unit::Count,
        help: "Adjacent reads merged into one request.",
    },
    DiskMetric {
        field: Field::SectorsRead,
        suffix: "read_bytes_total",
        counter: true,
        unit: Unit::Sectors,
        help: "Bytes read.",
    },
    DiskMetric {
        field: Field::ReadTimeMs,
        suffix: "read_time_seconds_total",
        counter: true,
        unit: Unit::Millis,
        help: "Seconds spent by all reads.",
    },
    DiskMetric {
        field: Field::WritesCompleted,
        suffix: "writes_completed_total",
        counter: true,
        unit: Unit::Count,
        help: "Writes completed successfully.",
    },
    DiskMetric {
        field: Field::WritesMerged,
        suffix: "writes_merged_total",
        counter: true,
        unit: Unit::Count,
        help: "Adjacent writes merged into one request.",
    },
    DiskMetric {
        field: Field::SectorsWritten,
        suffix: "written_bytes_total",
        counter: true,
        unit: Unit::Sectors,
        help: "Bytes written.",
    },
    DiskMetric {
        field: Field::WriteTimeMs,
        suffix: "write_time_seconds_total",
        counter: true,
        unit: Unit::Millis,
        help: "Seconds spent by all writes.",
    },
    DiskMetric {
        field: Field::IoInProgress,
        suffix: "io_now",
        counter: false,
        unit: Unit::Count,
        help: "I/Os currently in progress.",
    },
    DiskMetric {
        field: Field::IoTimeMs,
        suffix: "io_time_seconds_total",
        counter: true,
        unit: Unit::Millis,
        help: "Seconds the device had I/O in progress.",
    },
    DiskMetric {
        field: Field::IoWeightedTimeMs,
        suffix: "io_time_weighted_seconds_total",
        counter: true,
        unit: Unit::Millis,
        help: "Seconds of I/O time weighted by the number of I/Os in progress.",
    },
    DiskMetric {
        field: Field::DiscardsCompleted,
        suffix: "discards_completed_total",
        counter: true,
        unit: Unit::Count,
        help: "Discards completed successfully.",
    },
    DiskMetric {
        field: Field::SectorsDiscarded,
        suffix: "discarded_bytes_total",
        counter: true,
        unit: Unit::Sectors,
        help: "Bytes discarded.",
    },
    DiskMetric {
        field: Field::DiscardTimeMs,
        suffix: "discard_time_seconds_total",
        counter: true,
        unit: Unit::Millis,
        help: "Seconds spent by all discards.",
    },
    DiskMetric {
        field: Field::FlushesCompleted,
        suffix: "flush_requests_total",
        counter: true,
        unit: Unit::Count,
        help: "Flush requests completed successfully.",
    },
    DiskMetric {
        field: Field::FlushTimeMs,
        suffix: "flush_requests_time_seconds_total",
        counter: true,
        unit: Unit::Millis,
        help: "Seconds spent by all flush requests.",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from this project's build machine (Linux 6.18), see tests/fixtures/README.md.
    const LINE_20: &str =
        " 254       0 vda 34396 7073 3139314 15140 9138 20288 3419496 5321 0 4076 20747 4155 60 407368 245 1212 39";

    fn truncated(fields: usize) -> String {
        LINE_20
            .split_ascii_whitespace()
            .take(fields)
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn twenty_fields() {
        let d = parse_line(LINE_20).unwrap();
        assert_eq!((d.major, d.minor, d.name.as_str()), (254, 0, "vda"));
        assert_eq!(d.stat_count, 17);
        assert_eq!(d.get(Field::ReadsCompleted), Some(34396));
        assert_eq!(d.get(Field::SectorsWritten), Some(3419496));
        assert_eq!(d.get(Field::IoInProgress), Some(0));
        assert_eq!(d.get(Field::SectorsDiscarded), Some(407368));
        assert_eq!(d.get(Field::FlushTimeMs), Some(39));
    }

    #[test]
    fn eighteen_and_fourteen_fields() {
        let d = parse_line(&truncated(18)).unwrap();
        assert_eq!(d.stat_count, 15);
        assert_eq!(d.get(Field::DiscardTimeMs), Some(245));
        assert_eq!(d.get(Field::FlushesCompleted), None);
        let d = parse_line(&truncated(14)).unwrap();
        assert_eq!(d.stat_count, 11);
        assert_eq!(d.get(Field::IoWeightedTimeMs), Some(20747));
        assert_eq!(d.get(Field::DiscardsCompleted), None);
    }

    #[test]
    fn legacy_partition_and_odd_counts() {
        // Pre-2.6.25 partition: reads, sectors read, writes, sectors written.
        let d = parse_line("   3    1 hda1 34396 3139314 9138 3419496").unwrap();
        assert_eq!(d.get(Field::ReadsCompleted), Some(34396));
        assert_eq!(d.get(Field::SectorsRead), Some(3139314));
        assert_eq!(d.get(Field::WritesCompleted), Some(9138));
        assert_eq!(d.get(Field::SectorsWritten), Some(3419496));
        assert_eq!(d.get(Field::ReadsMerged), None);
        assert_eq!(d.get(Field::ReadTimeMs), None);
        // A future kernel with more statistics: the known prefix is used.
        let d = parse_line(&format!("{LINE_20} 7 8")).unwrap();
        assert_eq!(d.stat_count, 19);
        assert_eq!(d.get(Field::FlushTimeMs), Some(39));
        // Between known formats: the shorter known prefix.
        let d = parse_line(&truncated(16)).unwrap();
        assert_eq!(d.get(Field::IoWeightedTimeMs), Some(20747));
        assert_eq!(d.get(Field::DiscardsCompleted), None);
        assert!(parse_line(&truncated(10)).is_err());
        assert!(parse_line("254 0 vda 1 2 x 4").is_err());
        assert!(parse_line("254 0").is_err());
        assert!(parse_line("254 0 vda 1 2 3 -4").is_err());
    }

    #[test]
    fn whole_file_reports_skipped_lines() {
        let text = format!("{LINE_20}\n\ngarbage\n{}\n", truncated(14));
        let (disks, errors) = parse_diskstats(&text);
        assert_eq!(disks.len(), 2);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 3);
    }

    #[test]
    fn units() {
        let m = DISK_METRICS
            .iter()
            .find(|m| m.suffix == "read_bytes_total")
            .unwrap();
        assert_eq!(m.convert(3), 1536.0);
        let m = DISK_METRICS
            .iter()
            .find(|m| m.suffix == "read_time_seconds_total")
            .unwrap();
        assert_eq!(m.convert(15140), 15.14);
        assert_eq!(DISK_METRICS.len(), 16);
    }
}
