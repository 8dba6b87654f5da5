//! Function output that goes to the watchdog's log: split into lines, each at most `log_buffer_size` bytes,
//! so a function that writes gigabytes without a newline cannot grow the watchdog's memory.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of stderr a failed gRPC call's status message quotes.
pub const TAIL_BYTES: usize = 1024;

/// The last [`TAIL_BYTES`] a stream carried, shared between the task logging it and the request that may quote it.
#[derive(Debug, Default, Clone)]
pub struct Tail(Arc<Mutex<VecDeque<u8>>>);

impl Tail {
    fn push(&self, data: &[u8]) {
        let mut tail = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let data = &data[data.len().saturating_sub(TAIL_BYTES)..];
        let excess = (tail.len() + data.len()).saturating_sub(TAIL_BYTES);
        tail.drain(..excess);
        tail.extend(data);
    }

    /// What was kept, as text (invalid UTF-8 replaced), without surrounding whitespace.
    pub fn text(&self) -> String {
        let tail = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let bytes: Vec<u8> = tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

/// Reads `stream` to its end and logs each line as coming from the function's `name` stream.
pub async fn log_lines(stream: impl AsyncRead + Unpin, name: &'static str, max_line: usize) {
    log_lines_keeping(stream, name, max_line, None).await
}

/// [`log_lines`], also keeping the stream's last bytes in `tail`.
pub async fn log_lines_keeping(
    mut stream: impl AsyncRead + Unpin,
    name: &'static str,
    max_line: usize,
    tail: Option<Tail>,
) {
    // The read buffer is never zeroed (reads fill its spare room), and the line buffer waits for a first line.
    let mut line: Vec<u8> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        buf.clear();
        buf.reserve(16 * 1024);
        let n = match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(tail) = &tail {
            tail.push(&buf[..n]);
        }
        for piece in buf[..n].split_inclusive(|b| *b == b'\n') {
            let (text, complete) = match piece.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (piece, false),
            };
            let mut text = text;
            while line.len() + text.len() > max_line {
                let take = max_line - line.len();
                line.extend_from_slice(&text[..take]);
                emit(name, &line);
                line.clear();
                text = &text[take..];
            }
            line.extend_from_slice(text);
            if complete {
                emit(name, &line);
                line.clear();
            }
        }
    }
    if !line.is_empty() {
        emit(name, &line);
    }
}

fn emit(name: &'static str, line: &[u8]) {
    tracing::info!(target: "function", stream = name, "{}", String::from_utf8_lossy(line));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Collects the messages logged by `log_lines`.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Lines {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut m = Message(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
    }

    async fn collect(input: &'static [u8], max: usize) -> Vec<String> {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(lines.clone());
        let _guard = tracing::subscriber::set_default(subscriber);
        log_lines(input, "stderr", max).await;
        let out = lines.0.lock().unwrap().clone();
        out
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_the_last_partial_one() {
        assert_eq!(collect(b"one\ntwo\nthree", 100).await, vec!["one", "two", "three"]);
    }

    #[tokio::test]
    async fn tail_keeps_the_last_kibibyte() {
        let tail = Tail::default();
        let mut input = vec![b'a'; 3000];
        input.extend_from_slice(b"the end\n");
        log_lines_keeping(&input[..], "stderr", 100, Some(tail.clone())).await;
        let text = tail.text();
        assert!(text.ends_with("the end"));
        assert_eq!(text.len(), TAIL_BYTES - 1, "trailing newline trimmed");
        let small = Tail::default();
        small.push(b"x");
        small.push(b"y");
        assert_eq!(small.text(), "xy");
    }

    #[tokio::test]
    async fn long_lines_are_cut_at_the_limit() {
        assert_eq!(collect(b"abcdefghij\nxy\n", 4).await, vec!["abcd", "efgh", "ij", "xy"]);
    }
}
