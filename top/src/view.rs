//! What is on the screen: the disks filtered and sorted, as rows of cells. The terminal UI
//! ([`crate::tui`]) and `--once` draw the same rows.

use std::cmp::Ordering;

use crate::cli::SortKey;
use crate::model::{DiskRates, Layer, LayerRow, Rates, C};

/// Sort order and VM filter, changed by keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewState {
    pub sort: SortKey,
    pub reverse: bool,
    /// Case-insensitive substring of the VM name; empty shows every VM.
    pub filter: String,
}

impl ViewState {
    /// Sorting by `key`: a new key starts in its natural order (names A-Z, figures largest
    /// first); the same key again reverses it.
    pub fn sort_by(&mut self, key: SortKey) {
        if self.sort == key {
            self.reverse = !self.reverse;
        } else {
            self.sort = key;
            self.reverse = false;
        }
    }

    pub fn describe(&self) -> String {
        let natural = if self.sort == SortKey::Name {
            "ascending"
        } else {
            "descending"
        };
        let order = if self.reverse {
            if natural == "ascending" {
                "descending"
            } else {
                "ascending"
            }
        } else {
            natural
        };
        format!("sort: {} {order}", self.sort.as_str())
    }
}

fn figure(key: SortKey, rates: Option<&Rates>) -> Option<f64> {
    let r = rates?;
    match key {
        SortKey::Name => None,
        SortKey::Iops => r.iops(),
        SortKey::Throughput => r.throughput(),
        SortKey::Latency => r.latency(),
        SortKey::Merges => r.merges(),
    }
}

/// The disks the filter keeps, in the state's order (disks without the figure last, by name).
pub fn arrange(mut disks: Vec<DiskRates>, state: &ViewState) -> Vec<DiskRates> {
    let needle = state.filter.to_lowercase();
    disks.retain(|d| d.id.vm.to_lowercase().contains(&needle));
    let by_name = |a: &DiskRates, b: &DiskRates| a.id.cmp(&b.id);
    disks.sort_by(|a, b| {
        let order = match state.sort {
            SortKey::Name => by_name(a, b),
            key => match (figure(key, a.primary()), figure(key, b.primary())) {
                (Some(x), Some(y)) => y.partial_cmp(&x).unwrap_or(Ordering::Equal),
                (Some(_), None) => return Ordering::Less,
                (None, Some(_)) => return Ordering::Greater,
                (None, None) => return by_name(a, b),
            },
        };
        let order = if state.reverse {
            order.reverse()
        } else {
            order
        };
        order.then_with(|| by_name(a, b))
    });
    disks
}

/// The table's columns.
pub const HEADER: [&str; 13] = [
    "VM", "LAYER", "NAME", "r/s", "w/s", "read/s", "write/s", "avg-rq", "lat-ms", "merged/s",
    "merge%", "flush/s", "CONFIG",
];

/// Columns aligned right (the figures).
pub fn numeric(column: usize) -> bool {
    (3..12).contains(&column)
}

/// `1234` -> `1.2k`; `-` when absent.
fn count(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) => scaled(v, 1000.0, ["", "k", "M", "G", "T"]),
    }
}

/// Bytes per second with binary prefixes: `8.0M`.
fn bytes(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) => scaled(v, 1024.0, ["B", "K", "M", "G", "T"]),
    }
}

fn scaled(mut v: f64, base: f64, units: [&str; 5]) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let mut unit = 0;
    while v.abs() >= base && unit < units.len() - 1 {
        v /= base;
        unit += 1;
    }
    if v.abs() >= 100.0 || (unit == 0 && v.fract() == 0.0) {
        format!("{v:.0}{}", units[unit])
    } else {
        format!("{v:.1}{}", units[unit])
    }
}

fn config(d: &DiskRates, layer: &LayerRow) -> String {
    let i = &d.info;
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
    match layer.layer {
        Layer::Guest => match (&i.guest_scheduler, &i.guest_write_cache) {
            (None, None) => "sched ?".into(),
            (s, Some(wc)) => format!("sched {}, {wc}", or(s)),
            (s, None) => format!("sched {}", or(s)),
        },
        Layer::Qemu => {
            let mut s = format!("cache {}", or(&i.cache_mode));
            if let Some(c) = i
                .configured_cache_mode
                .as_ref()
                .filter(|c| Some(*c) != i.cache_mode.as_ref())
            {
                s.push_str(&format!(" (configured {c})"));
            }
            if let Some(f) = &i.format {
                s.push_str(&format!(", {f}"));
            }
            if let Some(a) = &i.aio {
                s.push_str(&format!(", aio {a}"));
            }
            s
        }
        Layer::Protocol => {
            let mode = format!("storage {}", or(&i.storage_mode));
            match &i.image {
                Some(img) => format!("{mode}, {img}"),
                None => mode,
            }
        }
        Layer::Host => format!("sched {}", or(&i.host_scheduler)),
    }
}

/// The table's rows: four per disk (guest, qemu, protocol, host), the VM named on the first.
pub fn rows(disks: &[DiskRates]) -> Vec<[String; HEADER.len()]> {
    let mut out = Vec::new();
    for d in disks {
        for (i, l) in d.layers.iter().enumerate() {
            let r = l.rates.as_ref();
            let g = |c: C| r.and_then(|r| r.get(c));
            let vm = match (i, d.down) {
                (0, false) => d.id.vm.clone(),
                (0, true) => format!("{} (down)", d.id.vm),
                _ => String::new(),
            };
            out.push([
                vm,
                l.layer.as_str().to_owned(),
                l.name.clone(),
                count(g(C::Reads)),
                count(g(C::Writes)),
                bytes(g(C::ReadBytes)),
                bytes(g(C::WrittenBytes)),
                bytes(r.and_then(Rates::request_size)),
                r.and_then(Rates::latency)
                    .map_or("-".into(), |s| format!("{:.2}", s * 1000.0)),
                count(r.and_then(Rates::merges)),
                r.and_then(Rates::merge_ratio)
                    .map_or("-".into(), |m| format!("{:.0}", m * 100.0)),
                count(g(C::Flushes)),
                config(d, l),
            ]);
        }
    }
    out
}

/// The rows as aligned text (`--once`), header first.
pub fn text(rows: &[[String; HEADER.len()]]) -> String {
    let mut widths = HEADER.map(str::len);
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if numeric(i) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else if i == HEADER.len() - 1 {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&HEADER.map(str::to_owned));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DiskId, DiskInfo};

    fn disk(vm: &str, iops: f64) -> DiskRates {
        let mut r = Rates::default();
        r.0[C::Reads as usize] = Some(iops);
        r.0[C::Writes as usize] = Some(0.0);
        DiskRates {
            id: DiskId {
                vm: vm.into(),
                device: "d0".into(),
            },
            info: DiskInfo::default(),
            layers: vec![LayerRow {
                layer: Layer::Guest,
                name: "vda".into(),
                rates: Some(r),
            }],
            down: false,
        }
    }

    fn vms(d: &[DiskRates]) -> Vec<&str> {
        d.iter().map(|d| d.id.vm.as_str()).collect()
    }

    #[test]
    fn sort_and_filter() {
        let all = vec![disk("web", 5.0), disk("db", 50.0), disk("cache", 20.0)];
        let mut state = ViewState {
            sort: SortKey::Name,
            reverse: false,
            filter: String::new(),
        };
        assert_eq!(vms(&arrange(all.clone(), &state)), ["cache", "db", "web"]);
        state.sort_by(SortKey::Iops);
        assert_eq!(vms(&arrange(all.clone(), &state)), ["db", "cache", "web"]);
        state.sort_by(SortKey::Iops);
        assert_eq!(vms(&arrange(all.clone(), &state)), ["web", "cache", "db"]);
        assert_eq!(state.describe(), "sort: iops ascending");
        state.filter = "B".into();
        assert_eq!(vms(&arrange(all, &state)), ["web", "db"]);
    }

    #[test]
    fn figures() {
        assert_eq!(count(Some(1234.0)), "1.2k");
        assert_eq!(count(Some(7.0)), "7");
        assert_eq!(count(Some(0.5)), "0.5");
        assert_eq!(count(None), "-");
        assert_eq!(bytes(Some(8.0 * 1024.0 * 1024.0)), "8.0M");
        assert_eq!(bytes(Some(0.0)), "0");
        let t = text(&rows(&[disk("web", 5.0)]));
        assert!(t.starts_with("VM "), "{t}");
        assert!(t.contains("web  guest"), "{t}");
    }
}
