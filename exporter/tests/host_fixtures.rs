//! The sysfs helpers over the captured fixture tree (tests/fixtures/linux-6.18, a real partition
//! on a loop device, a virtio disk, zram without a scheduler).

mod common;

use kvmio_exporter::host::blockdev::{physical_devices, read_scheduler, resolve_dev};
use kvmio_exporter::host::diskstats::{parse_diskstats, Field};

#[test]
fn captured_partition_resolves_to_its_disk() {
    let sys = common::fixtures().join("linux-6.18/sys");
    let b = resolve_dev(&sys, 259, 0).unwrap();
    assert_eq!(b.fs_device, "loop0p1");
    assert_eq!(b.host_device, "loop0");
    assert_eq!(b.physical_devices, vec!["loop0"]);
    let b = resolve_dev(&sys, 254, 0).unwrap();
    assert_eq!(
        (b.fs_device.as_str(), b.host_device.as_str()),
        ("vda", "vda")
    );
    assert_eq!(physical_devices(&sys, "vda").unwrap(), vec!["vda"]);
    let err = resolve_dev(&sys, 8, 0).unwrap_err();
    assert!(err.contains("8:0"), "{err}");
}

#[test]
fn captured_schedulers() {
    let sys = common::fixtures().join("linux-6.18/sys");
    assert_eq!(read_scheduler(&sys, "vda").as_deref(), Some("mq-deadline"));
    assert_eq!(read_scheduler(&sys, "loop0").as_deref(), Some("none"));
    assert_eq!(
        read_scheduler(&sys, "zram0"),
        None,
        "bio-based: no scheduler file"
    );
    assert_eq!(
        read_scheduler(&sys, "loop0p1"),
        None,
        "partitions have no queue"
    );
    assert_eq!(read_scheduler(&sys, "../block/vda"), None);
}

#[test]
fn every_fixture_line_parses() {
    for (variant, stats) in [
        ("linux-6.18", 17),
        ("derived-18fields", 15),
        ("derived-14fields", 11),
    ] {
        let text = std::fs::read_to_string(common::fixtures().join(variant).join("proc/diskstats"))
            .unwrap();
        let (disks, errors) = parse_diskstats(&text);
        assert!(errors.is_empty(), "{variant}: {errors:?}");
        assert_eq!(disks.len(), text.lines().count());
        for d in &disks {
            let want = if variant == "derived-14fields" && d.name == "loop0p1" {
                4
            } else {
                stats
            };
            assert_eq!(d.stat_count, want, "{variant} {}", d.name);
            assert!(d.get(Field::ReadsCompleted).is_some());
        }
    }
}
