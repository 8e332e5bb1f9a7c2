//! `/metrics` in the text format, parsed into series (kvmio's own output: one sample a line,
//! escaped label values).
//!
//! A duplicate series is a test failure wherever it shows: every exporter these tests start
//! runs with `--debug.fail-on-duplicate-series` ([`crate::launch_exporter`]), so a scrape that
//! made one answers HTTP 500 naming them and [`scrape`] panics with that answer; and [`parse`]
//! panics on two samples of the same name and labels in any text it is given.

use std::collections::BTreeMap;
use std::time::Duration;

/// One sample: name, labels, value.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// `GET /metrics` from the exporter at `addr` (30 s at most); asserts a 200 answer.
pub fn scrape(addr: &str) -> String {
    let (status, body, _) = crate::http_get(addr, "/metrics", Duration::from_secs(30));
    assert_eq!(status, 200, "GET /metrics from {addr}: {body}");
    body
}

/// Parses the text format (kvmio's own output: one sample a line, escaped label values);
/// panics on a duplicate series ([`assert_no_duplicates`]).
pub fn parse(body: &str) -> Vec<Series> {
    let out = parse_samples(body);
    assert_no_duplicates(&out);
    out
}

/// Panics, naming them, if two samples have the same name and labels (Prometheus refuses such a
/// scrape; kvmio must never write one).
pub fn assert_no_duplicates(all: &[Series]) {
    let mut seen = std::collections::BTreeSet::new();
    let dups: Vec<String> = all
        .iter()
        .filter(|s| !seen.insert((s.name.as_str(), &s.labels)))
        .map(|s| format!("{}{:?}", s.name, s.labels))
        .collect();
    assert!(dups.is_empty(), "duplicate series in /metrics: {dups:?}");
}

fn parse_samples(body: &str) -> Vec<Series> {
    let mut out = Vec::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (head, value) = line.rsplit_once(' ').expect("value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().expect("number"),
        };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut chars = rest.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    assert_eq!(chars.next(), Some('"'));
                    let mut v = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some('n') => v.push('\n'),
                                Some(o) => v.push(o),
                                None => {}
                            },
                            '"' => break,
                            c => v.push(c),
                        }
                    }
                    labels.insert(key, v);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Series {
            name,
            labels,
            value,
        });
    }
    out
}

/// The first series named `name` that has all of `labels`.
pub fn find<'a>(all: &'a [Series], name: &str, labels: &[(&str, &str)]) -> Option<&'a Series> {
    all.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// [`find`]'s value; panics if there is no such series.
pub fn value(all: &[Series], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(all, name, labels)
        .unwrap_or_else(|| panic!("no {name} with {labels:?}"))
        .value
}

/// Asserts the family exists and every series has exactly `labels` as label names.
pub fn family(all: &[Series], name: &str, labels: &[&str]) {
    let series: Vec<&Series> = all.iter().filter(|s| s.name == name).collect();
    assert!(!series.is_empty(), "family {name} missing");
    for s in series {
        let names: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        let mut want = labels.to_vec();
        want.sort_unstable();
        assert_eq!(names, want, "{name} labels");
    }
}

/// The value of the sample line `series` (exact name and labels as rendered), if present;
/// panics if its value is not a number.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series} {v}: {e}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_escapes() {
        let all = parse("# HELP a A.\na{x=\"1\",p=\"q\\\"r\\n\"} 2\nb 3\n");
        assert_eq!(value(&all, "a", &[("x", "1"), ("p", "q\"r\n")]), 2.0);
        assert_eq!(value(&all, "b", &[]), 3.0);
    }

    /// The check that makes a duplicate series a test failure catches one (same name and
    /// labels, in another order and with another value).
    #[test]
    #[should_panic(expected = "duplicate series in /metrics")]
    fn a_duplicate_series_fails() {
        parse("kvmio_qmp_up{vm=\"dup\"} 1\nkvmio_qmp_up{vm=\"other\"} 1\nkvmio_qmp_up{vm=\"dup\"} 0\n");
    }

    #[test]
    fn same_labels_in_other_families_are_no_duplicates() {
        parse("kvmio_qmp_up{vm=\"a\"} 1\nkvmio_qga_up{vm=\"a\"} 1\nkvmio_qmp_up{vm=\"b\"} 1\n");
    }
}
