//! What the experiment runs: VM setups (cache mode × layout), and in each booted VM every
//! guest scheduler × workload.
//!
//! The scheduler is switched inside the running guest (`/sys/block/vda/queue/scheduler`), so
//! it costs no boot; cache mode and layout are QEMU's and the host's, so each pair is a boot.
//! Workloads run in the listed order on the same region: writes first (they also allocate a
//! thin image), then reads of what was written (a read of a hole never reaches the host).

use kvmio_guest::bench::{BenchSpec, Fsync, Op, Pattern};
use kvmio_qemu::CacheMode;

use crate::layout::Layout;

/// One workload, applied to the measured region of `vda`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub name: &'static str,
    pub op: Op,
    pub pattern: Pattern,
    pub block_size: usize,
    pub jobs: usize,
    pub direct: bool,
    pub fsync: Fsync,
    /// How much of the region it covers, as a divisor (1 = all of it): small synchronous
    /// requests take long under TCG, so they cover a fraction.
    pub region_divisor: u64,
    /// What it is there to show.
    pub why: &'static str,
}

impl Workload {
    /// Four jobs of direct 4 KiB requests over an eighth of the region: what a scheduler can
    /// merge (or not), and what a host cache hits.
    const fn small(name: &'static str, op: Op, pattern: Pattern, why: &'static str) -> Workload {
        Workload {
            name,
            op,
            pattern,
            block_size: 4 << 10,
            jobs: 4,
            direct: true,
            fsync: Fsync::None,
            region_divisor: 8,
            why,
        }
    }

    pub fn spec(&self, region_bytes: u64, seed: u64) -> BenchSpec {
        let size = region_bytes / self.region_divisor;
        BenchSpec {
            dev: "/dev/vda".into(),
            op: self.op,
            pattern: self.pattern,
            block_size: self.block_size,
            offset: 0,
            size: size - size % (self.block_size as u64 * self.jobs as u64),
            jobs: self.jobs,
            direct: self.direct,
            fsync: self.fsync,
            // Reads must reach the disk, not the guest's page cache; writes start clean.
            drop_caches: true,
            seed,
        }
    }
}

/// The workloads, in run order.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "seq-write-buffered",
        op: Op::Write,
        pattern: Pattern::Seq,
        block_size: 64 << 10,
        jobs: 1,
        direct: false,
        fsync: Fsync::End,
        region_divisor: 1,
        why: "large guest requests built by the page cache at writeback (claims 1, 4)",
    },
    Workload::small(
        "seq-write-direct-4k-4jobs",
        Op::Write,
        Pattern::Seq,
        "four jobs writing adjacent 4 KiB blocks: what a scheduler can merge (claim 2)",
    ),
    Workload::small(
        "rand-write-direct-4k-4jobs",
        Op::Write,
        Pattern::Rand,
        "random small writes: nothing to merge, scheduler overhead only (claim 2)",
    ),
    Workload {
        name: "rand-write-direct-4k-fsync",
        op: Op::Write,
        pattern: Pattern::Rand,
        block_size: 4 << 10,
        jobs: 1,
        direct: true,
        fsync: Fsync::Each,
        region_divisor: 64,
        why: "a database's commit pattern: every write made durable (claim 4)",
    },
    Workload {
        name: "seq-read-buffered",
        op: Op::Read,
        pattern: Pattern::Seq,
        block_size: 64 << 10,
        jobs: 1,
        direct: false,
        fsync: Fsync::None,
        region_divisor: 1,
        why: "readahead's large requests; served by the host page cache or the disk (claims 1, 3)",
    },
    Workload::small(
        "rand-read-direct-4k-4jobs",
        Op::Read,
        Pattern::Rand,
        "random small reads: host cache hits or device reads (claims 3, 4)",
    ),
];

/// A preset: how much to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Each claim's sweep (about 20 minutes under TCG on 2 cores): layouts at cache=none,
    /// schedulers on a preallocated and a fragmented image, cache modes on a preallocated
    /// and a thin image.
    Full,
    /// Two boots, two schedulers, two workloads: for `make test`.
    Smoke,
}

/// One boot: QEMU's cache mode, the image layout, and the guest schedulers run in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    pub cache: CacheMode,
    pub layout: Layout,
    /// Wanted schedulers; those the guest does not offer are skipped and said so.
    pub schedulers: Vec<String>,
}

/// The whole experiment.
#[derive(Debug, Clone)]
pub struct Plan {
    pub setups: Vec<Setup>,
    pub workloads: Vec<Workload>,
    pub region_mib: u64,
    pub disk_mib: u64,
    pub seed: u64,
}

/// Every scheduler the claims name (`cfq`, the article's era, is gone since Linux 5.0; `bfq`
/// is its successor).
pub const ALL_SCHEDULERS: [&str; 4] = ["none", "mq-deadline", "bfq", "kyber"];

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

impl Plan {
    pub fn preset(preset: Preset, seed: u64) -> Plan {
        match preset {
            Preset::Full => {
                let mut setups = Vec::new();
                // Claims 1 and 2: every layout at cache=none (QEMU's requests reach the host
                // device unchanged by a host page cache); every scheduler where the layout
                // matters most, the default scheduler elsewhere.
                for layout in Layout::ALL {
                    let sweep = matches!(layout, Layout::RawPrealloc | Layout::Qcow2Fragmented);
                    setups.push(Setup {
                        cache: CacheMode::None,
                        layout,
                        schedulers: if sweep {
                            names(&ALL_SCHEDULERS)
                        } else {
                            names(&["mq-deadline"])
                        },
                    });
                }
                // Claims 3 and 4: the other cache modes, on a preallocated and a thin image.
                for cache in [
                    CacheMode::Writeback,
                    CacheMode::Writethrough,
                    CacheMode::Directsync,
                    CacheMode::Unsafe,
                ] {
                    let layouts: &[Layout] = match cache {
                        CacheMode::Writeback | CacheMode::Writethrough => {
                            &[Layout::RawPrealloc, Layout::Qcow2Thin]
                        }
                        _ => &[Layout::RawPrealloc],
                    };
                    for &layout in layouts {
                        setups.push(Setup {
                            cache,
                            layout,
                            schedulers: names(&["mq-deadline"]),
                        });
                    }
                }
                // cache=none on qcow2-thin at mq-deadline is already in the first sweep.
                Plan {
                    setups,
                    workloads: WORKLOADS.to_vec(),
                    region_mib: 64,
                    disk_mib: 256,
                    seed,
                }
            }
            Preset::Smoke => Plan {
                setups: [Layout::Qcow2Thin, Layout::Qcow2Fragmented]
                    .into_iter()
                    .map(|layout| Setup {
                        cache: CacheMode::None,
                        layout,
                        schedulers: names(&["none", "bfq"]),
                    })
                    .collect(),
                workloads: WORKLOADS
                    .iter()
                    .copied()
                    .filter(|w| matches!(w.name, "seq-write-buffered" | "seq-read-buffered"))
                    .collect(),
                region_mib: 16,
                disk_mib: 64,
                seed,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_gives_a_valid_bench_command() {
        for preset in [Preset::Full, Preset::Smoke] {
            let plan = Plan::preset(preset, 1);
            for w in &plan.workloads {
                let spec = w.spec(plan.region_mib << 20, 1);
                let args = spec.to_args();
                assert_eq!(BenchSpec::from_args(&args).unwrap(), spec, "{}", w.name);
                assert!(spec.offset + spec.size <= plan.region_mib << 20);
            }
            assert!(plan.region_mib * 2 <= plan.disk_mib);
        }
    }

    #[test]
    fn the_full_preset_covers_each_claim() {
        let plan = Plan::preset(Preset::Full, 1);
        // Every layout at cache=none; every scheduler on at least two layouts.
        for layout in Layout::ALL {
            assert!(plan
                .setups
                .iter()
                .any(|s| s.layout == layout && s.cache == CacheMode::None));
        }
        for sched in ALL_SCHEDULERS {
            let n = plan
                .setups
                .iter()
                .filter(|s| s.schedulers.iter().any(|x| x == sched))
                .count();
            assert!(n >= 2, "{sched}");
        }
        // Every cache mode on the preallocated image; no setup twice.
        for cache in CacheMode::ALL {
            assert!(plan
                .setups
                .iter()
                .any(|s| s.cache == cache && s.layout == Layout::RawPrealloc));
        }
        for (i, a) in plan.setups.iter().enumerate() {
            assert!(plan.setups[i + 1..]
                .iter()
                .all(|b| (a.cache, a.layout) != (b.cache, b.layout)));
        }
    }

    #[test]
    fn writes_come_before_reads() {
        let first_read = WORKLOADS.iter().position(|w| w.op == Op::Read).unwrap();
        assert!(WORKLOADS[first_read..].iter().all(|w| w.op == Op::Read));
    }
}
