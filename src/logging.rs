//! The watchdog's log: Go `log`-style text lines (as the original watchdogs print) or JSON, written by a
//! non-blocking buffered writer so that logging never waits on the request path.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Keeps the log writer's worker alive; logs are flushed when it is dropped.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global subscriber writing to stderr. `prefix_logs=false` prints function lines bare.
pub fn init(format: LogFormat, prefix_logs: bool) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        // Bounded: function lines can be up to log_buffer_size long, and a flood must not queue gigabytes.
        .buffered_lines_limit(256)
        .finish(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.event_format(GoLogFormat { prefix_logs }).init(),
    }
    guard
}

/// `2026/11/26 02:07:14 message key=value`, like Go's `log` package; function output as `stderr: line`.
pub struct GoLogFormat {
    /// Whether function lines carry the date and the stream name.
    pub prefix_logs: bool,
}

impl<S, N> FormatEvent<S, N> for GoLogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let function_line = event.metadata().target() == "function";
        if function_line && !self.prefix_logs {
            return writeln!(writer, "{}", fields.message);
        }
        write!(writer, "{} ", go_timestamp(SystemTime::now()))?;
        if function_line {
            let stream = fields.stream.as_deref().unwrap_or("stderr");
            return writeln!(writer, "{stream}: {}", fields.message);
        }
        write!(writer, "{}", fields.message)?;
        for (key, value) in &fields.rest {
            write!(writer, " {key}={value}")?;
        }
        writeln!(writer)
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    stream: Option<String>,
    rest: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "stream" => self.stream = Some(value.to_string()),
            name => self.rest.push((name, value.to_string())),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "stream" => self.stream = Some(format!("{value:?}")),
            name => self.rest.push((name, format!("{value:?}"))),
        }
    }
}

/// `YYYY/MM/DD HH:MM:SS` in UTC.
fn go_timestamp(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}/{month:02}/{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// of-watchdog's `units.HumanSize`: decimal units, four significant digits (`12B`, `1.049MB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    format!("{}{}", format_g4(size), UNITS[unit])
}

/// Go's `%.4g` for the values `human_size` produces (below 1000).
fn format_g4(value: f64) -> String {
    let digits_before = if value < 1.0 { 1 } else { (value.log10().floor() as usize) + 1 };
    let decimals = 4usize.saturating_sub(digits_before);
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(go_timestamp(UNIX_EPOCH), "1970/01/01 00:00:00");
        assert_eq!(go_timestamp(UNIX_EPOCH + Duration::from_secs(1_795_658_834)), "2026/11/26 02:07:14");
        assert_eq!(go_timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000/02/29 00:00:00");
    }

    #[test]
    fn human_sizes_like_go_units() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(12), "12B");
        assert_eq!(human_size(1234), "1.234kB");
        assert_eq!(human_size(1_048_576), "1.049MB");
        assert_eq!(human_size(1000), "1kB");
    }
}
