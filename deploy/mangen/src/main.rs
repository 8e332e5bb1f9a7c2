//! `kvmio-mangen OUT_DIR`: writes a man page (section 1, roff) for every kvmio command and each
//! of its subcommands (`kvmio-crashtest-run.1`, ...) from the same clap definitions the binaries
//! parse with, so a page cannot drift from `--help`. The Debian package runs it at build time
//! (`debian/rules`); `man -l OUT_DIR/kvmio-exporter.1` reads one.
//!
//! Beside clap's sections (NAME, SYNOPSIS, DESCRIPTION, OPTIONS, SUBCOMMANDS, VERSION) each top
//! page gets FILES and SEE ALSO: where the package puts what the command reads and writes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// A command of the package: its clap definition and the extra sections of its top page.
struct Page {
    command: clap::Command,
    /// FILES: (path, what it is).
    files: &'static [(&'static str, &'static str)],
}

/// Every binary the package installs in /usr/bin. (A new binary adds its clap type here.)
fn pages() -> Vec<Page> {
    vec![
        Page {
            command: kvmio_exporter::cli::Cli::command(),
            files: &[
                (
                    "/etc/default/kvmio-exporter",
                    "flags of kvmio-exporter.service (KVMIO_EXPORTER_ARGS), with examples for libvirt, Proxmox VE and plain QEMU hosts",
                ),
                (
                    "/lib/systemd/system/kvmio-exporter.service",
                    "the unit: user kvmio, no capabilities; its comments say which metric families need which privilege",
                ),
                (
                    "/usr/share/kvmio/systemd/",
                    "drop-ins for the unit: Proxmox VE (root), the QEMU process IO and page-cache families (capabilities)",
                ),
                (
                    "/usr/share/kvmio/prometheus/",
                    "the scrape job, recording and alerting rules",
                ),
                ("/usr/share/kvmio/grafana/", "dashboards and provisioning files"),
                (
                    "/run/kvmio/",
                    "where plain QEMU puts monitor and agent sockets dedicated to kvmio (setgid kvmio)",
                ),
            ],
        },
        Page {
            command: kvmio_crashtest::cli::Cli::command(),
            files: &[
                (
                    "/etc/default/kvmio-crashtest",
                    "flags of kvmio-crashtest.service (KVMIO_CRASHTEST_ARGS)",
                ),
                (
                    "/lib/systemd/system/kvmio-crashtest.timer",
                    "the daily run (not enabled by the package: systemctl enable --now kvmio-crashtest.timer)",
                ),
                (
                    "/var/lib/kvmio/crashtest/",
                    "the scheduled runs' report.json, report.txt and crashtest.prom",
                ),
                ("/var/cache/kvmio/", "guest images built from the host's kernel"),
                (
                    "/usr/lib/kvmio/kvmio-guest",
                    "the program run inside the test VMs (--guest-bin, KVMIO_GUEST_BIN)",
                ),
            ],
        },
        Page {
            command: kvmio_top::cli::Cli::command(),
            files: &[(
                "/etc/default/kvmio-exporter",
                "where the local exporter listens (kvmio-top reads http://127.0.0.1:10990/metrics by default)",
            )],
        },
    ]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out] = args.as_slice() else {
        eprintln!("usage: kvmio-mangen OUT_DIR");
        return ExitCode::from(2);
    };
    match write_all(Path::new(out)) {
        Ok(written) => {
            for p in written {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kvmio-mangen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes every page into `out` (created if missing); returns the files written.
fn write_all(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let all = pages();
    let names: Vec<String> = all
        .iter()
        .map(|p| p.command.get_name().to_owned())
        .collect();
    let mut written = Vec::new();
    for page in all {
        let mut cmd = page.command;
        // Building the root gives each subcommand its full name (`kvmio-crashtest run`).
        cmd.build();
        let see_also: Vec<String> = names
            .iter()
            .filter(|n| *n != cmd.get_name())
            .cloned()
            .chain(subcommand_pages(&cmd).iter().map(man_name))
            .collect();
        let mut text = Vec::new();
        Man::new(cmd.clone()).render(&mut text)?;
        extra_sections(&mut text, page.files, &see_also)?;
        written.push(write_page(out, cmd.get_name(), &text)?);
        for sub in subcommand_pages(&cmd) {
            let mut text = Vec::new();
            Man::new(sub.clone()).render(&mut text)?;
            let mut roff = Roff::new();
            roff.control("SH", ["SEE ALSO"])
                .text([bold(cmd.get_name()), roman("(1)")]);
            text.extend_from_slice(roff.to_roff().as_bytes());
            written.push(write_page(out, &man_name(&sub), &text)?);
        }
    }
    Ok(written)
}

/// The subcommands worth a page of their own, depth first (not clap's `help`, not hidden ones).
fn subcommand_pages(cmd: &clap::Command) -> Vec<clap::Command> {
    let mut out = Vec::new();
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" || sub.is_hide_set() {
            continue;
        }
        out.push(sub.clone());
        out.extend(subcommand_pages(sub));
    }
    out
}

/// `kvmio-crashtest run` -> `kvmio-crashtest-run` (clap's display name of a built subcommand).
fn man_name(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or(cmd.get_name())
        .replace(' ', "-")
}

fn extra_sections(
    text: &mut Vec<u8>,
    files: &[(&str, &str)],
    see_also: &[String],
) -> std::io::Result<()> {
    let mut roff = Roff::new();
    roff.control("SH", ["FILES"]);
    for (path, what) in files {
        roff.control("TP", [] as [&str; 0])
            .text([bold(*path)])
            .text([roman(*what)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut refs = Vec::new();
    for (i, name) in see_also.iter().enumerate() {
        if i > 0 {
            refs.push(roman(", "));
        }
        refs.push(bold(name.as_str()));
        refs.push(roman("(1)"));
    }
    refs.push(roman(", /usr/share/doc/kvmio/README.md.gz"));
    roff.text(refs);
    text.extend_from_slice(roff.to_roff().as_bytes());
    Ok(())
}

fn write_page(out: &Path, name: &str, text: &[u8]) -> std::io::Result<PathBuf> {
    let path = out.join(format!("{name}.1"));
    std::fs::write(&path, text)?;
    Ok(path)
}
