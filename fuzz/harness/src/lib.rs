//! The fuzz targets' entry points: one function per parser of outside input, each calling the
//! parser through the crate's own public API and checking what must hold for any input (no
//! panic, no hang, the bounds the parser promises).
//!
//! `fuzz/` (cargo-fuzz, nightly, its own workspace) wraps each of [`TARGETS`] in a
//! `fuzz_target!`; this crate's test (`tests/replay.rs`, stable, run by `make test`) feeds each
//! one its committed corpus (`fuzz/corpus/NAME/`), its regressions (`fuzz/regressions/NAME/`:
//! inputs that once crashed or hung) and the seeds made from the real fixtures ([`seeds`]), so
//! a regression fails CI without a nightly toolchain. `fuzz/README.md` says how to fuzz.

mod exporter;
mod guest;
mod nbd;
mod qemu;
pub mod seeds;
mod stream;

/// One fuzz target: its name (the directory under `fuzz/corpus/` and the binary under
/// `fuzz/fuzz_targets/`) and its entry point.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every fuzz target, in the order the replay runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "line_reader",
        run: qemu::line_reader,
    },
    Target {
        name: "qmp_client",
        run: qemu::qmp_client,
    },
    Target {
        name: "qga_replies",
        run: qemu::qga_replies,
    },
    Target {
        name: "guest_message",
        run: guest::guest_message,
    },
    Target {
        name: "record",
        run: guest::record,
    },
    Target {
        name: "ack_log",
        run: guest::ack_log,
    },
    Target {
        name: "nbd_requests",
        run: nbd::nbd_requests,
    },
    Target {
        name: "host_diskstats",
        run: exporter::host_diskstats,
    },
    Target {
        name: "host_sysfs_mountinfo",
        run: exporter::host_sysfs_mountinfo,
    },
    Target {
        name: "qemu_cmdline",
        run: exporter::qemu_cmdline,
    },
    Target {
        name: "config_file",
        run: exporter::config_file,
    },
    Target {
        name: "flags",
        run: exporter::flags,
    },
    Target {
        name: "crashtest_results",
        run: exporter::crashtest_results,
    },
    Target {
        name: "domain_xml",
        run: exporter::domain_xml,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A runtime for the async parsers, made once per process (a fuzzer calls a target millions of
/// times).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// A directory of this process for targets whose entry point reads a file.
fn scratch() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::path::Path::new("/dev/shm");
        let builder = tempfile::Builder::new()
            .prefix("kvmio-fuzz")
            .tempdir_in(base);
        builder
            .or_else(|_| tempfile::Builder::new().prefix("kvmio-fuzz").tempdir())
            .expect("a scratch directory")
    })
    .path()
}
