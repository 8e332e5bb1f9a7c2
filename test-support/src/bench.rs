//! What the benches share: their command line after `--`, percentiles, `/proc` readings and the
//! results table.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::ChildProcess;

/// The value of the flag being handled by [`parse_flags`]' callback.
pub struct FlagValue<'a> {
    flag: String,
    inline: Option<String>,
    rest: &'a mut dyn Iterator<Item = String>,
}

impl std::fmt::Debug for FlagValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagValue")
            .field("flag", &self.flag)
            .field("inline", &self.inline)
            .finish_non_exhaustive()
    }
}

impl FlagValue<'_> {
    /// The flag's value: after `=`, or the next argument; panics if there is none.
    pub fn string(&mut self) -> String {
        self.inline
            .take()
            .or_else(|| self.rest.next())
            .unwrap_or_else(|| panic!("{} needs a value", self.flag))
    }

    /// The flag's value as a number; panics if it is missing or not one.
    pub fn number(&mut self) -> usize {
        let v = self.string();
        v.parse()
            .unwrap_or_else(|_| panic!("{} needs a number, not {v:?}", self.flag))
    }
}

/// Calls `set(flag, value)` for each argument of the bench (`--flag VALUE` or `--flag=VALUE`;
/// `set` takes the value only for flags that have one). `set` ignores what it does not know:
/// cargo bench passes `--bench`.
pub fn parse_flags(mut set: impl FnMut(&str, &mut FlagValue<'_>)) {
    let mut rest = std::env::args().skip(1);
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg, None),
        };
        let mut value = FlagValue {
            flag: flag.clone(),
            inline,
            rest: &mut rest,
        };
        set(&flag, &mut value);
    }
}

/// The `p` quantile (0 to 1) of `sorted` (nearest rank); NaN if empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `v` in ascending order.
pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// The median of `v` (in any order).
pub fn median(v: &[f64]) -> f64 {
    percentile(&sorted(v.to_vec()), 0.5)
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Seconds as milliseconds with one decimal: `12.3 ms`.
pub fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1000.0)
}

/// `median / p99` of seconds `v` (in any order), in milliseconds with `decimals` decimals.
pub fn median_p99(v: &[f64], decimals: usize) -> String {
    let v = sorted(v.to_vec());
    let ms = |p| format!("{:.*} ms", decimals, percentile(&v, p) * 1000.0);
    format!("{} / {}", ms(0.5), ms(0.99))
}

/// Prints a Markdown table's head: the `columns` and the rule under them.
pub fn table_head(columns: &[&str]) {
    println!("| {} |", columns.join(" | "));
    println!("|{}", "---|".repeat(columns.len()));
}

/// Clock ticks per second (`/proc/PID/stat` counts in them).
pub fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// The fields of a `/proc/PID/stat` line after the command name (which is in parentheses and
/// may contain spaces): the state is `[0]`, utime `[11]`, stime `[12]`.
pub fn stat_fields(stat: &str) -> Vec<&str> {
    stat[stat.rfind(')').map_or(0, |i| i + 2)..]
        .split_whitespace()
        .collect()
}

/// The `key` line (`VmRSS:`, `VmHWM:`...) of a `/proc/PID/status` text in MiB; NaN if absent.
pub fn status_mib(status: &str, key: &str) -> f64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
        / 1024.0
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// QEMU processes on the machine.
pub fn qemu_processes() -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with("qemu-system"))
        })
        .count()
}

/// Waits (up to `timeout`) until `server` (its stderr in `log`) accepts TCP connections on
/// `addr`; panics if it exits first.
pub fn wait_listening(addr: &str, timeout: Duration, server: &mut ChildProcess, log: &Path) {
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(status) = server.exited() {
            panic!("{addr}: the server exited: {status}: {}", log());
        }
        assert!(
            Instant::now() < deadline,
            "{addr} did not answer within {timeout:?}: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
