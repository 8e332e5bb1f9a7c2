//! `kvmio-guest bench`: one IO workload on a block device, for the seed-claims experiment.
//!
//! The host (`kvmio-claims`) starts it through the guest agent's `guest-exec` and reads the
//! layers below through kvmio-exporter; the guest's own view is this program's one result
//! line. Both sides use [`BenchSpec`] (the command line) and [`BenchResult`] (the result line),
//! so the host never re-states the guest's argument syntax.
//!
//! The workload is deliberately simple, like fio's `psync` engine: `jobs` threads, each issuing
//! one synchronous `pread`/`pwrite` at a time, sequentially through its own slice of the region
//! or at random block-aligned offsets inside the whole region. With more than one job the
//! guest's IO scheduler sees concurrent requests it can merge and reorder; buffered IO (no
//! `--direct`) lets the page cache build large requests at writeback and readahead time, which
//! is where the guest's merging shows.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// At most this many requests a run: latencies are kept per request.
pub const MAX_REQUESTS: u64 = 1 << 20;

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// Sequential or random offsets. Sequential jobs interleave: job `j` of `n` takes blocks `j`,
/// `j + n`, `j + 2n`, ..., so concurrent requests are adjacent on the disk: the case where an
/// IO scheduler can merge what the jobs issue one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Seq,
    Rand,
}

/// When a writer makes its data durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Never (what stays in the guest page cache is written back by the kernel later).
    None,
    /// One `fdatasync` at the end of each job.
    End,
    /// `fdatasync` after every write.
    Each,
}

/// One workload: the `kvmio-guest bench` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchSpec {
    pub dev: PathBuf,
    pub op: Op,
    pub pattern: Pattern,
    pub block_size: usize,
    /// The region: `offset .. offset + size` bytes.
    pub offset: u64,
    pub size: u64,
    pub jobs: usize,
    /// O_DIRECT (bypasses the guest page cache).
    pub direct: bool,
    pub fsync: Fsync,
    /// Drop the guest's page cache first (`/proc/sys/vm/drop_caches`), so reads reach the disk.
    pub drop_caches: bool,
    pub seed: u64,
}

/// What the guest saw: one line, `key=value` pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchResult {
    pub requests: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub latency_mean_us: f64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
}

/// An invalid command line.
pub fn bad(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, m)
}

/// A guest command's flags (`--name value` or `--name`), as `bench` and `write` take them.
#[derive(Debug)]
pub struct Flags<'a>(std::slice::Iter<'a, String>);

impl<'a> Flags<'a> {
    pub fn new(args: &'a [String]) -> Flags<'a> {
        Flags(args.iter())
    }

    /// The next flag's name.
    pub fn next_flag(&mut self) -> Option<&'a str> {
        self.0.next().map(String::as_str)
    }

    /// The value after flag `name`.
    pub fn value(&mut self, name: &str) -> io::Result<&'a str> {
        self.0
            .next()
            .map(String::as_str)
            .ok_or_else(|| bad(format!("{name} needs a value")))
    }

    /// The whole number after flag `name`.
    pub fn number(&mut self, name: &str) -> io::Result<u64> {
        let v = self.value(name)?;
        v.parse()
            .map_err(|_| bad(format!("{name} takes a whole number, not {v:?}")))
    }
}

/// The flags `bench` and `write` share: the device, its request size and first offset, and
/// whether it is opened with `O_DIRECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFlags {
    pub dev: PathBuf,
    pub block_size: usize,
    pub offset: u64,
    pub direct: bool,
}

impl Default for DeviceFlags {
    fn default() -> DeviceFlags {
        DeviceFlags {
            dev: PathBuf::new(),
            block_size: 4096,
            offset: 0,
            direct: false,
        }
    }
}

impl DeviceFlags {
    /// Takes `flag` (and its value) if it is one of these; an unknown flag otherwise.
    pub fn take(&mut self, flag: &str, flags: &mut Flags<'_>) -> io::Result<()> {
        match flag {
            "--dev" => self.dev = PathBuf::from(flags.value(flag)?),
            "--block-size" => self.block_size = flags.number(flag)? as usize,
            "--offset" => self.offset = flags.number(flag)?,
            "--direct" => self.direct = true,
            other => return Err(bad(format!("unknown flag {other}"))),
        }
        Ok(())
    }

    /// Block size and offset as `O_DIRECT` needs them (multiples of 512 bytes).
    pub fn check_alignment(&self) -> io::Result<()> {
        if self.block_size == 0 || self.block_size % 512 != 0 || self.offset % 512 != 0 {
            return Err(bad(
                "--block-size and --offset must be multiples of 512".into()
            ));
        }
        Ok(())
    }
}

impl BenchSpec {
    /// The arguments after `kvmio-guest bench`.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--dev".to_string(),
            self.dev.display().to_string(),
            "--op".into(),
            match self.op {
                Op::Read => "read",
                Op::Write => "write",
            }
            .into(),
            "--pattern".into(),
            match self.pattern {
                Pattern::Seq => "seq",
                Pattern::Rand => "rand",
            }
            .into(),
            "--block-size".into(),
            self.block_size.to_string(),
            "--offset".into(),
            self.offset.to_string(),
            "--size".into(),
            self.size.to_string(),
            "--jobs".into(),
            self.jobs.to_string(),
            "--fsync".into(),
            match self.fsync {
                Fsync::None => "none",
                Fsync::End => "end",
                Fsync::Each => "each",
            }
            .into(),
            "--seed".into(),
            self.seed.to_string(),
        ];
        if self.direct {
            a.push("--direct".into());
        }
        if self.drop_caches {
            a.push("--drop-caches".into());
        }
        a
    }

    /// Parses what [`BenchSpec::to_args`] gives, checking the bounds the run relies on.
    pub fn from_args(args: &[String]) -> io::Result<BenchSpec> {
        let mut device = DeviceFlags::default();
        // `dev`, `block_size`, `offset` and `direct` are `device`'s, filled in once parsed.
        let mut s = BenchSpec {
            dev: PathBuf::new(),
            op: Op::Read,
            pattern: Pattern::Seq,
            block_size: 0,
            offset: 0,
            size: 0,
            jobs: 1,
            direct: false,
            fsync: Fsync::None,
            drop_caches: false,
            seed: 0,
        };
        let mut flags = Flags::new(args);
        while let Some(flag) = flags.next_flag() {
            match flag {
                "--op" => {
                    s.op = match flags.value(flag)? {
                        "read" => Op::Read,
                        "write" => Op::Write,
                        v => return Err(bad(format!("--op is read or write, not {v:?}"))),
                    }
                }
                "--pattern" => {
                    s.pattern = match flags.value(flag)? {
                        "seq" => Pattern::Seq,
                        "rand" => Pattern::Rand,
                        v => return Err(bad(format!("--pattern is seq or rand, not {v:?}"))),
                    }
                }
                "--fsync" => {
                    s.fsync = match flags.value(flag)? {
                        "none" => Fsync::None,
                        "end" => Fsync::End,
                        "each" => Fsync::Each,
                        v => return Err(bad(format!("--fsync is none, end or each, not {v:?}"))),
                    }
                }
                "--size" => s.size = flags.number(flag)?,
                "--jobs" => s.jobs = flags.number(flag)? as usize,
                "--seed" => s.seed = flags.number(flag)?,
                "--drop-caches" => s.drop_caches = true,
                other => device.take(other, &mut flags)?,
            }
        }
        if device.dev.as_os_str().is_empty() {
            return Err(bad("bench needs --dev DEV".into()));
        }
        device.check_alignment()?;
        let s = BenchSpec {
            dev: device.dev,
            block_size: device.block_size,
            offset: device.offset,
            direct: device.direct,
            ..s
        };
        if !(1..=64).contains(&s.jobs) {
            return Err(bad("--jobs is 1 to 64".into()));
        }
        let requests = s.size / s.block_size as u64;
        if requests < s.jobs as u64 || requests > MAX_REQUESTS {
            return Err(bad(format!(
                "--size / --block-size must give {} to {MAX_REQUESTS} requests",
                s.jobs
            )));
        }
        Ok(s)
    }

    fn requests_per_job(&self) -> u64 {
        self.size / self.block_size as u64 / self.jobs as u64
    }
}

impl fmt::Display for BenchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests={} bytes={} seconds={:.6} latency_mean_us={:.1} latency_p50_us={:.1} latency_p99_us={:.1}",
            self.requests,
            self.bytes,
            self.seconds,
            self.latency_mean_us,
            self.latency_p50_us,
            self.latency_p99_us
        )
    }
}

impl BenchResult {
    /// Parses the guest's result line (its last line of output).
    pub fn parse(line: &str) -> Result<BenchResult, String> {
        let mut r = BenchResult {
            requests: 0,
            bytes: 0,
            seconds: 0.0,
            latency_mean_us: 0.0,
            latency_p50_us: 0.0,
            latency_p99_us: 0.0,
        };
        let mut seen = 0;
        for pair in line.split_whitespace() {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("not key=value: {pair:?}"))?;
            let float = || v.parse::<f64>().map_err(|_| format!("{k}: not a number"));
            let int = || v.parse::<u64>().map_err(|_| format!("{k}: not a count"));
            match k {
                "requests" => r.requests = int()?,
                "bytes" => r.bytes = int()?,
                "seconds" => r.seconds = float()?,
                "latency_mean_us" => r.latency_mean_us = float()?,
                "latency_p50_us" => r.latency_p50_us = float()?,
                "latency_p99_us" => r.latency_p99_us = float()?,
                _ => return Err(format!("unknown key {k:?}")),
            }
            seen += 1;
        }
        if seen != 6 {
            return Err(format!("expected 6 fields, got {seen}"));
        }
        Ok(r)
    }
}

/// A block-aligned buffer (O_DIRECT needs the memory aligned too).
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + 4096];
        let start = raw.as_ptr().align_offset(4096);
        Aligned { raw, start, len }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
    fn as_ref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// Runs the workload and returns what the guest saw.
pub fn run(spec: &BenchSpec) -> io::Result<BenchResult> {
    if spec.drop_caches {
        // Dirty pages first, or dropping leaves them.
        sync_everything();
        std::fs::write("/proc/sys/vm/drop_caches", "3\n")?;
    }
    let mut opts = OpenOptions::new();
    match spec.op {
        Op::Read => opts.read(true),
        Op::Write => opts.write(true),
    };
    if spec.direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let file = opts.open(&spec.dev)?;
    let start = Instant::now();
    let per_job = spec.requests_per_job();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..spec.jobs)
            .map(|job| {
                let file = &file;
                scope.spawn(move || job_run(spec, file, job, per_job))
            })
            .collect();
        let mut all = Vec::with_capacity((per_job as usize) * spec.jobs);
        for h in handles {
            let lat = h
                .join()
                .map_err(|_| io::Error::other("a bench job panicked"))??;
            all.extend(lat);
        }
        Ok::<_, io::Error>(all)
    })?;
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let n = latencies.len();
    let pct = |p: f64| us(latencies[((n as f64 - 1.0) * p).round() as usize]);
    let mean = latencies.iter().map(|d| us(*d)).sum::<f64>() / n as f64;
    Ok(BenchResult {
        requests: n as u64,
        bytes: n as u64 * spec.block_size as u64,
        seconds,
        latency_mean_us: mean,
        latency_p50_us: pct(0.5),
        latency_p99_us: pct(0.99),
    })
}

/// `sync(2)` for the whole guest: std has no wrapper and the workspace forbids `unsafe`, so
/// busybox's `sync` (every kvmio guest has it) does it.
fn sync_everything() {
    let _ = std::process::Command::new("sync").status();
}

fn job_run(spec: &BenchSpec, file: &File, job: usize, count: u64) -> io::Result<Vec<Duration>> {
    let bs = spec.block_size as u64;
    let mut buf = Aligned::new(spec.block_size);
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed ^ (job as u64).wrapping_mul(0x9e37));
    if spec.op == Op::Write {
        rng.fill(buf.as_mut());
    }
    let blocks = spec.size / bs;
    let jobs = spec.jobs as u64;
    let mut lat = Vec::with_capacity(count as usize);
    for i in 0..count {
        let at = match spec.pattern {
            Pattern::Seq => spec.offset + (i * jobs + job as u64) * bs,
            Pattern::Rand => spec.offset + rng.random_range(0..blocks) * bs,
        };
        let t = Instant::now();
        match spec.op {
            Op::Read => file.read_exact_at(buf.as_mut(), at)?,
            Op::Write => {
                file.write_all_at(buf.as_ref(), at)?;
                if spec.fsync == Fsync::Each {
                    file.sync_data()?;
                }
            }
        }
        lat.push(t.elapsed());
    }
    if spec.op == Op::Write && spec.fsync == Fsync::End {
        file.sync_data()?;
    }
    Ok(lat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BenchSpec {
        BenchSpec {
            dev: "/dev/vda".into(),
            op: Op::Write,
            pattern: Pattern::Rand,
            block_size: 4096,
            offset: 1 << 20,
            size: 64 << 20,
            jobs: 4,
            direct: true,
            fsync: Fsync::End,
            drop_caches: true,
            seed: 7,
        }
    }

    #[test]
    fn args_round_trip() {
        let s = spec();
        assert_eq!(BenchSpec::from_args(&s.to_args()).unwrap(), s);
    }

    #[test]
    fn bounds_are_checked() {
        let mut s = spec();
        s.size = 4096 * (MAX_REQUESTS + 1);
        assert!(BenchSpec::from_args(&s.to_args()).is_err());
        let mut s = spec();
        s.block_size = 1000;
        assert!(BenchSpec::from_args(&s.to_args()).is_err());
        let mut s = spec();
        s.jobs = 0;
        assert!(BenchSpec::from_args(&s.to_args()).is_err());
    }

    #[test]
    fn result_round_trip_and_rejects_junk() {
        let r = BenchResult {
            requests: 10,
            bytes: 40960,
            seconds: 1.5,
            latency_mean_us: 12.5,
            latency_p50_us: 10.0,
            latency_p99_us: 99.0,
        };
        assert_eq!(BenchResult::parse(&r.to_string()).unwrap(), r);
        assert!(BenchResult::parse("requests=1").is_err());
        assert!(BenchResult::parse("requests=x bytes=1").is_err());
    }

    #[test]
    fn runs_on_a_file() {
        let dir = std::env::temp_dir().join(format!("kvmio-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let mut s = spec();
        s.dev = path.clone();
        s.direct = false;
        s.drop_caches = false;
        s.offset = 0;
        s.size = 1 << 20;
        let w = run(&s).unwrap();
        assert_eq!(w.requests, 256);
        assert_eq!(w.bytes, 1 << 20);
        s.op = Op::Read;
        s.pattern = Pattern::Seq;
        let r = run(&s).unwrap();
        assert_eq!(r.requests, 256);
        assert!(r.latency_p99_us >= r.latency_p50_us);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
