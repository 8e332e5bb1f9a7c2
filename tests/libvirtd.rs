//! A private, real libvirtd (with its own virtlogd) for end-to-end tests: system mode, running
//! as root, so QEMU runs as `libvirt-qemu` exactly as on a production host, yet sharing no
//! state, socket, configuration or log with any libvirtd the host may run.
//!
//! # How it is isolated
//!
//! A system-mode libvirtd has its directories compiled in (`/run/libvirt`, `/var/lib/libvirt`,
//! `/var/cache/libvirt`, `/var/log/libvirt`, `/etc/libvirt`); only the socket directory is
//! configurable. So each daemon runs as
//!
//! ```text
//! unshare --mount --propagation private --net -- /bin/sh -c SCRIPT sh DIR DAEMON --config DIR/etc/...
//! ```
//!
//! where `SCRIPT` bind-mounts, inside that private mount namespace only,
//!
//! | host path            | is in the namespace                         |
//! |----------------------|---------------------------------------------|
//! | `/run` (= `/var/run`)| `DIR/run` (so `/run/libvirt` is `DIR/run/libvirt`) |
//! | `/var/lib/libvirt`   | `DIR/lib`                                   |
//! | `/var/cache/libvirt` | `DIR/cache`                                 |
//! | `/var/log/libvirt`   | `DIR/log`                                   |
//! | `/etc/libvirt`       | `DIR/etc` (a filtered copy of the host's)   |
//! | `/dev/kvm`           | `DIR/nokvm`, an empty root-only file        |
//!
//! and then `exec`s the daemon, so the child process *is* the daemon (killed and reaped by pid).
//! The daemons' sockets land in `DIR/run/libvirt/` and clients outside the namespace reach them
//! with `qemu:///system?socket=DIR/run/libvirt/libvirt-sock` ([`Libvirtd::uri`]). Paths under
//! `DIR` itself are not remounted, so they are the same inside and outside (disk images, console
//! and control files live there). The namespaces die with their last process; nothing is
//! mounted on the host.
//!
//! * All of `/run` is replaced, not just `/run/libvirt`: the host may have no `/run/libvirt` to
//!   mount over (creating it would change the host), and hiding `/run/dbus` keeps the daemon off
//!   the host's D-Bus (no polkit, no machined, no firewalld).
//! * A new network namespace: the network driver and nwfilter see only a loopback device, so no
//!   bridge, dnsmasq or firewall rule can reach the host. Unix sockets on the file system work
//!   across network namespaces.
//! * The copied `/etc/libvirt` keeps the top-level `*.conf` files and `nwfilter/` only: no host
//!   domain, network or pool definition is copied, so nothing autostarts. Overrides:
//!   `qemu.conf`: `security_driver = "none"` (no AppArmor/SELinux profiles loaded into the host
//!   kernel; the DAC driver still runs QEMU as `libvirt-qemu`), `cgroup_controllers = [ ]` (no
//!   directories created in the host's cgroup hierarchy; `domstats` then reads CPU time from
//!   `/proc`), `namespaces = [ ]` (libvirt's per-domain `/dev` cannot move the `/dev/kvm` bind
//!   mount: "Unable to move ... mount to /dev/kvm: Invalid argument");
//!   `libvirtd.conf`: `auth_unix_rw = "none"` with `unix_sock_rw_perms = "0700"` (root only,
//!   no polkit needed: D-Bus is hidden) and `auth_unix_ro = "none"` (read-only socket 0777).
//! * `/dev/kvm` is hidden because with the host's `/dev/kvm` at 0600 root:root libvirt probes
//!   KVM as root (usable) but checks it for `libvirt-qemu` (not usable) and re-probes QEMU on
//!   every `define` (~35 s, `shared/lab-notes.md`). An empty root-only file makes both answers
//!   "no KVM": `define` takes milliseconds. Domains are `<domain type='qemu'>` (TCG) anyway. The
//!   host's `/dev/kvm` is not touched.
//!
//! # Clean-up
//!
//! [`Libvirtd`]'s `Drop` (which also runs when a test panics) destroys every domain through
//! libvirt, then kills any QEMU named by libvirt's pid files in `DIR/run/libvirt/qemu` or
//! mentioning `DIR` on its command line (QEMUs this harness caused; libvirt daemonises them, so
//! init reaps them and Drop waits until they are gone), stops libvirtd and virtlogd by pid
//! (SIGTERM, then SIGKILL) and reaps them, and removes `DIR`. Both daemons get `--config
//! DIR/etc/...` on their command line, so [`crate::processes_mentioning`]`(DIR)` finds every
//! process a test left behind. A test process that is itself SIGKILLed runs no Drop: its
//! daemons and QEMUs then stay until killed by hand (`pgrep -af kvmio-libvirtd`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kvmio_crashtest::vm::ImageFormat;
use kvmio_qemu::CacheMode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{guest_image, pid_exists, processes_mentioning, which};

/// How long [`Libvirtd::start`] and [`Libvirtd::restart`] wait for the socket to answer
/// (about 0.3 s here; the QEMU capabilities probe after a first start takes about 2 s more).
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one `virsh` call may take before the harness calls libvirtd hung.
pub const VIRSH_TIMEOUT: Duration = Duration::from_secs(120);

/// The command that installs what this module needs.
pub const INSTALL: &str = "apt-get install --no-install-recommends libvirt-daemon-system \
                           libvirt-clients libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils";

/// Runs in the new mount namespace: `$1` is the harness directory, the rest the daemon's argv.
/// `mount -n`: without it libmount creates `/run/mount` (its utab) on the host's `/run` before
/// the first bind replaces it.
const NAMESPACE_SCRIPT: &str = r#"set -e
d="$1"; shift
mount -n --bind "$d/run" /run
if [ "$(readlink -f /var/run)" != /run ]; then mount -n --bind "$d/run" /var/run; fi
mount -n --bind "$d/lib" /var/lib/libvirt
mount -n --bind "$d/cache" /var/cache/libvirt
mount -n --bind "$d/log" /var/log/libvirt
mount -n --bind "$d/etc" /etc/libvirt
if [ -e /dev/kvm ]; then mount -n --bind "$d/nokvm" /dev/kvm; fi
exec "$@"
"#;

/// Host directories the namespace mounts over; they must exist (libvirt-daemon-system makes
/// them), since creating them would change the host.
const MOUNT_POINTS: [&str; 4] = [
    "/var/lib/libvirt",
    "/var/cache/libvirt",
    "/var/log/libvirt",
    "/etc/libvirt",
];

/// The user QEMU runs as (Debian's `qemu.conf` default).
const QEMU_USER: &str = "libvirt-qemu";

/// Fails (never skips) with the install command when libvirt, QEMU or `unshare` are missing,
/// or when not running as root.
pub fn require_libvirt() {
    crate::require_packages(
        &[
            ("libvirtd", "libvirt-daemon-system"),
            ("virtlogd", "libvirt-daemon-system"),
            ("virsh", "libvirt-clients"),
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("qemu-img", "qemu-utils"),
            ("unshare", "util-linux"),
        ],
        &format!("run `{INSTALL}`"),
    );
    let qemu_driver = |lib: &Path| {
        lib.join("libvirt/connection-driver/libvirt_driver_qemu.so")
            .exists()
    };
    let multiarch = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| qemu_driver(&e.path()));
    assert!(
        multiarch || qemu_driver(Path::new("/usr/lib64")) || qemu_driver(Path::new("/usr/lib")),
        "libvirt's QEMU driver is not installed (Debian package libvirt-daemon-driver-qemu): run `{INSTALL}`"
    );
    for dir in MOUNT_POINTS {
        assert!(
            Path::new(dir).is_dir(),
            "{dir} is missing (made by libvirt-daemon-system): run `{INSTALL}`"
        );
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the private libvirtd runs in system mode and needs root (mount namespace, QEMU as {QEMU_USER})"
    );
}

/// A private virtlogd + libvirtd pair; see the module documentation.
#[derive(Debug)]
pub struct Libvirtd {
    dir: PathBuf,
    libvirtd: Option<Child>,
    virtlogd: Option<Child>,
    /// Kernel and initramfs copied where QEMU (`libvirt-qemu`) can read them.
    boot_files: OnceLock<(PathBuf, PathBuf)>,
    /// How long the last start took until libvirtd answered (for [`Libvirtd::start`]: both
    /// daemons and the QEMU capabilities probe).
    pub last_start: Duration,
}

impl Libvirtd {
    /// Starts virtlogd and libvirtd in a fresh directory under the temporary directory and
    /// waits until libvirtd answers. Panics (with the daemon's log) if it does not.
    pub fn start() -> Libvirtd {
        require_libvirt();
        let dir = tempfile::Builder::new()
            .prefix("kvmio-libvirtd.")
            .tempdir()
            .expect("create the harness directory")
            .keep();
        let mut me = Libvirtd {
            dir,
            libvirtd: None,
            virtlogd: None,
            boot_files: OnceLock::new(),
            last_start: Duration::ZERO,
        };
        // From here on, Drop cleans up whatever a failing step leaves.
        me.prepare_dirs();
        let t0 = Instant::now();
        me.virtlogd = Some(me.spawn_daemon("virtlogd", "virtlogd.conf"));
        let virtlogd_sock = me.dir.join("run/libvirt/virtlogd-sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !virtlogd_sock.exists() {
            me.assert_alive("virtlogd");
            assert!(
                Instant::now() < deadline,
                "virtlogd did not create {}:\n{}",
                virtlogd_sock.display(),
                me.log_tail("virtlogd.stderr", 30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me.libvirtd = Some(me.spawn_daemon("libvirtd", "libvirtd.conf"));
        me.wait_until_answering(DAEMON_TIMEOUT);
        // The fresh cache has no QEMU capabilities yet: probe now (~2 s), not in the first
        // `define`, so that define times measure libvirt, not the probe.
        let emulator = which("qemu-system-x86_64").expect("qemu-system-x86_64");
        me.virsh_ok(&[
            "domcapabilities",
            "--virttype",
            "qemu",
            "--arch",
            "x86_64",
            "--machine",
            "pc",
            "--emulatorbin",
            &emulator.to_string_lossy(),
        ]);
        me.last_start = t0.elapsed();
        me
    }

    /// The harness directory (`DIR` in the module documentation).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops everything, as dropping it does, and fails if any process that mentions its
    /// directory is left running.
    pub fn stop_leaving_nothing(self) {
        let dir = self.dir.to_string_lossy().into_owned();
        drop(self);
        let left = processes_mentioning(&dir);
        assert!(left.is_empty(), "left running: {left:?}");
    }

    /// The read-write socket, `DIR/run/libvirt/libvirt-sock` (root only).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/libvirt/libvirt-sock")
    }

    /// The read-only socket, `DIR/run/libvirt/libvirt-sock-ro` (anyone, no authentication).
    pub fn socket_ro(&self) -> PathBuf {
        self.dir.join("run/libvirt/libvirt-sock-ro")
    }

    /// `qemu:///system?socket=DIR/run/libvirt/libvirt-sock`: for `virsh -c` and libvirt
    /// clients outside the namespace.
    pub fn uri(&self) -> String {
        format!("qemu:///system?socket={}", self.socket().display())
    }

    /// The read-only URI (`libvirt-sock-ro`, no authentication, any user): libvirtd makes
    /// every connection on it read-only, whether or not the client asks (`virsh -r`,
    /// `virConnectOpenReadOnly`).
    pub fn uri_ro(&self) -> String {
        format!("qemu:///system?socket={}", self.socket_ro().display())
    }

    /// libvirtd's stdout/stderr (warnings and errors), appended across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log/libvirtd.stderr")
    }

    /// QEMU's own log for a domain (`/var/log/libvirt/qemu/NAME.log`, written by virtlogd).
    pub fn qemu_log_path(&self, domain: &str) -> PathBuf {
        self.dir.join(format!("log/qemu/{domain}.log"))
    }

    pub fn libvirtd_pid(&self) -> Option<u32> {
        self.libvirtd.as_ref().map(Child::id)
    }

    pub fn virtlogd_pid(&self) -> Option<u32> {
        self.virtlogd.as_ref().map(Child::id)
    }

    /// `virsh -c URI ARGS...` on the read-write socket: (status, stdout, stderr). Panics if it
    /// runs longer than [`VIRSH_TIMEOUT`].
    pub fn virsh<I, S>(&self, args: I) -> (ExitStatus, String, String)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        virsh_at(&self.uri(), false, args)
    }

    /// `virsh -c URI_RO ARGS...` on the read-only socket.
    pub fn virsh_ro<I, S>(&self, args: I) -> (ExitStatus, String, String)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        virsh_at(&self.uri_ro(), false, args)
    }

    /// Like [`Libvirtd::virsh`], but panics (with libvirtd's log) unless virsh succeeds;
    /// returns stdout.
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        let (status, out, err) = self.virsh(args);
        assert!(
            status.success(),
            "virsh {args:?} failed ({status}): {err}{out}\nlibvirtd log:\n{}",
            self.log_tail("libvirtd.stderr", 20)
        );
        out
    }

    /// `virsh domstats FLAGS...` on the read-only socket, parsed: domain → key → value.
    pub fn domstats(&self, flags: &[&str]) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut args = vec!["domstats"];
        args.extend_from_slice(flags);
        let (status, out, err) = self.virsh_ro(&args);
        assert!(
            status.success(),
            "virsh -c {} {args:?} failed: {err}",
            self.uri_ro()
        );
        parse_domstats(&out)
    }

    /// Names of the domains libvirt lists (`virsh list --all --name`).
    pub fn domain_names(&self, all: bool) -> Vec<String> {
        let out = if all {
            self.virsh_ok(&["list", "--all", "--name"])
        } else {
            self.virsh_ok(&["list", "--name"])
        };
        out.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Waits until libvirtd answers on its socket (the QEMU driver included); panics with its
    /// log if it exits or `timeout` passes.
    pub fn wait_until_answering(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            assert!(self.libvirtd.is_some(), "libvirtd is not running");
            self.assert_alive("libvirtd");
            if self.socket().exists() {
                let left = deadline.saturating_duration_since(Instant::now());
                let mut cmd = virsh_command(&self.uri(), false, ["list", "--all", "--name"]);
                if let Some((status, _, _)) =
                    output_with_timeout(&mut cmd, left.max(Duration::from_secs(1)))
                {
                    if status.success() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "libvirtd did not answer on {} within {timeout:?}:\n{}",
                self.socket().display(),
                self.log_tail("libvirtd.stderr", 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs libvirtd only (a crash): QEMUs and virtlogd keep running, as in production.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.libvirtd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts libvirtd again on the same directories (stopping it first with SIGTERM if it
    /// runs) and waits until it answers; it reconnects to the running domains.
    pub fn restart(&mut self) {
        if let Some(child) = self.libvirtd.take() {
            stop_child(child, Duration::from_secs(15));
        }
        let t0 = Instant::now();
        self.libvirtd = Some(self.spawn_daemon("libvirtd", "libvirtd.conf"));
        self.wait_until_answering(DAEMON_TIMEOUT);
        self.last_start = t0.elapsed();
    }

    /// QEMU pids by domain name, from libvirt's pid files (`/run/libvirt/qemu/NAME.pid`), for
    /// processes that are alive.
    pub fn qemu_pids(&self) -> BTreeMap<String, u32> {
        let mut found = BTreeMap::new();
        let run = self.dir.join("run/libvirt/qemu");
        for entry in std::fs::read_dir(&run).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pid") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(pid) = text.trim().parse::<u32>() else {
                continue;
            };
            if is_qemu_of(pid, name) {
                found.insert(name.to_string(), pid);
            }
        }
        found
    }

    /// Defines `spec` (its disk images created with qemu-img under `DIR/domains/NAME/`) and
    /// starts it, paused if `spec.start_paused`. Panics if libvirt refuses.
    pub fn define_and_start(&self, spec: &DomainSpec) -> Domain {
        let mut domain = self.define(spec);
        let t0 = Instant::now();
        if spec.start_paused {
            self.virsh_ok(&["start", "--paused", &spec.name]);
        } else {
            self.virsh_ok(&["start", &spec.name]);
        }
        domain.start_time = t0.elapsed();
        domain
    }

    /// [`Libvirtd::define_and_start`] for many specs, `parallel` at a time (libvirt serialises
    /// per domain, not per daemon): for benchmarks with 50+ paused domains.
    pub fn define_and_start_many(&self, specs: &[DomainSpec], parallel: usize) -> Vec<Domain> {
        let parallel = parallel.max(1);
        let mut out = Vec::with_capacity(specs.len());
        for chunk in specs.chunks(parallel) {
            let domains: Vec<Domain> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|spec| s.spawn(move || self.define_and_start(spec)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            });
            out.extend(domains);
        }
        out
    }

    /// Defines `spec` without starting it.
    pub fn define(&self, spec: &DomainSpec) -> Domain {
        assert!(
            !spec.name.is_empty()
                && spec
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "domain name {:?}: use letters, digits, - _ .",
            spec.name
        );
        let dom_dir = self.dir.join("domains").join(&spec.name);
        std::fs::create_dir_all(&dom_dir).expect("create the domain directory");
        give_to_qemu_user(&dom_dir);
        let console_log = dom_dir.join("console.log");
        let control_log = dom_dir.join("control.log");
        for f in [&console_log, &control_log] {
            std::fs::File::create(f).expect("create a chardev file");
            give_to_qemu_user(f);
        }
        let qemu_img = which("qemu-img").expect("qemu-img");
        let mut disks = Vec::new();
        let mut per_prefix: BTreeMap<&str, u8> = BTreeMap::new();
        for d in spec.disks.iter() {
            let prefix = match d.bus.as_str() {
                "virtio" => "vd",
                "ide" => "hd",
                _ => "sd",
            };
            let n = per_prefix.entry(prefix).or_default();
            let target = format!("{prefix}{}", (b'a' + *n) as char);
            *n += 1;
            let path = dom_dir.join(format!("{target}.{}", d.format));
            kvmio_crashtest::lab::create_disk(&qemu_img, &path, d.format, d.size_mib, &dom_dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
            give_to_qemu_user(&path);
            disks.push(DomainDisk {
                target,
                path,
                spec: d.clone(),
            });
        }
        let boot = spec.role.as_ref().map(|_| self.boot_files());
        let xml = domain_xml(spec, &disks, boot, &console_log, &control_log);
        let xml_path = dom_dir.join("domain.xml");
        std::fs::write(&xml_path, &xml).expect("write the domain XML");
        let t0 = Instant::now();
        self.virsh_ok(&["define", &xml_path.to_string_lossy()]);
        let define_time = t0.elapsed();
        let uuid = self.virsh_ok(&["domuuid", &spec.name]).trim().to_string();
        Domain {
            name: spec.name.clone(),
            uuid,
            uri: self.uri(),
            dir: dom_dir,
            disks,
            console_log,
            control_log,
            xml,
            define_time,
            start_time: Duration::ZERO,
        }
    }

    fn boot_files(&self) -> (PathBuf, PathBuf) {
        self.boot_files
            .get_or_init(|| {
                let image = guest_image();
                let dir = self.dir.join("boot");
                std::fs::create_dir_all(&dir).expect("create the boot directory");
                let kernel = dir.join("vmlinuz");
                let initrd = dir.join("initramfs");
                for (from, to) in [(&image.vmlinuz, &kernel), (&image.initramfs, &initrd)] {
                    std::fs::copy(from, to).unwrap_or_else(|e| {
                        panic!("copy {} to {}: {e}", from.display(), to.display())
                    });
                    set_mode(to, 0o644);
                }
                (kernel, initrd)
            })
            .clone()
    }

    fn prepare_dirs(&self) {
        let d = &self.dir;
        // QEMU (libvirt-qemu) must traverse DIR to reach disks, kernel and chardev files.
        set_mode(d, 0o755);
        for sub in [
            "run/libvirt",
            "lib",
            "cache",
            "log",
            "etc",
            "domains",
            "boot",
        ] {
            std::fs::create_dir_all(d.join(sub)).expect("create harness directories");
        }
        set_mode(&d.join("domains"), 0o755);
        set_mode(&d.join("boot"), 0o755);
        let nokvm = d.join("nokvm");
        std::fs::File::create(&nokvm).expect("create nokvm");
        set_mode(&nokvm, 0o600);
        seed_etc(Path::new("/etc/libvirt"), &d.join("etc"));
    }

    fn spawn_daemon(&self, daemon: &str, conf: &str) -> Child {
        let bin = which(daemon).unwrap_or_else(|| panic!("{daemon} missing: run `{INSTALL}`"));
        let log_name = format!("{daemon}.stderr");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log").join(&log_name))
            .expect("open the daemon log");
        let mut cmd = Command::new(which("unshare").expect("unshare"));
        cmd.args(["--mount", "--propagation", "private", "--net", "--"])
            .arg("/bin/sh")
            .arg("-c")
            .arg(NAMESPACE_SCRIPT)
            .arg("sh")
            .arg(&self.dir)
            .arg(bin)
            .arg("--config")
            .arg(self.dir.join("etc").join(conf))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn {daemon} in a private namespace: {e}"))
    }

    /// Fails with the tail of its log if `daemon` (`libvirtd` or `virtlogd`) has exited.
    fn assert_alive(&mut self, daemon: &str) {
        let child = match daemon {
            "libvirtd" => &mut self.libvirtd,
            _ => &mut self.virtlogd,
        };
        if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
            *child = None;
            panic!(
                "{daemon} exited during start-up ({status}):\n{}",
                self.log_tail(&format!("{daemon}.stderr"), 30)
            );
        }
    }

    /// The last `lines` lines of a file in `DIR/log`.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        kvmio_crashtest::vm::tail(&self.dir.join("log").join(name), lines)
    }

    fn cleanup(&mut self) {
        // 1. Through libvirt, while it runs: destroy every running or paused domain.
        if self.libvirtd.is_some() && self.socket().exists() {
            let mut cmd = virsh_command(&self.uri(), false, ["list", "--name"]);
            if let Some((status, out, _)) = output_with_timeout(&mut cmd, Duration::from_secs(30)) {
                if status.success() {
                    // One destroy takes ~1.7 s (libvirt polls QEMU's exit): 8 at a time.
                    let names: Vec<&str> = out
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .collect();
                    let uri = self.uri();
                    for chunk in names.chunks(8) {
                        std::thread::scope(|s| {
                            for name in chunk {
                                let uri = &uri;
                                s.spawn(move || {
                                    let mut cmd = virsh_command(uri, false, ["destroy", name]);
                                    let _ = output_with_timeout(&mut cmd, Duration::from_secs(30));
                                });
                            }
                        });
                    }
                }
            }
        }
        // 2. Stop libvirtd so it cannot start anything more.
        if let Some(child) = self.libvirtd.take() {
            stop_child(child, Duration::from_secs(15));
        }
        // 3. Any QEMU left (libvirtd dead or destroy failed): libvirt's pid files, and any
        //    QEMU whose command line names our directory.
        let dir = self.dir.to_string_lossy().into_owned();
        let mut qemus: Vec<u32> = self.qemu_pids().into_values().collect();
        qemus.extend(
            processes_mentioning(&dir)
                .into_iter()
                .filter(|(_, cmd)| cmd.contains("qemu-system"))
                .map(|(pid, _)| pid),
        );
        for &pid in &qemus {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        // QEMU was daemonised by libvirt: init reaps it, we wait for that.
        let deadline = Instant::now() + Duration::from_secs(10);
        while qemus.iter().any(|&p| pid_exists(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // 4. virtlogd last: QEMU's log pipes close first.
        if let Some(child) = self.virtlogd.take() {
            stop_child(child, Duration::from_secs(10));
        }
        // 5. The mount namespaces died with their processes; remove the directory.
        if std::env::var_os("KVMIO_KEEP_LIBVIRTD_DIR").is_some() {
            eprintln!("libvirtd harness: keeping {dir}");
            return;
        }
        for _ in 0..20 {
            match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!("libvirtd harness: could not remove {dir}");
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// One virtio disk of a [`DomainSpec`]; targets are vda, vdb, ... in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub format: ImageFormat,
    pub cache: CacheMode,
    pub size_mib: u64,
    /// `<driver io=...>`: `native`, `threads`, `io_uring`; `None`: libvirt's default.
    pub io: Option<String>,
    /// `<target bus=...>`: `virtio` (vdX), `scsi`, `sata`, `usb` (sdX), `ide` (hdX).
    pub bus: String,
    /// `<driver iothread=N>` (the domain needs [`DomainSpec::iothreads`]).
    pub iothread: Option<u32>,
    /// `<address type='drive' controller=N>`: the SCSI/SATA controller index.
    pub controller: Option<u32>,
}

impl DiskSpec {
    pub fn new(format: ImageFormat, cache: CacheMode) -> DiskSpec {
        DiskSpec {
            format,
            cache,
            size_mib: 64,
            io: None,
            bus: "virtio".to_string(),
            iothread: None,
            controller: None,
        }
    }

    pub fn bus(mut self, bus: &str) -> DiskSpec {
        self.bus = bus.to_string();
        self
    }

    pub fn iothread(mut self, iothread: u32) -> DiskSpec {
        self.iothread = Some(iothread);
        self
    }

    pub fn controller(mut self, index: u32) -> DiskSpec {
        self.controller = Some(index);
        self
    }

    pub fn size_mib(mut self, size_mib: u64) -> DiskSpec {
        self.size_mib = size_mib;
        self
    }

    pub fn io(mut self, io: &str) -> DiskSpec {
        self.io = Some(io.to_string());
        self
    }
}

/// What [`Libvirtd::define_and_start`] creates: a `<domain type='qemu'>` (TCG).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub name: String,
    /// `Some(role)`: direct kernel boot of kvmio's test guest with `kvmio.role=ROLE`;
    /// `None`: no kernel at all (a domain meant to stay paused).
    pub role: Option<String>,
    /// More kernel parameters (`key=value`).
    pub kernel_params: Vec<String>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub disks: Vec<DiskSpec>,
    /// Start with `--paused` (QEMU is up, the guest never runs until `virsh resume`).
    pub start_paused: bool,
    /// libvirt's guest-agent channel (`org.qemu.guest_agent.0`, socket managed by libvirt).
    pub guest_agent: bool,
    /// `<iothreads>N</iothreads>`: iothreads 1..=N for disks and controllers.
    pub iothreads: u32,
    /// More `<devices>` children, verbatim (controllers, an empty CD-ROM...).
    pub extra_devices: Vec<String>,
}

impl DomainSpec {
    /// The lab guest (`kvmio.role=lab`, steady IO on every disk) with a qcow2 disk under
    /// cache=none (vda) and a raw disk under cache=writeback (vdb), 256 MiB, one vCPU.
    pub fn lab(name: &str) -> DomainSpec {
        DomainSpec {
            name: name.to_string(),
            role: Some("lab".to_string()),
            kernel_params: Vec::new(),
            memory_mib: 256,
            vcpus: 1,
            disks: vec![
                DiskSpec::new(ImageFormat::Qcow2, CacheMode::None),
                DiskSpec::new(ImageFormat::Raw, CacheMode::Writeback),
            ],
            start_paused: false,
            guest_agent: true,
            iothreads: 0,
            extra_devices: Vec::new(),
        }
    }

    /// A cheap domain for benchmarks: no kernel, started paused, 32 MiB, the same two small
    /// disks (16 MiB): QEMU opens the images and serves block stats but never burns CPU.
    pub fn paused(name: &str) -> DomainSpec {
        DomainSpec {
            role: None,
            memory_mib: 32,
            disks: vec![
                DiskSpec::new(ImageFormat::Qcow2, CacheMode::None).size_mib(16),
                DiskSpec::new(ImageFormat::Raw, CacheMode::Writeback).size_mib(16),
            ],
            start_paused: true,
            ..DomainSpec::lab(name)
        }
    }

    pub fn role(mut self, role: &str) -> DomainSpec {
        self.role = Some(role.to_string());
        self
    }

    pub fn disks(mut self, disks: Vec<DiskSpec>) -> DomainSpec {
        self.disks = disks;
        self
    }

    pub fn start_paused(mut self, paused: bool) -> DomainSpec {
        self.start_paused = paused;
        self
    }

    pub fn iothreads(mut self, n: u32) -> DomainSpec {
        self.iothreads = n;
        self
    }

    pub fn extra_device(mut self, xml: &str) -> DomainSpec {
        self.extra_devices.push(xml.to_string());
        self
    }

    pub fn kernel_param(mut self, param: &str) -> DomainSpec {
        self.kernel_params.push(param.to_string());
        self
    }
}

/// A disk as defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    /// `vda`, `vdb`, ...
    pub target: String,
    pub path: PathBuf,
    /// What it was made from.
    pub spec: DiskSpec,
}

/// A defined (and usually started) domain. Dropping it does nothing: [`Libvirtd`]'s Drop
/// destroys every domain.
#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    pub uuid: String,
    uri: String,
    pub dir: PathBuf,
    pub disks: Vec<DomainDisk>,
    /// The serial console (`<serial type='file'>`).
    pub console_log: PathBuf,
    /// The guest program's `org.kvmio.ctl` port (`<channel type='file'>`).
    pub control_log: PathBuf,
    /// The XML given to `virsh define`.
    pub xml: String,
    pub define_time: Duration,
    pub start_time: Duration,
}

impl Domain {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    pub fn disk_paths(&self) -> Vec<&Path> {
        self.disks.iter().map(|d| d.path.as_path()).collect()
    }

    /// Lines the guest program wrote on its control port so far.
    pub fn control_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.control_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits for the guest program's `READY` line; returns the guest's kernel release. Panics
    /// with the console's tail on `ERROR`, if the domain stops, or after `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut next_state_check = Instant::now() + Duration::from_secs(2);
        loop {
            for line in self.control_lines() {
                if let Some(release) = line.strip_prefix("READY") {
                    return release.trim().to_string();
                }
                if let Some(message) = line.strip_prefix("ERROR") {
                    panic!(
                        "domain {}: guest reported {message}\nconsole:\n{}",
                        self.name,
                        self.console_tail(20)
                    );
                }
            }
            if Instant::now() >= next_state_check {
                next_state_check = Instant::now() + Duration::from_secs(2);
                let (_, state, _) = virsh_at(&self.uri, false, ["domstate", &self.name]);
                let state = state.trim();
                assert!(
                    state != "shut off" && state != "crashed",
                    "domain {} is {state} before READY\nconsole:\n{}",
                    self.name,
                    self.console_tail(20)
                );
            }
            assert!(
                Instant::now() < deadline,
                "domain {}: no READY within {timeout:?}\nconsole:\n{}",
                self.name,
                self.console_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn console_tail(&self, lines: usize) -> String {
        kvmio_crashtest::vm::tail(&self.console_log, lines)
    }
}

/// `virsh domstats` output: `Domain: 'NAME'` headers, then `  key=value` lines.
pub fn parse_domstats(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Domain: ") {
            let name = rest.trim().trim_matches('\'').to_string();
            all.insert(name.clone(), BTreeMap::new());
            current = Some(name);
        } else if let (Some(name), Some((k, v))) = (&current, line.trim().split_once('=')) {
            if let Some(map) = all.get_mut(name) {
                map.insert(k.to_string(), v.to_string());
            }
        }
    }
    all
}

/// `block.N.FIELD` of the first block entry named `disk` (the top of its chain when
/// `--backing` lists backing images too).
pub fn block_stat(stats: &BTreeMap<String, String>, disk: &str, field: &str) -> Option<u64> {
    let count: usize = stats.get("block.count")?.parse().ok()?;
    (0..count)
        .find(|i| stats.get(&format!("block.{i}.name")).map(String::as_str) == Some(disk))
        .and_then(|i| stats.get(&format!("block.{i}.{field}")))
        .and_then(|v| v.parse().ok())
}

/// `virsh [-r] -c URI ARGS...` with [`VIRSH_TIMEOUT`]; panics on timeout.
pub fn virsh_at<I, S>(uri: &str, readonly: bool, args: I) -> (ExitStatus, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = virsh_command(uri, readonly, args);
    output_with_timeout(&mut cmd, VIRSH_TIMEOUT)
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {VIRSH_TIMEOUT:?}"))
}

fn virsh_command<I, S>(uri: &str, readonly: bool, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new("virsh");
    if readonly {
        cmd.arg("-r");
    }
    cmd.arg("-q").arg("-c").arg(uri).args(args);
    cmd.env_remove("LIBVIRT_DEFAULT_URI").env("LC_ALL", "C");
    cmd
}

/// Runs `cmd` with stdin closed, collecting its output; kills it after `timeout` (→ `None`).
fn output_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
) -> Option<(ExitStatus, String, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    status.map(|s| (s, out, err))
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps.
fn stop_child(mut child: Child, grace: Duration) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Whether `pid` is a live QEMU for domain `name` (libvirt passes `-name guest=NAME,...`).
fn is_qemu_of(pid: u32, name: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
    cmdline.contains("qemu-system") && cmdline.contains(&format!("guest={name},"))
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Owner `libvirt-qemu` (QEMU writes chardev files and images there), else world-writable.
fn give_to_qemu_user(path: &Path) {
    match nix::unistd::User::from_name(QEMU_USER) {
        Ok(Some(user)) => nix::unistd::chown(path, Some(user.uid), Some(user.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display())),
        _ => set_mode(path, if path.is_dir() { 0o1777 } else { 0o666 }),
    }
}

/// The host's top-level `*.conf` files and `nwfilter/` (no domain, network or pool
/// definitions: nothing may autostart), with the harness's overrides.
fn seed_etc(host: &Path, dest: &Path) {
    for entry in std::fs::read_dir(host).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_file() && path.extension().and_then(|e| e.to_str()) == Some("conf") {
            std::fs::copy(&path, dest.join(entry.file_name()))
                .unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
        }
    }
    let nwfilter = host.join("nwfilter");
    if nwfilter.is_dir() {
        std::fs::create_dir_all(dest.join("nwfilter")).expect("mkdir nwfilter");
        for entry in std::fs::read_dir(&nwfilter).into_iter().flatten().flatten() {
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                let _ = std::fs::copy(entry.path(), dest.join("nwfilter").join(entry.file_name()));
            }
        }
    }
    std::fs::create_dir_all(dest.join("qemu/networks")).expect("mkdir qemu/networks");
    override_conf(
        &dest.join("qemu.conf"),
        &[
            ("security_driver", "\"none\""),
            ("cgroup_controllers", "[ ]"),
            ("namespaces", "[ ]"),
        ],
    );
    override_conf(
        &dest.join("libvirtd.conf"),
        &[
            ("auth_unix_ro", "\"none\""),
            ("auth_unix_rw", "\"none\""),
            ("unix_sock_ro_perms", "\"0777\""),
            ("unix_sock_rw_perms", "\"0700\""),
            ("unix_sock_dir", "\"/run/libvirt\""),
        ],
    );
}

/// Comments out every setting of `keys` (multi-line lists included; libvirt takes the first
/// occurrence of a key) and appends the harness's values.
fn override_conf(path: &Path, settings: &[(&str, &str)]) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    let mut in_list = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let sets_key = settings.iter().any(|(k, _)| {
            trimmed
                .strip_prefix(k)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        if in_list || sets_key {
            out.push_str("# (kvmio harness) ");
            out.push_str(line);
            out.push('\n');
            if sets_key && line.contains('[') && !line.contains(']') {
                in_list = true;
            } else if in_list && line.contains(']') {
                in_list = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("\n# kvmio end-to-end harness (tests/libvirtd.rs)\n");
    for (k, v) in settings {
        out.push_str(&format!("{k} = {v}\n"));
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

fn domain_xml(
    spec: &DomainSpec,
    disks: &[DomainDisk],
    boot: Option<(PathBuf, PathBuf)>,
    console_log: &Path,
    control_log: &Path,
) -> String {
    let e = |p: &Path| xml_escape(&p.to_string_lossy());
    let emulator = which("qemu-system-x86_64").expect("qemu-system-x86_64");
    let mut x = String::new();
    x.push_str("<domain type='qemu'>\n");
    x.push_str(&format!("  <name>{}</name>\n", xml_escape(&spec.name)));
    x.push_str(&format!(
        "  <memory unit='MiB'>{}</memory>\n",
        spec.memory_mib
    ));
    x.push_str(&format!("  <vcpu>{}</vcpu>\n", spec.vcpus));
    // A vhost-user disk's server maps the guest's memory: it must be shared.
    if spec
        .extra_devices
        .iter()
        .any(|d| d.contains("type='vhostuser'"))
    {
        x.push_str(
            "  <memoryBacking>\n    <source type='memfd'/>\n    <access mode='shared'/>\n  </memoryBacking>\n",
        );
    }
    if spec.iothreads > 0 {
        x.push_str(&format!("  <iothreads>{}</iothreads>\n", spec.iothreads));
    }
    x.push_str("  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n");
    if let (Some(role), Some((kernel, initrd))) = (&spec.role, &boot) {
        let mut cmdline = format!("console=ttyS0 quiet panic=-1 no_timer_check kvmio.role={role}");
        if !spec.guest_agent {
            cmdline.push_str(" kvmio.agent=0");
        }
        for p in &spec.kernel_params {
            cmdline.push(' ');
            cmdline.push_str(p);
        }
        x.push_str(&format!("    <kernel>{}</kernel>\n", e(kernel)));
        x.push_str(&format!("    <initrd>{}</initrd>\n", e(initrd)));
        x.push_str(&format!(
            "    <cmdline>{}</cmdline>\n",
            xml_escape(&cmdline)
        ));
    }
    x.push_str("  </os>\n");
    // Without <acpi/> libvirt passes -no-acpi; plain QEMU (the lab launcher) has ACPI.
    x.push_str("  <features>\n    <acpi/>\n    <apic/>\n  </features>\n");
    // As the lab launcher: `-cpu max` under TCG, `-no-reboot` (a guest panic stops the domain).
    x.push_str("  <cpu mode='maximum' migratable='off'/>\n");
    x.push_str("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n");
    x.push_str("  <on_crash>destroy</on_crash>\n");
    x.push_str("  <devices>\n");
    x.push_str(&format!("    <emulator>{}</emulator>\n", e(&emulator)));
    for (
        i,
        DomainDisk {
            target,
            path,
            spec: d,
        },
    ) in disks.iter().enumerate()
    {
        let io =
            d.io.as_ref()
                .map(|io| format!(" io='{}'", xml_escape(io)))
                .unwrap_or_default();
        let iothread = d
            .iothread
            .map(|n| format!(" iothread='{n}'"))
            .unwrap_or_default();
        let address = d
            .controller
            .map(|c| {
                format!("      <address type='drive' controller='{c}' bus='0' target='0' unit='{i}'/>\n")
            })
            .unwrap_or_default();
        x.push_str(&format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='{}' cache='{}'{io}{iothread}/>\n      <source file='{}'/>\n      <target dev='{}' bus='{}'/>\n      <serial>kvmio-disk{i}</serial>\n{address}    </disk>\n",
            d.format,
            d.cache,
            e(path),
            target,
            xml_escape(&d.bus)
        ));
    }
    for extra in &spec.extra_devices {
        x.push_str(extra);
        x.push('\n');
    }
    // No USB controller unless the spec brings its own (a USB disk needs one).
    if !spec
        .extra_devices
        .iter()
        .any(|d| d.contains("<controller type='usb'"))
    {
        x.push_str("    <controller type='usb' model='none'/>\n");
    }
    x.push_str(&format!(
        "    <serial type='file'>\n      <source path='{}'/>\n      <target port='0'/>\n    </serial>\n",
        e(console_log)
    ));
    if spec.guest_agent {
        x.push_str(
            "    <channel type='unix'>\n      <target type='virtio' name='org.qemu.guest_agent.0'/>\n    </channel>\n",
        );
    }
    if spec.role.is_some() {
        x.push_str(&format!(
            "    <channel type='file'>\n      <source path='{}'/>\n      <target type='virtio' name='org.kvmio.ctl'/>\n    </channel>\n",
            e(control_log)
        ));
    }
    x.push_str("  </devices>\n</domain>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domstats_parse() {
        let text = "Domain: 'a'\n  block.count=2\n  block.0.name=vda\n  block.0.wr.reqs=5\n  block.1.name=vdb\n  block.1.wr.reqs=7\n\nDomain: 'b'\n  block.count=0\n";
        let all = parse_domstats(text);
        assert_eq!(all.len(), 2);
        assert_eq!(block_stat(&all["a"], "vdb", "wr.reqs"), Some(7));
        assert_eq!(block_stat(&all["a"], "vdc", "wr.reqs"), None);
    }

    #[test]
    fn conf_override_comments_lists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("qemu.conf");
        let conf = "a = 1\ncgroup_controllers = [ \"cpu\",\n  \"memory\" ]\nb = 2\n";
        std::fs::write(&p, conf).unwrap();
        override_conf(&p, &[("cgroup_controllers", "[ ]")]);
        let text = std::fs::read_to_string(&p).unwrap();
        let live: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(live, ["a = 1", "b = 2", "cgroup_controllers = [ ]"]);
    }
}
