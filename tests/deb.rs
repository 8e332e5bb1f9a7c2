//! The Debian package (`make deb`, `debian/`): built from the binaries `cargo build --workspace`
//! just made (deploy/deb.sh, the same script `make deb` runs on the release build), its file
//! list and control data checked, lintian run on it (no error; warnings printed), then installed,
//! reinstalled, removed and purged in a throwaway root.
//!
//! The throwaway root is this machine, copy-on-write: an overlay whose lower layer is `/` and
//! whose upper layer is a tmpfs, mounted in a private mount namespace (held by a `sleep` that the
//! test kills on every path: the namespace, its mounts and the tmpfs go with it). dpkg runs in a
//! chroot of it with the host's real dpkg database, adduser, systemd-sysusers, systemd-tmpfiles
//! and deb-systemd-helper, so the maintainer scripts meet what a Debian 12 host has, in seconds,
//! while the host itself is never changed. (A `dpkg --root` on a minimal root would need those
//! tools copied in and would not be representative; a debootstrap'd root takes minutes and a
//! download at every run.) What the package leaves behind after the purge is read straight
//! from the upper layer: every file it changed.
//!
//! man-db's trigger is switched off in the root (its index takes longer than the rest of an
//! install here); `man -w` finds the pages by path. The machine has no running systemd: deb-systemd-invoke starts nothing (and a policy-rc.d in
//! the root forbids it anyway), so the unit files are checked with `systemd-analyze verify` in
//! the root instead, as installed and with each shipped drop-in.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kvmio_e2e::{run, wait_for, which, workspace_bin, ChildProcess};
use kvmio_test_support::spawn_tied;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn require(bin: &str, package: &str) {
    assert!(
        which(bin).is_some(),
        "{bin} not found: install {package} (deploy/setup.sh does)"
    );
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let (status, out, err) = run(cmd);
    assert!(status.success(), "{cmd:?} failed ({status}):\n{out}\n{err}");
    out
}

/// Builds the package from the debug binaries into `out`; returns the .deb.
fn build_package(out: &Path) -> PathBuf {
    let bin_dir = workspace_bin("kvmio-mangen")
        .parent()
        .unwrap()
        .to_path_buf();
    // gzip: dpkg-deb's default xz takes about a minute over the debug binaries here.
    let stdout = ok(Command::new(repo().join("deploy/deb.sh"))
        .env("KVMIO_DEB_COMPRESSION", "gzip")
        .arg(&bin_dir)
        .arg(out));
    PathBuf::from(stdout.trim())
}

/// Every regular file and symlink the package installs (paths from `/`).
fn package_files(deb: &Path) -> BTreeSet<String> {
    ok(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            // `-rw-r--r-- root/root 1234 2026-11-29 13:00 ./usr/bin/x` (a symlink adds ` -> target`)
            let path = l
                .split_whitespace()
                .nth(5)
                .expect("dpkg-deb --contents line");
            path.trim_start_matches('.').to_owned()
        })
        .collect()
}

/// What the package must contain: the commands, the guest program, the units, the snippets, the
/// conffiles, every rule file, dashboard and drop-in of the source tree, and the man pages.
fn expected_files() -> BTreeSet<String> {
    let mut want: BTreeSet<String> = [
        "/usr/bin/kvmio-exporter",
        "/usr/bin/kvmio-crashtest",
        "/usr/bin/kvmio-top",
        "/usr/lib/kvmio/kvmio-guest",
        "/lib/systemd/system/kvmio-exporter.service",
        "/lib/systemd/system/kvmio-crashtest.service",
        "/lib/systemd/system/kvmio-crashtest.timer",
        "/usr/lib/sysusers.d/kvmio.conf",
        "/usr/lib/tmpfiles.d/kvmio.conf",
        "/etc/default/kvmio-exporter",
        "/etc/default/kvmio-crashtest",
        "/usr/share/kvmio/prometheus/kvmio-scrape.yml",
        "/usr/share/kvmio/prometheus/prometheus.yml",
        "/usr/share/kvmio/grafana/provisioning/dashboards/kvmio.yml",
        "/usr/share/kvmio/grafana/provisioning/datasources/kvmio.yml",
        "/usr/share/doc/kvmio/copyright",
        "/usr/share/doc/kvmio/changelog.gz",
        "/usr/share/doc/kvmio/README.md.gz",
        "/usr/share/doc/kvmio/runbook.md.gz",
        "/usr/share/lintian/overrides/kvmio",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // A page per command and per subcommand, as the binaries' own help lists them.
    for cmd in ["kvmio-exporter", "kvmio-crashtest", "kvmio-top"] {
        for page in man_pages(&workspace_bin(cmd), &[]) {
            want.insert(format!("/usr/share/man/man1/{page}.1.gz"));
        }
    }
    for (dir, suffix, to) in [
        (
            "deploy/prometheus/rules",
            ".rules.yml",
            "/usr/share/kvmio/prometheus/rules",
        ),
        (
            "grafana/dashboards",
            ".json",
            "/usr/share/kvmio/grafana/dashboards",
        ),
        (
            "deploy/systemd/examples",
            ".conf",
            "/usr/share/kvmio/systemd",
        ),
    ] {
        let mut n = 0;
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.ends_with(suffix) {
                want.insert(format!("{to}/{name}"));
                n += 1;
            }
        }
        assert!(n > 0, "no {suffix} file in {dir}");
    }
    want
}

/// The man pages a command needs: its own and one per subcommand, recursively (`kvmio-crashtest
/// guest build` -> `kvmio-crashtest-guest-build`), read from the "Commands:" section of clap's
/// help, clap's own `help` aside.
fn man_pages(bin: &Path, path: &[String]) -> Vec<String> {
    let name = bin.file_name().unwrap().to_str().unwrap();
    let mut pages = vec![std::iter::once(name.to_owned())
        .chain(path.iter().cloned())
        .collect::<Vec<_>>()
        .join("-")];
    let help = ok(Command::new(bin).args(path).arg("--help"));
    let subcommands: Vec<String> = help
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect();
    for sub in subcommands {
        let mut sub_path = path.to_vec();
        sub_path.push(sub);
        pages.extend(man_pages(bin, &sub_path));
    }
    pages
}

/// A throwaway copy-on-write root: this machine (see the module comment). Dropping it kills
/// the namespace's only process, which takes the mounts and the tmpfs with it.
struct ThrowawayRoot {
    holder: ChildProcess,
    /// The merged root, as a path inside the namespace (for chroot).
    root: PathBuf,
    /// The same, as this process reaches it: through the holder's `/proc/PID/root`, which
    /// resolves paths in the holder's mount namespace.
    view: PathBuf,
    upper: PathBuf,
    _dir: tempfile::TempDir,
}

impl ThrowawayRoot {
    fn new() -> ThrowawayRoot {
        let dir = tempfile::tempdir().unwrap();
        let mut holder = spawn_tied(
            Command::new("unshare").args([
                "--mount",
                "--propagation",
                "private",
                "sleep",
                "infinity",
            ]),
            "unshare",
        );
        // nsenter must not run before unshare(2) did: it would mount on the host.
        let own = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let pid = holder.pid();
        wait_for(
            "the private mount namespace",
            Duration::from_secs(10),
            || {
                assert!(holder.running(), "unshare --mount exited");
                let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
                (theirs != own && exe.ends_with("sleep")).then_some(())
            },
        );
        let t = dir.path().display().to_string();
        let clone = ThrowawayRoot {
            holder,
            root: dir.path().join("merged"),
            view: Path::new(&format!("/proc/{pid}/root"))
                .join(dir.path().join("merged").strip_prefix("/").unwrap()),
            upper: dir.path().join("upper"),
            _dir: dir,
        };
        clone.in_namespace(&format!(
            "set -e
             mount -t tmpfs -o mode=0755 kvmio-deb-test {t}
             mkdir {t}/upper {t}/work {t}/merged
             mount -t overlay overlay -o lowerdir=/,upperdir={t}/upper,workdir={t}/work {t}/merged
             mount --rbind /dev {t}/merged/dev
             mount -t proc proc {t}/merged/proc
             mount -t tmpfs tmpfs {t}/merged/run
             mount -t tmpfs tmpfs {t}/merged/tmp
             printf '#!/bin/sh\\nexit 101\\n' > {t}/merged/usr/sbin/policy-rc.d
             chmod 755 {t}/merged/usr/sbin/policy-rc.d
             rm -f {t}/merged/var/lib/man-db/auto-update"
        ));
        clone
    }

    /// Runs a shell script in the namespace, outside the chroot; returns stdout.
    fn in_namespace(&self, script: &str) -> String {
        ok(Command::new("nsenter")
            .arg("-t")
            .arg(self.holder.pid().to_string())
            .args(["-m", "sh", "-c", script]))
    }

    /// Runs a shell script in the chroot: (success, stdout + stderr).
    fn try_sh(&self, script: &str) -> (bool, String) {
        let (status, out, err) = run(Command::new("nsenter")
            .arg("-t")
            .arg(self.holder.pid().to_string())
            .arg("-m")
            .arg("chroot")
            .arg(&self.root)
            .args([
                "/usr/bin/env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
            ])
            .args(["sh", "-c", script]));
        (status.success(), format!("{out}{err}"))
    }

    fn sh(&self, script: &str) -> String {
        let (success, out) = self.try_sh(script);
        assert!(success, "in the root: {script}\n{out}");
        out
    }

    /// Paths (from `/`) of what the upper layer holds, what changed against the host: every
    /// file, and with `dirs` the directories too (a directory the root shares with the host
    /// is there as soon as something in it changed).
    fn changed_paths(&self, dirs: bool) -> Vec<String> {
        let out = self.in_namespace(&format!(
            "cd {} && find . -mindepth 1 {}",
            self.upper.display(),
            if dirs { "" } else { "! -type d" }
        ));
        out.lines()
            .map(|l| l.trim_start_matches('.').to_owned())
            .collect()
    }

    /// Copies the package into the root's /tmp; returns its path there.
    fn put(&self, deb: &Path) -> String {
        let name = deb.file_name().unwrap().to_str().unwrap();
        self.in_namespace(&format!(
            "cp {} {}/tmp/{name}",
            deb.display(),
            self.root.display()
        ));
        format!("/tmp/{name}")
    }

    /// `p` in the root, for this process's file system calls.
    fn path(&self, p: &str) -> PathBuf {
        self.view.join(p.trim_start_matches('/'))
    }
}

/// lintian's verdict: no error. Warnings and informational tags are printed for the record;
/// overrides (debian/kvmio.lintian-overrides) each carry their reason.
fn lintian(deb: &Path) {
    let started = Instant::now();
    let (status, out, err) = run(Command::new("lintian")
        .args([
            "--display-info",
            "--tag-display-limit",
            "0",
            "--fail-on",
            "error",
        ])
        .arg(deb));
    eprintln!(
        "lintian ({:.0?}, exit {status}):\n{out}{err}",
        started.elapsed()
    );
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    assert!(status.success(), "lintian failed: {out}{err}");
}

/// `systemd-analyze verify` of the installed units in the root; any output fails (it reports
/// unknown keys and bad values as warnings and exits 0).
fn verify_units(root: &ThrowawayRoot, what: &str) {
    let (success, out) = root.try_sh(
        "cd /lib/systemd/system && systemd-analyze verify kvmio-exporter.service \
         kvmio-crashtest.service kvmio-crashtest.timer",
    );
    assert!(
        success && out.trim().is_empty(),
        "systemd-analyze verify ({what}):\n{out}"
    );
}

fn user_entry(root: &ThrowawayRoot) -> Option<String> {
    let (found, out) = root.try_sh("getent passwd kvmio");
    found.then(|| out.trim().to_owned())
}

/// Installs the package and checks what its maintainer scripts did; returns the user's passwd
/// entry.
fn install(root: &ThrowawayRoot, deb: &str, how: &str) -> String {
    let started = Instant::now();
    root.sh(&format!("dpkg -i {deb}"));
    // Installed as a whole.
    assert!(root
        .sh("dpkg-query -W -f='${Status}' kvmio")
        .contains("install ok installed"));
    let passwd = user_entry(root).unwrap_or_else(|| panic!("{how}: no user kvmio"));
    let fields: Vec<&str> = passwd.split(':').collect();
    assert_eq!(fields[5], "/var/lib/kvmio", "{how}: home of {passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{how}: shell of {passwd}");
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "{how}: kvmio is no system user: {passwd}");
    // Group libvirt (setup.sh installs libvirt-daemon-system): joined by postinst.
    if root.try_sh("getent group libvirt").0 {
        let groups = root.sh("id -nG kvmio");
        assert!(
            groups.split_whitespace().any(|g| g == "libvirt"),
            "{how}: kvmio not in group libvirt: {groups}"
        );
    }
    // tmpfiles: the results directory and the setgid socket directory, owned as the snippet says.
    let state = std::fs::metadata(root.path("/var/lib/kvmio/crashtest")).unwrap();
    assert_eq!(state.uid(), uid, "{how}: owner of /var/lib/kvmio/crashtest");
    let run_dir = std::fs::metadata(root.path("/run/kvmio")).unwrap();
    assert_eq!(run_dir.mode() & 0o7777, 0o2770, "{how}: mode of /run/kvmio");
    // The exporter enabled, the timer not (the operator opts in).
    let wants = root.path("/etc/systemd/system/multi-user.target.wants/kvmio-exporter.service");
    assert!(
        wants.is_symlink(),
        "{how}: kvmio-exporter.service is not enabled"
    );
    assert!(!root
        .path("/etc/systemd/system/timers.target.wants/kvmio-crashtest.timer")
        .exists());
    // Both environment files are conffiles.
    let conffiles = root.sh("dpkg-query -W -f='${Conffiles}' kvmio");
    for f in [
        "/etc/default/kvmio-exporter",
        "/etc/default/kvmio-crashtest",
    ] {
        assert!(
            conffiles.contains(f),
            "{how}: {f} is no conffile:\n{conffiles}"
        );
    }
    // The installed binaries run, and kvmio-crashtest finds its guest program in /usr/lib/kvmio.
    assert!(root
        .sh("kvmio-exporter --version")
        .starts_with("kvmio-exporter "));
    let help = root.sh("kvmio-crashtest guest build --help");
    assert!(help.contains("--guest-bin"), "{help}");
    root.sh("man -w kvmio-exporter kvmio-crashtest-run kvmio-top >/dev/null");
    eprintln!("{how}: installed in {:.1?}", started.elapsed());
    passwd
}

/// The installed units (alone and with each shipped drop-in), a reinstall over an edited
/// conffile, and a removal that keeps configuration and data.
fn units_reinstall_remove(root: &ThrowawayRoot, deb: &str) {
    verify_units(root, "as installed");
    for dropin in ["proxmox.conf", "capabilities.conf"] {
        root.sh(&format!(
            "mkdir -p /etc/systemd/system/kvmio-exporter.service.d && \
             cp /usr/share/kvmio/systemd/{dropin} /etc/systemd/system/kvmio-exporter.service.d/"
        ));
        verify_units(root, dropin);
    }
    root.sh("rm -r /etc/systemd/system/kvmio-exporter.service.d");

    // Reinstalling keeps an edited conffile.
    root.sh("echo '# edited' >> /etc/default/kvmio-exporter");
    root.sh(&format!("dpkg -i {deb}"));
    assert!(root
        .sh("cat /etc/default/kvmio-exporter")
        .contains("# edited"));

    // Remove: the programs go, the configuration and data stay.
    root.sh("dpkg -r kvmio");
    assert!(!root.path("/usr/bin/kvmio-exporter").exists());
    assert!(root.path("/etc/default/kvmio-exporter").exists());
    assert!(root.path("/var/lib/kvmio").exists());
}

/// Purges the package (installed or removed): nothing of it is left in the root but the user
/// (kept, as Debian does for system users), and nothing else changed but dpkg's records, the
/// accounts, logs and `also_changed`.
fn purge(root: &ThrowawayRoot, how: &str, passwd: &str, also_changed: &[&str]) {
    // Data the units would have made: the purge removes it.
    root.sh("mkdir -p /var/cache/kvmio/guest && touch /var/lib/kvmio/crashtest/report.json");
    root.sh("dpkg -P kvmio");
    assert_eq!(
        user_entry(root).as_deref(),
        Some(passwd),
        "{how}: the user is kept"
    );
    let left: Vec<String> = root
        .changed_paths(true)
        .into_iter()
        .filter(|p| p.contains("kvmio"))
        .filter(|p| !p.starts_with("/tmp/"))
        .collect();
    assert!(left.is_empty(), "{how}: left after purge: {left:#?}");
    for dir in ["/var/lib/kvmio", "/var/cache/kvmio", "/run/kvmio"] {
        assert!(!root.path(dir).exists(), "{how}: {dir} left after purge");
    }
    // Nothing else of the system changed but dpkg's records, the accounts and logs.
    let allowed = [
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        "/etc/gshadow",
        "/var/lib/dpkg/",
        "/var/log/",
        "/var/cache/debconf/",
        "/var/lib/systemd/deb-systemd-helper-",
        "/usr/sbin/policy-rc.d",
        "/var/lib/man-db/auto-update",
        // shadow's lock file (useradd, adduser)
        "/etc/.pwd.lock",
        "/tmp/",
        "/run/",
    ];
    let other: Vec<String> = root
        .changed_paths(false)
        .into_iter()
        .filter(|p| !allowed.iter().chain(also_changed).any(|a| p.starts_with(a)))
        .collect();
    assert!(
        other.is_empty(),
        "{how}: changed outside dpkg's records: {other:#?}"
    );
}

#[test]
fn package_builds_lints_installs_and_purges() {
    for (bin, pkg) in [
        ("dpkg-buildpackage", "dpkg-dev"),
        ("dh", "debhelper"),
        ("lintian", "lintian"),
        ("systemd-analyze", "systemd"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
    ] {
        require(bin, pkg);
    }
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let deb = build_package(out.path());
    eprintln!("built {} in {:.1?}", deb.display(), started.elapsed());

    let files = package_files(&deb);
    let want = expected_files();
    let missing: Vec<_> = want.difference(&files).collect();
    let extra: Vec<_> = files.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "file list: missing {missing:#?}, unexpected {extra:#?}"
    );
    let depends = ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"));
    for dep in ["libc6", "libvirt0", "adduser"] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }

    lintian(&deb);

    // With systemd-sysusers, as on a Debian 12 host.
    let root = ThrowawayRoot::new();
    let in_root = root.put(&deb);
    let passwd = install(&root, &in_root, "systemd-sysusers");
    units_reinstall_remove(&root, &in_root);
    purge(&root, "systemd-sysusers", &passwd, &[]);
    drop(root);

    // Without it (a host without systemd): adduser creates the same user.
    let root = ThrowawayRoot::new();
    let in_root = root.put(&deb);
    root.sh("rm /usr/bin/systemd-sysusers");
    let passwd = install(&root, &in_root, "adduser");
    purge(&root, "adduser", &passwd, &["/usr/bin/systemd-sysusers"]);
}
