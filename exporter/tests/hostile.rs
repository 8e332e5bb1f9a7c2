//! Issue 11's hostile inputs against the real `kvmio-exporter` binary, one exporter per input:
//! bounded peak memory (`VmHWM` of `/proc/PID/status`), and the honest VMs' series the same as
//! an exporter's that never saw the hostile VM.
//!
//! Two honest VMs (a real `qemu-system-x86_64 -M none` with two drives and the host's real
//! `qemu-ga` each) are scraped by a baseline exporter and, alongside one hostile VM (a real QEMU
//! whose agent socket is a well-formed fake agent answering the longest valid lists the 512 KiB
//! line cap allows, [`peer::agent_with`]), by one exporter per hostile input:
//!
//! - `guest-get-diskstats` of 174,741 empty objects (the rest of the agent honest);
//! - `guest-get-disks` of 174,741 empty objects, and of one disk whose unused `smart` and
//!   `dependencies` fill the line; asked once and cached within the bound;
//! - a new set of ~16,000 valid disk names at every scrape;
//! - a 1 MiB `crashtest.prom` of ~116,000 families, and one whose sample has 100,000 labels
//!   (`--crashtest.results-dir`): the scrape answers within its timeout, nothing past the
//!   parser's bounds is served, the log says what was refused, and the collector's success
//!   is 0.
//!
//! Two more tests: an agent stalled in the middle of a long line beside another sending 512 KiB
//! lines (the shared line budget does not block the second), and a fake monitor whose latency
//! histograms sit at the ends of their types (the scrape stays valid, the honest VMs intact).
//!
//! Each hostile exporter's peak RSS must stay within [`HOSTILE_VM_BUDGET_MIB`] of the baseline's
//! (README: the memory bound per VM). Every QEMU, agent and exporter is killed and reaped on
//! every path.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::peer::{self, capped_line, capped_list, fixture_return, Peer};
use common::procs::{self, sample, Proc};
use kvmio_test_support::metrics::{parse, Series};

/// What one hostile VM may add to the exporter's peak RSS, in MiB: its reply line (512 KiB, in
/// a buffer of the agents' shared line budget, decoded in place), the bounded decode and the
/// cached `guest-get-disks` fields, with allocator slack.
/// README.md states the per-VM bound this checks.
const HOSTILE_VM_BUDGET_MIB: f64 = 8.0;

const HONEST: [&str; 2] = ["honest-a", "honest-b"];
const SCRAPES: usize = 4;
const TIMEOUT_SECS: f64 = 5.0;

/// A reply line from a captured qemu-ga reply.
fn captured(name: &str) -> String {
    format!(
        "{}\n",
        serde_json::json!({ "return": fixture_return(name) })
    )
}

/// The honest agent's answers from captures; `guest-file-*` refused (no queue settings).
fn honest_answer(cmd: &str) -> Option<String> {
    match cmd {
        "guest-get-diskstats" | "guest-get-disks" | "guest-info" => Some(captured(cmd)),
        _ => None,
    }
}

fn peak_and_current_mib(exporter: &Proc) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", exporter.pid())).unwrap();
    (
        kvmio_test_support::bench::status_mib(&status, "VmHWM:"),
        kvmio_test_support::bench::status_mib(&status, "VmRSS:"),
    )
}

/// The honest VMs' series of one scrape, by name and labels. Values that move by themselves
/// (the host-run agent reports the host's own disks; idle time; QEMU's own process IO) are
/// left out; their series must still be there.
fn honest_series(all: &[Series]) -> BTreeMap<String, Option<f64>> {
    all.iter()
        .filter(|s| {
            s.labels
                .get("vm")
                .is_some_and(|vm| HONEST.contains(&vm.as_str()))
        })
        .map(|s| {
            let moving = s.name.starts_with("kvmio_guest_disk_")
                || s.name == "kvmio_qemu_block_idle_seconds"
                || s.name.starts_with("kvmio_qemu_process_");
            (
                format!("{}{:?}", s.name, s.labels),
                (!moving).then_some(s.value),
            )
        })
        .collect()
}

struct Run {
    bodies: Vec<String>,
    peak_mib: f64,
    current_mib: f64,
    elapsed: Vec<Duration>,
    log: String,
}

async fn scrape(addr: &str) -> (u16, String, Duration) {
    let addr = addr.to_owned();
    tokio::task::spawn_blocking(move || procs::http_get(&addr, "/metrics", Duration::from_secs(30)))
        .await
        .unwrap()
}

/// An exporter with `args`, scraped [`SCRAPES`] times; its log must be free of panics.
async fn run(dir: &Path, what: &str, args: &[String]) -> Run {
    let log = dir.join(format!("exporter-{what}.log"));
    let mut args = args.to_vec();
    args.push(format!("--scrape.timeout={TIMEOUT_SECS}s"));
    let (mut exporter, addr) = procs::exporter(&args, &log);
    let mut out = Run {
        bodies: Vec::new(),
        peak_mib: 0.0,
        current_mib: 0.0,
        elapsed: Vec::new(),
        log: String::new(),
    };
    for round in 0..SCRAPES {
        let (status, body, elapsed) = scrape(&addr).await;
        assert_eq!(status, 200, "{what} round {round}: {body}");
        common::promtool_check(&body, &format!("{what} round {round}"));
        out.bodies.push(body);
        out.elapsed.push(elapsed);
    }
    assert!(exporter.running(), "{what}: the exporter survived");
    (out.peak_mib, out.current_mib) = peak_and_current_mib(&exporter);
    exporter.stop();
    out.log = std::fs::read_to_string(&log).unwrap();
    assert!(!out.log.contains("panicked"), "{what}: {}", out.log);
    eprintln!(
        "{what}: peak {:.1} MiB, current {:.1} MiB, scrapes {:?}",
        out.peak_mib, out.current_mib, out.elapsed
    );
    out
}

/// The honest VMs' series in `hostile` are those of `baseline` (same series; same values where
/// values stand still), scrape by scrape, and each honest VM is up on both layers.
fn assert_honest_intact(baseline: &Run, hostile: &Run, what: &str) {
    for body in &hostile.bodies {
        for vm in HONEST {
            for layer in ["qmp", "qga"] {
                assert_eq!(
                    sample(body, &format!("kvmio_{layer}_up{{vm=\"{vm}\"}}")),
                    Some(1.0),
                    "{what}: {vm} {layer}"
                );
            }
        }
    }
    let want = honest_series(&parse(&baseline.bodies[SCRAPES - 1]));
    assert!(want.len() > 50, "the honest VMs have their series");
    for (i, body) in hostile.bodies.iter().enumerate() {
        let got = honest_series(&parse(body));
        let keys_want: Vec<&String> = want.keys().collect();
        let keys_got: Vec<&String> = got.keys().collect();
        assert_eq!(
            keys_got, keys_want,
            "{what} scrape {i}: the honest VMs' series"
        );
        for (k, v) in &want {
            assert_eq!(got[k], *v, "{what} scrape {i}: {k}");
        }
    }
}

fn assert_memory_bounded(baseline: &Run, hostile: &Run, what: &str) {
    assert!(
        hostile.peak_mib <= baseline.peak_mib + HOSTILE_VM_BUDGET_MIB,
        "{what}: peak {:.1} MiB against {:.1} MiB without the hostile VM (budget {HOSTILE_VM_BUDGET_MIB} MiB)",
        hostile.peak_mib,
        baseline.peak_mib
    );
}

/// The honest VMs (a real QEMU and the host's real qemu-ga each) under `d/honest`, and the
/// `--qmp.socket-glob` flag that finds them.
fn honest_vms(d: &Path) -> (Vec<Proc>, String) {
    let [honest_dir] = kvmio_test_support::subdirs(d, ["honest"]);
    let mut children: Vec<Proc> = Vec::new();
    for vm in HONEST {
        children.push(procs::qemu_none(&honest_dir, vm, 2).0);
        children.push(procs::qemu_ga(&honest_dir, vm).0);
    }
    let glob = format!("--qmp.socket-glob={}/*.qmp", honest_dir.display());
    (children, glob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_keep_memory_bounded_and_the_honest_vms_intact() {
    let dir = kvmio_test_support::target_tempdir!("kvmio-hostile");
    let d = dir.path();
    let [hostile_dir] = kvmio_test_support::subdirs(d, ["hostile"]);
    let (mut children, honest_glob) = honest_vms(d);
    // The hostile VM's QEMU is real; its agent socket is the fake agent of each case.
    let (hostile_qemu, hostile_qmp) = procs::qemu_none(&hostile_dir, "hostile", 2);
    children.push(hostile_qemu);
    let hostile_qga = hostile_dir.join("hostile.qga");
    let with_hostile = [
        honest_glob.clone(),
        format!("--qmp.socket-glob={}", hostile_qmp.display()),
    ];

    let baseline = run(d, "baseline", std::slice::from_ref(&honest_glob)).await;

    let (empty_objects, n) = capped_list(|_| "{}".to_owned());
    assert!(n >= 174_000, "{n} empty objects");
    // One disk whose fields kvmio does not use fill the line: `smart` with ~174,000 empty
    // lists (untyped JSON), `dependencies` with ~174,000 empty names.
    let (smart, _) = capped_line(
        "{\"return\": [{\"name\": \"/dev/vda\", \"smart\": [",
        |_| "[]".to_owned(),
        "]}]}",
    );
    let (deps, _) = capped_line(
        "{\"return\": [{\"name\": \"/dev/vda\", \"dependencies\": [",
        |_| "\"\"".to_owned(),
        "]}]}",
    );
    let round = Arc::new(AtomicUsize::new(0));

    type Answer = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;
    let cases: Vec<(&str, Answer)> = vec![
        ("diskstats-empty-objects", {
            let e = empty_objects.clone();
            Arc::new(move |cmd| match cmd {
                "guest-get-diskstats" => Some(e.clone()),
                other => honest_answer(other),
            })
        }),
        ("disks-empty-objects", {
            let e = empty_objects.clone();
            Arc::new(move |cmd| match cmd {
                "guest-get-disks" => Some(e.clone()),
                other => honest_answer(other),
            })
        }),
        (
            "disks-smart-tree",
            Arc::new(move |cmd| match cmd {
                "guest-get-disks" => Some(smart.clone()),
                other => honest_answer(other),
            }),
        ),
        (
            "disks-dependencies",
            Arc::new(move |cmd| match cmd {
                "guest-get-disks" => Some(deps.clone()),
                other => honest_answer(other),
            }),
        ),
        ("diskstats-new-names-every-scrape", {
            let round = round.clone();
            Arc::new(move |cmd| match cmd {
                "guest-get-diskstats" => {
                    let r = round.fetch_add(1, Ordering::SeqCst);
                    Some(capped_list(|i| format!("{{\"name\":\"r{r}d{i}\",\"stats\":{{}}}}")).0)
                }
                other => honest_answer(other),
            })
        }),
    ];
    for (what, answer) in cases {
        let peer: Peer = peer::agent_with(&hostile_qga, move |cmd| answer(cmd));
        let hostile = run(d, what, &with_hostile).await;
        assert_honest_intact(&baseline, &hostile, what);
        assert_memory_bounded(&baseline, &hostile, what);
        let last = &hostile.bodies[SCRAPES - 1];
        assert_eq!(
            sample(last, "kvmio_qga_up{vm=\"hostile\"}"),
            Some(1.0),
            "{what}: a valid answer is not a failure"
        );
        let kept = last
            .lines()
            .filter(|l| l.starts_with("kvmio_guest_disk_reads_completed_total{vm=\"hostile\""))
            .count();
        assert!(
            kept <= 64,
            "{what}: {kept} guest disks kept (--qga.max-disks 64)"
        );
        let dropped = sample(last, "kvmio_guest_disks_dropped{vm=\"hostile\"}").unwrap_or(0.0);
        match what {
            "diskstats-empty-objects" | "diskstats-new-names-every-scrape" => {
                assert!(dropped > 10_000.0, "{what}: {dropped} dropped")
            }
            "disks-empty-objects" => {
                assert!(dropped > 100_000.0, "{what}: {dropped} dropped");
                // Cached for the scrapes that follow: asked once.
                let asked = peer
                    .commands()
                    .iter()
                    .filter(|c| *c == "guest-get-disks")
                    .count();
                assert_eq!(asked, 1, "{what}: guest-get-disks asked {asked} times");
            }
            _ => {}
        }
        drop(peer);
    }

    crashtest_results(d, &baseline, &honest_glob).await;
    for mut c in children {
        c.stop();
    }
}

/// The crash-test results file at its 1 MiB limit: ~116,000 families, or one sample with
/// 100,000 labels. The scrape answers well within the timeout, nothing past the bounds is
/// served, and the log says what was refused.
async fn crashtest_results(d: &Path, baseline: &Run, honest_glob: &str) {
    let many_families = {
        let mut s = String::new();
        let mut i = 0;
        while s.len() < 1024 * 1024 - 16 {
            s.push_str(&format!("f{i} 1\n"));
            i += 1;
        }
        assert!(i > 110_000, "{i} families");
        s
    };
    let many_labels = {
        let mut s = String::from("kvmio_crashtest_x{");
        for i in 0..100_000 {
            s.push_str(&format!("l{i}=\"\","));
        }
        s.push_str("} 1\n");
        assert!(s.len() <= 1024 * 1024);
        s
    };
    for (what, text, refusal) in [
        (
            "crashtest-many-families",
            many_families,
            "more than 1024 families",
        ),
        (
            "crashtest-many-labels",
            many_labels,
            "more than 32 labels on one sample",
        ),
    ] {
        let results = d.join(what);
        std::fs::create_dir_all(&results).unwrap();
        std::fs::write(results.join("crashtest.prom"), &text).unwrap();
        let hostile = run(
            d,
            what,
            &[
                honest_glob.to_owned(),
                format!("--crashtest.results-dir={}", results.display()),
            ],
        )
        .await;
        assert_honest_intact(baseline, &hostile, what);
        assert_memory_bounded(baseline, &hostile, what);
        for (i, body) in hostile.bodies.iter().enumerate() {
            assert!(
                hostile.elapsed[i].as_secs_f64() < TIMEOUT_SECS,
                "{what}: scrape {i} took the whole timeout"
            );
            assert!(
                !body
                    .lines()
                    .any(|l| l.starts_with("f5000 ") || l.starts_with("kvmio_crashtest_x")),
                "{what}: nothing past the bounds is served"
            );
        }
        assert!(
            hostile.log.contains(refusal),
            "{what}: the log says {refusal:?}"
        );
        for body in &hostile.bodies {
            assert_eq!(
                sample(body, "kvmio_collector_success{collector=\"crashtest\"}"),
                Some(0.0),
                "{what}: a partly refused file is not a success"
            );
        }
    }
}

/// An agent that stops in the middle of a long reply line holds room in the agents' shared line
/// budget until its call times out; another VM's agent sending long lines (174,741 empty
/// objects, both lists) at the same time still answers every scrape, and the scrape ends within
/// its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_stalled_in_a_long_line_does_not_block_the_others() {
    let dir = kvmio_test_support::target_tempdir!("kvmio-hostile");
    let d = dir.path();
    let [vms] = kvmio_test_support::subdirs(d, ["vms"]);
    let children: Vec<Proc> = ["stalled", "long"]
        .iter()
        .map(|vm| procs::qemu_none(&vms, vm, 2).0)
        .collect();
    let (lines, _) = capped_list(|_| "{}".to_owned());
    // 200 KiB of a reply, no end of line: past the budget's 64 KiB threshold.
    let half = lines[..200 * 1024].to_owned();
    let stalled = peer::agent_with(&vms.join("stalled.qga"), move |cmd| {
        (cmd == "guest-get-diskstats").then(|| half.clone())
    });
    let long = peer::agent_with(&vms.join("long.qga"), move |cmd| {
        matches!(cmd, "guest-get-diskstats" | "guest-get-disks").then(|| lines.clone())
    });
    let out = run(
        d,
        "stalled-line",
        &[format!("--qmp.socket-glob={}/*.qmp", vms.display())],
    )
    .await;
    for (i, body) in out.bodies.iter().enumerate() {
        assert_eq!(
            sample(body, "kvmio_qga_up{vm=\"long\"}"),
            Some(1.0),
            "scrape {i}"
        );
        assert_eq!(
            sample(body, "kvmio_qga_up{vm=\"stalled\"}"),
            Some(0.0),
            "scrape {i}"
        );
        assert!(
            out.elapsed[i].as_secs_f64() < TIMEOUT_SECS + 1.0,
            "scrape {i} took {:?}",
            out.elapsed[i]
        );
    }
    for mut c in children {
        c.stop();
    }
    drop((stalled, long));
}

/// QEMU's latency histograms at the ends of their types (issue 11, item 5): the accounted time
/// `*_total_time_ns` at `i64::MIN` when kvmio sets the histograms (the `_sum` base) and at
/// `i64::MAX` after, every bin at `u64::MAX`. A fake monitor (the captured QEMU 7.2 replies,
/// `query-blockstats` changed so) beside the honest VMs, all with `--qmp.latency-buckets` at the
/// capture's boundaries: every scrape is valid text (promtool), the extreme device's histogram
/// is there with its count and sum saturated, and the honest VMs' series are those of an
/// exporter without the fake VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_latency_histograms_keep_the_scrape_valid() {
    let dir = kvmio_test_support::target_tempdir!("kvmio-hostile");
    let d = dir.path();
    let (children, honest_glob) = honest_vms(d);
    let buckets = "--qmp.latency-buckets=0.00001,0.0001,0.001,0.01".to_owned();
    let baseline = run(
        d,
        "histograms-baseline",
        &[honest_glob.clone(), buckets.clone()],
    )
    .await;

    let [extreme_dir] = kvmio_test_support::subdirs(d, ["extreme"]);
    let sets = Arc::new(AtomicUsize::new(0));
    let seen_sets = sets.clone();
    let peer = peer::qmp_fixture_with(&extreme_dir.join("extreme.qmp"), move |req| {
        match req["execute"].as_str() {
            Some("block-latency-histogram-set") => {
                seen_sets.fetch_add(1, Ordering::SeqCst);
                Some(serde_json::json!({}))
            }
            // The `_sum` base is taken from the scrape that sets the histograms.
            Some("query-blockstats") if req["arguments"]["query-nodes"] != true => {
                Some(extreme_blockstats(seen_sets.load(Ordering::SeqCst) > 0))
            }
            _ => None,
        }
    });
    let hostile = run(
        d,
        "histograms-extreme",
        &[
            honest_glob,
            format!("--qmp.socket-glob={}", peer.path.display()),
            buckets,
        ],
    )
    .await;
    assert!(sets.load(Ordering::SeqCst) > 0, "kvmio set the histograms");
    assert_honest_intact(&baseline, &hostile, "histograms-extreme");
    let last = parse(&hostile.bodies[SCRAPES - 1]);
    let extreme = |suffix: &str| -> Vec<f64> {
        let name = format!("kvmio_qemu_block_read_latency_seconds{suffix}");
        last.iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                !s.labels
                    .get("vm")
                    .is_some_and(|vm| HONEST.contains(&vm.as_str()))
            })
            .map(|s| s.value)
            .collect()
    };
    let (counts, sums) = (extreme("_count"), extreme("_sum"));
    assert!(!counts.is_empty(), "the extreme VM's read histograms");
    assert!(counts.iter().all(|&c| c == u64::MAX as f64), "{counts:?}");
    assert!(sums.iter().all(|&s| s == i64::MAX as f64 / 1e9), "{sums:?}");
    for mut c in children {
        c.stop();
    }
    drop(peer);
}

/// The captured `query-blockstats` with each device's accounted times at `i64::MIN` (before
/// kvmio set the histograms) or `i64::MAX` (after), and every histogram bin at `u64::MAX` after.
fn extreme_blockstats(set: bool) -> serde_json::Value {
    let mut list = fixture_return("query-blockstats");
    for dev in list.as_array_mut().unwrap() {
        let stats = &mut dev["stats"];
        for op in ["rd", "wr", "flush"] {
            let total = if set { i64::MAX } else { i64::MIN };
            stats[format!("{op}_total_time_ns")] = serde_json::json!(total);
            match stats.get_mut(format!("{op}_latency_histogram")) {
                Some(h) if set => {
                    for bin in h["bins"].as_array_mut().unwrap() {
                        *bin = serde_json::json!(u64::MAX);
                    }
                }
                _ => {}
            }
        }
    }
    list
}
