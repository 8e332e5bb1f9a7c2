//! The image layouts the seed's thin-provisioning claim is about.
//!
//! The claim (seed, "精简置备"): on a thinly provisioned image, blocks adjacent in the guest
//! are not adjacent on the host, so requests the guest merged are split again below QEMU.
//! Four layouts put that to the test:
//!
//! * `qcow2-thin`: a fresh qcow2; clusters are allocated in the order the guest first writes
//!   them, so a guest that writes sequentially gets a mostly contiguous file;
//! * `qcow2-fragmented`: a qcow2 whose clusters in the measured region were allocated by
//!   earlier writes in a seeded random order (`qemu-io` on the host before the guest boots):
//!   what a long-lived thin image that took random writes looks like. A guest-sequential
//!   range then maps to scattered host offsets, and qcow2 must split each request at every
//!   discontinuity between clusters;
//! * `raw-prealloc`: a raw image with its blocks reserved up front (`preallocation=falloc`,
//!   what `qemu-img create` and most management layers offer);
//! * `raw-sparse`: a raw image with holes; the host file system allocates on first write.

use std::path::Path;
use std::process::Command;

use kvmio_crashtest::qemu_img::{self, QemuImgError};
use kvmio_crashtest::vm::ImageFormat;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// qcow2's default cluster size: the unit of allocation, and of splitting.
pub const QCOW2_CLUSTER: u64 = 64 << 10;

/// An image layout; its name (`qcow2-thin`...) is the variant's in kebab case.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "kebab-case")]
pub enum Layout {
    Qcow2Thin,
    Qcow2Fragmented,
    RawPrealloc,
    RawSparse,
}

impl Layout {
    pub const ALL: [Layout; 4] = [
        Layout::Qcow2Thin,
        Layout::Qcow2Fragmented,
        Layout::RawPrealloc,
        Layout::RawSparse,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn format(self) -> ImageFormat {
        match self {
            Layout::Qcow2Thin | Layout::Qcow2Fragmented => ImageFormat::Qcow2,
            Layout::RawPrealloc | Layout::RawSparse => ImageFormat::Raw,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot create {path}")]
    Create {
        path: String,
        #[source]
        source: QemuImgError,
    },
    #[error("cannot run qemu-io")]
    QemuIoSpawn(#[source] std::io::Error),
    #[error("qemu-io could not fragment {path}: {stderr}")]
    QemuIo { path: String, stderr: String },
}

/// Creates `path` with `layout`, `size_mib` large; for `qcow2-fragmented`, the first
/// `region_mib` are allocated in a random order drawn from `seed`.
pub fn create(
    qemu_img: &Path,
    qemu_io: &Path,
    layout: Layout,
    path: &Path,
    size_mib: u64,
    region_mib: u64,
    seed: u64,
) -> Result<(), LayoutError> {
    let size = format!("{size_mib}M");
    let shown = path.display().to_string();
    let created = match layout {
        Layout::Qcow2Thin | Layout::Qcow2Fragmented => {
            qemu_img::create(qemu_img, "qcow2", path, &size)
        }
        Layout::RawSparse => qemu_img::create(qemu_img, "raw", path, &size),
        Layout::RawPrealloc => qemu_img::run(
            qemu_img,
            &[
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "raw".as_ref(),
                "-o".as_ref(),
                "preallocation=falloc".as_ref(),
                path.as_os_str(),
                size.as_ref(),
            ],
        )
        .map(|_| ()),
    };
    created.map_err(|source| LayoutError::Create {
        path: shown.clone(),
        source,
    })?;
    if layout == Layout::Qcow2Fragmented {
        fragment(qemu_io, path, region_mib, seed)?;
    }
    Ok(())
}

/// The order in which `fragment` allocates the region's clusters.
pub fn cluster_order(region_mib: u64, seed: u64) -> Vec<u64> {
    let clusters = (region_mib << 20) / QCOW2_CLUSTER;
    let mut order: Vec<u64> = (0..clusters).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    order
}

/// Allocates every cluster of the first `region_mib` in a seeded random order, one cluster a
/// write, so that guest offset and host offset are unrelated within the region.
fn fragment(qemu_io: &Path, path: &Path, region_mib: u64, seed: u64) -> Result<(), LayoutError> {
    let mut cmd = Command::new(qemu_io);
    cmd.args(["-f", "qcow2"]);
    for cluster in cluster_order(region_mib, seed) {
        cmd.arg("-c").arg(format!(
            "write -q -P 0x5a {} {}",
            cluster * QCOW2_CLUSTER,
            QCOW2_CLUSTER
        ));
    }
    cmd.arg(path);
    let out = cmd.output().map_err(LayoutError::QemuIoSpawn)?;
    if !out.status.success() {
        return Err(LayoutError::QemuIo {
            path: path.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for l in Layout::ALL {
            assert_eq!(l.as_str().parse::<Layout>().unwrap(), l);
        }
        assert!("qcow3".parse::<Layout>().is_err());
        // The names result rows and file names carry.
        assert_eq!(
            Layout::ALL.map(Layout::as_str),
            [
                "qcow2-thin",
                "qcow2-fragmented",
                "raw-prealloc",
                "raw-sparse"
            ]
        );
    }

    #[test]
    fn the_fragmented_order_is_a_seeded_permutation() {
        let a = cluster_order(4, 1);
        assert_eq!(a.len(), 64);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..64).collect::<Vec<_>>());
        assert_eq!(a, cluster_order(4, 1));
        assert_ne!(a, cluster_order(4, 2));
        // Random enough that adjacent guest clusters are rarely adjacent in allocation order.
        let adjacent = a.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(adjacent < 8, "{adjacent} adjacent pairs");
    }

    /// Real qemu-img and qemu-io: the fragmented image maps guest-adjacent clusters to
    /// scattered host offsets (`qemu-img map`), the thin one keeps them in order.
    #[test]
    fn fragmented_images_are_really_scattered() {
        let dir = tempfile::tempdir().unwrap();
        let img = Path::new("qemu-img");
        let io = Path::new("qemu-io");
        let frag = dir.path().join("f.qcow2");
        create(img, io, Layout::Qcow2Fragmented, &frag, 16, 4, 9).unwrap();
        let out = Command::new("qemu-img")
            .args(["map", "--output=json", "-f", "qcow2"])
            .arg(&frag)
            .output()
            .unwrap();
        assert!(out.status.success());
        let map: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let data: Vec<_> = map
            .iter()
            .filter(|e| e["data"].as_bool() == Some(true))
            .collect();
        // 64 clusters allocated at random: qemu-img map merges only host-contiguous runs, so
        // a scattered image has many extents; a sequentially allocated one would have one.
        assert!(data.len() > 32, "{} extents", data.len());
        let raw = dir.path().join("p.raw");
        create(img, io, Layout::RawPrealloc, &raw, 8, 0, 0).unwrap();
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), 8 << 20);
    }
}
