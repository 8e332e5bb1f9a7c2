//! A strict parser of the Prometheus text exposition format (0.0.4), for re-serving files other
//! programs wrote (`kvmio-crashtest run --out DIR` writes `crashtest.prom`).
//!
//! Grammar (the format's documentation): `# HELP name docstring`, `# TYPE name
//! counter|gauge|histogram|summary|untyped`, other `#` lines are comments, blank lines are
//! ignored, and a sample is `name [{label="value",...}] value [timestamp]` with tokens separated
//! by blanks or tabs. Label values escape `\\`, `\"` and `\n`; docstrings `\\` and `\n`. A
//! family's `TYPE` must come before its samples and at most once, its lines must be one group,
//! and a series may appear once.
//!
//! A bad line is reported with its line number and skipped; the rest of the file is kept. The
//! caller decides what to do with the families.
//!
//! Why over 500 lines: about 450 are the parser, the rest its tests (a file's limits and
//! escapes), which read best beside the grammar they check.

use std::collections::{BTreeSet, HashMap, HashSet};

/// A family's declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl FamilyType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "counter" => FamilyType::Counter,
            "gauge" => FamilyType::Gauge,
            "histogram" => FamilyType::Histogram,
            "summary" => FamilyType::Summary,
            "untyped" => FamilyType::Untyped,
            _ => return None,
        })
    }
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (for histograms, with `_bucket`, `_sum` or `_count`).
    pub name: String,
    /// Labels in file order.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Milliseconds since the epoch, if given.
    pub timestamp_ms: Option<i64>,
}

/// A family: its `HELP`, `TYPE` and samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: Option<String>,
    pub kind: FamilyType,
    pub samples: Vec<Sample>,
}

/// A line that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub families: Vec<Family>,
    pub errors: Vec<LineError>,
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// The family a sample name belongs to, given the declared types.
fn family_of(name: &str, types: &HashMap<String, FamilyType>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            match types.get(base) {
                Some(FamilyType::Histogram) => return base.to_owned(),
                Some(FamilyType::Summary) if suffix != "_bucket" => return base.to_owned(),
                _ => {}
            }
        }
    }
    name.to_owned()
}

fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => {
            // Rust also accepts "inf", "infinity" and "nan" in any case; the format does not.
            if s.chars()
                .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
            {
                return None;
            }
            s.parse().ok()
        }
    }
}

/// Parses one sample line.
/// At most this many labels on one sample (kvmio's own results have 4): a bound, and it keeps
/// the duplicate-label check (a scan per label) linear in practice.
pub const MAX_LABELS_PER_SAMPLE: usize = 32;

/// At most this many families in one file (kvmio's own results have about 10): more are
/// reported, not kept.
pub const MAX_FAMILIES: usize = 1024;

const TOO_MANY_FAMILIES: &str = "more than 1024 families";

/// At most this many problems are reported; at the next one the rest of the file is not read.
/// A file past either bound is not kvmio-crashtest's: stopping there keeps the parse's time and
/// memory bounded by the bounds, not by the file (a 1 MiB file of 116,000 families kept the
/// exporter 5 s and 110 MiB per scrape while every refused line was reported).
pub const MAX_PROBLEMS: usize = 100;

fn parse_sample(line: &str) -> Result<Sample, String> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len()
        && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
    {
        i += 1;
    }
    let name = &line[..i];
    if !is_metric_name(name) {
        return Err(format!("invalid metric name {:?}", truncate(name)));
    }
    let skip_blanks = |i: &mut usize| {
        while *i < bytes.len() && (bytes[*i] == b' ' || bytes[*i] == b'\t') {
            *i += 1;
        }
    };
    skip_blanks(&mut i);
    let mut labels: Vec<(String, String)> = Vec::new();
    if i < bytes.len() && bytes[i] == b'{' {
        i += 1;
        loop {
            skip_blanks(&mut i);
            if i < bytes.len() && bytes[i] == b'}' {
                i += 1;
                break;
            }
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let lname = &line[start..i];
            if !is_label_name(lname) {
                return Err(format!("invalid label name {:?}", truncate(lname)));
            }
            if lname.starts_with("__") {
                return Err(format!("reserved label name {lname:?}"));
            }
            skip_blanks(&mut i);
            if i >= bytes.len() || bytes[i] != b'=' {
                return Err(format!("expected '=' after label {lname:?}"));
            }
            i += 1;
            skip_blanks(&mut i);
            if i >= bytes.len() || bytes[i] != b'"' {
                return Err(format!(
                    "expected '\"' to open the value of label {lname:?}"
                ));
            }
            i += 1;
            let mut value = String::new();
            let mut closed = false;
            let rest = &line[i..];
            let mut chars = rest.char_indices();
            while let Some((off, c)) = chars.next() {
                match c {
                    '"' => {
                        i += off + 1;
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => {
                            return Err(format!("invalid escape \\{other} in label {lname:?}"))
                        }
                        None => break,
                    },
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("unterminated value of label {lname:?}"));
            }
            if labels.iter().any(|(n, _)| n == lname) {
                return Err(format!("label {lname:?} given twice"));
            }
            if labels.len() >= MAX_LABELS_PER_SAMPLE {
                return Err(format!(
                    "more than {MAX_LABELS_PER_SAMPLE} labels on one sample"
                ));
            }
            labels.push((lname.to_owned(), value));
            skip_blanks(&mut i);
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err("expected ',' or '}' after a label".to_owned()),
            }
        }
    }
    let rest = line[i..].trim_matches(|c| c == ' ' || c == '\t');
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value_text = fields.next().ok_or("no value")?;
    let value = parse_value(value_text)
        .ok_or_else(|| format!("invalid value {:?}", truncate(value_text)))?;
    let timestamp_ms = match fields.next() {
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("invalid timestamp {:?}", truncate(t)))?,
        ),
        None => None,
    };
    if fields.next().is_some() {
        return Err("unexpected text after the timestamp".to_owned());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
        timestamp_ms,
    })
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Makes `family` the current group; a family may not start again once left.
fn enter(
    family: &str,
    current: &mut Option<String>,
    finished: &mut BTreeSet<String>,
) -> Result<(), String> {
    if current.as_deref() == Some(family) {
        return Ok(());
    }
    if finished.contains(family) {
        return Err(format!("{family}: lines of a family must be one group"));
    }
    if let Some(prev) = current.take() {
        finished.insert(prev);
    }
    *current = Some(family.to_owned());
    Ok(())
}

/// The families in order of appearance, at most [`MAX_FAMILIES`], and the same as a set
/// (membership in O(1): a file of many families must not make the parse quadratic).
#[derive(Debug, Default)]
struct FamilyOrder {
    order: Vec<String>,
    seen: HashSet<String>,
}

impl FamilyOrder {
    /// Notes `family`; false when it is new and there are [`MAX_FAMILIES`] already.
    fn note(&mut self, family: &str) -> bool {
        if self.seen.contains(family) {
            return true;
        }
        if self.order.len() >= MAX_FAMILIES {
            return false;
        }
        self.seen.insert(family.to_owned());
        self.order.push(family.to_owned());
        true
    }
}

/// Parses a whole file.
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    let mut types: HashMap<String, FamilyType> = HashMap::new();
    let mut helps: HashMap<String, String> = HashMap::new();
    let mut order = FamilyOrder::default();
    let mut samples: HashMap<String, Vec<Sample>> = HashMap::new();
    let mut series: BTreeSet<(String, Vec<(String, String)>)> = BTreeSet::new();
    // The family whose lines are being read; a family may not start again once left.
    let mut current: Option<String> = None;
    let mut finished: BTreeSet<String> = BTreeSet::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_matches(|c| c == ' ' || c == '\t');
        if trimmed.is_empty() {
            continue;
        }
        if out.errors.len() >= MAX_PROBLEMS {
            out.errors.push(LineError {
                line: line_no,
                reason: format!(
                    "more than {MAX_PROBLEMS} problems: the rest of the file is not read"
                ),
            });
            break;
        }
        let mut err = |reason: String| {
            out.errors.push(LineError {
                line: line_no,
                reason,
            })
        };
        if let Some(comment) = trimmed.strip_prefix('#') {
            let comment = comment.trim_start_matches([' ', '\t']);
            let mut parts = comment.splitn(3, [' ', '\t']);
            let keyword = parts.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" {
                continue;
            }
            let Some(name) = parts.next().filter(|n| is_metric_name(n)) else {
                err(format!("{keyword} without a valid metric name"));
                continue;
            };
            let arg = parts.next().unwrap_or("").trim_start_matches([' ', '\t']);
            if let Err(e) = enter(name, &mut current, &mut finished) {
                err(e);
                continue;
            }
            if keyword == "HELP" {
                if helps.contains_key(name) {
                    err(format!("second HELP for {name}"));
                    continue;
                }
                helps.insert(name.to_owned(), unescape_help(arg));
            } else {
                let Some(kind) = FamilyType::parse(arg.trim()) else {
                    err(format!("unknown type {:?} for {name}", truncate(arg)));
                    continue;
                };
                if types.contains_key(name) {
                    err(format!("second TYPE for {name}"));
                    continue;
                }
                if samples.contains_key(name) {
                    err(format!("TYPE for {name} after its samples"));
                    continue;
                }
                types.insert(name.to_owned(), kind);
            }
            if !order.note(name) {
                err(format!(
                    "{TOO_MANY_FAMILIES}: the rest of the file is not read"
                ));
                break;
            }
            continue;
        }
        let sample = match parse_sample(trimmed) {
            Ok(s) => s,
            Err(e) => {
                err(e);
                continue;
            }
        };
        let family = family_of(&sample.name, &types);
        if let Err(e) = enter(&family, &mut current, &mut finished) {
            err(e);
            continue;
        }
        let mut key_labels = sample.labels.clone();
        key_labels.sort();
        if !series.insert((sample.name.clone(), key_labels)) {
            err(format!("duplicate series of {}", sample.name));
            continue;
        }
        if !order.note(&family) {
            err(format!(
                "{TOO_MANY_FAMILIES}: the rest of the file is not read"
            ));
            break;
        }
        samples.entry(family).or_default().push(sample);
    }
    for name in order.order {
        let family_samples = samples.remove(&name).unwrap_or_default();
        out.families.push(Family {
            kind: types.get(&name).copied().unwrap_or(FamilyType::Untyped),
            help: helps.remove(&name),
            name,
            samples: family_samples,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile results file: many families, a sample with many labels, many bad lines: the
    /// parse stops at the bound, with the excess reported (this took the whole 8 s scrape
    /// before).
    #[test]
    fn many_families_labels_and_problems_are_bounded() {
        let mut text = String::new();
        for i in 0..100_000 {
            text.push_str(&format!("kvmio_crashtest_f{i} 1\n"));
        }
        let p = parse(&text);
        assert_eq!(p.families.len(), MAX_FAMILIES);
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].line, MAX_FAMILIES + 1);
        assert!(p.errors[0]
            .reason
            .contains("families: the rest of the file is not read"));

        let labels: Vec<String> = (0..100_000).map(|i| format!("l{i}=\"x\"")).collect();
        let p = parse(&format!("kvmio_crashtest_wide{{{}}} 1\n", labels.join(",")));
        assert!(p.families.is_empty());
        assert!(p.errors[0].reason.contains("labels"), "{:?}", p.errors);

        let p = parse(&"not a sample line\n".repeat(10_000));
        assert_eq!(p.errors.len(), MAX_PROBLEMS + 1);
        assert!(p.errors[MAX_PROBLEMS]
            .reason
            .contains("the rest of the file is not read"));
    }

    #[test]
    fn well_formed_file() {
        let text = "# A comment\n\
            # HELP kvmio_crashtest_violations Acked writes lost against the promise.\n\
            # TYPE kvmio_crashtest_violations gauge\n\
            kvmio_crashtest_violations{cache_mode=\"none\",fault=\"sigkill\",sync=\"fsync\",format=\"qcow2\"} 0\n\
            kvmio_crashtest_violations{ cache_mode = \"unsafe\" , fault=\"power\",sync=\"fsync\",format=\"raw\", } 12 1700000000000\n\
            \n\
            kvmio_crashtest_last_run_timestamp_seconds 1.7e9\n\
            # TYPE h histogram\n\
            h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
        let p = parse(text);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.families.len(), 3);
        let v = &p.families[0];
        assert_eq!(v.kind, FamilyType::Gauge);
        assert_eq!(
            v.help.as_deref(),
            Some("Acked writes lost against the promise.")
        );
        assert_eq!(v.samples.len(), 2);
        assert_eq!(
            v.samples[1].labels[0],
            ("cache_mode".into(), "unsafe".into())
        );
        assert_eq!(v.samples[1].value, 12.0);
        assert_eq!(v.samples[1].timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(p.families[1].kind, FamilyType::Untyped);
        assert_eq!(p.families[2].samples.len(), 4);
    }

    #[test]
    fn malformed_lines_are_reported_and_skipped() {
        let text = "kvmio_a{x=\"1\"} 1\n\
            kvmio_a{x=\"1\"} 2\n\
            kvmio_b{x=\"unterminated} 1\n\
            kvmio_b{1x=\"a\"} 1\n\
            kvmio_b{x=\"a\"\"} 1\n\
            kvmio_b 1 2 3\n\
            kvmio_b inf\n\
            kvmio_b{x=\"\\q\"} 1\n\
            kvmio_b{__x=\"a\"} 1\n\
            kvmio_b{x=\"a\",x=\"b\"} 1\n\
            # TYPE kvmio_c bogus\n\
            kvmio_c 1\n\
            # TYPE kvmio_c gauge\n\
            kvmio_a{x=\"2\"} 1\n\
            9bad 1\n\
            kvmio_d\n\
            kvmio_ok 1\n";
        let p = parse(text);
        let lines: Vec<usize> = p.errors.iter().map(|e| e.line).collect();
        assert_eq!(
            lines,
            vec![2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16],
            "{:?}",
            p.errors
        );
        let names: Vec<&str> = p.families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["kvmio_a", "kvmio_c", "kvmio_ok"]);
    }
}
