//! The exporter as end-to-end tests run it: the binary on a free loopback port, `/metrics`
//! fetched over plain HTTP, and the text format parsed into series (kvmio's own output: one
//! sample a line, escaped label values).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{wait_for, workspace_bin, ChildProcess};

/// One sample: name, labels, value.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text format (kvmio's own output: one sample a line, escaped label values).
pub fn parse(body: &str) -> Vec<Series> {
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

pub fn find<'a>(all: &'a [Series], name: &str, labels: &[(&str, &str)]) -> Option<&'a Series> {
    all.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

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

/// `GET /metrics` from the exporter at `addr`; asserts a 200 answer.
pub fn http_get(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the exporter");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("a complete answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// Starts the exporter binary on a free loopback port; returns it and its address.
pub fn start_exporter(args: &[String], log: &Path) -> (ChildProcess, String) {
    start_exporter_as(None, args, log)
}

/// [`start_exporter`] as another user (`setpriv` to `user`'s uid, its primary group only), as
/// an operator's unprivileged service runs it.
pub fn start_exporter_as(
    user: Option<(&str, &str)>,
    args: &[String],
    log: &Path,
) -> (ChildProcess, String) {
    let bin = workspace_bin("kvmio-exporter");
    let mut cmd = match user {
        None => Command::new(bin),
        Some((user, group)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={user}"))
                .arg(format!("--regid={group}"))
                .args(["--clear-groups", "--"])
                .arg(bin);
            c
        }
    };
    cmd.arg("--web.listen-address=127.0.0.1:0")
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    let mut child = ChildProcess::spawn(&mut cmd);
    let addr = wait_for(
        "the exporter's 'listening on' line",
        Duration::from_secs(30),
        || {
            if let Some(status) = child.0.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "exporter exited: {status}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            let text = std::fs::read_to_string(log).ok()?;
            let rest = text.split("listening on http://").nth(1)?;
            Some(rest.split("/metrics").next()?.to_owned())
        },
    );
    (child, addr)
}

/// The whole device under `path` as `findmnt` and sysfs name it (`vda` for a file on
/// `/dev/vda1`), or `None` when its filesystem is not on a block device.
pub fn host_device_of(path: &Path) -> Option<String> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "-T"])
        .arg(path)
        .output()
        .expect("findmnt (util-linux)");
    let source = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    if !source.starts_with("/dev/") {
        return None;
    }
    let dev = std::fs::canonicalize(&source).ok()?;
    let name = dev.file_name()?.to_string_lossy().into_owned();
    let sys = std::fs::canonicalize(format!("/sys/class/block/{name}")).ok()?;
    if sys.join("partition").exists() {
        return Some(sys.parent()?.file_name()?.to_string_lossy().into_owned());
    }
    Some(name)
}
