//! Golden tests: real replies of QEMU 7.2 and its qemu-ga, captured by
//! `examples/capture_fixtures.rs` into `tests/fixtures/`, parsed into the typed structs.
//!
//! Besides spot checks, each fixture is parsed, serialised back and compared with the original:
//! every member QEMU sent must survive. With `#[serde(default)]` everywhere, a misspelt field
//! name would otherwise parse silently as empty.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::cache::CacheMode;
use crate::types::*;

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../tests/fixtures/", $name, ".json"))
    };
}

/// Parses `{"return": X}` into `T` and checks that no member of X is lost on the way.
fn parse<T: DeserializeOwned + Serialize>(text: &str, name: &str) -> T {
    let reply: Value = serde_json::from_str(text).unwrap();
    let value = reply.get("return").cloned().unwrap_or(reply);
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    let mut lost = Vec::new();
    lost_members(&value, &back, name.to_string(), &mut lost);
    assert!(
        lost.is_empty(),
        "members not captured by the types: {lost:#?}"
    );
    typed
}

fn lost_members(original: &Value, typed: &Value, path: String, lost: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                match t.get(k) {
                    None | Some(Value::Null) if !v.is_null() => lost.push(format!("{path}.{k}")),
                    Some(tv) => lost_members(v, tv, format!("{path}.{k}"), lost),
                    None => {}
                }
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            for (i, (v, tv)) in o.iter().zip(t).enumerate() {
                lost_members(v, tv, format!("{path}[{i}]"), lost);
            }
        }
        _ => {}
    }
}

#[test]
fn qmp_greeting_and_version() {
    let reply: Value = serde_json::from_str(fixture!("qmp-greeting")).unwrap();
    let greeting: Greeting = serde_json::from_value(reply["QMP"].clone()).unwrap();
    assert_eq!(
        (greeting.version.qemu.major, greeting.version.qemu.minor),
        (7, 2)
    );
    assert_eq!(greeting.capabilities, ["oob"]);
    let version: VersionInfo = parse(fixture!("query-version"), "query-version");
    assert_eq!(version, greeting.version);
}

#[test]
fn query_name_and_status() {
    let name: NameInfo = parse(fixture!("query-name"), "query-name");
    assert_eq!(name.name.as_deref(), Some("kvmio-fixture"));
    let status: StatusInfo = parse(fixture!("query-status"), "query-status");
    assert!(!status.running);
    assert_eq!(status.status, "paused");
}

#[test]
fn query_block_configured_and_guest_negotiated_cache_modes() {
    let before: Vec<BlockInfo> = parse(fixture!("query-block-prelaunch"), "query-block");
    let modes: Vec<_> = before
        .iter()
        .map(|b| (b.device.as_str(), b.cache_mode()))
        .collect();
    assert_eq!(
        modes,
        [
            ("d0", Some(CacheMode::Writeback)),
            ("d1", Some(CacheMode::None)),
            ("d2", Some(CacheMode::Directsync)),
        ]
    );
    // After SeaBIOS ran, the guest-visible write cache is off everywhere.
    let after: Vec<BlockInfo> = parse(fixture!("query-block"), "query-block");
    let modes: Vec<_> = after.iter().map(BlockInfo::cache_mode).collect();
    assert_eq!(
        modes,
        [
            Some(CacheMode::Writethrough),
            Some(CacheMode::Directsync),
            Some(CacheMode::Directsync),
        ]
    );

    let d0 = after[0].inserted.as_ref().unwrap();
    assert_eq!(d0.drv, "qcow2");
    assert_eq!(
        after[0].qdev.as_deref(),
        Some("/machine/peripheral/vd0/virtio-backend")
    );
    assert_eq!(d0.image.as_ref().unwrap().virtual_size, 64 << 20);
    let d1 = after[1].inserted.as_ref().unwrap();
    assert_eq!(d1.drv, "raw");
    let d2 = after[2].inserted.as_ref().unwrap();
    assert_eq!(d2.backing_file.as_deref(), Some("base.qcow2"));
    assert_eq!(d2.backing_file_depth, 1);
    let backing = d2.image.as_ref().unwrap().backing_image.as_ref().unwrap();
    assert_eq!(backing.filename, "base.qcow2");
}

#[test]
fn query_blockstats_with_parents_backing_and_histograms() {
    let stats: Vec<BlockStats> = parse(fixture!("query-blockstats"), "query-blockstats");
    assert_eq!(stats.len(), 3);
    for s in &stats {
        let parent = s.parent.as_ref().expect("every drive has a protocol node");
        assert!(parent.node_name.is_some());
        assert!(s
            .qdev
            .as_deref()
            .unwrap()
            .starts_with("/machine/peripheral/vd"));
    }
    let d0 = &stats[0];
    assert_eq!(d0.device.as_deref(), Some("d0"));
    // 1 MiB written by qemu-io (not accounted), one 512-byte boot-sector read by SeaBIOS.
    assert_eq!(d0.stats.wr_highest_offset, 1 << 20);
    assert!(d0.parent.as_ref().unwrap().stats.wr_highest_offset > 1 << 20);
    assert_eq!(d0.stats.rd_operations, 1);
    assert_eq!(d0.stats.rd_bytes, 512);
    assert!(d0.stats.idle_time_ns.is_some());
    let hist = d0.stats.rd_latency_histogram.as_ref().unwrap();
    assert_eq!(hist.boundaries, [10_000, 100_000, 1_000_000, 10_000_000]);
    assert_eq!(hist.bins.iter().sum::<u64>(), 1);
    assert!(stats[1].stats.rd_latency_histogram.is_none());
    // d2 is an overlay: its backing image has its own node and stats.
    assert!(stats[2].backing.is_some());
    assert!(stats[0].backing.is_none());

    let nodes: Vec<BlockStats> = parse(fixture!("query-blockstats-nodes"), "query-blockstats");
    // Format and protocol node of d0, d1 (raw over file), d2 and its base.
    assert_eq!(nodes.len(), 8);
    assert!(nodes.iter().all(|n| n.node_name.is_some()));
}

#[test]
fn query_named_block_nodes_flat() {
    let nodes: Vec<BlockDeviceInfo> = parse(
        fixture!("query-named-block-nodes"),
        "query-named-block-nodes",
    );
    assert_eq!(nodes.len(), 8);
    assert_eq!(nodes.iter().filter(|n| n.drv == "file").count(), 4);
}

#[test]
fn query_pci_flattens_through_the_bridge() {
    let pci: Vec<PciInfo> = parse(fixture!("query-pci"), "query-pci");
    let flat = flatten_pci(&pci);
    let find = |id: &str| flat.iter().find(|f| f.qdev_id == id).unwrap();
    assert_eq!((find("vd0").bus, find("vd0").slot), (0, 5));
    assert_eq!((find("vd1").bus, find("vd1").slot), (0, 6));
    // vd2 sits behind the pcie-root-port rp0, on the bus the firmware numbered 1.
    assert_eq!(
        (find("vd2").bus, find("vd2").slot, find("vd2").function),
        (1, 0, 0)
    );
    assert_eq!(find("vd2").vendor, 0x1af4);
    assert_eq!(find("rp0").class, 0x0604);
}

#[test]
fn guest_info() {
    let info: GuestAgentInfo = parse(fixture!("guest-info"), "guest-info");
    assert!(info.version.starts_with("7.2"));
    for command in [
        "guest-get-diskstats",
        "guest-get-disks",
        "guest-exec",
        "guest-file-read",
    ] {
        assert!(info.supports(command), "{command}");
    }
}

#[test]
fn guest_diskstats_disks_and_fsinfo() {
    let stats: Vec<GuestDiskStatsInfo> = parse(fixture!("guest-get-diskstats"), "diskstats");
    let vda = stats.iter().find(|d| d.name == "vda").unwrap();
    assert!(vda.stats.read_ios.unwrap() > 0);
    assert!(vda.stats.ios_pgr.is_some());

    let disks: Vec<GuestDiskInfo> = parse(fixture!("guest-get-disks"), "guest-get-disks");
    let vda = disks.iter().find(|d| d.name == "/dev/vda").unwrap();
    let address = vda.address.as_ref().unwrap();
    assert_eq!(address.bus_type, "virtio");
    assert!(address.pci_controller.is_valid());

    let fs: Vec<GuestFilesystemInfo> = parse(fixture!("guest-get-fsinfo"), "guest-get-fsinfo");
    let root = fs.iter().find(|f| f.mountpoint == "/").unwrap();
    assert!(root.total_bytes.unwrap() > 0);
    assert!(!root.type_.is_empty());
}

#[test]
fn guest_exec_status() {
    let raw: GuestExecStatusRaw = parse(fixture!("guest-exec-status"), "guest-exec-status");
    assert!(raw.exited);
    assert_eq!(raw.exitcode, Some(0));
    let out = crate::base64::decode(raw.out_data.as_deref().unwrap()).unwrap();
    assert_eq!(out, b"hi\n");
}

#[test]
fn the_lost_member_check_catches_a_misspelt_field() {
    #[derive(serde::Deserialize, Serialize, Default)]
    #[serde(default)]
    struct Misspelt {
        rd_byte: Option<i64>,
    }
    let result = std::panic::catch_unwind(|| {
        parse::<Misspelt>(r#"{"return": {"rd_bytes": 5}}"#, "x");
    });
    assert!(result.is_err());
}
