//! One backend as QEMU runs it, whatever syntax created it: its node chain from the top node
//! down through `file` children to the protocol node (`query-blockstats`' `parent`), with
//! filter nodes (throttle, copy-on-read, blkdebug...) seen through: the format is the first
//! node that is not a filter, the settings that act on the host file (O_DIRECT, no-flush) are
//! the protocol node's, and every image is named by its real file path (not a `json:{...}`
//! description, which QEMU reports for LUKS, filters and some `-drive file=json:` setups), so
//! that every image series joins with `kvmio_disk_layer_info`.

use std::collections::HashSet;

use kvmio_qemu::types::{BlockDeviceInfo, BlockStats, ImageInfo};

use crate::vm::qmp::{device_label, NodeFacts};
use crate::vm::QmpSnapshot;

/// Block drivers that pass requests through to one child (QEMU's `is_filter` drivers and
/// `blkdebug`/`blkverify`, which tests and fault injection put in front of an image).
const FILTER_DRIVERS: &[&str] = &[
    "throttle",
    "copy-on-read",
    "blkdebug",
    "blkverify",
    "blklogwrites",
    "blkreplay",
    "preallocate",
    "compress",
    "copy-before-write",
    "snapshot-access",
];

/// Whether `driver` is a filter.
pub fn is_filter(driver: &str) -> bool {
    FILTER_DRIVERS.contains(&driver)
}

/// Longest node chain followed.
const MAX_CHAIN: usize = 32;

/// A backend seen through its filters.
#[derive(Debug, Default)]
pub struct Backend<'s> {
    /// Node names, top first, down to the protocol node.
    pub chain: Vec<&'s str>,
    /// The nodes' facts where known, in chain order.
    pub facts: Vec<Option<&'s NodeFacts>>,
    /// The image format (first node that is not a filter).
    pub format: String,
    /// The protocol driver (the bottom node's).
    pub driver: String,
    /// The image file's real path.
    pub path: String,
    /// `(real path, image)` of the top image and its backing images, filters skipped, each path
    /// once.
    pub images: Vec<(String, &'s ImageInfo)>,
    /// A qcow2 image's external data file.
    pub data_file: Option<String>,
}

impl<'s> Backend<'s> {
    /// The protocol node's facts (the node that does host I/O), if known.
    pub fn protocol(&self) -> Option<&'s NodeFacts> {
        self.facts.last().copied().flatten()
    }

    /// The throttle groups of the throttle nodes in the chain.
    pub fn throttle_groups(&self) -> impl Iterator<Item = &'s str> + '_ {
        self.facts
            .iter()
            .flatten()
            .filter_map(|f| f.throttle_group.as_deref())
    }

    /// The effective detect-zeroes: the first node (from the top) that has it on, else `off`
    /// (or the top node's value as `query-block` gives it).
    pub fn detect_zeroes(&self, inserted: &'s BlockDeviceInfo) -> &'s str {
        self.facts
            .iter()
            .flatten()
            .map(|f| f.detect_zeroes.as_str())
            .find(|d| !d.is_empty() && *d != "off")
            .unwrap_or(inserted.detect_zeroes.as_str())
    }
}

/// The statistics entry of the backend labelled `device`.
pub fn stats_of<'s>(snap: &'s QmpSnapshot, device: &str) -> Option<&'s BlockStats> {
    snap.blockstats.iter().find(|s| {
        device_label(
            s.device.as_deref(),
            s.qdev.as_deref(),
            s.node_name.as_deref(),
        ) == device
    })
}

/// The backend `device` of `snap`, whose top node is `inserted`.
pub fn backend<'s>(
    snap: &'s QmpSnapshot,
    device: &str,
    inserted: &'s BlockDeviceInfo,
) -> Backend<'s> {
    let mut b = Backend::default();
    let mut node = stats_of(snap, device);
    while let Some(s) = node {
        if b.chain.len() >= MAX_CHAIN {
            break;
        }
        let Some(name) = s.node_name.as_deref() else {
            break;
        };
        b.chain.push(name);
        b.facts.push(snap.nodes.get(name).map(|f| &**f));
        node = s.parent.as_deref();
    }
    if b.chain.is_empty() {
        if let Some(n) = inserted.node_name.as_deref() {
            b.chain.push(n);
            b.facts.push(snap.nodes.get(n).map(|f| &**f));
        }
    }
    let format_node = b.facts.iter().flatten().find(|f| !is_filter(&f.drv));
    let first_image = first_real_image(inserted.image.as_ref());
    b.format = match format_node {
        Some(f) => f.drv.clone(),
        None => first_image
            .map(|i| i.format.clone())
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| inserted.drv.clone()),
    };
    b.driver = b
        .protocol()
        .map(|f| f.drv.clone())
        .or_else(|| {
            let s = stats_of(snap, device)?;
            let mut bottom = s;
            for _ in 0..MAX_CHAIN {
                match bottom.parent.as_deref() {
                    Some(p) => bottom = p,
                    None => break,
                }
            }
            bottom
                .driver_specific
                .as_ref()
                .and_then(|d| d.get("driver"))
                .and_then(|d| d.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            if is_filter(&inserted.drv) {
                String::new()
            } else {
                inserted.drv.clone()
            }
        });
    // The real path: the format node's filename if it is one, else the protocol node's, else
    // a path inside a json: description, else what QEMU reports.
    let candidates = [
        format_node.map(|f| f.file.as_str()),
        first_image.map(|i| i.filename.as_str()),
        b.protocol().map(|f| f.file.as_str()),
    ];
    b.path = candidates
        .iter()
        .flatten()
        .find_map(|f| plain_path(f))
        .or_else(|| candidates.iter().flatten().find_map(|f| json_path(f)))
        .unwrap_or_else(|| super::image_path(inserted));
    let mut seen = HashSet::new();
    let mut image = first_image;
    let mut first = true;
    while let Some(i) = image {
        if b.images.len() >= MAX_CHAIN {
            break;
        }
        if !is_filter(&i.format) && !i.filename.is_empty() {
            let path = if first {
                b.path.clone()
            } else {
                real_path(&i.filename)
            };
            first = false;
            if seen.insert(path.clone()) {
                b.images.push((path, i));
            }
        }
        image = i.backing_image.as_deref();
    }
    b.data_file = format_node
        .and_then(|f| f.data_file.as_deref())
        .map(real_path);
    b
}

/// The first image of a chain that is not a filter's.
fn first_real_image(mut image: Option<&ImageInfo>) -> Option<&ImageInfo> {
    for _ in 0..MAX_CHAIN {
        let i = image?;
        if !is_filter(&i.format) {
            return Some(i);
        }
        image = i.backing_image.as_deref();
    }
    None
}

/// `f` if it is an absolute path.
fn plain_path(f: &str) -> Option<String> {
    f.starts_with('/').then(|| f.to_owned())
}

/// The protocol filename inside a `json:{...}` description.
fn json_path(f: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(f.strip_prefix("json:")?).ok()?;
    let mut node = &v;
    for _ in 0..MAX_CHAIN {
        if let Some(f) = node.get("filename").and_then(|f| f.as_str()) {
            return Some(f.to_owned());
        }
        node = node.get("file").filter(|c| c.is_object())?;
    }
    None
}

/// A filename as a real path where one can be found in it.
pub fn real_path(f: &str) -> String {
    plain_path(f)
        .or_else(|| json_path(f))
        .unwrap_or_else(|| f.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            real_path(
                r#"json:{"driver": "luks", "file": {"driver": "file", "filename": "/tmp/h1/l.luks"}, "key-secret": "sec0"}"#
            ),
            "/tmp/h1/l.luks"
        );
        assert_eq!(real_path("/a.raw"), "/a.raw");
        assert_eq!(
            real_path("nbd+unix:///?socket=/run/x.sock"),
            "nbd+unix:///?socket=/run/x.sock"
        );
        assert!(is_filter("throttle") && !is_filter("qcow2"));
    }
}
