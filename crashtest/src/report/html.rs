//! `report.html`: the run for people, in one self-contained file beside `report.json`.
//!
//! It is rendered from the report's JSON (what `report.json` holds), not from the typed
//! [`Report`](super::Report), so that `kvmio-crashtest report --html` re-renders any
//! `report.json`, and so that the matrix shows whatever dimensions the cells have: the rows are
//! the cache modes, the columns every combination of the other [`DIMENSIONS`] present.
//!
//! * Self-contained: inline CSS, no script, no image, no font, no link outside the page; a
//!   Content-Security-Policy of `default-src 'none'` makes a browser refuse anything else.
//! * Escaped: every string of the report (paths, error text, problems) comes from outside: maud
//!   escapes whatever it interpolates, and nothing here bypasses it but the page's own CSS.
//! * Verdict colours are the dashboard's ([`kvmio_dashboards::VERDICT_COLOURS`]).
//! * Readable on a phone (the matrix scrolls sideways, the rest reflows) and printable (print CSS
//!   keeps the colours and avoids breaking a cell's section across pages).
//!
//! Why one file of about 740 lines of code (and its tests): it is one page, its markup, its CSS
//! and the reproduce commands it prints read each other's class names and dimension order; split
//! apart, a renamed class or a reordered column would break silently between files.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use kvmio_dashboards::VERDICT_COLOURS;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

/// `report.json` files larger than this are refused (the default matrix with 3 iterations
/// writes about 200 KiB).
pub const MAX_REPORT_BYTES: u64 = 64 << 20;

/// The failing steps of [`rerender`].
#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_REPORT_BYTES} bytes: not a kvmio-crashtest report")]
    TooLarge { path: PathBuf },
    #[error("{path} is not a kvmio-crashtest report.json")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write report.html into {dir}")]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Renders `dir/report.json` again into `dir/report.html` (`kvmio-crashtest report`); returns
/// the page's path.
pub fn rerender(dir: &Path) -> Result<PathBuf, HtmlError> {
    let path = dir.join("report.json");
    let read = |source| HtmlError::Read {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_REPORT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_REPORT_BYTES {
        return Err(HtmlError::TooLarge { path });
    }
    // serde_json bounds nesting (128 levels) itself.
    let report: Value = serde_json::from_slice(&bytes).map_err(|source| HtmlError::Parse {
        path: path.clone(),
        source,
    })?;
    if report.get("cells").is_none_or(|c| !c.is_array()) {
        return Err(HtmlError::Parse {
            path,
            source: serde::de::Error::custom("no \"cells\" list"),
        });
    }
    super::write_atomic(dir, "report.html", render(&report, dir).as_bytes()).map_err(|source| {
        HtmlError::Write {
            dir: dir.to_owned(),
            source,
        }
    })?;
    Ok(dir.join("report.html"))
}

/// A cell's dimensions, in the matrix's order: the first is the rows, the others the columns.
/// Those absent from every cell (`workload` before runs have one) are left out.
pub const DIMENSIONS: [&str; 5] = ["cache_mode", "fault", "sync", "format", "workload"];

/// The `kvmio-crashtest run` flag of a dimension.
fn flag(dimension: &str) -> String {
    match dimension {
        "cache_mode" => "--cache".to_owned(),
        d => format!("--{}", d.replace('_', "-")),
    }
}

/// The run's self-test switches (`run` keys; hidden flags of the same names): a run with any
/// of them broke its stack on purpose.
const SELF_TESTS: [&str; 3] = ["lie_about_flush", "reorder_flush", "ack_early"];

/// The phases of an iteration (`timings` in `report.json`) that this version knows, in order,
/// with what they cover; a phase of a newer report is shown after them, by its name.
const PHASES: [(&str, &str); 8] = [
    ("create", "creating the image (and the NBD server)"),
    (
        "snapshot",
        "waiting for the guest's saved state (its one boot and save)",
    ),
    ("boot", "QEMU start to the guest's READY (0 when restored)"),
    (
        "restore",
        "QEMU start to the restored guest running (0 when booted)",
    ),
    ("first_ack", "START to the first acknowledged record"),
    ("window", "first ack to the fault"),
    ("fault", "the fault: SIGKILL, reaping, the power loss"),
    ("verify", "reading back and checking the image"),
];

/// The phases' colours in the timing bar, in turn (neutral: verdict colours mean something
/// else).
const PHASE_COLOURS: [&str; 10] = [
    "#8AB8FF", "#C0D8FF", "#5794F2", "#1F60C4", "#3274D9", "#B877D9", "#8F3BB8", "#DEB6F2",
    "#A352CC", "#CCCCDC",
];

/// The phases the report's iterations have: the known ones in order, then any other (newer
/// reports), `total` left out.
fn phases(cells: &[&Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = PHASES
        .iter()
        .map(|(p, why)| ((*p).to_owned(), (*why).to_owned()))
        .collect();
    for c in cells {
        if let Some(t) = c["mean_timings"].as_object() {
            for k in t.keys() {
                if k != "total" && !out.iter().any(|(p, _)| p == k) {
                    out.push((k.clone(), String::new()));
                }
            }
        }
    }
    out
}

/// A cell of a verdict nobody knows (a newer report): grey, not a verdict colour.
const UNKNOWN_COLOUR: &str = "#CCCCDC";

/// The colour of a verdict, as the dashboard draws it.
pub fn verdict_colour(verdict: &str) -> &'static str {
    VERDICT_COLOURS
        .iter()
        .find(|c| c.verdict == verdict)
        .map_or(UNKNOWN_COLOUR, |c| c.hex)
}

/// The page for a report (`report` is `report.json`'s content; `out` the directory the run
/// wrote it to, for the command that repeats it).
pub fn render(report: &Value, out: &Path) -> String {
    let cells: Vec<&Value> = report["cells"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let matrix = Matrix::of(&cells);
    let complete = report["complete"].as_bool().unwrap_or(false);
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'";
                title { "kvmio-crashtest report, seed " (text(&report["run"]["seed"])) }
                style { (PreEscaped(css())) }
            }
            body {
                header {
                    h1 { "kvmio-crashtest report" }
                    @if !complete {
                        p.banner.incomplete {
                            strong { "Incomplete run: " }
                            (report["error"].as_str().unwrap_or("stopped early"))
                            " (no crashtest.prom was written; the exporter keeps serving the last complete run)."
                        }
                    }
                    @if SELF_TESTS.iter().any(|k| report["run"][*k].as_bool() == Some(true)) {
                        p.banner.incomplete { strong { "Self-test run: " } "the stack was broken on purpose." }
                    }
                    (summary(report, &cells))
                    nav {
                        a href="#matrix" { "Matrix" } " · " a href="#cells" { "Cells" } " · "
                        a href="#timings" { "Timings" } " · " a href="#versions" { "Versions" } " · "
                        a href="#reproduce" { "Reproduce" }
                    }
                }
                section #matrix {
                    h2 { "Verdict matrix" }
                    p.note {
                        "Rows: cache mode. Columns: " (matrix.columns_title()) ". "
                        "ok: every acknowledged write survived. loss-allowed: acknowledged writes were lost where the cell promises nothing. "
                        "VIOLATION: lost or damaged where the cell promises survival, or data nobody wrote."
                    }
                    (legend())
                    div.scroll { (matrix.table(&cells)) }
                }
                section #cells {
                    h2 { "Cells" }
                    @for (i, cell) in cells.iter().enumerate() { (cell_section(i, cell, report, out)) }
                }
                section #timings { h2 { "Timing breakdown" } (timings(&cells)) }
                section #versions { h2 { "Versions" } (versions(report)) }
                section #reproduce {
                    h2 { "Reproduce" }
                    p { "The whole run (every random choice derives from the seed, the cell and the iteration):" }
                    pre { code { (command(report, &cells, out)) } }
                    p { "Each cell's own command is in its section." }
                }
                footer {
                    p.note { (text(&report["tool"])) " " (text(&report["version"])) ". The same run as data: report.json; as text: report.txt." }
                }
            }
        }
    };
    page.into_string()
}

/// A JSON scalar as text: strings as they are, numbers and booleans printed, anything else "?".
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "?".to_owned(),
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// `loss-allowed` -> `v-loss-allowed`: a class name from outside text, reduced to `[a-z0-9-]`.
fn verdict_class(verdict: &str) -> String {
    let mut s = String::from("v-");
    s.extend(verdict.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        }
    }));
    s
}

/// The page's CSS: fixed rules, plus one class a verdict in the dashboard's colours.
fn css() -> String {
    let mut css = String::from(BASE_CSS);
    for c in VERDICT_COLOURS {
        css.push_str(&format!(
            ".{} {{ background-color: {}; }}\n",
            verdict_class(c.verdict),
            c.hex
        ));
    }
    css
}

const BASE_CSS: &str = "
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif;
       color: #1b1b1f; background: #fff; margin: 0 auto; max-width: 76rem; padding: 1rem 1.25rem 3rem; }
h1 { font-size: 1.6rem; margin: .2rem 0 .6rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .6rem; border-bottom: 2px solid #e4e4ea; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin: 0 0 .4rem; }
code, pre { font-family: 'DejaVu Sans Mono', ui-monospace, Menlo, Consolas, monospace; font-size: .88em; }
pre { background: #f4f5f8; padding: .7rem .8rem; border-radius: 6px; white-space: pre-wrap; word-break: break-all; }
nav { margin: .8rem 0; }
nav a { color: #1f60c4; }
.note { color: #55575f; font-size: .9rem; }
.banner { padding: .6rem .8rem; border-radius: 6px; }
.banner.incomplete { background: #fff1d6; border: 1px solid #FF9830; }
.summary { display: flex; flex-wrap: wrap; gap: .5rem; margin: .6rem 0; padding: 0; list-style: none; }
.summary li { background: #f4f5f8; border-radius: 6px; padding: .35rem .7rem; }
.summary li.badge { color: #111; font-weight: 600; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; margin: .4rem 0 .8rem; }
th, td { border: 1px solid #d8d9df; padding: .3rem .5rem; text-align: right; vertical-align: top; }
th { background: #f4f5f8; font-weight: 600; text-align: center; }
td.l, th.l { text-align: left; }
table.matrix td.cell { text-align: center; min-width: 7.5rem; padding: 0; color: #111; }
table.matrix td.cell a { display: block; padding: .45rem .4rem; color: inherit; text-decoration: none; }
table.matrix td.cell .verdict { font-weight: 700; display: block; }
table.matrix td.cell .counts { font-size: .8rem; }
table.matrix td.none { background: repeating-linear-gradient(45deg, #f4f5f8, #f4f5f8 6px, #fff 6px, #fff 12px); }
.legend { display: flex; flex-wrap: wrap; gap: .8rem; font-size: .9rem; margin: .3rem 0; }
.swatch { display: inline-block; width: 1rem; height: 1rem; border-radius: 3px; vertical-align: -.2rem; margin-right: .3rem; }
.card { border: 1px solid #d8d9df; border-radius: 8px; padding: .8rem 1rem; margin: 0 0 1rem; }
.card > .head { display: flex; flex-wrap: wrap; align-items: baseline; gap: .6rem; margin-bottom: .4rem; }
.pill { border-radius: 999px; padding: .1rem .7rem; font-weight: 700; color: #111; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: .4rem 0; }
dl.facts dt { color: #55575f; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.bar { display: flex; height: .9rem; min-width: 6rem; border-radius: 3px; overflow: hidden; background: #eee; }
.bar span { display: block; height: 100%; }
.timebar { display: flex; height: 1.6rem; border-radius: 4px; overflow: hidden; margin: .4rem 0; }
.timebar span { display: block; height: 100%; }
.problems { margin: .2rem 0 0; padding-left: 1.1rem; text-align: left; color: #8a1020; overflow-wrap: anywhere; }
@media (max-width: 40rem) {
  body { padding: .6rem .7rem 2rem; font-size: 14px; }
  h1 { font-size: 1.3rem; }
  dl.facts { grid-template-columns: 1fr; }
  dl.facts dt { margin-top: .3rem; }
  th, td { padding: .25rem .35rem; }
}
@media print {
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  body { max-width: none; padding: 0; font-size: 10pt; }
  nav { display: none; }
  .scroll { overflow: visible; }
  .card, table.matrix, .timebar { break-inside: avoid; }
  h2 { break-after: avoid; }
  a { color: inherit; text-decoration: none; }
}
";

fn summary(report: &Value, cells: &[&Value]) -> Markup {
    let iterations: f64 = cells.iter().map(|c| num(&c["iterations"])).sum();
    let acked: f64 = cells.iter().map(|c| num(&c["acked"])).sum();
    let lost: f64 = cells.iter().map(|c| num(&c["lost_acked"])).sum();
    html! {
        ul.summary {
            li { (cells.len()) " cells" }
            li { (iterations) " iterations" }
            li { (acked) " acknowledged writes, " (lost) " not intact" }
            @for c in VERDICT_COLOURS {
                @let n = cells.iter().filter(|cell| cell["verdict"].as_str() == Some(c.verdict)).count();
                li class=(format!("badge {}", verdict_class(c.verdict))) style=(format!("background-color:{}", c.hex)) { (n) " " (c.verdict) }
            }
            li { "seed " code { (text(&report["run"]["seed"])) } }
        }
    }
}

fn legend() -> Markup {
    html! {
        div.legend {
            @for c in VERDICT_COLOURS {
                span { span.swatch style=(format!("background-color:{}", c.hex)) {} (c.verdict) }
            }
            span { span.swatch style="background:#f4f5f8" {} "not run" }
        }
    }
}

/// The matrix's axes: each dimension's values in order of first appearance.
struct Matrix {
    /// Dimensions present, the row dimension first.
    dims: Vec<&'static str>,
    /// Per dimension, its values.
    values: Vec<Vec<String>>,
    /// Column keys (values of `dims[1..]`), sorted by each value's first appearance.
    columns: Vec<Vec<String>>,
}

impl Matrix {
    fn of(cells: &[&Value]) -> Matrix {
        let dims: Vec<&'static str> = DIMENSIONS
            .into_iter()
            .enumerate()
            .filter(|(i, d)| *i == 0 || cells.iter().any(|c| !c[*d].is_null()))
            .map(|(_, d)| d)
            .collect();
        let mut values: Vec<Vec<String>> = vec![Vec::new(); dims.len()];
        for c in cells {
            for (i, d) in dims.iter().enumerate() {
                let v = text(&c[*d]);
                if !values[i].contains(&v) {
                    values[i].push(v);
                }
            }
        }
        let mut columns: Vec<Vec<String>> = Vec::new();
        for c in cells {
            let key: Vec<String> = dims[1..].iter().map(|d| text(&c[*d])).collect();
            if !columns.contains(&key) {
                columns.push(key);
            }
        }
        let rank = |key: &Vec<String>| -> Vec<usize> {
            key.iter()
                .enumerate()
                .map(|(i, v)| values[i + 1].iter().position(|x| x == v).unwrap_or(0))
                .collect()
        };
        columns.sort_by_key(rank);
        Matrix {
            dims,
            values,
            columns,
        }
    }

    fn columns_title(&self) -> String {
        self.dims[1..].join(" / ")
    }

    fn key(&self, cell: &Value) -> Vec<String> {
        self.dims.iter().map(|d| text(&cell[*d])).collect()
    }

    fn table(&self, cells: &[&Value]) -> Markup {
        let levels = self.dims.len() - 1;
        html! {
            table.matrix {
                thead {
                    @for level in 0..levels {
                        tr {
                            @if level == 0 {
                                th.l rowspan=(levels.max(1)) { (self.dims[0]) }
                            }
                            @for (value, span) in self.header_spans(level) {
                                th colspan=(span) title=(self.dims[level + 1]) { (value) }
                            }
                        }
                    }
                }
                tbody {
                    @for row in &self.values[0] {
                        tr {
                            th.l { (row) }
                            @for col in &self.columns {
                                @let want: Vec<String> = std::iter::once(row.clone()).chain(col.iter().cloned()).collect();
                                @match cells.iter().position(|c| self.key(c) == want) {
                                    Some(i) => (matrix_cell(i, cells[i], &want)),
                                    None => td.none title="not run" {},
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The header row of `level`: runs of columns sharing the values of levels `0..=level`.
    fn header_spans(&self, level: usize) -> Vec<(String, usize)> {
        let mut spans: Vec<(Vec<String>, usize)> = Vec::new();
        for col in &self.columns {
            let prefix = col[..=level].to_vec();
            match spans.last_mut() {
                Some((p, n)) if *p == prefix => *n += 1,
                _ => spans.push((prefix, 1)),
            }
        }
        spans
            .into_iter()
            .map(|(p, n)| (p[level].clone(), n))
            .collect()
    }
}

fn matrix_cell(index: usize, cell: &Value, key: &[String]) -> Markup {
    let verdict = text(&cell["verdict"]);
    html! {
        td class=(format!("cell {}", verdict_class(&verdict)))
            style=(format!("background-color:{}", verdict_colour(&verdict)))
            data-cell=(key.join("/")) data-verdict=(verdict) {
            a href=(format!("#cell-{index}")) title=(text(&cell["promise"])) {
                span.verdict { (verdict) }
                span.counts { (text(&cell["lost_acked"])) " of " (text(&cell["acked"])) " lost" }
                br;
                span.counts { (text(&cell["iterations_with_loss"])) "/" (text(&cell["iterations"])) " iterations with loss" }
            }
        }
    }
}

fn cell_section(index: usize, cell: &Value, report: &Value, out: &Path) -> Markup {
    let verdict = text(&cell["verdict"]);
    let name: Vec<String> = DIMENSIONS
        .iter()
        .filter(|d| !cell[**d].is_null())
        .map(|d| text(&cell[*d]))
        .collect();
    let iterations: Vec<&Value> = cell["results"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let qmp = &cell["qmp_cache"];
    html! {
        div.card id=(format!("cell-{index}")) {
            div.head {
                h3 { (name.join(" / ")) }
                span class=(format!("pill {}", verdict_class(&verdict))) style=(format!("background-color:{}", verdict_colour(&verdict))) { (verdict) }
            }
            dl.facts {
                dt { "promise" }
                dd {
                    @if cell["promised"].as_bool() == Some(true) { strong { "acknowledged writes must survive" } } @else { strong { "nothing promised" } }
                    ": " (text(&cell["promise"]))
                }
                dt { "acknowledged" }
                dd {
                    (text(&cell["acked"])) " acked, " (text(&cell["survived"])) " survived, "
                    (text(&cell["lost"])) " lost, " (text(&cell["corrupted"])) " corrupted; "
                    (text(&cell["unacked_present"])) " unacked present, " (text(&cell["unacked_torn"])) " torn"
                }
                dt { "QMP cache flags" }
                dd {
                    @if qmp.is_null() { "not read" } @else {
                        "writeback=" (text(&qmp["writeback"])) " direct=" (text(&qmp["direct"])) " no-flush=" (text(&qmp["no-flush"]))
                        @if cell["qmp_confirmed"].as_bool() == Some(true) { " (the configured mode)" } @else { " (differs from the configured mode)" }
                    }
                }
                dt { "seed" }
                dd { (text(&cell["seed"])) " (the cell's own: " (text(&cell["derived_seed"])) ")" }
            }
            div.scroll {
                table {
                    thead { tr {
                        th { "#" } th { "verdict" } th { "acked" } th { "survived" } th { "lost" } th { "corrupted" }
                        th { "loss" } th { "fault after" } th.l { "power loss" } th.l { "image" }
                    } }
                    tbody {
                        @for it in &iterations { (iteration_row(it)) }
                    }
                }
            }
            p.note { "Repeat this cell: " }
            pre { code { (cell_command(report, cell, out)) } }
        }
    }
}

fn iteration_row(it: &Value) -> Markup {
    let verdict = text(&it["verdict"]);
    let acked = num(&it["acked"]);
    let survived = num(&it["survived"]);
    let lost_pct = if acked > 0.0 {
        100.0 * (acked - survived) / acked
    } else {
        0.0
    };
    let problems: Vec<String> = it["problems"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    let pf = &it["power_fail"];
    html! {
        tr data-verdict=(verdict) {
            td { (text(&it["iteration"])) }
            td class=(format!("cell {}", verdict_class(&verdict))) style=(format!("background-color:{}", verdict_colour(&verdict))) { (verdict) }
            td { (text(&it["acked"])) }
            td { (text(&it["survived"])) }
            td { (text(&it["lost"])) }
            td { (text(&it["corrupted"])) }
            td title=(format!("{lost_pct:.1}% of the acknowledged writes not intact")) {
                div.bar {
                    span style=(format!("width:{:.1}%;background-color:{}", 100.0 - lost_pct, verdict_colour("ok"))) {}
                    span style=(format!("width:{:.1}%;background-color:{}", lost_pct, verdict_colour(&verdict))) {}
                }
            }
            td { (text(&it["fault_delay_ms"])) " ms" }
            td.l {
                @if pf.is_null() { "—" } @else {
                    (text(&pf["mode"])) ": " (text(&pf["persisted_writes"])) " of " (text(&pf["unflushed_writes"])) " unflushed writes kept, "
                    (text(&pf["torn_writes"])) " torn"
                }
                @if it["host_ignores_flush"].as_bool() == Some(true) { br; "host ignored flushes (cache=unsafe)" }
            }
            td.l {
                @if let Some(e) = it["image_error"].as_str() { "unreadable: " (e) br; }
                @if let Some(c) = it["image_check"].as_str() { "qemu-img check: " (c) }
                @if let Some(img) = it["kept_image"].as_str() { br; "kept: " code { (img) } }
                @if !problems.is_empty() {
                    ul.problems { @for p in &problems { li { (p) } } }
                }
                @if it["image_error"].is_null() && it["image_check"].is_null() && it["kept_image"].is_null() && problems.is_empty() { "—" }
            }
        }
    }
}

fn timings(cells: &[&Value]) -> Markup {
    // Means over every iteration of the run, then per cell (report.json's mean_timings).
    let all: Vec<&Value> = cells
        .iter()
        .flat_map(|c| c["results"].as_array().into_iter().flatten())
        .map(|r| &r["timings"])
        .collect();
    let n = all.len().max(1) as f64;
    let mean = |phase: &str| all.iter().map(|t| num(&t[phase])).sum::<f64>() / n;
    let total = mean("total");
    let phases = phases(cells);
    let mut parts: Vec<(&str, &str, f64)> = phases
        .iter()
        .map(|(p, why)| (p.as_str(), why.as_str(), mean(p)))
        .collect();
    let accounted: f64 = parts.iter().map(|p| p.2).sum();
    parts.push((
        "rest",
        "clean-up and waiting for a slot",
        (total - accounted).max(0.0),
    ));
    let colour = |i: usize| PHASE_COLOURS[i % PHASE_COLOURS.len()];
    let scale = parts.iter().map(|p| p.2).sum::<f64>().max(f64::EPSILON);
    html! {
        p { "Mean seconds per iteration over " (all.len()) " iterations: " strong { (format!("{total:.2} s")) } "." }
        div.timebar role="img" aria-label="mean time per phase" {
            @for (i, (phase, why, secs)) in parts.iter().enumerate() {
                span title=(format!("{phase}: {secs:.2} s ({why})"))
                    style=(format!("width:{:.2}%;background-color:{}", 100.0 * secs / scale, colour(i))) {}
            }
        }
        div.legend {
            @for (i, (phase, why, secs)) in parts.iter().enumerate() {
                span title=(why) { span.swatch style=(format!("background-color:{}", colour(i))) {} (phase) " " (format!("{secs:.2} s")) }
            }
        }
        div.scroll {
            table {
                thead { tr {
                    th.l { "cell" }
                    @for (phase, why) in &phases { th title=(why) { (phase) } }
                    th { "total" }
                } }
                tbody {
                    @for c in cells {
                        tr {
                            th.l { (DIMENSIONS.iter().filter(|d| !c[**d].is_null()).map(|d| text(&c[*d])).collect::<Vec<_>>().join(" / ")) }
                            @for (phase, _) in &phases { td { (format!("{:.2}", num(&c["mean_timings"][phase.as_str()]))) } }
                            td { (format!("{:.2}", num(&c["mean_timings"]["total"]))) }
                        }
                    }
                }
            }
        }
    }
}

fn versions(report: &Value) -> Markup {
    let run = &report["run"];
    let host = &report["host"];
    let time = |v: &Value| -> String {
        v.as_f64()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .map(|t| {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t);
                humantime::format_rfc3339_seconds(at).to_string()
            })
            .unwrap_or_else(|| "?".to_owned())
    };
    html! {
        dl.facts {
            dt { "QEMU" } dd { (text(&report["qemu_version"])) " (" code { (text(&run["qemu_binary"])) } ", accel " (text(&run["accel"])) ")" }
            dt { "guest kernel" } dd { (text(&report["guest_kernel"])) }
            dt { "host kernel" } dd { (text(&host["kernel"])) }
            dt { "host OS" } dd { (text(&host["os"])) }
            dt { "host" } dd { (text(&host["hostname"])) }
            dt { "kvmio-crashtest" } dd { (text(&report["version"])) }
            dt { "images on" } dd { code { (text(&run["image_dir"])) } }
            dt { "disk, record" } dd { (text(&run["disk_size_mib"])) " MiB, " (text(&run["record_size"])) " B records" }
            dt { "fault window" } dd { (text(&run["window_ms"][0])) ".." (text(&run["window_ms"][1])) " ms after the first ack" }
            dt { "started" } dd { (time(&run["started_unix"])) }
            dt { "finished" } dd { (time(&run["finished_unix"])) }
            @if let Some(dir) = report["kept_images_dir"].as_str() { dt { "kept images" } dd { code { (dir) } } }
        }
    }
}

/// `kvmio-crashtest run` with the run's flags, for `values` per dimension.
fn run_command(report: &Value, values: &[(&str, Vec<String>)], out: &Path) -> String {
    let run = &report["run"];
    let mut args: Vec<String> = vec!["kvmio-crashtest".into(), "run".into()];
    for (dim, vals) in values {
        args.push(flag(dim));
        args.push(vals.join(","));
    }
    let keep = run["keep_images"].as_bool() == Some(true);
    let options = [
        ("--iterations", &run["iterations"]),
        ("--seed", &run["seed"]),
        ("--parallel", &run["parallel"]),
        ("--accel", &run["accel"]),
        ("--disk-size", &run["disk_size_mib"]),
        ("--record-size", &run["record_size"]),
        (
            "--image-dir",
            if keep {
                &Value::Null
            } else {
                &run["image_dir"]
            },
        ),
        ("--qemu", &run["qemu_binary"]),
        ("--boot", &run["boot"]),
    ];
    for (name, v) in options.into_iter().filter(|(_, v)| !v.is_null()) {
        args.push(name.to_owned());
        args.push(text(v));
    }
    if let (Some(a), Some(b)) = (run["window_ms"][0].as_u64(), run["window_ms"][1].as_u64()) {
        args.push("--window-ms".into());
        args.push(format!("{a}..{b}"));
    }
    if keep {
        args.push("--keep-images".into());
    }
    for self_test in SELF_TESTS {
        if run[self_test].as_bool() == Some(true) {
            args.push(format!("--{}", self_test.replace('_', "-")));
        }
    }
    args.push("--out".into());
    args.push(out.display().to_string());
    args.iter()
        .map(|a| {
            shlex::try_quote(a)
                .map(|q| q.into_owned())
                .unwrap_or_else(|_| format!("{a:?}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn command(report: &Value, cells: &[&Value], out: &Path) -> String {
    let matrix = Matrix::of(cells);
    let values: Vec<(&str, Vec<String>)> = matrix.dims.iter().copied().zip(matrix.values).collect();
    run_command(report, &values, out)
}

fn cell_command(report: &Value, cell: &Value, out: &Path) -> String {
    let values: Vec<(&str, Vec<String>)> = DIMENSIONS
        .iter()
        .filter(|d| !cell[**d].is_null())
        .map(|d| (*d, vec![text(&cell[*d])]))
        .collect();
    run_command(report, &values, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cell(cache: &str, fault: &str, verdict: &str, extra: Value) -> Value {
        let mut c = json!({
            "cache_mode": cache, "fault": fault, "sync": "none", "format": "raw",
            "iterations": 1, "acked": 10, "survived": 0, "lost": 10, "corrupted": 0, "lost_acked": 10,
            "iterations_with_loss": 1, "verdict": verdict, "promised": false, "promise": "nothing <b>",
            "seed": 7, "derived_seed": 8, "qmp_cache": null, "qmp_confirmed": false,
            "mean_timings": {"create": 0.1, "boot": 2.0, "first_ack": 0.5, "window": 0.3, "fault": 0.1, "verify": 0.01, "total": 3.2},
            "results": [{"iteration": 1, "verdict": verdict, "acked": 10, "survived": 0, "lost": 10, "corrupted": 0,
                         "fault_delay_ms": 300, "power_fail": null, "host_ignores_flush": false,
                         "problems": ["slot 3: <script>alert(1)</script>"],
                         "timings": {"create": 0.1, "boot": 2.0, "first_ack": 0.5, "window": 0.3, "fault": 0.1, "verify": 0.01, "total": 3.2}}]
        });
        if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
            c.extend(e);
        }
        c
    }

    fn report(cells: Vec<Value>) -> Value {
        json!({
            "tool": "kvmio-crashtest", "version": "0.1.0", "complete": false, "error": "interrupted & <stopped>",
            "run": {"seed": 42, "iterations": 1, "parallel": 1, "accel": "tcg", "qemu_binary": "qemu-system-x86_64",
                    "disk_size_mib": 16, "record_size": 4096, "window_ms": [100, 1000], "image_dir": "/var/tmp/it's here",
                    "keep_images": false, "started_unix": 1.0e9, "finished_unix": 1.0e9 + 60.0},
            "host": {"kernel": "6.1.0", "os": "Debian", "hostname": "h<1>"},
            "qemu_version": "7.2.22", "guest_kernel": "6.1.0-44-amd64", "cells": cells
        })
    }

    #[test]
    fn outside_text_is_escaped_and_nothing_is_fetched() {
        let r = report(vec![cell("unsafe", "power", "loss-allowed", json!({}))]);
        let page = render(&r, Path::new("/tmp/out dir"));
        for raw in ["<script>", "<stopped>", "<b>", "h<1>"] {
            assert!(!page.contains(raw), "{raw} unescaped");
        }
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("Incomplete run"));
        for external in ["src=", "<link", "url(", "http://", "https://", "<script"] {
            assert!(
                !page.contains(external),
                "{external} in a self-contained page"
            );
        }
        // The command quotes what the shell would split.
        assert!(page.contains("--out '/tmp/out dir'"), "{page}");
        assert!(
            page.contains("--image-dir &quot;/var/tmp/it's here&quot;"),
            "{page}"
        );
        // One class attribute an element (browsers ignore a second one).
        assert!(!page.contains("\" class="), "{page}");
    }

    #[test]
    fn the_matrix_has_every_dimension_the_cells_have() {
        let r = report(vec![
            cell("none", "power", "ok", json!({"workload": "oltp"})),
            cell(
                "unsafe",
                "power",
                "loss-allowed",
                json!({"workload": "oltp"}),
            ),
            cell("unsafe", "kill", "VIOLATION", json!({"workload": "seq"})),
        ]);
        let page = render(&r, Path::new("/o"));
        assert!(page.contains("fault / sync / format / workload"), "{page}");
        assert!(page.contains("data-cell=\"unsafe/power/none/raw/oltp\""));
        assert!(page.contains("--workload 'oltp,seq'"), "{page}");
        for c in VERDICT_COLOURS {
            assert!(page.contains(&format!("data-verdict=\"{}\"", c.verdict)));
            assert!(page.contains(&format!("background-color:{}", c.hex)));
        }
        // 2 cache modes x 2 columns: one combination not run.
        assert_eq!(page.matches("title=\"not run\"").count(), 1);
    }
}
