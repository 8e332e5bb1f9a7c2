//! kvmio's Prometheus rules: promtool's checks and unit tests (deploy/prometheus/check.sh, also
//! `make rules-test`), plus what promtool cannot see: that the unit tests cover every alert both
//! firing and silent and every recording rule, and that every alert follows the
//! monitoring-mixins conventions and has its runbook section.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use kvmio_e2e::which;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn promtool_checks_and_unit_tests_pass() {
    assert!(
        which("promtool").is_some(),
        "promtool is not installed (Debian package prometheus): run deploy/setup.sh first"
    );
    let out = Command::new("bash")
        .arg(repo().join("deploy/prometheus/check.sh"))
        .output()
        .expect("run deploy/prometheus/check.sh");
    assert!(
        out.status.success(),
        "deploy/prometheus/check.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One alerting rule, read from the rule file's text (the files are kept in one layout: a
/// `- alert:` line starts a rule; labels and annotations are `key: value` lines inside it).
#[derive(Debug)]
struct Alert {
    name: String,
    fields: BTreeMap<String, String>,
}

fn alerts() -> Vec<Alert> {
    let text = read("deploy/prometheus/rules/kvmio-alerts.rules.yml");
    let mut out: Vec<Alert> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert:") {
            out.push(Alert {
                name: name.trim().to_string(),
                fields: BTreeMap::new(),
            });
        } else if t.starts_with("- record:") || t.starts_with("- name:") {
            // A recording rule or group after the alerts: not part of the last alert.
            if let Some(last) = out.last_mut() {
                last.fields.insert("__closed".into(), String::new());
            }
        } else if let (Some(alert), Some((k, v))) = (out.last_mut(), t.split_once(':')) {
            if !alert.fields.contains_key("__closed") && !t.starts_with('#') {
                alert
                    .fields
                    .entry(k.trim().to_string())
                    .or_insert_with(|| v.trim().to_string());
            }
        }
    }
    out
}

#[test]
fn alerts_follow_the_mixin_conventions_and_have_runbooks() {
    let alerts = alerts();
    let names: BTreeSet<&str> = alerts.iter().map(|a| a.name.as_str()).collect();
    for required in [
        "KvmioUnsafeCacheMode",
        "KvmioGuestSchedulerNotRecommended",
        "KvmioCrashtestViolation",
        "KvmioCrashtestStale",
        "KvmioQmpDown",
        "KvmioGuestAgentDown",
        "KvmioBlockIOErrors",
        "KvmioDoubleCaching",
    ] {
        assert!(names.contains(required), "{required} is missing");
    }
    let runbook = read("docs/runbook.md");
    let headings: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::trim)
        .collect();
    for a in &alerts {
        let n = &a.name;
        assert!(
            n.starts_with("Kvmio")
                && n.chars().all(|c| c.is_ascii_alphanumeric())
                && n[5..].starts_with(|c: char| c.is_ascii_uppercase()),
            "{n}: CamelCase with the Kvmio prefix"
        );
        let severity = a.fields.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{n}: severity label critical, warning or info, got {severity:?}"
        );
        for key in ["summary", "description"] {
            assert!(
                a.fields.get(key).is_some_and(|v| !v.is_empty()),
                "{n}: {key} annotation"
            );
        }
        let url = format!(
            "https://github.com/kvmio/kvmio/blob/main/docs/runbook.md#{}",
            n.to_lowercase()
        );
        assert_eq!(a.fields.get("runbook_url"), Some(&url), "{n}: runbook_url");
        assert!(
            headings.contains(n.as_str()),
            "docs/runbook.md has no `## {n}` section (the runbook_url anchor)"
        );
    }
    let expected = [
        ("KvmioUnsafeCacheMode", "critical"),
        ("KvmioGuestSchedulerNotRecommended", "warning"),
        ("KvmioCrashtestViolation", "critical"),
        ("KvmioCrashtestStale", "warning"),
        ("KvmioQmpDown", "warning"),
        ("KvmioGuestAgentDown", "info"),
        ("KvmioBlockIOErrors", "warning"),
        ("KvmioDoubleCaching", "info"),
    ];
    for (name, severity) in expected {
        let a = alerts.iter().find(|a| a.name == name).unwrap();
        assert_eq!(a.fields["severity"], severity, "{name}");
    }
}

/// For every alert, the unit tests have at least one evaluation expecting it to fire and one
/// expecting silence; every recording rule is evaluated by some unit test.
#[test]
fn unit_tests_cover_every_rule() {
    let tests_dir = repo().join("deploy/prometheus/tests");
    let mut text = String::new();
    for entry in std::fs::read_dir(&tests_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".test.yml") {
            text.push_str(&std::fs::read_to_string(&path).unwrap());
            text.push('\n');
        }
    }
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if let Some(rest) = t.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts after an alertname");
            if rest.trim() == "[]" {
                silent.insert(name);
            } else {
                firing.insert(name);
            }
        }
    }
    for a in alerts() {
        assert!(
            firing.contains(&a.name),
            "{}: no unit test expects it to fire",
            a.name
        );
        assert!(
            silent.contains(&a.name),
            "{}: no unit test expects it to stay silent",
            a.name
        );
    }
    let exprs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- expr:"))
        .collect();
    for file in [
        "deploy/prometheus/rules/kvmio-recording.rules.yml",
        "deploy/prometheus/rules/kvmio-alerts.rules.yml",
    ] {
        let records: BTreeSet<String> = read(file)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- record:"))
            .map(|r| r.trim().to_string())
            .collect();
        for r in records {
            assert!(
                exprs.iter().any(|e| e.contains(r.as_str())),
                "recording rule {r} ({file}) is evaluated by no unit test"
            );
        }
    }
}
