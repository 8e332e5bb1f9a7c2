//! A duplicate series is never dropped quietly: proof that the check catches one.
//!
//! Two collectors stand for the bug class (one writes a series twice, as a filter node's stats
//! once were; another writes a series the first already wrote, as two VMs under one label
//! once did), served by the real HTTP server on loopback:
//! - with `--debug.fail-on-duplicate-series` (what every test that starts the exporter sets,
//!   through `kvmio-test-support`), `/metrics` answers 500 naming both duplicates, and the
//!   tests' own `metrics::scrape` therefore fails the test;
//! - without it (production), `/metrics` answers 200 with the first of each series, and
//!   `kvmio_scrape_duplicate_series_total` counts them, across scrapes;
//! - a scrape without duplicates answers 200 with the flag too, with the counter at 0.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvmio_exporter::collector::{collector_fn, Collector, Exporter};
use kvmio_exporter::config::{Config, HostDevices};
use kvmio_test_support::metrics::{parse, scrape, value};
use tokio::net::TcpListener;

/// Writes `kvmio_test_up{vm="dup"}` twice when `buggy`, once otherwise.
fn twice(buggy: Arc<AtomicBool>) -> Arc<dyn Collector> {
    Arc::new(collector_fn("twice", move |_, out| {
        out.gauge("kvmio_test_up", "Test.", &[("vm", "dup")], 1.0);
        if buggy.load(Ordering::Relaxed) {
            out.gauge("kvmio_test_up", "Test.", &[("vm", "dup")], 0.0);
        }
        Box::pin(async { Ok(()) })
    }))
}

/// Writes `kvmio_test_up{vm="dup"}` too when `buggy` (a clash between collectors).
fn other(buggy: Arc<AtomicBool>) -> Arc<dyn Collector> {
    Arc::new(collector_fn("other", move |_, out| {
        let vm = if buggy.load(Ordering::Relaxed) {
            "dup"
        } else {
            "other"
        };
        out.gauge("kvmio_test_up", "Test.", &[("vm", vm)], 1.0);
        Box::pin(async { Ok(()) })
    }))
}

/// Serves the two collectors over loopback in a thread of its own (the tests' blocking client
/// runs on this one); returns the address and the switch that makes them buggy.
fn serve(fail: bool) -> (String, Arc<AtomicBool>) {
    let buggy = Arc::new(AtomicBool::new(true));
    let config = Arc::new(Config {
        host_devices: HostDevices::None,
        fail_on_duplicate_series: fail,
        ..Config::default()
    });
    let exporter = Exporter::new(config, vec![twice(buggy.clone()), other(buggy.clone())]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().to_string()).unwrap();
            kvmio_exporter::http::serve(listener, Arc::new(exporter), std::future::pending())
                .await
                .unwrap();
        });
    });
    (rx.recv().unwrap(), buggy)
}

#[test]
fn a_duplicate_series_fails_the_scrape_in_tests() {
    let (addr, buggy) = serve(true);
    let (status, body, _) =
        kvmio_test_support::http_get(&addr, "/metrics", std::time::Duration::from_secs(20));
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("2 duplicate series"), "{body}");
    assert!(
        body.contains("kvmio_test_up: duplicate series [\"dup\"]"),
        "{body}"
    );
    // What every test that reads /metrics through kvmio-test-support does: it fails.
    let caught = std::panic::catch_unwind(|| scrape(&addr)).expect_err("the scrape must fail");
    let msg = caught.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("duplicate series"), "{msg}");

    // Without the bug the same exporter answers.
    buggy.store(false, Ordering::Relaxed);
    let text = scrape(&addr);
    common::promtool_check(&text, "duplicates");
    let all = parse(&text);
    assert_eq!(value(&all, "kvmio_scrape_duplicate_series_total", &[]), 4.0);
}

#[test]
fn production_answers_and_counts_every_duplicate() {
    let (addr, buggy) = serve(false);
    for round in 1..=2 {
        let text = scrape(&addr);
        common::promtool_check(&text, "duplicates");
        let all = parse(&text);
        // The first of each series is kept.
        assert_eq!(value(&all, "kvmio_test_up", &[("vm", "dup")]), 1.0);
        assert_eq!(
            value(&all, "kvmio_scrape_duplicate_series_total", &[]),
            f64::from(2 * round)
        );
    }
    buggy.store(false, Ordering::Relaxed);
    let all = parse(&scrape(&addr));
    assert_eq!(value(&all, "kvmio_test_up", &[("vm", "other")]), 1.0);
    assert_eq!(value(&all, "kvmio_scrape_duplicate_series_total", &[]), 4.0);
}
