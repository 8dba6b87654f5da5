//! The fork backends: one process per request, as classic-watchdog (`classic`) and of-watchdog (`streaming`,
//! `serializing`) run them. The body is streamed into stdin; output is held until exit (spilling to disk) or,
//! in streaming mode, streamed back as the function writes it.

use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::cgi::{self, Base64Stream, EnvFlavour};
use super::logs::{log_lines_keeping, Tail};
use super::process::{describe_exit, FunctionProcess, SpawnTemplate, StdinPipe};
use super::sniff::detect_content_type;
use super::spill::{Output, SpillBuffer};
use super::{BodyLimits, Invocation};
use crate::body::{self, ResponseBody};
use crate::config::{Config, Mode};
use crate::error::{FailureStyle, InvokeError};
use crate::reaper::ChildRegistry;

/// Size of each read from a function's stdout.
const READ_CHUNK: usize = 64 * 1024;
/// How long a function gets between SIGTERM and SIGKILL when the watchdog shuts down.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(2);

/// Which original's fork semantics to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkStyle {
    /// classic-watchdog 0.3.9.
    Classic,
    /// of-watchdog `mode=streaming`.
    Streaming,
    /// of-watchdog `mode=serializing`.
    Serializing,
}

/// Runs one function process per request.
pub struct ForkBackend {
    style: ForkStyle,
    /// `fprocess`, prepared for spawning.
    template: SpawnTemplate,
    cgi_headers: bool,
    combine_output: bool,
    marshal_request: bool,
    write_debug: bool,
    content_type: Option<String>,
    exec_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    timeout: Option<Duration>,
    log_buffer_size: usize,
    tmp_dir: PathBuf,
    /// Cancelled when the drain deadline passes: running functions get SIGTERM, then SIGKILL.
    terminate: CancellationToken,
    /// Our children, kept apart from orphans when the watchdog is PID 1.
    children: Arc<ChildRegistry>,
}

impl ForkBackend {
    /// A fork backend for `config`'s mode; `terminate` fires when running functions must stop.
    pub fn new(config: &Config, terminate: CancellationToken, children: Arc<ChildRegistry>) -> ForkBackend {
        let style = match config.mode {
            Mode::Streaming => ForkStyle::Streaming,
            Mode::Serializing => ForkStyle::Serializing,
            _ => ForkStyle::Classic,
        };
        ForkBackend {
            style,
            template: SpawnTemplate::new(&config.fprocess),
            cgi_headers: config.cgi_headers,
            combine_output: config.combine_output,
            marshal_request: config.marshal_request,
            write_debug: config.write_debug,
            content_type: config.content_type.clone(),
            exec_timeout: Config::limit(config.exec_timeout),
            write_timeout: Config::limit(config.write_timeout),
            timeout: config.request_timeout(),
            log_buffer_size: config.log_buffer_size,
            tmp_dir: config.tmp_dir.clone(),
            terminate,
            children,
        }
    }

    /// The deadline a request gets: the nearer of `exec_timeout` and `write_timeout`.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Runs the function for one request. The run continues in its own task, so a client that goes away
    /// does not cut a plain HTTP request short (as with the originals) and it is always reaped. A gRPC call
    /// (`stop_when_abandoned`) is different: its client cancelling (this future or the response body dropped
    /// early) kills the function.
    pub async fn invoke(self: Arc<Self>, invocation: Invocation) -> Result<Response<ResponseBody>, InvokeError> {
        let (reply, answer) = oneshot::channel();
        let backend = Arc::clone(&self);
        let grpc = invocation.envelope.grpc().map(|call| call.server_streaming);
        // gRPC answers and reply events are held until exit in every style (the exit status decides the code),
        // unless a gRPC call streams its response.
        let event = invocation.envelope.cloudevent().is_some();
        let streamed = grpc.unwrap_or(self.style == ForkStyle::Streaming && !event);
        let stop_when_abandoned = invocation.stop_when_abandoned;
        let task = tokio::spawn(async move {
            if streamed {
                backend.run_streaming(invocation, reply).await
            } else {
                let result = backend.run_buffered(invocation).await;
                let _ = reply.send(result);
            }
        });
        let cancel = stop_when_abandoned.then(|| AbortOnDropHandle::new(task));
        let result = answer.await;
        // Answered: the run goes on to its end (a streamed body still kills it when dropped early).
        drop(cancel.map(AbortOnDropHandle::detach));
        result.unwrap_or_else(|_| Err(InvokeError::Internal("function task ended without an answer".into())))
    }

    fn spawn(&self, invocation: &Invocation, combine: bool) -> Result<FunctionProcess, InvokeError> {
        let flavour = if self.style == ForkStyle::Classic { EnvFlavour::Classic } else { EnvFlavour::OfWatchdog };
        let mut env = if self.cgi_headers { cgi::function_env(&invocation.envelope, flavour) } else { Vec::new() };
        env.extend(cgi::kind_env(&invocation.envelope));
        FunctionProcess::spawn(&self.template, env, combine, &self.children).map_err(|e| self.failure(e.0, None, None))
    }

    fn failure(&self, reason: String, output: Option<Output>, duration: Option<f64>) -> InvokeError {
        self.failure_with(reason, output, duration, None)
    }

    fn failure_with(
        &self,
        reason: String,
        output: Option<Output>,
        duration: Option<f64>,
        stderr_tail: Option<Box<str>>,
    ) -> InvokeError {
        match self.style {
            ForkStyle::Classic => InvokeError::FunctionFailed {
                reason,
                output: output.map(Box::new),
                style: FailureStyle::Classic,
                duration: None,
                content_type: None,
                stderr_tail,
            },
            _ => InvokeError::FunctionFailed {
                reason,
                output: None,
                style: FailureStyle::OfWatchdog,
                duration,
                content_type: self.content_type.clone(),
                stderr_tail,
            },
        }
    }

    /// Logs the function's stderr; with `keep_tail` also keeps its last KiB for a failure's status message.
    fn log_stderr(&self, process: &mut FunctionProcess, keep_tail: bool) -> StderrLog {
        let Some(stderr) = process.stderr.take() else {
            return StderrLog { tail: None, task: None };
        };
        let tail = keep_tail.then(Tail::default);
        let task = tokio::spawn(log_lines_keeping(stderr, "stderr", self.log_buffer_size, tail.clone()));
        StderrLog { tail, task: Some(task) }
    }

    /// Classic and serializing: output held until exit, then one answer from the exit status.
    async fn run_buffered(&self, invocation: Invocation) -> Result<Response<ResponseBody>, InvokeError> {
        let start = Instant::now();
        // A reply event or gRPC message is the function's stdout alone; stderr is only logged.
        let plain_http = invocation.envelope.http().is_some();
        let combine = self.style == ForkStyle::Classic && self.combine_output && plain_http;
        let mut process = self.spawn(&invocation, combine)?;
        // A gRPC message or an event's data reaches stdin raw, never wrapped in the marshal_request JSON.
        let marshal = (self.style == ForkStyle::Classic && self.marshal_request && plain_http)
            .then(|| cgi::marshal_prefix(&invocation.envelope));
        // A failed gRPC call or event delivery quotes the end of stderr, since stdout is not part of the answer.
        let stderr = self.log_stderr(&mut process, !plain_http);
        let call_timeout = invocation.timeout;
        let call_deadline = call_timeout.map(|t| start + t);
        let mut call_timer = pin!(sleep_until(call_deadline.unwrap_or_else(far_future)));
        let request_content_type = invocation.envelope.header("content-type").map(<[u8]>::to_vec);
        let output = process.output.take().expect("output pipe is set at spawn");
        let mut feed = pin!(feed_stdin(invocation.body, process.stdin.take(), invocation.limits, marshal));
        let mut collect = pin!(collect_output(output, self.tmp_dir.clone(), self.write_debug));
        let exec_deadline = self.exec_timeout.map(|t| start + t);
        let write_deadline = self.write_timeout.map(|t| start + t);
        let mut exec_timer = pin!(sleep_until(exec_deadline.unwrap_or_else(far_future)));
        let mut write_timer = pin!(sleep_until(write_deadline.unwrap_or_else(far_future)));
        let mut kill_timer = pin!(sleep_until(far_future()));

        let mut fed = false;
        let mut collected = None;
        let mut status = None;
        let mut exec_expired = false;
        let mut terminating = false;
        while !(fed && collected.is_some() && status.is_some()) {
            tokio::select! {
                result = &mut feed, if !fed => {
                    fed = true;
                    if let Err(error) = result {
                        process.signal_group(Signal::SIGKILL);
                        let _ = process.wait().await;
                        return Err(error);
                    }
                }
                result = &mut collect, if collected.is_none() => collected = Some(result),
                // Only once its output has ended: by then the function has usually exited, and its exit is read
                // without registering a pidfd.
                result = process.wait(), if status.is_none() && collected.is_some() => {
                    status = Some(result.map_err(|e| InvokeError::Internal(format!("waiting for the function: {e}")))?);
                }
                _ = &mut exec_timer, if exec_deadline.is_some() && !exec_expired => {
                    exec_expired = true;
                    tracing::info!("Killing process: {}", self.template.argv().join(" "));
                    process.signal_group(Signal::SIGKILL);
                    if self.style == ForkStyle::Classic || !plain_http {
                        let _ = process.wait().await;
                        return Err(InvokeError::ExecTimeout);
                    }
                    // of-watchdog answers a timed-out run from its exit status: "signal: killed".
                }
                _ = &mut call_timer, if call_deadline.is_some() => {
                    process.signal_group(Signal::SIGKILL);
                    let _ = process.wait().await;
                    return Err(InvokeError::DeadlineExceeded(call_timeout.unwrap_or_default()));
                }
                _ = &mut write_timer, if write_deadline.is_some() => {
                    process.signal_group(Signal::SIGKILL);
                    let _ = process.wait().await;
                    return Err(InvokeError::WriteTimeout(self.write_timeout.unwrap_or_default()));
                }
                _ = self.terminate.cancelled(), if !terminating => {
                    terminating = true;
                    process.signal_group(Signal::SIGTERM);
                    kill_timer.as_mut().reset(Instant::now() + TERMINATE_GRACE);
                }
                _ = &mut kill_timer, if terminating => {
                    process.signal_group(Signal::SIGKILL);
                    kill_timer.as_mut().reset(far_future());
                }
            }
        }
        let elapsed = start.elapsed();
        let duration = elapsed.as_secs_f64();
        let output = collected
            .expect("loop ends once output is collected")
            .map_err(|e| InvokeError::Internal(format!("collecting function output: {e}")))?;
        if let Some(reason) = describe_exit(status.expect("loop ends once the process is reaped")) {
            if self.write_debug {
                tracing::info!("Success=false, Error={reason}");
            }
            let tail = stderr.finish().await;
            return Err(self.failure_with(reason, Some(output), Some(duration), tail));
        }
        let mut response = Response::builder().status(StatusCode::OK);
        let content_type = match (&self.content_type, self.style) {
            (Some(configured), _) => HeaderValue::from_str(configured).ok(),
            (None, ForkStyle::Classic) => match request_content_type {
                Some(requested) => HeaderValue::from_bytes(&requested).ok(),
                None if !output.is_empty() => Some(HeaderValue::from_static(detect_content_type(output.head()))),
                None => None,
            },
            (None, _) => None,
        };
        if let Some(content_type) = content_type {
            response = response.header(header::CONTENT_TYPE, content_type);
        }
        // Seconds with six decimals, as the originals print them; integer formatting is cheaper than float's.
        let micros = elapsed.as_micros();
        response = response.header("X-Duration-Seconds", format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000));
        if let Output::File { len, .. } = &output {
            response = response.header(header::CONTENT_LENGTH, *len);
        }
        tracing::debug!("Wrote {} Bytes - Duration: {duration:.6}s", output.len());
        Ok(response.body(body::from_output(None, output)).expect("valid response"))
    }

    /// Streaming: the status is decided by the first output (200) or, when the function exits silently, by the
    /// exit status; then stdout is passed on chunk by chunk.
    async fn run_streaming(
        &self,
        invocation: Invocation,
        reply: oneshot::Sender<Result<Response<ResponseBody>, InvokeError>>,
    ) {
        let start = Instant::now();
        let mut process = match self.spawn(&invocation, false) {
            Ok(process) => process,
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        };
        // A streaming gRPC call: killed when its client leaves, and failures after the head travel in the body.
        let grpc = invocation.envelope.grpc().is_some();
        let stderr = self.log_stderr(&mut process, grpc);
        let call_timeout = invocation.timeout;
        let call_deadline = call_timeout.map(|t| start + t);
        let mut call_timer = pin!(sleep_until(call_deadline.unwrap_or_else(far_future)));
        // `None` once the client has gone: closing our end lets the function see a broken pipe, as under
        // of-watchdog, instead of blocking on a full one forever.
        let mut output = process.output.take();
        let mut feed = pin!(feed_stdin(invocation.body, process.stdin.take(), invocation.limits, None));
        let exec_deadline = self.exec_timeout.map(|t| start + t);
        let write_deadline = self.write_timeout.map(|t| start + t);
        let mut exec_timer = pin!(sleep_until(exec_deadline.unwrap_or_else(far_future)));
        let mut write_timer = pin!(sleep_until(write_deadline.unwrap_or_else(far_future)));
        let mut kill_timer = pin!(sleep_until(far_future()));

        let mut reply = Some(reply);
        let mut sink: Option<mpsc::Sender<Result<Bytes, std::io::Error>>> = None;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let (mut fed, mut eof, mut status) = (false, false, None);
        let (mut exec_expired, mut terminating) = (false, false);
        let failed = loop {
            if fed && eof && status.is_some() {
                break None;
            }
            tokio::select! {
                result = &mut feed, if !fed => {
                    fed = true;
                    if let Err(error) = result {
                        break Some(error);
                    }
                }
                read = read_some(&mut output, &mut buf), if !eof => {
                    if !matches!(read, Ok(n) if n > 0) {
                        eof = true;
                        continue;
                    }
                    let chunk = buf.split().freeze();
                    buf.reserve(READ_CHUNK);
                    if let Some(reply) = reply.take() {
                        // One chunk queued per request: with many concurrent streams, more is only memory.
                        let (tx, rx) = mpsc::channel(1);
                        let _ = reply.send(Ok(self.streaming_head().body(body::from_channel(rx)).expect("valid response")));
                        sink = Some(tx);
                    }
                    let Some(tx) = &sink else { continue };
                    let deadline = write_deadline.unwrap_or_else(far_future);
                    match timeout_at(deadline, tx.send(Ok(chunk))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) if grpc => break Some(cancelled()),
                        // The client went away: close the pipe and let the function finish.
                        Ok(Err(_)) => { eof = true; sink = None; output = None; }
                        Err(_) => break Some(InvokeError::WriteTimeout(self.write_timeout.unwrap_or_default())),
                    }
                }
                // As in `run_buffered`: waited for once the output has ended.
                result = process.wait(), if status.is_none() && eof => {
                    match result {
                        Ok(exit) => status = Some(exit),
                        Err(e) => break Some(InvokeError::Internal(format!("waiting for the function: {e}"))),
                    }
                }
                _ = &mut exec_timer, if exec_deadline.is_some() && !exec_expired => {
                    exec_expired = true;
                    process.signal_group(Signal::SIGKILL);
                    if grpc {
                        break Some(InvokeError::ExecTimeout);
                    }
                }
                _ = &mut call_timer, if call_deadline.is_some() => {
                    break Some(InvokeError::DeadlineExceeded(call_timeout.unwrap_or_default()));
                }
                _ = closed(&sink), if grpc => break Some(cancelled()),
                _ = &mut write_timer, if write_deadline.is_some() => {
                    break Some(InvokeError::WriteTimeout(self.write_timeout.unwrap_or_default()));
                }
                _ = self.terminate.cancelled(), if !terminating => {
                    terminating = true;
                    process.signal_group(Signal::SIGTERM);
                    kill_timer.as_mut().reset(Instant::now() + TERMINATE_GRACE);
                }
                _ = &mut kill_timer, if terminating => {
                    process.signal_group(Signal::SIGKILL);
                    kill_timer.as_mut().reset(far_future());
                }
            }
        };
        drop(output);
        if let Some(error) = failed {
            process.signal_group(Signal::SIGKILL);
            let _ = process.wait().await;
            match (reply, sink) {
                (Some(reply), _) => {
                    let _ = reply.send(Err(error));
                }
                // The head is out: abort the body so the client sees an incomplete response, not a short one.
                // The error travels typed, so the gRPC layer can turn it into a status.
                (None, Some(tx)) => {
                    let _ = tx.send(Err(std::io::Error::other(error))).await;
                }
                (None, None) => {}
            }
            return;
        }
        let exit = status.expect("loop ends once the process is reaped");
        let duration = start.elapsed().as_secs_f64();
        match (describe_exit(exit), reply) {
            // No output at all: a failure is a 500 (of-watchdog would answer 200 with an empty body).
            (Some(reason), Some(reply)) => {
                let tail = stderr.finish().await;
                let _ = reply.send(Err(self.failure_with(reason, None, Some(duration), tail)));
            }
            // A gRPC stream ends with the failure's status, after the messages already sent.
            (Some(reason), None) if grpc => {
                let tail = stderr.finish().await;
                let error = self.failure_with(reason, None, Some(duration), tail);
                if let Some(tx) = sink {
                    let _ = tx.send(Err(std::io::Error::other(error))).await;
                }
            }
            (None, Some(reply)) => {
                let _ = reply.send(Ok(self.streaming_head().body(body::empty()).expect("valid response")));
            }
            // Output already streamed with a 200: like of-watchdog, log the failure and end the body normally.
            (Some(reason), None) => {
                tracing::info!("{} exited: after {duration:.2}s, error: {reason}", self.template.argv()[0])
            }
            (None, None) => {}
        }
    }

    fn streaming_head(&self) -> http::response::Builder {
        let mut head = Response::builder().status(StatusCode::OK);
        if let Some(ct) = self.content_type.as_deref().and_then(|ct| HeaderValue::from_str(ct).ok()) {
            head = head.header(header::CONTENT_TYPE, ct);
        }
        head
    }
}

/// The function's stderr being logged, and (gRPC) its kept tail.
struct StderrLog {
    tail: Option<Tail>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StderrLog {
    /// The kept tail once stderr has ended; a grandchild still holding stderr open is not waited for long.
    async fn finish(self) -> Option<Box<str>> {
        let tail = self.tail?;
        if let Some(task) = self.task {
            let _ = tokio::time::timeout(Duration::from_millis(500), task).await;
        }
        Some(tail.text().into())
    }
}

/// The error ending a gRPC call whose client went away; nobody receives it, the function is killed.
fn cancelled() -> InvokeError {
    InvokeError::BodyRead("the client cancelled the call".into())
}

/// Resolves when the response body's receiver is gone (the client left); never without a sink.
async fn closed(sink: &Option<mpsc::Sender<Result<Bytes, std::io::Error>>>) {
    match sink {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}

/// Reads what the pipe has into `buf`; `Ok(0)` at its end or once it has been closed.
async fn read_some(output: &mut Option<pipe::Receiver>, buf: &mut BytesMut) -> std::io::Result<usize> {
    match output {
        Some(pipe) => pipe.read_buf(buf).await,
        None => Ok(0),
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

/// Streams the request body into the function's stdin, enforcing `max_body_bytes` and `read_timeout`.
/// A function that closes stdin early simply stops receiving; that is not an error.
async fn feed_stdin(
    mut body: crate::body::RequestBody,
    stdin: Option<StdinPipe>,
    limits: BodyLimits,
    marshal_prefix: Option<Vec<u8>>,
) -> Result<(), InvokeError> {
    let mut stdin = stdin;
    let mut base64 = marshal_prefix.is_some().then(Base64Stream::default);
    if let Some(prefix) = &marshal_prefix {
        write_or_close(&mut stdin, prefix).await;
    }
    let mut received: u64 = 0;
    loop {
        let next = match limits.read_deadline {
            Some(deadline) => match timeout_at(deadline, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => return Err(InvokeError::ReadTimeout(limits.read_timeout)),
            },
            None => body.frame().await,
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(InvokeError::from_body_error)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        if limits.max_bytes > 0 && received > limits.max_bytes {
            return Err(InvokeError::BodyTooLarge { limit: limits.max_bytes });
        }
        match &mut base64 {
            Some(encoder) => {
                let encoded = encoder.push(&data);
                write_or_close(&mut stdin, &encoded).await;
            }
            None => write_or_close(&mut stdin, &data).await,
        }
        if stdin.is_none() && base64.is_none() && limits.max_bytes == 0 {
            // Nobody reads the rest; stop pulling it from the client.
            break;
        }
    }
    if let Some(encoder) = base64 {
        let mut tail = encoder.finish();
        tail.extend_from_slice(cgi::MARSHAL_SUFFIX);
        write_or_close(&mut stdin, &tail).await;
    }
    // Dropping our end closes it: the function sees end of input.
    drop(stdin);
    Ok(())
}

/// Writes to stdin; on failure (the function closed it) drops the pipe so later writes are skipped.
async fn write_or_close(stdin: &mut Option<StdinPipe>, data: &[u8]) {
    if let Some(pipe) = stdin {
        if pipe.write_all(data).await.is_err() {
            *stdin = None;
        }
    }
}

/// Reads the function's output to its end into a [`SpillBuffer`].
async fn collect_output(mut output: pipe::Receiver, tmp_dir: PathBuf, write_debug: bool) -> std::io::Result<Output> {
    let mut spill = SpillBuffer::new(tmp_dir);
    loop {
        let chunk = spill.read_from(&mut output).await?;
        if chunk.is_empty() {
            break;
        }
        if write_debug {
            tracing::info!(target: "function", stream = "stdout", "{}", String::from_utf8_lossy(chunk));
        }
    }
    spill.finish()
}
