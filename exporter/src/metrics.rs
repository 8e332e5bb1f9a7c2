//! A per-scrape metric builder on top of the `prometheus` crate's data model.
//!
//! Collectors do not register long-lived metric objects: every scrape builds a fresh [`Metrics`],
//! each collector adds samples to it, and [`Metrics::encode_text`] writes the text format
//! directly. It writes what `prometheus::TextEncoder` writes for the same families (a test
//! compares them byte for byte, [`Metrics::to_families`] gives the crate's model), except that
//! infinities are spelled `+Inf`/`-Inf` as the format requires; it skips building the protobuf
//! model first, which was a third of a 100-VM scrape's instructions (BENCHMARKS.md, "scrape").
//!
//! Why this file is longer than the others: the builder, its validation (names, conventions,
//! duplicates, histogram shape) and the encoder share one representation of a scrape, and
//! splitting them would expose it; its tests are a third of the file.
//!
//! What the builder guarantees, whatever the collectors feed it:
//! - families are sorted by name and series by label values, so output is deterministic;
//! - each family has one `# HELP` / `# TYPE` header;
//! - metric and label names follow the Prometheus rules and kvmio's conventions: the `kvmio_`
//!   prefix, `_total` only (and always) on counters, `_info` on info metrics; a violation is a
//!   programming error, and the sample is dropped and recorded in [`Metrics::rejected`];
//! - every label value goes through [`sanitize_label_value`] (control characters removed, length
//!   capped), because several of them (guest disk names, serials) come from the untrusted guest;
//! - a duplicate series (same name and label values) keeps its first value and is recorded in
//!   [`Metrics::rejected`] and [`Metrics::duplicates`], since Prometheus refuses a scrape with
//!   duplicate series. A duplicate is always a kvmio bug, never a property of the input (two
//!   VMs' labels are made distinct before anything is emitted, `vm::target`), so it is never
//!   silent: the scrape logs each one as an error and counts it in
//!   `kvmio_scrape_duplicate_series_total`, and with `--debug.fail-on-duplicate-series` (which
//!   every test that runs the binary sets, through `kvmio-test-support`) the scrape fails with
//!   HTTP 500 naming them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use prometheus::proto::{self, MetricFamily, MetricType};

/// Prefix of every metric this exporter emits.
pub const NAMESPACE_PREFIX: &str = "kvmio_";

/// Content type of the text exposition format 0.0.4, as sent by `GET /metrics`.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Hard cap on any label value's length in bytes, applied by the builder to every value.
///
/// Long enough for image file paths (which are joined on), short enough that a guest cannot
/// inflate the output. Guest-supplied values should be cut shorter with
/// [`sanitize_label_value`] and [`MAX_GUEST_LABEL_VALUE_BYTES`].
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// Recommended cap for label values that come from the guest (disk names, serials, ...).
pub const MAX_GUEST_LABEL_VALUE_BYTES: usize = 128;

/// Removes control characters (C0, DEL, C1: newlines, escapes, NULs...) and cuts the result to at
/// most `max_bytes` bytes on a character boundary. Borrows when nothing needs to change.
pub fn sanitize_label_value(value: &str, max_bytes: usize) -> Cow<'_, str> {
    // Fast path: printable ASCII (almost every value) has no control character.
    if value.len() <= max_bytes && value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Cow::Borrowed(value);
    }
    if value.len() <= max_bytes && !value.chars().any(char::is_control) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len().min(max_bytes));
    for c in value.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// The metric types the builder produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter; the name must end in `_total`.
    Counter,
    /// Gauge; info metrics are gauges with value 1 whose name ends in `_info`.
    Gauge,
    /// Histogram with explicit cumulative buckets, count and sum.
    Histogram,
}

impl Kind {
    fn proto(self) -> MetricType {
        match self {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
            Kind::Histogram => MetricType::HISTOGRAM,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Scalar(f64),
    Histogram {
        /// (upper bound, cumulative count), strictly increasing bounds.
        buckets: Vec<(f64, u64)>,
        count: u64,
        sum: f64,
    },
}

#[derive(Debug, Clone)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    label_names: Vec<String>,
    /// Keyed by the sanitised label values in `label_names` order, joined with NUL: one
    /// allocation per series, and since no sanitised value contains a control character, the
    /// joined keys sort exactly like the tuples of values.
    series: SeriesMap,
}

/// A family's series, sorted by key, without duplicates. Collectors add series mostly in
/// ascending order (VMs by name, disks by name), which costs one comparison (an append); a key
/// out of order is inserted at its place.
#[derive(Debug, Clone, Default)]
struct SeriesMap {
    items: Vec<(String, Value)>,
}

impl SeriesMap {
    /// Inserts a new series; a key already present is handed back.
    fn insert(&mut self, key: String, value: Value) -> Result<(), String> {
        let ascending = self
            .items
            .last()
            .is_none_or(|(last, _)| last.as_str() < key.as_str());
        if ascending {
            self.items.push((key, value));
            return Ok(());
        }
        match self
            .items
            .binary_search_by(|(k, _)| k.as_str().cmp(key.as_str()))
        {
            Ok(_) => Err(key),
            Err(pos) => {
                self.items.insert(pos, (key, value));
                Ok(())
            }
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.items
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.items[i].1)
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.items.iter().map(|(k, v)| (k, v))
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// Separates label values in a series key.
const KEY_SEPARATOR: char = '\0';

/// The series key of label values (see [`Family::series`]).
fn series_key(labels: Labels<'_>) -> String {
    let mut key = String::with_capacity(labels.iter().map(|(_, v)| v.len() + 1).sum());
    for (i, (_, v)) in labels.iter().enumerate() {
        if i > 0 {
            key.push(KEY_SEPARATOR);
        }
        key.push_str(&sanitize_label_value(v, MAX_LABEL_VALUE_BYTES));
    }
    key
}

/// The label values of a series key, in order (`n` labels).
fn key_values(key: &str, n: usize) -> impl Iterator<Item = &str> {
    // A family without labels has the empty key and no values. The separator is ASCII, so
    // splitting at its bytes splits at character boundaries.
    let mut rest = Some(key);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == KEY_SEPARATOR as u8) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
    .take(n)
}

/// Metrics of one scrape, built by the collectors and encoded once.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Family name -> position in `families` (the name order encoding follows).
    index: BTreeMap<String, usize>,
    families: Vec<Family>,
    /// The family of the previous sample: collectors add a family's series in a row.
    last: Option<usize>,
    rejected: Vec<String>,
    /// The rejections in `rejected` that were duplicate series.
    duplicates: Vec<String>,
}

/// Label pairs as `(name, value)`; the names must be the same, in the same order, for every
/// series of a family.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Metrics {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a counter sample. `name` must start with `kvmio_` and end in `_total`.
    pub fn counter(&mut self, name: &str, help: &str, labels: Labels<'_>, value: f64) {
        self.add(name, help, Kind::Counter, labels, Value::Scalar(value));
    }

    /// Adds a gauge sample. `name` must start with `kvmio_` and must not end in `_total`.
    pub fn gauge(&mut self, name: &str, help: &str, labels: Labels<'_>, value: f64) {
        self.add(name, help, Kind::Gauge, labels, Value::Scalar(value));
    }

    /// Adds an info metric: a gauge of value 1 carrying its information in labels. `name` must
    /// end in `_info`.
    pub fn info(&mut self, name: &str, help: &str, labels: Labels<'_>) {
        if !name.ends_with("_info") {
            self.reject(format!("{name}: info metric names must end in _info"));
            return;
        }
        self.add(name, help, Kind::Gauge, labels, Value::Scalar(1.0));
    }

    /// Adds a histogram sample. `buckets` are `(upper bound, cumulative count)` with strictly
    /// increasing finite bounds and non-decreasing counts (the `+Inf` bucket is implied by `count`
    /// and may be omitted); `count` is the number of observations and `sum` their sum, in the
    /// metric's base unit.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: Labels<'_>,
        buckets: &[(f64, u64)],
        count: u64,
        sum: f64,
    ) {
        let mut cleaned = Vec::with_capacity(buckets.len());
        for &(bound, cumulative) in buckets {
            if bound == f64::INFINITY {
                if cumulative != count {
                    self.reject(format!("{name}: +Inf bucket {cumulative} != count {count}"));
                    return;
                }
                continue;
            }
            if !bound.is_finite() {
                self.reject(format!("{name}: bucket bound {bound} is not finite"));
                return;
            }
            if let Some(&(prev_bound, prev_count)) = cleaned.last() {
                if bound <= prev_bound || cumulative < prev_count {
                    self.reject(format!(
                        "{name}: buckets must have increasing bounds and cumulative counts"
                    ));
                    return;
                }
            }
            if cumulative > count {
                self.reject(format!("{name}: bucket count {cumulative} > count {count}"));
                return;
            }
            cleaned.push((bound, cumulative));
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if name.ends_with(suffix) {
                self.reject(format!("{name}: histogram names must not end in {suffix}"));
                return;
            }
        }
        if labels.iter().any(|(n, _)| *n == "le") {
            self.reject(format!("{name}: histograms cannot have an `le` label"));
            return;
        }
        let value = Value::Histogram {
            buckets: cleaned,
            count,
            sum,
        };
        self.add(name, help, Kind::Histogram, labels, value);
    }

    /// Moves every series of `other` into `self` (same checks as adding them one by one).
    pub fn merge(&mut self, other: Metrics) {
        self.rejected.extend(other.rejected);
        self.duplicates.extend(other.duplicates);
        for fam in other.families {
            let Some(&i) = self.index.get(&fam.name) else {
                self.index.insert(fam.name.clone(), self.families.len());
                self.families.push(fam);
                continue;
            };
            let mine = &mut self.families[i];
            if mine.kind != fam.kind || mine.label_names != fam.label_names {
                self.rejected.push(format!(
                    "{}: merged family has another type or other label names",
                    fam.name
                ));
                continue;
            }
            for (key, value) in fam.series.items {
                if let Err(dup) = mine.series.insert(key, value) {
                    let why = format!(
                        "{}: duplicate series {:?}",
                        fam.name,
                        key_values(&dup, mine.label_names.len()).collect::<Vec<_>>()
                    );
                    self.rejected.push(why.clone());
                    self.duplicates.push(why);
                }
            }
        }
    }

    /// Samples that were dropped, with the reason (bad names, duplicates, inconsistent labels).
    /// Empty in a correct exporter; the scrape logs them.
    pub fn rejected(&self) -> &[String] {
        &self.rejected
    }

    /// The duplicate series among [`Self::rejected`]: each one a kvmio bug (see the module doc).
    pub fn duplicates(&self) -> &[String] {
        &self.duplicates
    }

    /// Forgets the rejections recorded so far (after the caller has reported them).
    pub fn clear_rejected(&mut self) {
        self.rejected.clear();
        self.duplicates.clear();
    }

    /// Number of families with at least one series.
    pub fn family_count(&self) -> usize {
        self.families.len()
    }

    /// The families in name order.
    fn sorted_families(&self) -> impl Iterator<Item = (&String, &Family)> {
        self.index
            .iter()
            .map(|(name, &i)| (name, &self.families[i]))
    }

    /// Whether a family of that name has been added.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The scalar value of one series (counter or gauge), for tests and cross-collector checks.
    pub fn value(&self, name: &str, labels: Labels<'_>) -> Option<f64> {
        let fam = &self.families[*self.index.get(name)?];
        if fam.label_names.len() != labels.len()
            || fam.label_names.iter().zip(labels).any(|(a, (b, _))| a != b)
        {
            return None;
        }
        match fam.series.get(&series_key(labels))? {
            Value::Scalar(v) => Some(*v),
            Value::Histogram { .. } => None,
        }
    }

    /// Builds the `prometheus` crate's protobuf-model families, sorted by name.
    pub fn to_families(&self) -> Vec<MetricFamily> {
        self.sorted_families()
            .map(|(name, fam)| {
                let mut mf = MetricFamily::default();
                mf.set_name(name.clone());
                mf.set_help(fam.help.clone());
                mf.set_field_type(fam.kind.proto());
                let metrics = fam
                    .series
                    .iter()
                    .map(|(values, value)| {
                        let labels = fam
                            .label_names
                            .iter()
                            .zip(key_values(values, fam.label_names.len()))
                            .map(|(n, v)| {
                                let mut lp = proto::LabelPair::default();
                                lp.set_name(n.clone());
                                lp.set_value(v.to_owned());
                                lp
                            })
                            .collect();
                        let mut m = proto::Metric::default();
                        m.set_label(labels);
                        match (fam.kind, value) {
                            (Kind::Counter, Value::Scalar(v)) => {
                                let mut c = proto::Counter::default();
                                c.set_value(*v);
                                m.set_counter(c);
                            }
                            (Kind::Gauge, Value::Scalar(v)) => {
                                let mut g = proto::Gauge::default();
                                g.set_value(*v);
                                m.set_gauge(g);
                            }
                            (
                                _,
                                Value::Histogram {
                                    buckets,
                                    count,
                                    sum,
                                },
                            ) => {
                                let mut h = proto::Histogram::default();
                                h.set_sample_count(*count);
                                h.set_sample_sum(*sum);
                                h.set_bucket(
                                    buckets
                                        .iter()
                                        .map(|&(bound, cumulative)| {
                                            let mut b = proto::Bucket::default();
                                            b.set_upper_bound(bound);
                                            b.set_cumulative_count(cumulative);
                                            b
                                        })
                                        .collect(),
                                );
                                m.set_histogram(h);
                            }
                            // `add` only stores scalars for counters/gauges and histograms for
                            // histograms.
                            (Kind::Histogram, Value::Scalar(_)) => unreachable!(),
                        }
                        m
                    })
                    .collect();
                mf.set_metric(metrics);
                mf
            })
            .collect()
    }

    /// Renders the text exposition format 0.0.4, byte for byte what `prometheus::TextEncoder`
    /// writes for [`Self::to_families`] (a test checks it), without building the protobuf model:
    /// a scrape of a hundred VMs has tens of thousands of series.
    pub fn encode_text(&self) -> String {
        let mut out = String::with_capacity(self.size_hint());
        for (name, fam) in self.sorted_families() {
            out.push_str("# HELP ");
            out.push_str(name);
            out.push(' ');
            escape_into(&mut out, &fam.help, false);
            out.push_str("\n# TYPE ");
            out.push_str(name);
            out.push_str(match fam.kind {
                Kind::Counter => " counter\n",
                Kind::Gauge => " gauge\n",
                Kind::Histogram => " histogram\n",
            });
            for (key, value) in fam.series.iter() {
                match value {
                    Value::Scalar(v) => write_sample(&mut out, name, "", fam, key, None, *v),
                    Value::Histogram {
                        buckets,
                        count,
                        sum,
                    } => {
                        let mut bound_text = String::new();
                        for &(bound, cumulative) in buckets {
                            bound_text.clear();
                            push_f64(&mut bound_text, bound);
                            let le = Some(bound_text.as_str());
                            write_sample(
                                &mut out,
                                name,
                                "_bucket",
                                fam,
                                key,
                                le,
                                cumulative as f64,
                            );
                        }
                        let inf = Some("+Inf");
                        write_sample(&mut out, name, "_bucket", fam, key, inf, *count as f64);
                        write_sample(&mut out, name, "_sum", fam, key, None, *sum);
                        write_sample(&mut out, name, "_count", fam, key, None, *count as f64);
                    }
                }
            }
        }
        out
    }

    /// A guess at the encoded size, to allocate the output once.
    fn size_hint(&self) -> usize {
        self.families
            .iter()
            .map(|fam| {
                let name = &fam.name;
                let per_series = name.len()
                    + 16
                    + fam.label_names.iter().map(|n| n.len() + 4).sum::<usize>()
                    + fam.series.items.first().map_or(0, |(k, _)| k.len());
                let samples = match fam.kind {
                    Kind::Histogram => fam
                        .series
                        .items
                        .iter()
                        .map(|(_, v)| match v {
                            Value::Histogram { buckets, .. } => buckets.len() + 3,
                            Value::Scalar(_) => 1,
                        })
                        .sum(),
                    _ => fam.series.len(),
                };
                2 * name.len() + fam.help.len() + 32 + per_series * samples
            })
            .sum()
    }

    fn reject(&mut self, why: String) {
        tracing::debug!("metric sample rejected: {why}");
        self.rejected.push(why);
    }

    fn add(&mut self, name: &str, help: &str, kind: Kind, labels: Labels<'_>, value: Value) {
        // The common case: a family seen before (its name, help and label names were checked
        // when it was created): only consistency is checked, and no name is allocated.
        let known = match self.last {
            Some(i) if self.families[i].name == name => Some(i),
            _ => self.index.get(name).copied(),
        };
        if let Some(i) = known {
            self.last = Some(i);
            let fam = &mut self.families[i];
            let why = if fam.kind != kind {
                Some(format!(
                    "{name}: added as {kind:?}, already a {:?}",
                    fam.kind
                ))
            } else if fam.label_names.len() != labels.len()
                || fam.label_names.iter().zip(labels).any(|(a, (b, _))| a != b)
            {
                Some(format!(
                    "{name}: label names {:?} differ from the family's {:?}",
                    labels.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
                    fam.label_names
                ))
            } else {
                match fam.series.insert(series_key(labels), value) {
                    Ok(()) => None,
                    Err(dup) => {
                        let why = format!(
                            "{name}: duplicate series {:?}",
                            key_values(&dup, labels.len()).collect::<Vec<_>>()
                        );
                        self.duplicates.push(why.clone());
                        Some(why)
                    }
                }
            };
            if let Some(why) = why {
                self.reject(why);
            }
            return;
        }
        if let Err(why) = check_metric_name(name, kind) {
            self.reject(format!("{name}: {why}"));
            return;
        }
        if help.is_empty() {
            self.reject(format!("{name}: empty help text"));
            return;
        }
        for (i, (label, _)) in labels.iter().enumerate() {
            if !is_valid_label_name(label) {
                self.reject(format!("{name}: invalid label name {label:?}"));
                return;
            }
            if labels[..i].iter().any(|(other, _)| other == label) {
                self.reject(format!("{name}: label {label:?} given twice"));
                return;
            }
        }
        let mut series = SeriesMap::default();
        let _ = series.insert(series_key(labels), value);
        self.last = Some(self.families.len());
        self.index.insert(name.to_owned(), self.families.len());
        self.families.push(Family {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            label_names: labels.iter().map(|(n, _)| (*n).to_owned()).collect(),
            series,
        });
    }
}

/// One sample line: `name[suffix]{labels[,le="…"]} value`.
fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    fam: &Family,
    key: &str,
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !fam.label_names.is_empty() || le.is_some() {
        let mut sep = '{';
        for (label, v) in fam
            .label_names
            .iter()
            .zip(key_values(key, fam.label_names.len()))
        {
            out.push(sep);
            out.push_str(label);
            out.push_str("=\"");
            escape_into(out, v, true);
            out.push('"');
            sep = ',';
        }
        if let Some(le) = le {
            out.push(sep);
            out.push_str("le=\"");
            out.push_str(le);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    push_f64(out, value);
    out.push('\n');
}

/// Escapes `\\` and newline (and `"` in label values) as the text format wants.
fn escape_into(out: &mut String, s: &str, quote: bool) {
    if !s
        .bytes()
        .any(|b| b == b'\\' || b == b'\n' || (quote && b == b'"'))
    {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Appends `v` as Rust's `Display` (which the prometheus crate uses) writes it, with a fast
/// path for whole numbers, most samples.
fn push_f64(out: &mut String, v: f64) {
    // The text format spells the special values +Inf, -Inf and NaN (Rust writes inf and NaN).
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    if v.fract() == 0.0 && v.abs() < 1e15 && !(v == 0.0 && v.is_sign_negative()) {
        let mut n = v as i64;
        if n < 0 {
            out.push('-');
            n = -n;
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend(digits[i..].iter().map(|&d| char::from(d)));
        return;
    }
    use std::fmt::Write as _;
    let _ = write!(out, "{v}");
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode_text())
    }
}

/// Checks a metric name against the Prometheus grammar and kvmio's conventions.
pub fn check_metric_name(name: &str, kind: Kind) -> Result<(), &'static str> {
    if !name.starts_with(NAMESPACE_PREFIX) {
        return Err("metric names must start with kvmio_");
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        return Err("metric names must match [a-zA-Z_:][a-zA-Z0-9_:]*");
    }
    match (kind, name.ends_with("_total")) {
        (Kind::Counter, false) => Err("counter names must end in _total"),
        (Kind::Gauge | Kind::Histogram, true) => Err("only counters may end in _total"),
        _ => Ok(()),
    }
}

/// Label names: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with the reserved `__`.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_controls_and_caps_on_char_boundary() {
        assert!(matches!(
            sanitize_label_value("vda", 128),
            Cow::Borrowed("vda")
        ));
        assert_eq!(
            sanitize_label_value("v\nd\x1b[31ma\0\u{85}", 128),
            "vd[31ma"
        );
        // 'é' is 2 bytes: a cap of 4 must not split it.
        assert_eq!(sanitize_label_value("abcé", 4), "abc");
        assert_eq!(sanitize_label_value(&"x".repeat(1000), 128).len(), 128);
    }

    #[test]
    fn families_sorted_headers_once_series_sorted() {
        let mut m = Metrics::new();
        m.gauge("kvmio_b", "B.", &[("device", "vdb")], 2.0);
        m.counter("kvmio_a_total", "A.", &[("device", "x")], 1.0);
        m.gauge("kvmio_b", "B.", &[("device", "vda")], 1.5);
        m.info("kvmio_c_info", "C.", &[("k", "v\"q\\")]);
        assert!(m.rejected().is_empty(), "{:?}", m.rejected());
        let text = m.encode_text();
        assert_eq!(
            text,
            "# HELP kvmio_a_total A.\n# TYPE kvmio_a_total counter\nkvmio_a_total{device=\"x\"} 1\n\
             # HELP kvmio_b B.\n# TYPE kvmio_b gauge\nkvmio_b{device=\"vda\"} 1.5\nkvmio_b{device=\"vdb\"} 2\n\
             # HELP kvmio_c_info C.\n# TYPE kvmio_c_info gauge\nkvmio_c_info{k=\"v\\\"q\\\\\"} 1\n"
        );
    }

    #[test]
    fn naming_rules_enforced() {
        let mut m = Metrics::new();
        m.counter("kvmio_reads", "x", &[], 1.0); // counter without _total
        m.gauge("kvmio_reads_total", "x", &[], 1.0); // gauge with _total
        m.gauge("node_reads", "x", &[], 1.0); // wrong prefix
        m.gauge("kvmio_bad-name", "x", &[], 1.0);
        m.gauge("kvmio_ok", "x", &[("__reserved", "v")], 1.0);
        m.gauge("kvmio_ok", "x", &[("a", "v"), ("a", "w")], 1.0);
        m.info("kvmio_thing", "x", &[]);
        m.gauge("kvmio_nohelp", "", &[], 1.0);
        assert_eq!(m.rejected().len(), 8, "{:?}", m.rejected());
        assert_eq!(m.family_count(), 0);
    }

    #[test]
    fn duplicates_and_inconsistent_labels_rejected() {
        let mut m = Metrics::new();
        m.gauge("kvmio_g", "G.", &[("vm", "a")], 1.0);
        m.gauge("kvmio_g", "G.", &[("vm", "a")], 2.0);
        m.gauge("kvmio_g", "G.", &[("disk", "a")], 3.0);
        m.counter("kvmio_g", "G.", &[("vm", "b")], 3.0);
        assert_eq!(m.rejected().len(), 3);
        assert_eq!(m.value("kvmio_g", &[("vm", "a")]), Some(1.0));
        // Two guest values that sanitise to the same string are one series.
        m.gauge("kvmio_g", "G.", &[("vm", "b\n")], 1.0);
        m.gauge("kvmio_g", "G.", &[("vm", "b")], 1.0);
        assert_eq!(m.rejected().len(), 4);
        assert_eq!(m.duplicates().len(), 2, "{:?}", m.duplicates());
    }

    #[test]
    fn histogram_encoding() {
        let mut m = Metrics::new();
        m.histogram(
            "kvmio_lat_seconds",
            "Latency.",
            &[("vm", "a")],
            &[(0.001, 3), (0.01, 5)],
            7,
            0.5,
        );
        assert!(m.rejected().is_empty(), "{:?}", m.rejected());
        assert_eq!(
            m.encode_text(),
            "# HELP kvmio_lat_seconds Latency.\n# TYPE kvmio_lat_seconds histogram\n\
             kvmio_lat_seconds_bucket{vm=\"a\",le=\"0.001\"} 3\n\
             kvmio_lat_seconds_bucket{vm=\"a\",le=\"0.01\"} 5\n\
             kvmio_lat_seconds_bucket{vm=\"a\",le=\"+Inf\"} 7\n\
             kvmio_lat_seconds_sum{vm=\"a\"} 0.5\n\
             kvmio_lat_seconds_count{vm=\"a\"} 7\n"
        );
        let mut bad = Metrics::new();
        bad.histogram("kvmio_h", "H.", &[], &[(1.0, 3), (0.5, 4)], 4, 1.0);
        bad.histogram("kvmio_h", "H.", &[], &[(1.0, 5)], 4, 1.0);
        bad.histogram("kvmio_h", "H.", &[("le", "1")], &[], 0, 0.0);
        bad.histogram("kvmio_h_count", "H.", &[], &[], 0, 0.0);
        assert_eq!(bad.rejected().len(), 4);
    }

    /// The direct encoder writes what `prometheus::TextEncoder` writes for the same families.
    #[test]
    fn direct_encoding_matches_the_prometheus_text_encoder() {
        use prometheus::{Encoder, TextEncoder};
        let mut m = Metrics::new();
        for (i, v) in [
            0.0,
            -0.0,
            1.0,
            -3.0,
            74103.0,
            0.258,
            1e-9,
            123456789012345.0,
            1e15,
            3e21,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.15635585,
            -2.5,
        ]
        .into_iter()
        .enumerate()
        {
            let idx = i.to_string();
            m.gauge("kvmio_g", "A \\ help\nwith escapes.", &[("i", &idx)], v);
            m.counter(
                "kvmio_c_total",
                "C.",
                &[("i", &idx), ("p", "/a b/\"q\"\\x")],
                v.abs(),
            );
        }
        m.gauge("kvmio_nolabels", "N.", &[], 7.0);
        m.info("kvmio_x_info", "I.", &[("a", ""), ("b", "é,\"x")]);
        m.histogram(
            "kvmio_h_seconds",
            "H.",
            &[("vm", "a")],
            &[(0.0001, 1), (0.001, 3), (1.5, 3)],
            4,
            0.75,
        );
        m.histogram("kvmio_h2_seconds", "H2.", &[], &[(1e-5, 0)], 0, 0.0);
        assert!(m.rejected().is_empty(), "{:?}", m.rejected());
        let mut reference = Vec::new();
        TextEncoder::new()
            .encode(&m.to_families(), &mut reference)
            .unwrap();
        // Except for infinities: the prometheus crate writes Rust's `inf`, which the text
        // format does not allow (it wants `+Inf`, `-Inf`); kvmio writes the format's spelling.
        let reference = String::from_utf8(reference)
            .unwrap()
            .replace(" inf\n", " +Inf\n")
            .replace(" -inf\n", " -Inf\n");
        assert_eq!(m.encode_text(), reference);
    }

    #[test]
    fn merge_moves_series_and_reports_conflicts() {
        let mut a = Metrics::new();
        a.gauge("kvmio_g", "G.", &[("vm", "a")], 1.0);
        let mut b = Metrics::new();
        b.gauge("kvmio_g", "G.", &[("vm", "b")], 2.0);
        b.gauge("kvmio_g2", "G2.", &[], 2.0);
        let mut c = Metrics::new();
        c.gauge("kvmio_g", "G.", &[("vm", "a")], 9.0);
        a.merge(b);
        a.merge(c);
        assert_eq!(a.family_count(), 2);
        assert_eq!(a.value("kvmio_g", &[("vm", "b")]), Some(2.0));
        assert_eq!(a.value("kvmio_g", &[("vm", "a")]), Some(1.0));
        assert_eq!(a.rejected().len(), 1);
        assert_eq!(a.duplicates().len(), 1);
    }
}
