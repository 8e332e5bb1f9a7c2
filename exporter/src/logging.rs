//! Log output as Prometheus' own exporters write it (`--log.level`, `--log.format`): one line a
//! message on stderr, `logfmt` (`ts=... level=info target=... msg="..." key=value`) by default,
//! or JSON. `RUST_LOG`, when set, overrides the level (and can select per module).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// `--log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// `--log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// Installs the process's logger on stderr.
pub fn init(level: LogLevel, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level.directive()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Logfmt => builder.event_format(Logfmt).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// logfmt lines: `ts`, `level`, `target`, `msg`, then the event's fields.
#[derive(Debug, Clone, Copy)]
pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        w.write_str("ts=")?;
        SystemTime.format_time(&mut w)?;
        let meta = event.metadata();
        write!(
            w,
            " level={} target={}",
            meta.level().as_str().to_ascii_lowercase(),
            meta.target()
        )?;
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        w.write_str(&fields.0)?;
        writeln!(w)
    }
}

/// Collects an event's fields as ` key=value` pairs (`message` as `msg`).
struct Fields(String);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        push_pair(&mut self.0, field.name(), value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        push_pair(&mut self.0, field.name(), &format!("{value:?}"));
    }
}

fn push_pair(out: &mut String, key: &str, value: &str) {
    let key = if key == "message" { "msg" } else { key };
    out.push(' ');
    out.push_str(key);
    out.push('=');
    push_value(out, value);
}

/// A value bare when it is a plain token, else quoted with `\"`, `\\`, `\n` escaped.
fn push_value(out: &mut String, v: &str) {
    let bare = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if bare {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_values() {
        let mut s = String::new();
        push_pair(
            &mut s,
            "message",
            "listening on http://127.0.0.1:10990/metrics",
        );
        push_pair(&mut s, "vm", "web 1");
        push_pair(&mut s, "why", "say \"hi\"\nnow");
        push_pair(&mut s, "empty", "");
        assert_eq!(
            s,
            " msg=\"listening on http://127.0.0.1:10990/metrics\" vm=\"web 1\" why=\"say \\\"hi\\\"\\nnow\" empty=\"\""
        );
        let mut s = String::new();
        push_pair(&mut s, "collector", "qmp");
        assert_eq!(s, " collector=qmp");
    }
}
