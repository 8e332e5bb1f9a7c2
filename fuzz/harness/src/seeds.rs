//! Each target's seeds, made from the real captures in the tree: QEMU 7.2 and qemu-ga replies
//! (`qemu/tests/fixtures`), the captured host trees and golden outputs (`exporter/tests`),
//! libvirt's domain XML, and what `fuzz/seeds/NAME/` holds (command lines of running QEMUs,
//! this machine's mountinfo, a crash-test run's results and ack log). The protocol framing
//! around the captured replies (ids, the agent's file reads) is what kvmio's clients send and
//! expect. `cargo run -p kvmio-fuzz --bin kvmio-fuzz-seed` writes them where cargo-fuzz starts
//! from; the replay test runs them too.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use kvmio_guest::record::RecordSpec;
use serde_json::{json, Value};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> Vec<u8> {
    let path = repo().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A captured QEMU/qemu-ga reply file as one compact JSON value.
fn fixture(name: &str) -> Value {
    serde_json::from_slice(&read(&format!("qemu/tests/fixtures/{name}.json")))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A captured reply's `return` in a reply line, with `id` if given.
fn reply_line(name: &str, id: Option<u64>) -> String {
    let mut reply = json!({ "return": fixture(name)["return"] });
    if let Some(id) = id {
        reply["id"] = json!(id);
    }
    format!("{reply}\n")
}

/// The files of `fuzz/seeds/NAME/`, if any.
fn stored(name: &str) -> Vec<Vec<u8>> {
    let dir = repo().join("fuzz/seeds").join(name);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// What QEMU answers to the exporter's queries, in the order of `qmp_client`.
fn qmp_session() -> String {
    let mut s = format!("{}\n", fixture("qmp-greeting"));
    s.push_str("{\"return\": {}, \"id\": 1}\n");
    let queries = [
        "query-name",
        "query-version",
        "query-status",
        "query-block",
        "query-blockstats",
        "query-blockstats-nodes",
        "query-pci",
        "query-named-block-nodes",
    ];
    for (i, name) in queries.iter().enumerate() {
        s.push_str(&reply_line(name, Some(i as u64 + 2)));
    }
    s
}

/// What the agent answers to a scrape of the guest layer (diskstats, disks, then reading each
/// disk's queue files), then to `guest-info`, `guest-get-fsinfo` and `guest-exec-status`.
fn qga_session() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(reply_line("guest-get-diskstats", None).as_bytes());
    s.extend_from_slice(reply_line("guest-get-disks", None).as_bytes());
    let scheduler = read("exporter/tests/fixtures/linux-6.18/sys/block/vda/queue/scheduler");
    // Standard base64 with padding, as qemu-ga sends `buf-b64`.
    let b64 = BASE64.encode(&scheduler);
    for _ in 0..2 {
        s.extend_from_slice(b"{\"return\": 1000}\n");
        let read = json!({"return": {"count": scheduler.len(), "buf-b64": b64, "eof": true}});
        s.extend_from_slice(format!("{read}\n").as_bytes());
        s.extend_from_slice(b"{\"return\": {}}\n");
    }
    for name in ["guest-info", "guest-get-fsinfo", "guest-exec-status"] {
        s.extend_from_slice(reply_line(name, None).as_bytes());
    }
    s
}

/// A client's fixed-newstyle handshake (`NBD_OPT_GO` for the default export) and one of each
/// request the crash tester's QEMU sends, as QEMU's NBD client frames them (the NBD spec's
/// `doc/proto.md`).
fn nbd_session() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&3u32.to_be_bytes()); // FIXED_NEWSTYLE | NO_ZEROES
    s.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes()); // IHAVEOPT
    s.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    let go: &[u8] = &[0, 0, 0, 0, 0, 1, 0, 3]; // empty name, one info request: block size
    s.extend_from_slice(&(go.len() as u32).to_be_bytes());
    s.extend_from_slice(go);
    let request = |s: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, offset: u64, len: u32| {
        s.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        s.extend_from_slice(&flags.to_be_bytes());
        s.extend_from_slice(&kind.to_be_bytes());
        s.extend_from_slice(&cookie.to_be_bytes());
        s.extend_from_slice(&offset.to_be_bytes());
        s.extend_from_slice(&len.to_be_bytes());
    };
    request(&mut s, 0, 1, 1, 0, 512); // write
    s.extend_from_slice(&[0xa5; 512]);
    request(&mut s, 1, 1, 2, 4096, 512); // write, FUA
    s.extend_from_slice(&[0x5a; 512]);
    request(&mut s, 0, 0, 3, 0, 1024); // read
    request(&mut s, 0, 6, 4, 8192, 4096); // write zeroes
    request(&mut s, 0, 3, 5, 0, 0); // flush
    request(&mut s, 0, 2, 6, 0, 0); // disconnect
    s
}

/// Real records as the guest writer writes them (its own code), of two sizes.
fn records() -> Vec<Vec<u8>> {
    [(512usize, 7u64), (4096, 1)]
        .iter()
        .map(|&(size, seq)| {
            let spec = RecordSpec::new(0x6b76_6d69_6f00_0001, 42, size).expect("a record size");
            let mut buf = vec![0u8; size];
            spec.fill(seq, &mut buf);
            buf
        })
        .collect()
}

/// The seeds of target `name`.
pub fn for_target(name: &str) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = match name {
        "line_reader" => {
            let qmp = qmp_session().into_bytes();
            let mut qga = vec![0xff];
            qga.extend_from_slice(b"{\"return\": 42}\n");
            qga.extend_from_slice(&qga_session());
            vec![
                [&[0x7f, 0][..], &qmp].concat(),
                [&[0x10, 7][..], &qmp].concat(),
                [&[0xff, 0][..], &qga].concat(),
                [&[0x80, 1][..], &qga].concat(),
            ]
        }
        "qmp_client" => vec![
            [&[0][..], qmp_session().as_bytes()].concat(),
            [&[3][..], qmp_session().as_bytes()].concat(),
        ],
        "qga_replies" => vec![
            [&[0][..], &qga_session()].concat(),
            [&[5][..], &qga_session()].concat(),
        ],
        "record" => records(),
        "nbd_requests" => vec![nbd_session()],
        "host_diskstats" => vec![
            read("exporter/tests/fixtures/linux-6.18/proc/diskstats"),
            read("exporter/tests/fixtures/derived-14fields/proc/diskstats"),
            read("exporter/tests/fixtures/derived-18fields/proc/diskstats"),
        ],
        "host_sysfs_mountinfo" => vec![read(
            "exporter/tests/fixtures/linux-6.18/sys/block/vda/queue/scheduler",
        )],
        "config_file" => vec![b"qmp_socket_globs = [\"/run/kvmio/*.qmp\"]\nqga_socket_globs = [\"/run/kvmio/*.qga\"]\n\n[[target]]\nqmp = \"/run/vm1/qmp.sock\"\nqga = \"/run/vm1/qga.sock\"\nname = \"vm1\"\n".to_vec()],
        "flags" => vec![
            b"--libvirt.uri\0qemu:///system".to_vec(),
            b"--layout\0proxmox".to_vec(),
            b"--qmp.socket-glob=/run/kvmio/*.qmp\0--scrape.timeout\x008s\0--qmp.latency-buckets\x000.0001,0.001,0.01,0.1,1\0--qga.max-disks\x0064\0--web.telemetry-path\0/metrics\0--log.format\0json".to_vec(),
        ],
        "crashtest_results" => vec![
            read("exporter/tests/golden/qemu-7.2.prom"),
            read("exporter/tests/golden/derived-14fields.prom"),
        ],
        "domain_xml" => [
            "domain-live.xml",
            "domain-storage-modes.xml",
            "domain-vhostuser.xml",
            "domain-lun-hostdev.xml",
        ]
        .iter()
        .map(|f| read(&format!("exporter/tests/fixtures/libvirt/{f}")))
        .collect(),
        _ => Vec::new(),
    };
    seeds.extend(stored(name));
    seeds
}
