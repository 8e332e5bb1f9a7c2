//! `kvmio-top` in a real terminal (tmux) against the lab: two TCG VMs with the README's cache
//! modes, each with two disks under a steady workload, and the real exporter.
//!
//! * The screen (`tmux capture-pane`) shows every lab VM's disks, with non-zero rates on the
//!   guest, QEMU device and host device layers.
//! * Keys: `n` again reverses the name order, `i` orders by IOPS (largest first, as the screen's
//!   own figures say), `/lab-2` Enter keeps only lab-2, Esc shows all again, `q` quits.
//! * `--once` prints the same frame as text.
//! * With `KVMIO_SCREENSHOTS=DIR` the screen, colours included, is rendered to `kvmio-top.png`
//!   (capture-pane's escapes -> HTML by `aha` -> PNG by Chromium).
//!
//! The lab, the exporter and the tmux server are stopped on every path (drop guards).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use kvmio_e2e::browser::{publish, screenshot};
use kvmio_e2e::metrics::start_exporter;
use kvmio_e2e::{guest_image, run, start_lab, vm_slot, wait_for, workspace_bin};
use kvmio_test_support::require;

/// A tmux server of the test's own (own socket), killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new(require("tmux", "tmux"));
        c.arg("-S").arg(&self.socket).arg("-f").arg("/dev/null");
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let (status, out, err) = run(self.cmd().args(args));
        assert!(status.success(), "tmux {args:?}: {status}: {err}");
        out
    }

    fn screen(&self) -> String {
        self.ok(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.ok(&args);
    }

    fn alive(&self) -> bool {
        run(self.cmd().args(["has-session", "-t", "top"]))
            .0
            .success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

/// One layer row of the screen.
#[derive(Debug, Clone)]
struct Row {
    vm: String,
    layer: String,
    name: String,
    /// r/s, w/s, read/s, write/s (None for `-`).
    figures: [Option<f64>; 4],
}

const LAYERS: [&str; 4] = ["guest", "qemu", "protocol", "host"];

/// `1.2k` -> 1200, `8.0M` -> 8388608 for bytes (binary) or 8e6 for counts: only "non-zero" and
/// order are asserted, so one scale serves.
fn figure(s: &str) -> Option<f64> {
    if s == "-" {
        return None;
    }
    let (num, scale) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1e3),
        'M' => (&s[..s.len() - 1], 1e6),
        'G' => (&s[..s.len() - 1], 1e9),
        'B' => (&s[..s.len() - 1], 1.0),
        _ => (s, 1.0),
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// The layer rows under the table's header.
fn rows(screen: &str) -> Vec<Row> {
    let mut out = Vec::new();
    let mut vm = String::new();
    let mut in_table = false;
    for line in screen.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens.first() == Some(&"VM") && tokens.get(1) == Some(&"LAYER") {
            in_table = true;
            continue;
        }
        if !in_table || tokens.len() < 7 {
            continue;
        }
        let (layer_at, new_vm) = if LAYERS.contains(&tokens[0]) {
            (0, None)
        } else if LAYERS.contains(&tokens[1]) {
            (1, Some(tokens[0]))
        } else {
            continue;
        };
        if let Some(v) = new_vm {
            vm = v.to_owned();
        }
        let f = |i: usize| figure(tokens[layer_at + 2 + i]);
        out.push(Row {
            vm: vm.clone(),
            layer: tokens[layer_at].to_owned(),
            name: tokens[layer_at + 1].to_owned(),
            figures: [f(1), f(2), f(3), f(4)],
        });
    }
    out
}

/// Guest rows in screen order: (vm, guest disk, IOPS).
fn guest_order(screen: &str) -> Vec<(String, String, f64)> {
    rows(screen)
        .into_iter()
        .filter(|r| r.layer == "guest")
        .map(|r| {
            let iops = r.figures[0].unwrap_or(0.0) + r.figures[1].unwrap_or(0.0);
            (r.vm, r.name, iops)
        })
        .collect()
}

/// Every lab disk's guest, qemu and host rows have a non-zero IO rate.
fn all_layers_busy(screen: &str) -> bool {
    let rows = rows(screen);
    ["lab-1", "lab-2"].iter().all(|vm| {
        ["vda", "vdb"].iter().all(|disk| {
            // A disk's rows: its guest row, then the next three.
            let Some(i) = rows
                .iter()
                .position(|r| r.vm == *vm && r.layer == "guest" && r.name == *disk)
            else {
                return false;
            };
            rows.get(i..i + 4).is_some_and(|layers| {
                layers
                    .iter()
                    .filter(|r| r.layer != "protocol")
                    .all(|r| r.figures.iter().flatten().any(|v| *v > 0.0))
            })
        })
    })
}

#[test]
fn top_shows_every_lab_disk_and_sorts_and_filters_by_key() {
    let _slot = vm_slot();
    guest_image();
    let dir = tempfile::Builder::new()
        .prefix("kvmio-e2e-top")
        .tempdir()
        .unwrap();
    let run_dir = dir.path().join("run");
    let _lab = start_lab(&run_dir, 32, &dir.path().join("lab.log"));
    let (_exporter, addr) = start_exporter(
        &[format!(
            "--qmp.socket-glob={}/run/*.qmp",
            dir.path().display()
        )],
        &dir.path().join("exporter.log"),
    );
    let url = format!("http://{addr}/metrics");
    let top = workspace_bin("kvmio-top");

    // --once: the same rows as text.
    let (status, once, err) =
        run(Command::new(&top).args(["--once", "--interval", "2s", "--url", &url]));
    assert!(status.success(), "kvmio-top --once: {status}: {err}");
    for vm in ["lab-1", "lab-2"] {
        assert!(once.contains(vm), "--once lacks {vm}:\n{once}");
    }

    let tmux = Tmux {
        socket: dir.path().join("tmux.sock"),
    };
    let command = format!("{} --url {url} --interval 1s", top.display());
    tmux.ok(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "200",
        "-y",
        "26",
        &command,
    ]);
    let screen = wait_for(
        "every lab disk busy on every layer",
        Duration::from_secs(90),
        || {
            let s = tmux.screen();
            all_layers_busy(&s).then_some(s)
        },
    );
    assert!(
        screen.contains("cache none") && screen.contains("cache unsafe"),
        "{screen}"
    );
    assert!(screen.contains("sched mq-deadline"), "{screen}");

    // Screenshot for the README, colours included.
    if std::env::var_os("KVMIO_SCREENSHOTS").is_some() {
        let ansi = tmux.ok(&["capture-pane", "-e", "-p", "-t", "top"]);
        let capture = dir.path().join("top.ansi");
        std::fs::write(&capture, ansi).unwrap();
        let html = dir.path().join("top.html");
        let (status, page, err) = run(Command::new(require("aha", "aha"))
            .args(["--black", "--title", "kvmio-top", "-f"])
            .arg(&capture));
        assert!(status.success(), "aha: {err}");
        std::fs::write(&html, page).unwrap();
        let png = dir.path().join("top.png");
        screenshot(&html, &png, 1600, 500);
        publish(&png, "kvmio-top.png");
    }

    // Name order (the default), then reversed by pressing `n` again.
    let names = |s: &str| -> Vec<String> {
        guest_order(s)
            .into_iter()
            .map(|(vm, d, _)| format!("{vm}/{d}"))
            .collect()
    };
    assert_eq!(
        names(&screen),
        ["lab-1/vda", "lab-1/vdb", "lab-2/vda", "lab-2/vdb"],
        "{screen}"
    );
    tmux.keys(&["n"]);
    wait_for("reverse name order", Duration::from_secs(20), || {
        let s = tmux.screen();
        (names(&s) == ["lab-2/vdb", "lab-2/vda", "lab-1/vdb", "lab-1/vda"]
            && s.contains("sort: name descending"))
        .then_some(())
    });
    // By IOPS: largest first, by the screen's own figures.
    tmux.keys(&["i"]);
    wait_for("IOPS order", Duration::from_secs(20), || {
        let s = tmux.screen();
        let order = guest_order(&s);
        (s.contains("sort: iops descending")
            && order.len() == 4
            // The screen rounds each rate (one decimal below 100, none above, `1.2k`), so
            // two disks' displayed sums may differ from the true order by the rounding.
            && order
                .windows(2)
                .all(|w| w[0].2 + 1.0 + 0.05 * w[1].2 >= w[1].2))
        .then_some(())
    });
    // Filter by VM.
    tmux.keys(&["/", "lab-2", "Enter"]);
    wait_for("only lab-2", Duration::from_secs(20), || {
        let s = tmux.screen();
        let vms: Vec<String> = guest_order(&s).into_iter().map(|(vm, _, _)| vm).collect();
        (vms == ["lab-2", "lab-2"] && s.contains("filter: lab-2")).then_some(())
    });
    tmux.keys(&["Escape"]);
    wait_for("every VM again", Duration::from_secs(20), || {
        (guest_order(&tmux.screen()).len() == 4).then_some(())
    });
    tmux.keys(&["q"]);
    wait_for("kvmio-top quits on q", Duration::from_secs(20), || {
        (!tmux.alive()).then_some(())
    });
}

/// `kvmio-top` against an exporter with `--web.config.file`: TLS with a client certificate
/// required and basic auth. No VMs are needed for the connection: the exporter serves its host
/// series, and the frame says 0 disks.
#[test]
fn top_reads_an_exporter_behind_tls_client_certificates_and_basic_auth() {
    use kvmio_test_support::tls::{bcrypt_hash, TestPki};
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\nbasic_auth_users:\n  prometheus: {}\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display(),
            bcrypt_hash("scrape-me")
        ),
    )
    .unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "scrape-me\n").unwrap();
    let (_exporter, addr) = start_exporter(
        &[
            "--host.devices=all".to_owned(),
            format!("--web.config.file={}", web.display()),
        ],
        &dir.path().join("exporter.log"),
    );
    let port = addr.rsplit(':').next().unwrap();
    let url = format!("https://localhost:{port}/metrics");
    let top = |extra: &[&str]| {
        let mut cmd = Command::new(workspace_bin("kvmio-top"));
        cmd.args(["--once", "--interval", "100ms", "--url", &url])
            .env_remove("KVMIO_TOP_PASSWORD")
            .args(extra);
        run(&mut cmd)
    };
    let ca = pki.ca.display().to_string();
    let cert = pki.client_cert.display().to_string();
    let key = pki.client_key.display().to_string();
    let pw = password.display().to_string();
    let all = [
        "--tls.ca-file",
        &ca,
        "--tls.cert-file",
        &cert,
        "--tls.key-file",
        &key,
        "--auth.username",
        "prometheus",
        "--auth.password-file",
        &pw,
    ];
    let (status, out, err) = top(&all);
    assert!(status.success(), "{status}: {err}");
    assert!(out.starts_with(&format!("kvmio-top  {url}")), "{out}");
    assert!(
        out.contains("0 disk(s)") && out.contains("VM  LAYER"),
        "{out}"
    );

    // The password from the environment works as well.
    let (status, _, err) = {
        let mut cmd = Command::new(workspace_bin("kvmio-top"));
        cmd.args(["--once", "--interval", "100ms", "--url", &url])
            .args(&all[..8])
            .env("KVMIO_TOP_PASSWORD", "scrape-me");
        run(&mut cmd)
    };
    assert!(
        status.success(),
        "password from KVMIO_TOP_PASSWORD: {status}: {err}"
    );

    // Each missing or wrong piece is a one-line error naming the step, exit status 1.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "guess\n").unwrap();
    let wrong = wrong.display().to_string();
    let rogue_cert = pki.rogue_client_cert.display().to_string();
    let rogue_key = pki.rogue_client_key.display().to_string();
    let cases: [(Vec<&str>, &str); 4] = [
        (all[..6].to_vec(), "HTTP 401"),
        (
            [
                &all[..6],
                &[
                    "--auth.username",
                    "prometheus",
                    "--auth.password-file",
                    &wrong,
                ][..],
            ]
            .concat(),
            "HTTP 401",
        ),
        ([&all[..2], &all[6..]].concat(), "GET https://"),
        (
            [
                &all[..2],
                &["--tls.cert-file", &rogue_cert, "--tls.key-file", &rogue_key][..],
                &all[6..],
            ]
            .concat(),
            "GET https://",
        ),
    ];
    for (args, expect) in cases {
        let (status, out, err) = top(&args);
        assert_eq!(status.code(), Some(1), "{args:?}: {out}");
        assert!(
            err.starts_with("kvmio-top: error: scrape failed: ")
                && err.contains(expect)
                && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    // Without the CA the exporter's certificate is not trusted.
    let (status, _, err) = top(&all[2..]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("GET https://"), "{err}");
}
