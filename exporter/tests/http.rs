//! The HTTP server on 127.0.0.1:0: /metrics, /, 404, 405, graceful shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use kvmio_exporter::collector::{collector_fn, Collector, Exporter};
use kvmio_exporter::config::{Config, HostDevices};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close`, read to EOF.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: kvmio.test:10990\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("response within 20 s")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The default collectors on the Linux 6.18 host fixtures, every host device included.
fn host_fixture_exporter() -> Exporter {
    let fixtures = common::fixtures();
    Exporter::with_default_collectors(Arc::new(Config {
        host_devices: HostDevices::All,
        procfs: fixtures.join("linux-6.18/proc"),
        sysfs: fixtures.join("linux-6.18/sys"),
        ..Config::default()
    }))
}

type ServerTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// Serves `exporter` on 127.0.0.1:0: (address, the shutdown trigger, the server task).
async fn serve(
    exporter: Exporter,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    ServerTask,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kvmio_exporter::http::serve(
        listener,
        Arc::new(exporter),
        async {
            let _ = stop_rx.await;
        },
    ));
    (addr, stop_tx, server)
}

/// Asserts the server task ends, without error, within `secs` seconds (`what` says why).
async fn stops_within(server: ServerTask, secs: u64, what: &str) {
    tokio::time::timeout(Duration::from_secs(secs), server)
        .await
        .expect(what)
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn serves_metrics_landing_page_and_errors_then_shuts_down() {
    let (addr, stop_tx, server) = serve(host_fixture_exporter()).await;

    let r = request(addr, "GET", "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(r
        .body
        .contains("kvmio_host_disk_reads_completed_total{device=\"vda\"} 74103\n"));
    assert!(r
        .body
        .contains("kvmio_collector_success{collector=\"host_diskstats\"} 1\n"));
    common::promtool_check(&r.body, "HTTP /metrics");

    let r = request(addr, "GET", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.body.contains("<a href=\"/metrics\">"));
    assert!(
        r.body.contains("targets: ['kvmio.test:10990']"),
        "{}",
        r.body
    );
    assert!(r.body.contains("scrape_configs:"));

    let r = request(addr, "HEAD", "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    let r = request(addr, "GET", "/metricsx").await;
    assert_eq!(r.status, 404);
    let r = request(addr, "POST", "/metrics").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    stop_tx.send(()).unwrap();
    stops_within(server, 15, "server stops after the shutdown signal").await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn shutdown_closes_idle_connections_promptly() {
    let (addr, stop_tx, server) = serve(host_fixture_exporter()).await;
    // A connection that never sends a request.
    let idle = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop_tx.send(()).unwrap();
    stops_within(
        server,
        5,
        "idle connections are closed promptly on shutdown",
    )
    .await;
    drop(idle);
}

/// Takes a while, so a request is in flight when shutdown starts.
fn sleepy() -> Arc<dyn Collector> {
    Arc::new(collector_fn("sleepy", |_, out| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            out.gauge("kvmio_test_slept", "Test.", &[], 1.0);
            Ok(())
        })
    }))
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_scrape_finish() {
    let (addr, stop_tx, server) =
        serve(Exporter::new(Arc::new(Config::default()), vec![sleepy()])).await;
    let in_flight = tokio::spawn(request(addr, "GET", "/metrics"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_tx.send(()).unwrap();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("kvmio_test_slept 1\n"));
    stops_within(server, 5, "server stops").await;
}
