//! The HTTP server (hyper 1, HTTP/1.1): `GET /metrics`, a landing page at `/`, 404 elsewhere,
//! graceful shutdown. With `--web.config.file` ([`crate::web`]): TLS (the configuration taken
//! afresh at each connection), basic authentication in front of every path, and the file's
//! response headers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::collector::crashtest::{self as crashtest_results, REPORT_PAGE};
use crate::collector::Exporter;
use crate::metrics::TEXT_CONTENT_TYPE;
use crate::web::auth::Verdict;
use crate::web::{Settings, WebConfig};

/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// On shutdown, in-flight requests get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
/// (bounded by a grace period) and returns. Plain HTTP, no authentication.
pub async fn serve(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_web(listener, exporter, None, shutdown).await
}

/// [`serve`] under a web configuration (`--web.config.file`): TLS if it has a
/// `tls_server_config`, basic authentication if it has users.
pub async fn serve_web(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    web: Option<Arc<WebConfig>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let exporter = exporter.clone();
                let web = web.clone();
                let stop = stop_rx.clone();
                connections.spawn(async move {
                    // The TLS configuration as the files are now (a renewed certificate applies
                    // from the next connection on).
                    let tls = web.as_ref().and_then(|w| w.current().tls.clone());
                    let Some(tls) = tls else {
                        return serve_connection(TokioIo::new(stream), exporter, web, local, peer, stop)
                            .await;
                    };
                    let mut stream = stream;
                    if refused_plain_http(&mut stream).await {
                        return;
                    }
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(TokioIo::new(stream), exporter, web, local, peer, stop)
                                .await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake: timed out"),
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} connections still open after {SHUTDOWN_GRACE:?}; closing them",
            connections.len()
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// One connection, plain or TLS, until it closes or the server stops.
async fn serve_connection<IO>(
    io: TokioIo<IO>,
    exporter: Arc<Exporter>,
    web: Option<Arc<WebConfig>>,
    local: SocketAddr,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let exporter = exporter.clone();
        let web = web.clone();
        async move {
            Ok::<_, Infallible>(match web {
                Some(web) => handle_under(&web, &exporter, local, req).await,
                None => handle(&exporter, local, None, req).await,
            })
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // (the watch guard must not live across the await below)
        () = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "connection: {e}");
    }
}

/// A client that speaks plain HTTP to the TLS port (its first byte is a method's letter, where
/// a TLS client sends a handshake record, 0x16) gets a 400 saying so, as Go's servers answer,
/// instead of a closed connection it cannot explain. True if the connection was answered so (or
/// sent nothing in time).
async fn refused_plain_http(stream: &mut TcpStream) -> bool {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {}
        Ok(Ok(1)) => return false,
        _ => return true,
    }
    let answer = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
                   Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";
    let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, async {
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
    true
}

/// A request under a web configuration: the file's headers on every answer, and every path
/// (the landing page too) behind basic authentication when users are configured.
async fn handle_under(
    web: &WebConfig,
    exporter: &Exporter,
    local: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let settings = web.current();
    let verdict = web
        .auth()
        .check(&settings.users, req.headers().get(AUTHORIZATION))
        .await;
    let mut r = if verdict == Verdict::Denied {
        let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"kvmio-exporter\", charset=\"UTF-8\""),
        );
        r
    } else {
        handle(exporter, local, Some(&settings), req).await
    };
    for (name, value) in &settings.headers {
        r.headers_mut().insert(name.clone(), value.clone());
    }
    r
}

async fn handle(
    exporter: &Exporter,
    local: SocketAddr,
    web: Option<&Settings>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let is_get = req.method() == Method::GET;
    if !is_get && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = req.uri().path();
    match path {
        p if p == exporter.config().telemetry_path => {
            // HEAD answers with the headers only, without running a scrape.
            let body = if is_get {
                match exporter.render_checked().await {
                    Ok(body) => body,
                    // --debug.fail-on-duplicate-series (tests): fail loudly.
                    Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            } else {
                String::new()
            };
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_CONTENT_TYPE));
            r
        }
        // The newest crash-test report.html in --crashtest.results-dir: that one file, bounded.
        REPORT_PATH => report_page(exporter),
        "/" => {
            let host = req
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_else(|| local.to_string());
            let mut r = Response::new(Full::new(Bytes::from(landing_page(exporter, &host, web))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("not found: try {}\n", exporter.config().telemetry_path),
        ),
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Where the landing page links the newest crash-test report.
pub const REPORT_PATH: &str = "/crashtest/report.html";

fn report_page(exporter: &Exporter) -> Response<Full<Bytes>> {
    let dir = exporter.config().crashtest_results_dir.as_deref();
    match dir.map(crashtest_results::read_latest_report_page) {
        None | Some(Ok(None)) => text(
            StatusCode::NOT_FOUND,
            format!("no {REPORT_PAGE} in --crashtest.results-dir\n"),
        ),
        Some(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Some(Ok(Some(page))) => {
            let mut r = Response::new(Full::new(Bytes::from(page)));
            let h = r.headers_mut();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            // The page is self-contained: nothing else may load or run in it.
            h.insert(
                hyper::header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
            );
            h.insert(
                hyper::header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            r
        }
    }
}

/// The landing page: what this is, the metrics link, and the Prometheus scrape config for the
/// address the browser used (the Host header, HTML-escaped), with the scheme, TLS and basic auth
/// lines a web configuration asks of Prometheus.
pub fn landing_page(exporter: &Exporter, host: &str, web: Option<&Settings>) -> String {
    let mut access = String::new();
    if let Some(web) = web {
        if web.tls.is_some() {
            access.push_str(
                "\n    scheme: https\n    tls_config: {ca_file: CA_THAT_SIGNED_THIS_CERTIFICATE}",
            );
        }
        if !web.users.is_empty() {
            access.push_str("\n    basic_auth: {username: USER, password_file: PASSWORD_FILE}");
        }
    }
    let host = html_escape(host);
    let collectors = exporter.collector_names().join(", ");
    let timeout = exporter.config().scrape_timeout;
    let metrics_path = html_escape(&exporter.config().telemetry_path);
    let report = match exporter.config().crashtest_results_dir.as_deref() {
        Some(dir) => match crashtest_results::latest_report_page(dir) {
            Some((path, _)) => format!(
                "<p><a href=\"{REPORT_PATH}\">Newest crash-test report</a> ({})</p>\n",
                html_escape(&path.display().to_string())
            ),
            None => "<p>No crash-test report yet in --crashtest.results-dir.</p>\n".to_owned(),
        },
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html>
<html lang=\"en\">
<head><meta charset=\"utf-8\"><title>kvmio-exporter</title></head>
<body>
<h1>kvmio-exporter {version}</h1>
<p>Prometheus exporter for every layer of KVM/QEMU VM storage IO: guest disks, QEMU devices and
block nodes, image files and host block devices.</p>
<p><a href=\"{metrics_path}\">Metrics</a> (text exposition format 0.0.4)</p>
{report}<h2>Scraping with Prometheus</h2>
<p>Add this job to <code>prometheus.yml</code>:</p>
<pre>scrape_configs:
  - job_name: kvmio
    metrics_path: {metrics_path}
    scrape_timeout: 10s   # the exporter bounds its scrapes to {timeout:?} (--scrape.timeout){access}
    static_configs:
      - targets: ['{host}']</pre>
<p>Collectors: {collectors}.</p>
</body>
</html>
",
        version = env!("CARGO_PKG_VERSION"),
    )
}
