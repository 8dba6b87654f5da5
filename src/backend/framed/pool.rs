//! `WorkerPool`: the http-mode workers. Each slot runs a supervisor that starts the function process, accepts
//! its connection on a private Unix socket, shakes hands, pings it, and restarts it with backoff when it exits
//! or breaks the protocol. Requests lease the least-loaded ready worker that has room, or wait in arrival order.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixListener;
use tokio::sync::{oneshot, Notify};
use tokio::time::{timeout, Instant};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::codec::{FrameCodec, HANDSHAKE_MAX_FRAME, MAX_FRAME};
use super::connection::{Connection, Limits};
use crate::backend::process::{wait_to_restart, Backoff, RestartPolicy, ServiceProcess};
use crate::envelope::pb::watchdog::v1::{frame::Kind, Frame, HelloAck, Ping, Shutdown};
use crate::metrics::Metrics;
use crate::reaper::ChildRegistry;

/// Timing of the pool; shortened in tests.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// When a worker that exited is started again.
    pub restart: RestartPolicy,
    /// Interval between pings.
    pub ping_interval: Duration,
    /// A worker whose last pong is older than this is killed.
    pub ping_timeout: Duration,
    /// Limit on the Hello after connecting.
    pub hello_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            restart: RestartPolicy::default(),
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// Limits each stream starts with.
pub const LIMITS: Limits = Limits { max_chunk: 64 * 1024, initial_window: 256 * 1024 };

/// A place on a worker, held for one request; returned (or handed to the next waiter) on drop.
pub struct Lease {
    /// The worker's connection.
    pub conn: Arc<Connection>,
    pool: Arc<PoolShared>,
    slot: usize,
    generation: u64,
    armed: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release(self.slot, self.generation);
        }
    }
}

/// Why no worker could be leased.
#[derive(Debug)]
pub enum LeaseError {
    /// The wait queue is full.
    QueueFull,
    /// The deadline passed while waiting; the message says why (no worker ready, or all busy).
    TimedOut(String),
}

/// What [`WorkerPool::lease_now`] got.
pub enum LeaseNow {
    /// A place on a worker.
    Leased(Lease),
    /// A place in the queue.
    Queued(Queued),
}

/// A place in the queue for a worker.
pub struct Queued(oneshot::Receiver<Lease>);

struct ReadyWorker {
    conn: Arc<Connection>,
    in_flight: u32,
    generation: u64,
}

impl ReadyWorker {
    fn has_room(&self) -> bool {
        self.conn.max_concurrency == 0 || self.in_flight < self.conn.max_concurrency
    }
}

struct PoolState {
    workers: Vec<Option<ReadyWorker>>,
    waiters: VecDeque<oneshot::Sender<Lease>>,
    last_error: Option<String>,
    generation: u64,
}

struct PoolShared {
    state: Mutex<PoolState>,
    first_ready: Notify,
    queue_limit: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PoolShared {
    fn release(self: &Arc<Self>, slot: usize, generation: u64) {
        let mut state = lock(&self.state);
        let Some(worker) = state.workers[slot].as_mut().filter(|w| w.generation == generation) else { return };
        worker.in_flight -= 1;
        self.serve_waiters(&mut state);
    }

    /// Hands free places to waiters, oldest first.
    fn serve_waiters(self: &Arc<Self>, state: &mut PoolState) {
        while !state.waiters.is_empty() {
            let Some(slot) = least_loaded(&state.workers) else { return };
            let waiter = state.waiters.pop_front().expect("checked non-empty");
            if waiter.is_closed() {
                continue;
            }
            let worker = state.workers[slot].as_mut().expect("least_loaded returns a ready worker");
            worker.in_flight += 1;
            let lease = Lease {
                conn: Arc::clone(&worker.conn),
                pool: Arc::clone(self),
                slot,
                generation: worker.generation,
                armed: true,
            };
            if let Err(mut lease) = waiter.send(lease) {
                // The waiter gave up meanwhile: undo without re-entering the lock.
                lease.armed = false;
                worker.in_flight -= 1;
            }
        }
    }
}

fn least_loaded(workers: &[Option<ReadyWorker>]) -> Option<usize> {
    workers
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.as_ref().filter(|w| w.has_room()).map(|w| (i, w.in_flight)))
        .min_by_key(|(_, load)| *load)
        .map(|(i, _)| i)
}

/// What the supervisors need to start workers.
#[derive(Clone)]
pub struct WorkerSpec {
    /// The function's command line.
    pub argv: Vec<String>,
    /// Directory of the workers' sockets.
    pub socket_dir: PathBuf,
    /// Longest log line from a worker's stdout/stderr.
    pub log_buffer_size: usize,
    /// The watchdog's children, for PID 1 reaping.
    pub children: Arc<ChildRegistry>,
    /// Metrics to update.
    pub metrics: Arc<Metrics>,
    /// Timing constants.
    pub timing: Timing,
}

/// The http-mode workers.
pub struct WorkerPool {
    shared: Arc<PoolShared>,
    stop: CancellationToken,
    supervisors: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl WorkerPool {
    /// Starts `workers` supervisors.
    pub fn start(workers: usize, queue_limit: usize, spec: WorkerSpec) -> Arc<WorkerPool> {
        let shared = Arc::new(PoolShared {
            state: Mutex::new(PoolState {
                workers: (0..workers).map(|_| None).collect(),
                waiters: VecDeque::new(),
                last_error: None,
                generation: 0,
            }),
            first_ready: Notify::new(),
            queue_limit,
        });
        let stop = CancellationToken::new();
        let supervisors = (0..workers)
            .map(|slot| tokio::spawn(supervise(Arc::clone(&shared), slot, spec.clone(), stop.clone())))
            .collect();
        Arc::new(WorkerPool { shared, stop, supervisors: Mutex::new(supervisors) })
    }

    /// Leases a place on a worker, waiting in arrival order until `deadline`.
    pub async fn lease(&self, deadline: Option<Instant>) -> Result<Lease, LeaseError> {
        match self.lease_now()? {
            LeaseNow::Leased(lease) => Ok(lease),
            LeaseNow::Queued(waiting) => self.wait(waiting, deadline).await,
        }
    }

    /// A place on the least-loaded worker if one has room and nobody is waiting before us; else a place in the
    /// queue, to [`WorkerPool::wait`] on.
    pub fn lease_now(&self) -> Result<LeaseNow, LeaseError> {
        let mut state = lock(&self.shared.state);
        if state.waiters.is_empty() {
            if let Some(slot) = least_loaded(&state.workers) {
                let worker = state.workers[slot].as_mut().expect("ready");
                worker.in_flight += 1;
                return Ok(LeaseNow::Leased(Lease {
                    conn: Arc::clone(&worker.conn),
                    pool: Arc::clone(&self.shared),
                    slot,
                    generation: worker.generation,
                    armed: true,
                }));
            }
        }
        state.waiters.retain(|w| !w.is_closed());
        if state.waiters.len() >= self.shared.queue_limit {
            return Err(LeaseError::QueueFull);
        }
        let (tx, rx) = oneshot::channel();
        state.waiters.push_back(tx);
        Ok(LeaseNow::Queued(Queued(rx)))
    }

    /// Waits in the queue for a lease until `deadline`.
    pub async fn wait(&self, waiting: Queued, deadline: Option<Instant>) -> Result<Lease, LeaseError> {
        let waited = match deadline {
            Some(deadline) => timeout(deadline.saturating_duration_since(Instant::now()), waiting.0).await.ok(),
            None => Some(waiting.0.await),
        };
        match waited {
            Some(Ok(lease)) => Ok(lease),
            _ => Err(LeaseError::TimedOut(self.unavailable_reason())),
        }
    }

    /// Why requests cannot be served now: the last worker error, or that every worker is busy.
    pub fn unavailable_reason(&self) -> String {
        self.readiness().err().unwrap_or_else(|| "all workers are busy".to_string())
    }

    /// `Ok` when at least one worker is ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let state = lock(&self.shared.state);
        if state.workers.iter().any(Option::is_some) {
            Ok(())
        } else {
            Err(match &state.last_error {
                Some(error) => format!("no worker is ready: {error}"),
                None => "no worker is ready yet".to_string(),
            })
        }
    }

    /// Resolves once a worker has been ready.
    pub async fn first_ready(&self) {
        loop {
            let notified = self.shared.first_ready.notified();
            if lock(&self.shared.state).workers.iter().any(Option::is_some) {
                return;
            }
            notified.await;
        }
    }

    /// Stops every worker: a Shutdown frame, `grace` to exit, then SIGTERM, then SIGKILL; waits for them.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        let supervisors: Vec<_> = lock(&self.supervisors).drain(..).collect();
        for supervisor in supervisors {
            let _ = timeout(grace + Duration::from_secs(4), supervisor).await;
        }
    }
}

/// Runs one worker slot until the pool stops.
async fn supervise(pool: Arc<PoolShared>, slot: usize, spec: WorkerSpec, stop: CancellationToken) {
    let mut backoff = Backoff::new(spec.timing.restart);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let outcome = run_worker(&pool, slot, &spec, &stop).await;
        {
            let mut state = lock(&pool.state);
            if state.workers[slot].take().is_some() {
                spec.metrics.workers_ready.dec();
            }
            state.last_error = Some(outcome.reason.clone());
        }
        if stop.is_cancelled() {
            return;
        }
        let delay = backoff.next_delay(outcome.ready_for);
        tracing::warn!("worker {slot}: {}; restarting in {delay:?}", outcome.reason);
        spec.metrics.worker_restarts.inc();
        if !wait_to_restart(delay, &stop).await {
            return;
        }
    }
}

struct Outcome {
    reason: String,
    ready_for: Duration,
}

fn spawn_worker(spec: &WorkerSpec, socket: &Path) -> Result<ServiceProcess, String> {
    let env = [("WATCHDOG_SOCKET", socket.as_os_str()), ("WATCHDOG_PROTOCOL", std::ffi::OsStr::new("watchdog.v1"))];
    ServiceProcess::spawn(&spec.argv, &env, spec.log_buffer_size, &spec.children)
}

/// Starts, connects and serves one worker until it stops; returns why it stopped.
async fn run_worker(pool: &Arc<PoolShared>, slot: usize, spec: &WorkerSpec, stop: &CancellationToken) -> Outcome {
    let not_ready = |reason: String| Outcome { reason, ready_for: Duration::ZERO };
    let socket = spec.socket_dir.join(format!("worker-{slot}.sock"));
    let _ = std::fs::remove_file(&socket);
    let listener = match UnixListener::bind(&socket) {
        Ok(listener) => listener,
        Err(e) => return not_ready(format!("cannot listen on {}: {e}", socket.display())),
    };
    let mut process = match spawn_worker(spec, &socket) {
        Ok(process) => process,
        Err(e) => return not_ready(format!("cannot start: {e}")),
    };

    let stream = tokio::select! {
        accepted = listener.accept() => match accepted {
            Ok((stream, _)) => stream,
            Err(e) => return not_ready(format!("accept failed: {e}; {}", process.kill().await)),
        },
        status = process.wait() => return not_ready(format!("exited before connecting ({status})")),
        _ = stop.cancelled() => { process.kill().await; return not_ready("stopped".into()); }
    };
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, FrameCodec::new(HANDSHAKE_MAX_FRAME));
    let mut writer = FramedWrite::new(write, FrameCodec::new(MAX_FRAME));

    // Hello → HelloAck.
    let hello = tokio::select! {
        frame = timeout(spec.timing.hello_timeout, reader.next()) => frame,
        status = process.wait() => return not_ready(format!("exited during the handshake ({status})")),
    };
    let hello = match hello {
        Ok(Some(Ok(Frame { kind: Some(Kind::Hello(hello)), .. }))) => hello,
        Ok(Some(Ok(_))) => {
            return not_ready(format!("protocol error: the first frame is not Hello; {}", process.kill().await))
        }
        Ok(Some(Err(e))) => return not_ready(format!("protocol error: {e}; {}", process.kill().await)),
        Ok(None) => return not_ready(format!("closed the connection before Hello ({})", process.wait().await)),
        Err(_) => {
            return not_ready(format!("sent no Hello within {:?}; {}", spec.timing.hello_timeout, process.kill().await))
        }
    };
    if hello.protocol != "watchdog.v1" {
        return not_ready(format!("speaks {:?}, not watchdog.v1; {}", hello.protocol, process.kill().await));
    }
    let ack = HelloAck {
        max_frame_bytes: MAX_FRAME as u32,
        max_chunk_bytes: LIMITS.max_chunk as u32,
        initial_window_bytes: LIMITS.initial_window as u32,
        worker_id: slot as u32,
    };
    if writer.send(Frame { stream_id: 0, kind: Some(Kind::HelloAck(ack)) }).await.is_err() {
        return not_ready(format!("connection lost during the handshake ({})", process.wait().await));
    }
    reader.decoder_mut().set_max_frame(MAX_FRAME);
    tracing::info!("worker {slot}: {} {} connected", hello.sdk_name, hello.sdk_version);

    // Ready (or InitError), however long initialisation takes.
    let started = Instant::now();
    let mut reminder = tokio::time::interval_at(started + Duration::from_secs(10), Duration::from_secs(10));
    loop {
        let frame = tokio::select! {
            frame = reader.next() => frame,
            status = process.wait() => return not_ready(format!("exited before it was ready ({status})")),
            _ = reminder.tick() => {
                tracing::warn!("worker {slot}: not ready after {:?}", started.elapsed());
                continue;
            }
            _ = stop.cancelled() => { process.kill().await; return not_ready("stopped".into()); }
        };
        match frame {
            Some(Ok(Frame { kind: Some(Kind::Ready(_)), .. })) => break,
            Some(Ok(Frame { kind: Some(Kind::InitError(e)), .. })) => {
                let exit = timeout(Duration::from_secs(1), process.wait()).await;
                let exit = match exit {
                    Ok(status) => status,
                    Err(_) => process.kill().await,
                };
                return not_ready(format!("failed to initialise: {} ({exit})", e.message));
            }
            Some(Ok(Frame { kind: Some(Kind::Log(_) | Kind::Ping(_) | Kind::Pong(_)), .. })) => {}
            Some(Ok(_)) => {
                return not_ready(format!("protocol error: unexpected frame before Ready; {}", process.kill().await))
            }
            Some(Err(e)) => return not_ready(format!("protocol error: {e}; {}", process.kill().await)),
            None => return not_ready(format!("closed the connection before Ready ({})", process.wait().await)),
        }
    }

    let max_concurrency = hello.max_concurrency;
    let conn = Connection::start(slot as u32, max_concurrency, LIMITS, writer.into_inner());
    let ready_at = Instant::now();
    {
        let mut state = lock(&pool.state);
        state.generation += 1;
        let generation = state.generation;
        state.workers[slot] = Some(ReadyWorker { conn: Arc::clone(&conn), in_flight: 0, generation });
        spec.metrics.workers_ready.inc();
        pool.serve_waiters(&mut state);
    }
    pool.first_ready.notify_waiters();
    tracing::info!("worker {slot}: ready (max_concurrency {max_concurrency})");

    let reading = conn.read(reader);
    tokio::pin!(reading);
    let mut pings = tokio::time::interval_at(ready_at + spec.timing.ping_interval, spec.timing.ping_interval);
    let mut nonce = 0u64;
    let mut last_answered = Instant::now();
    let reason = loop {
        tokio::select! {
            result = &mut reading => {
                let reason = match result {
                    Ok(()) => {
                        let exit = timeout(Duration::from_secs(1), process.wait()).await;
                        match exit {
                            Ok(status) => format!("worker exited ({status})"),
                            Err(_) => format!("worker closed its connection and was killed ({})", process.kill().await),
                        }
                    }
                    Err(violation) => format!("worker broke the protocol ({violation}) and was killed ({})", process.kill().await),
                };
                break reason;
            }
            status = process.wait() => break format!("worker exited ({status})"),
            _ = pings.tick() => {
                if conn.last_pong() >= nonce {
                    last_answered = Instant::now();
                } else if last_answered.elapsed() >= spec.timing.ping_timeout {
                    break format!("worker stopped answering pings for {:?} and was killed ({})", spec.timing.ping_timeout, process.kill().await);
                }
                nonce += 1;
                conn.send(Frame { stream_id: 0, kind: Some(Kind::Ping(Ping { nonce })) });
            }
            _ = stop.cancelled() => {
                // Requests have drained by now; ask the worker to exit, then make sure it does.
                conn.send(Frame { stream_id: 0, kind: Some(Kind::Shutdown(Shutdown { grace_ms: 2000 })) });
                let exited = timeout(Duration::from_secs(2), process.wait()).await;
                let status = match exited {
                    Ok(status) => status,
                    Err(_) => {
                        process.terminate(Duration::from_secs(2)).await
                    }
                };
                break format!("worker stopped ({status})");
            }
        }
    };
    {
        let mut state = lock(&pool.state);
        if state.workers[slot].take().is_some() {
            spec.metrics.workers_ready.dec();
        }
    }
    conn.fail_all(&reason);
    Outcome { reason, ready_for: ready_at.elapsed() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::sleep;

    /// A pool whose single worker can never start, on paused time: its supervisor fails, backs off and retries
    /// without any real waiting.
    fn unstartable_pool(queue_limit: usize, dir: &Path) -> (Arc<WorkerPool>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let spec = WorkerSpec {
            argv: vec!["/nonexistent/ngwd-worker".into()],
            socket_dir: dir.to_path_buf(),
            log_buffer_size: 64 * 1024,
            children: Arc::new(ChildRegistry::new(false)),
            metrics: Arc::clone(&metrics),
            timing: Timing::default(),
        };
        (WorkerPool::start(1, queue_limit, spec), metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_back_off_doubling_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, metrics) = unstartable_pool(8, dir.path());
        // Failures at 0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3, 12.7 and 25.5 s (each delay twice the last), then at
        // 51.1 s after the 25.6 s delay is capped at 30 s, and 81.1 s.
        sleep(Duration::from_millis(51_000)).await;
        assert_eq!(metrics.worker_restarts.get(), 9);
        sleep(Duration::from_millis(200)).await;
        assert_eq!(metrics.worker_restarts.get(), 10);
        sleep(Duration::from_millis(29_850)).await;
        assert_eq!(metrics.worker_restarts.get(), 10, "the delay is capped at 30 s, not 51.2 s");
        sleep(Duration::from_millis(100)).await;
        assert_eq!(metrics.worker_restarts.get(), 11);
        assert_eq!(metrics.workers_ready.get(), 0);
        pool.shutdown(Duration::ZERO).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_waits_until_its_deadline_and_names_the_start_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = unstartable_pool(8, dir.path());
        let start = Instant::now();
        let Err(LeaseError::TimedOut(reason)) = pool.lease(Some(start + Duration::from_secs(5))).await else {
            panic!("no worker can start, so the lease must time out");
        };
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(reason.contains("cannot start") && reason.contains("/nonexistent/ngwd-worker"), "{reason}");
        assert_eq!(pool.readiness().unwrap_err(), reason);
        pool.shutdown(Duration::ZERO).await;
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_beyond_the_queue_limit_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = unstartable_pool(1, dir.path());
        let waiting = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.lease(Some(Instant::now() + Duration::from_secs(10))).await.err() }
        });
        tokio::task::yield_now().await;
        let start = Instant::now();
        assert!(matches!(pool.lease(None).await, Err(LeaseError::QueueFull)));
        assert_eq!(start.elapsed(), Duration::ZERO, "refused without waiting");
        assert!(matches!(waiting.await.unwrap(), Some(LeaseError::TimedOut(_))));
        // The first waiter gave up, so there is room again.
        let again = pool.lease(Some(Instant::now() + Duration::from_secs(1))).await;
        assert!(matches!(again, Err(LeaseError::TimedOut(_))));
        pool.shutdown(Duration::ZERO).await;
    }
}
