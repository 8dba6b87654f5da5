//! The watchdog's log: Go `log`-style text lines (as the original watchdogs print) or JSON, written by a
//! non-blocking buffered writer so that logging never waits on the request path.

use std::fmt;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Installs the global subscriber writing to stderr through a [`BufferedStderr`]. `prefix_logs=false` prints
/// function lines bare. Logs are flushed when the returned guard is dropped.
pub fn init(format: LogFormat, prefix_logs: bool) -> LogGuard {
    let writer = BufferedStderr::start();
    let guard = LogGuard(Some(writer.clone()));
    let builder = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.event_format(GoLogFormat { prefix_logs }).init(),
    }
    guard
}

/// Flushes and stops the log writer when dropped.
pub struct LogGuard(Option<BufferedStderr>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take() {
            writer.shut_down();
        }
    }
}

/// Log bytes waiting for the writer thread; flushed when this much is pending.
const FLUSH_AT: usize = 64 * 1024;
/// Loggers wait (rather than grow memory) past this much pending output.
const PENDING_CAP: usize = 4 * 1024 * 1024;
/// Longest a line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// A buffered stderr: logging appends to a shared buffer under a lock, and one thread writes it out every
/// [`FLUSH_EVERY`] or once [`FLUSH_AT`] bytes are pending. Unlike a channel per line, a busy server pays no
/// thread wake-up per log line, and a flood of function output is held back instead of queued without bound.
#[derive(Clone)]
pub struct BufferedStderr {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<Pending>,
    /// Signals the writer thread: enough is pending, or shutting down.
    wake_writer: Condvar,
    /// Signals loggers waiting for room.
    room: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

impl BufferedStderr {
    /// Starts the writer thread.
    pub fn start() -> BufferedStderr {
        let shared = Arc::new(Shared {
            state: Mutex::new(Pending::default()),
            wake_writer: Condvar::new(),
            room: Condvar::new(),
            thread: Mutex::new(None),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_out(&worker))
            .expect("starting the log writer thread");
        *lock(&shared.thread) = Some(thread);
        BufferedStderr { shared }
    }

    fn append(&self, data: &[u8]) {
        let mut state = lock(&self.shared.state);
        while state.bytes.len() >= PENDING_CAP && !state.closed {
            self.shared.wake_writer.notify_one();
            state = self.shared.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.closed {
            drop(state);
            let _ = std::io::stderr().write_all(data);
            return;
        }
        state.bytes.extend_from_slice(data);
        if state.bytes.len() >= FLUSH_AT {
            self.shared.wake_writer.notify_one();
        }
    }

    fn shut_down(&self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake_writer.notify_one();
        if let Some(thread) = lock(&self.shared.thread).take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_out(shared: &Shared) {
    let mut stderr = std::io::stderr();
    let mut batch = Vec::new();
    loop {
        let closed = {
            let mut state = lock(&shared.state);
            if state.bytes.len() < FLUSH_AT && !state.closed {
                state = shared.wake_writer.wait_timeout(state, FLUSH_EVERY).unwrap_or_else(|p| p.into_inner()).0;
            }
            std::mem::swap(&mut batch, &mut state.bytes);
            state.closed
        };
        shared.room.notify_all();
        if !batch.is_empty() {
            let _ = stderr.write_all(&batch);
            batch.clear();
            if batch.capacity() > PENDING_CAP {
                batch = Vec::new();
            }
        }
        if closed {
            let rest = std::mem::take(&mut lock(&shared.state).bytes);
            let _ = stderr.write_all(&rest);
            return;
        }
    }
}

/// One event's bytes for [`BufferedStderr`]: tracing formats an event whole, then writes it here.
pub struct EventWriter<'a>(&'a BufferedStderr);

impl Write for EventWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.append(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStderr {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter(self)
    }
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
        let function_line = event.metadata().target() == "function";
        if !function_line {
            // The common case (one access line per request) is written straight into the line buffer.
            write!(writer, "{} ", GoTimestamp(SystemTime::now()))?;
            let mut line = DirectFields { writer: &mut writer, rest: Vec::new(), result: Ok(()) };
            event.record(&mut line);
            let DirectFields { writer, rest, result } = line;
            result?;
            for (key, value) in &rest {
                write!(writer, " {key}={value}")?;
            }
            return writeln!(writer);
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if !self.prefix_logs {
            return writeln!(writer, "{}", fields.message);
        }
        let stream = fields.stream.as_deref().unwrap_or("stderr");
        writeln!(writer, "{} {stream}: {}", GoTimestamp(SystemTime::now()), fields.message)
    }
}

/// Writes an event's message as it is recorded; other fields are kept to follow it as `key=value`.
struct DirectFields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    rest: Vec<(&'static str, String)>,
    result: fmt::Result,
}

impl Visit for DirectFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.result = self.result.and_then(|()| self.writer.write_str(value)),
            name => self.rest.push((name, value.to_string())),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.result = self.result.and_then(|()| write!(self.writer, "{value:?}")),
            name => self.rest.push((name, format!("{value:?}"))),
        }
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
struct GoTimestamp(SystemTime);

impl fmt::Display for GoTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let (days, rem) = (secs / 86400, secs % 86400);
        let (year, month, day) = civil_from_days(days as i64);
        if !(0..=9999).contains(&year) {
            return write!(f, "{year:04}/{month:02}/{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
        }
        // Digits placed by hand: this runs for every access line, and the formatting machinery cost more than
        // the rest of the line's timestamp work together.
        let mut text = *b"0000/00/00 00:00:00";
        fill_digits(&mut text[0..4], year as u64);
        fill_digits(&mut text[5..7], u64::from(month));
        fill_digits(&mut text[8..10], u64::from(day));
        fill_digits(&mut text[11..13], rem / 3600);
        fill_digits(&mut text[14..16], rem % 3600 / 60);
        fill_digits(&mut text[17..19], rem % 60);
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
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

/// of-watchdog's `units.HumanSize`: decimal units, four significant digits (`12B`, `1.049MB`). A `Display`
/// value, so an access line formats it without allocating.
pub struct HumanSize(pub u64);

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
        let mut size = self.0 as f64;
        let mut unit = 0;
        while size >= 1000.0 && unit < UNITS.len() - 1 {
            size /= 1000.0;
            unit += 1;
        }
        if unit == 0 {
            // Whole bytes: `%.4g` of an integer below 1000 is the integer.
            write_digits(f, self.0, 1)?;
            return f.write_str("B");
        }
        // Go's `%.4g` for a value below 1000: four significant digits, trailing zeros dropped.
        let digits_before = if size < 1.0 { 1 } else { (size.log10().floor() as usize) + 1 };
        let decimals = 4usize.saturating_sub(digits_before);
        let mut buf = [0u8; 32];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        std::io::Write::write_fmt(&mut cursor, format_args!("{size:.decimals$}")).map_err(|_| fmt::Error)?;
        let len = cursor.position() as usize;
        let text = std::str::from_utf8(&buf[..len]).map_err(|_| fmt::Error)?;
        let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { text };
        write!(f, "{text}{}", UNITS[unit])
    }
}

/// A duration as the access line prints it, seconds with four decimals (`0.0123`), rounded to the nearest 100 µs.
/// Integer arithmetic: float formatting cost more than the rest of the line.
pub struct Seconds(pub std::time::Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths_of_ms = u64::try_from((self.0.as_micros() + 50) / 100).unwrap_or(u64::MAX);
        write_digits(f, tenths_of_ms / 10_000, 1)?;
        f.write_str(".")?;
        write_digits(f, tenths_of_ms % 10_000, 4)
    }
}

/// Writes `value` in decimal, zero-padded to `width` digits, without the formatting machinery (an access line
/// has several numbers, and formatting them cost more than the rest of the line).
fn write_digits(f: &mut fmt::Formatter<'_>, value: u64, width: usize) -> fmt::Result {
    let mut digits = [b'0'; 20];
    let len = value.checked_ilog10().map_or(1, |log| log as usize + 1).max(width).min(digits.len());
    let start = digits.len() - len;
    fill_digits(&mut digits[start..], value);
    f.write_str(std::str::from_utf8(&digits[start..]).unwrap_or_default())
}

/// Fills `out` with the last `out.len()` decimal digits of `value`, zero-padded.
fn fill_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn seconds_with_four_decimals() {
        let text = |micros| Seconds(Duration::from_micros(micros)).to_string();
        assert_eq!(text(0), "0.0000");
        assert_eq!(text(49), "0.0000");
        assert_eq!(text(50), "0.0001");
        assert_eq!(text(12_345), "0.0123");
        assert_eq!(text(2_999_960), "3.0000");
        assert_eq!(text(61_000_000), "61.0000");
        for micros in [1u64, 999, 1_234_567, 9_876_543] {
            assert_eq!(text(micros), format!("{:.4}", (micros as f64 / 1e6 * 1e4).round() / 1e4), "{micros}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(GoTimestamp(UNIX_EPOCH).to_string(), "1970/01/01 00:00:00");
        assert_eq!(GoTimestamp(UNIX_EPOCH + Duration::from_secs(1_795_658_834)).to_string(), "2026/11/26 02:07:14");
        assert_eq!(GoTimestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)).to_string(), "2000/02/29 00:00:00");
        assert_eq!(GoTimestamp(UNIX_EPOCH + Duration::from_secs(253_402_300_799)).to_string(), "9999/12/31 23:59:59");
        assert_eq!(GoTimestamp(UNIX_EPOCH + Duration::from_secs(253_402_300_800)).to_string(), "10000/01/01 00:00:00");
    }

    #[test]
    fn human_sizes_like_go_units() {
        let human_size = |bytes| HumanSize(bytes).to_string();
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(12), "12B");
        assert_eq!(human_size(1234), "1.234kB");
        assert_eq!(human_size(1_048_576), "1.049MB");
        assert_eq!(human_size(1000), "1kB");
    }
}
