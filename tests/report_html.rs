//! `report.html` of a real small crash run, as Chromium renders it, and as the exporter links
//! and serves it.
//!
//! One run is shared by the tests of this binary (built once, under the VM slot):
//! `kvmio-crashtest run` with two cells of real TCG VMs, `writethrough` and `unsafe` under the
//! power fault without flushes: the first promises survival (measured: `ok`), the second
//! promises nothing and loses its unflushed writes (`loss-allowed`, docs/crash-consistency.md).
//!
//! * Chromium's DOM shows every cell of report.json in the matrix with its verdict and the
//!   dashboard's colour for it; a screenshot at desktop and phone width and a PDF print are
//!   produced (the README's picture, with `KVMIO_SCREENSHOTS=docs/img`).
//! * The exporter with `--crashtest.results-dir` links the report from its landing page and
//!   serves exactly that file.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use kvmio_crashtest::report::html::DIMENSIONS;
use kvmio_dashboards::VERDICT_COLOURS;
use kvmio_e2e::browser::{dump_dom, print_pdf, publish, screenshot};
use kvmio_e2e::metrics::start_exporter;
use kvmio_e2e::{guest_image, run, vm_slot, workspace_bin};
use kvmio_test_support::http_get;

/// The shared run: `RESULTS/run` holds its outputs (`RESULTS` is the exporter's results dir).
fn small_run() -> &'static (PathBuf, serde_json::Value) {
    static RUN: OnceLock<(PathBuf, serde_json::Value)> = OnceLock::new();
    RUN.get_or_init(|| {
        let results = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-html");
        let _ = std::fs::remove_dir_all(&results);
        let out = results.join("run");
        std::fs::create_dir_all(&out).unwrap();
        let _slot = vm_slot();
        guest_image();
        let (status, stdout, stderr) = run(Command::new(workspace_bin("kvmio-crashtest"))
            .args([
                "run",
                "--accel",
                "tcg",
                "--cache",
                "writethrough,unsafe",
                "--fault",
                "power",
                "--sync",
                "none",
                "--format",
                "raw",
                "--iterations",
                "1",
                "--seed",
                "14",
                "--disk-size",
                "16",
                "--window-ms",
                "300..600",
                "--out",
            ])
            .arg(&out));
        assert!(
            status.success(),
            "crash run failed: {status}\n{stdout}\n{stderr}"
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        (results, report)
    })
}

/// The attributes of the first `<td ...>` whose attributes contain `needle`.
fn td_with<'a>(dom: &'a str, needle: &str) -> Option<(&'a str, &'a str)> {
    let at = dom.find(needle)?;
    let start = dom[..at].rfind("<td")?;
    let end = start + dom[start..].find('>')?;
    let close = end + dom[end..].find("</td>")?;
    Some((&dom[start..end], &dom[end..close]))
}

#[test]
fn chromium_shows_each_cells_verdict_in_the_dashboard_colours() {
    let (results, report) = small_run();
    let page = results.join("run/report.html");
    assert!(page.is_file(), "run wrote no report.html");
    let dom = dump_dom(&page);
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2, "{report}");
    for cell in cells {
        // The page keys a cell by every dimension it has (the workload among them).
        let key = DIMENSIONS
            .iter()
            .filter_map(|k| cell[*k].as_str())
            .collect::<Vec<_>>()
            .join("/");
        assert!(key.ends_with("/raw-append"), "{key}");
        let verdict = cell["verdict"].as_str().unwrap();
        let colour = VERDICT_COLOURS
            .iter()
            .find(|c| c.verdict == verdict)
            .unwrap_or_else(|| panic!("verdict {verdict} has no dashboard colour"))
            .hex;
        let (attrs, content) = td_with(&dom, &format!("data-cell=\"{key}\""))
            .unwrap_or_else(|| panic!("no matrix cell {key} in the DOM:\n{dom}"));
        assert!(
            attrs.contains(&format!("data-verdict=\"{verdict}\"")),
            "{key}: {attrs}"
        );
        assert!(
            attrs.contains(&format!("background-color:{colour}")),
            "{key}: {attrs}"
        );
        assert!(
            content.contains(&format!(">{verdict}<")),
            "{key}: {content}"
        );
        // The cell's promise and losses per iteration are in its section.
        let promise = cell["promise"].as_str().unwrap();
        assert!(
            dom.contains(promise) || dom.contains(&promise.replace('\'', "&#39;")),
            "promise of {key}"
        );
    }
    let verdict_of = |cache: &str| {
        cells.iter().find(|c| c["cache_mode"] == cache).unwrap()["verdict"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(verdict_of("writethrough"), "ok", "{report}");
    assert_eq!(verdict_of("unsafe"), "loss-allowed", "{report}");
    // Versions and the command that repeats the run.
    let qemu = report["qemu_version"].as_str().unwrap();
    assert!(dom.contains(qemu), "QEMU version {qemu}");
    assert!(dom.contains("--seed 14"), "seed in the command");
    assert!(
        !dom.contains("src=") && !dom.contains("<link"),
        "the page loads nothing"
    );

    let shots = tempfile::tempdir().unwrap();
    let desktop = shots.path().join("report.png");
    screenshot(&page, &desktop, 1280, 1400);
    let phone = shots.path().join("report-phone.png");
    screenshot(&page, &phone, 390, 1400);
    print_pdf(&page, &shots.path().join("report.pdf"));
    publish(&desktop, "crashtest-report.png");
    publish(&phone, "crashtest-report-phone.png");
}

#[test]
fn the_exporter_links_and_serves_the_newest_report() {
    let (results, _) = small_run();
    let dir = tempfile::tempdir().unwrap();
    let (_exporter, addr) = start_exporter(
        &[format!("--crashtest.results-dir={}", results.display())],
        &dir.path().join("exporter.log"),
    );
    let (status, landing, _) = http_get(&addr, "/", Duration::from_secs(30));
    assert_eq!(status, 200);
    assert!(
        landing.contains("<a href=\"/crashtest/report.html\">"),
        "{landing}"
    );
    assert!(landing.contains(&results.join("run/report.html").display().to_string()));
    let (status, served, _) = http_get(&addr, "/crashtest/report.html", Duration::from_secs(30));
    assert_eq!(status, 200);
    let on_disk = std::fs::read_to_string(results.join("run/report.html")).unwrap();
    assert!(
        served == on_disk,
        "the served page is not the newest report.html"
    );
    // Only that file: nothing else under the results dir is reachable.
    for other in [
        "/crashtest/report.json",
        "/crashtest/../run/report.json",
        "/run/report.html",
    ] {
        let (status, _, _) = http_get(&addr, other, Duration::from_secs(30));
        assert_eq!(status, 404, "{other}");
    }
}
