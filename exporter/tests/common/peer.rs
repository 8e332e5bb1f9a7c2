//! Unix-socket peers for the exporter's tests.
//!
//! - [`qmp_fixture`] and [`qga_fixture`] speak QMP / the guest-agent protocol and answer from
//!   replies captured from real QEMU 7.2 and qemu-ga (`qemu/tests/fixtures`, and
//!   `tests/fixtures/qemu-7.2/qom-get.json`); the agent serves `guest-file-*` reads from a
//!   captured sysfs tree (`tests/fixtures/linux-6.18/sys`, the same machine the agent fixtures
//!   were captured on). They replay captures; they do not model QEMU's behaviour.
//! - [`silent`], [`garbage`] and [`endless_line`] are the hostile agents of the robustness tests:
//!   one accepts and never answers, one answers every request with junk lines, one sends a line
//!   that never ends; [`agent_with`] syncs correctly and answers what the test gives it (the
//!   longest valid lists: [`huge_lists`], [`capped_list`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

// Standard base64 with padding, what qemu-ga sends in `buf-b64`.
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// A peer serving one socket; the listener task is stopped on drop.
#[derive(Debug)]
pub struct Peer {
    pub path: PathBuf,
    /// Every request received (QMP/QGA JSON), in order.
    pub requests: Arc<Mutex<Vec<Value>>>,
    task: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Peer {
    /// The `execute` names received so far.
    pub fn commands(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| r["execute"].as_str().map(str::to_owned))
            .collect()
    }
}

/// `qemu/tests/fixtures`.
pub fn qemu_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/tests/fixtures")
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The `return` value of a captured reply file.
pub fn fixture_return(name: &str) -> Value {
    load(&qemu_fixtures().join(format!("{name}.json")))["return"].clone()
}

fn spawn<F, Fut>(path: &Path, serve: F) -> Peer
where
    F: Fn(UnixStream, Arc<Mutex<Vec<Value>>>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let reqs = requests.clone();
    let serve = Arc::new(serve);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { return };
                    let serve = serve.clone();
                    let reqs = reqs.clone();
                    conns.spawn(async move { serve(stream, reqs).await });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Peer {
        path: path.to_owned(),
        requests,
        task,
    }
}

/// A reply object: `{"return": ...}` or `{"error": {"class", "desc"}}`.
fn reply_object(value: Result<Value, (&str, String)>) -> Value {
    match value {
        Ok(v) => json!({ "return": v }),
        Err((class, desc)) => json!({"error": {"class": class, "desc": desc}}),
    }
}

fn reply(value: Result<Value, (&str, String)>, id: Option<&Value>) -> String {
    let mut obj = reply_object(value);
    if let Some(id) = id {
        obj["id"] = id.clone();
    }
    let mut line = obj.to_string();
    line.push('\n');
    line
}

/// A QMP monitor answering from the captured QEMU 7.2 replies.
pub fn qmp_fixture(path: &Path) -> Peer {
    qmp_fixture_with(path, |_| None)
}

/// [`qmp_fixture`] where `answer(request)` may give the `return` value instead of the capture.
pub fn qmp_fixture_with<F>(path: &Path, answer: F) -> Peer
where
    F: Fn(&Value) -> Option<Value> + Send + Sync + 'static,
{
    let greeting = load(&qemu_fixtures().join("qmp-greeting.json"));
    let qom: Vec<Value> = serde_json::from_value(load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qemu-7.2/qom-get.json"),
    ))
    .unwrap();
    let qom: Arc<HashMap<(String, String), Value>> = Arc::new(
        qom.into_iter()
            .map(|e| {
                (
                    (
                        e["path"].as_str().unwrap().to_owned(),
                        e["property"].as_str().unwrap().to_owned(),
                    ),
                    e["reply"].clone(),
                )
            })
            .collect(),
    );
    qmp_peer(path, greeting, move |req| {
        if let Some(value) = answer(req) {
            return reply_object(Ok(value));
        }
        let cmd = req["execute"].as_str().unwrap_or("");
        let args = &req["arguments"];
        reply_object(match cmd {
            "qmp_capabilities" | "block-latency-histogram-set" => Ok(json!({})),
            "query-blockstats" if args["query-nodes"] == json!(true) => {
                Ok(fixture_return("query-blockstats-nodes"))
            }
            "query-name"
            | "query-block"
            | "query-blockstats"
            | "query-pci"
            | "query-named-block-nodes"
            | "query-version"
            | "query-status" => Ok(fixture_return(cmd)),
            "qom-get" => {
                let key = (
                    args["path"].as_str().unwrap_or("").to_owned(),
                    args["property"].as_str().unwrap_or("").to_owned(),
                );
                match qom.get(&key) {
                    Some(r) if r.get("return").is_some() => Ok(r["return"].clone()),
                    Some(r) => Err((
                        "GenericError",
                        r["error"]["desc"].as_str().unwrap_or("").to_owned(),
                    )),
                    None => panic!("no captured qom-get reply for {key:?}"),
                }
            }
            other => Err((
                "CommandNotFound",
                format!("The command {other} has not been found"),
            )),
        })
    })
}

/// A QMP monitor: sends `greeting`, then answers each request with the reply object
/// `answer(request)`, the request's `id` added; records the requests.
fn qmp_peer<F>(path: &Path, greeting: Value, answer: F) -> Peer
where
    F: Fn(&Value) -> Value + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    spawn(path, move |stream, reqs| {
        let greeting = greeting.clone();
        let answer = answer.clone();
        async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            if w.write_all(format!("{greeting}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(req) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                reqs.lock().unwrap().push(req.clone());
                let mut obj = answer(&req);
                if let Some(id) = req.get("id") {
                    obj["id"] = id.clone();
                }
                if w.write_all(format!("{obj}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// A QMP monitor answering from a recorded session of a real QEMU
/// (`tests/fixtures/qemu-7.2-configs/NAME.json`: its greeting and each request's reply, as
/// `tests/qemu_configs.rs` records them): a request is answered with the reply recorded for the
/// same command and arguments; one never recorded gets an error naming it.
pub fn qmp_replay(path: &Path, fixture: &Path) -> Peer {
    let session = load(fixture);
    let greeting = session["greeting"].clone();
    let exchanges: Arc<Vec<Value>> =
        Arc::new(session["exchanges"].as_array().cloned().unwrap_or_default());
    qmp_peer(path, greeting, move |req| {
        let cmd = req["execute"].as_str().unwrap_or("");
        let args = req.get("arguments").cloned().unwrap_or(Value::Null);
        let recorded = exchanges
            .iter()
            .find(|e| e["execute"] == cmd && e["arguments"] == args);
        match recorded {
            Some(e) => e["reply"].clone(),
            None if cmd == "qmp_capabilities" => json!({"return": {}}),
            None => reply_object(Err(("GenericError", format!("not recorded: {cmd} {args}")))),
        }
    })
}

/// A guest agent answering from the captured qemu-ga replies; `guest-file-*` read files of the
/// captured sysfs tree `sysfs` (for paths under `/sys/`), with qemu-ga's error text for missing
/// files.
pub fn qga_fixture(path: &Path, sysfs: PathBuf) -> Peer {
    let sysfs = Arc::new(sysfs);
    spawn(path, move |stream, reqs| {
        let sysfs = sysfs.clone();
        async move {
            let (r, mut w) = stream.into_split();
            let mut reader = BufReader::new(r);
            let mut files: HashMap<i64, (Vec<u8>, usize)> = HashMap::new();
            let mut next_handle = 1000;
            let mut buf = Vec::new();
            while let Some(req) = next_request(&mut reader, &mut buf, &reqs).await {
                let cmd = req["execute"].as_str().unwrap_or("");
                let args = &req["arguments"];
                let mut prefix = Vec::new();
                let answer: Result<Value, (&str, String)> = match cmd {
                    "guest-sync-delimited" => {
                        prefix.push(0xFF);
                        Ok(args["id"].clone())
                    }
                    "guest-sync" => Ok(args["id"].clone()),
                    "guest-info" | "guest-get-diskstats" | "guest-get-disks" => {
                        Ok(fixture_return(cmd))
                    }
                    "guest-file-open" => {
                        let p = args["path"].as_str().unwrap_or("");
                        let local = p.strip_prefix("/sys/").map(|rest| sysfs.join(rest));
                        match local.and_then(|l| std::fs::read(l).ok()) {
                            Some(data) => {
                                next_handle += 1;
                                files.insert(next_handle, (data, 0));
                                Ok(json!(next_handle))
                            }
                            None => Err((
                                "GenericError",
                                format!(
                                    "failed to open file '{p}' (mode: 'r'): No such file or directory"
                                ),
                            )),
                        }
                    }
                    "guest-file-read" => {
                        let h = args["handle"].as_i64().unwrap_or(-1);
                        let count = args["count"].as_u64().unwrap_or(4096) as usize;
                        match files.get_mut(&h) {
                            Some((data, pos)) => {
                                let end = (*pos + count).min(data.len());
                                let part = data[*pos..end].to_vec();
                                *pos = end;
                                Ok(
                                    json!({"count": part.len(), "buf-b64": BASE64.encode(&part), "eof": end == data.len()}),
                                )
                            }
                            None => {
                                Err(("GenericError", format!("handle '{h}' has not been found")))
                            }
                        }
                    }
                    "guest-file-close" => {
                        files.remove(&args["handle"].as_i64().unwrap_or(-1));
                        Ok(json!({}))
                    }
                    other => Err((
                        "CommandNotFound",
                        format!("The command {other} has not been found"),
                    )),
                };
                let mut out = prefix;
                out.extend_from_slice(reply(answer, None).as_bytes());
                if w.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// Reads the next line into `buf` (cleared first); `false` at EOF or on an error.
async fn next_line(reader: &mut (impl AsyncBufRead + Unpin), buf: &mut Vec<u8>) -> bool {
    buf.clear();
    matches!(reader.read_until(b'\n', buf).await, Ok(n) if n > 0)
}

/// The next agent request, recorded in `reqs` (a `guest-sync-delimited` request starts with
/// 0xFF, which is skipped; lines that are not JSON are skipped); `None` at EOF.
async fn next_request(
    reader: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
    reqs: &Mutex<Vec<Value>>,
) -> Option<Value> {
    while next_line(reader, buf).await {
        let start = buf.iter().position(|&b| b != 0xFF).unwrap_or(buf.len());
        if let Ok(req) = serde_json::from_slice::<Value>(&buf[start..]) {
            reqs.lock().unwrap().push(req.clone());
            return Some(req);
        }
    }
    None
}

/// Accepts connections, reads what comes, never answers.
pub fn silent(path: &Path) -> Peer {
    spawn(path, |stream, _| async move {
        let mut reader = BufReader::new(stream);
        let mut sink = Vec::new();
        while next_line(&mut reader, &mut sink).await {}
    })
}

/// Answers every request line with junk: non-JSON, JSON of the wrong shape, bytes that are not
/// UTF-8, a stray sentinel with a wrong sync id, and never a correct reply.
pub fn garbage(path: &Path) -> Peer {
    spawn(path, |stream, _| async move {
        let (r, mut w) = stream.into_split();
        let mut reader = BufReader::new(r);
        let mut line = Vec::new();
        while next_line(&mut reader, &mut line).await {
            let junk: &[&[u8]] = &[
                b"login: \n",
                b"[1, 2, 3]\n",
                b"{\"return\": \n",
                b"\xc3\x28\xa0\xa1 not utf-8\n",
                b"\xff{\"return\": 12345}\n",
                b"{\"neither\": true}\n",
            ];
            for j in junk {
                if w.write_all(j).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// The longest agent reply line the exporter accepts (`QGA_MAX_LINE_BYTES`, 512 KiB).
pub const AGENT_LINE_CAP: usize = 512 * 1024;

/// `{"return": [ITEM,ITEM,...]}` with as many copies of `item` as fit in the exporter's agent
/// line cap (newline included), and how many that is.
pub fn capped_list(item: impl Fn(usize) -> String) -> (String, usize) {
    capped_line("{\"return\": [", item, "]}")
}

/// `HEAD ITEM,ITEM,... TAIL` and a newline, with as many items as fit in the agent line cap,
/// and how many that is.
pub fn capped_line(head: &str, item: impl Fn(usize) -> String, tail: &str) -> (String, usize) {
    let mut line = String::from(head);
    let mut n = 0;
    loop {
        let next = item(n);
        // The element, its comma, the tail and the newline.
        if line.len() + next.len() + 2 + tail.len() > AGENT_LINE_CAP {
            break;
        }
        if n > 0 {
            line.push(',');
        }
        line.push_str(&next);
        n += 1;
    }
    line.push_str(tail);
    line.push('\n');
    (line, n)
}

/// A well-formed agent (it answers `guest-sync-delimited` and `guest-sync` correctly) whose
/// other answers are `answer(command)`: a whole reply line, or `None` for `CommandNotFound`.
pub fn agent_with(
    path: &Path,
    answer: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> Peer {
    let answer = Arc::new(answer);
    spawn(path, move |stream, reqs| {
        let answer = answer.clone();
        async move {
            let (r, mut w) = stream.into_split();
            let mut reader = BufReader::new(r);
            let mut buf = Vec::new();
            while let Some(req) = next_request(&mut reader, &mut buf, &reqs).await {
                let mut out = Vec::new();
                match req["execute"].as_str().unwrap_or("") {
                    "guest-sync-delimited" => {
                        out.push(0xFF);
                        out.extend(format!("{{\"return\": {}}}\n", req["arguments"]["id"]).bytes());
                    }
                    "guest-sync" => {
                        out.extend(format!("{{\"return\": {}}}\n", req["arguments"]["id"]).bytes())
                    }
                    cmd => match answer(cmd) {
                        Some(line) => out.extend(line.bytes()),
                        None => out.extend(
                            reply(
                                Err((
                                    "CommandNotFound",
                                    format!("The command {cmd} has not been found"),
                                )),
                                None,
                            )
                            .bytes(),
                        ),
                    },
                }
                if w.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// A well-formed agent whose lists are as long as the exporter's 512 KiB line limit allows:
/// `guest-get-diskstats` and `guest-get-disks` answer `{"return":[{},{},...]}` with about
/// 174,000 empty objects (valid replies: every field is optional).
pub fn huge_lists(path: &Path) -> Peer {
    let (huge, _) = capped_list(|_| "{}".to_owned());
    agent_with(path, move |cmd| {
        matches!(cmd, "guest-get-diskstats" | "guest-get-disks").then(|| huge.clone())
    })
}

/// Sends one line that never ends (16 KiB chunks until the client goes away).
pub fn endless_line(path: &Path) -> Peer {
    spawn(path, |stream, _| async move {
        let (_r, mut w) = stream.into_split();
        let chunk = vec![b'['; 16 * 1024];
        while w.write_all(&chunk).await.is_ok() {}
    })
}
