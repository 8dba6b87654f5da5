//! One forked function process: spawned in its own process group so a timeout or shutdown reaches everything it
//! started, with pipes the watchdog reads, and exits and start failures described as Go's `os/exec` does.

use std::ffi::OsString;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::reaper::ChildRegistry;

/// A running function process and its pipes.
pub struct FunctionProcess {
    /// The child; its pid is also its process group id.
    pub child: Child,
    /// Its process group.
    pub group: Pid,
    /// Its stdin, until the request body has been written.
    pub stdin: Option<StdinPipe>,
    /// Its stdout, or stdout and stderr together when output is combined.
    pub output: Option<pipe::Receiver>,
    /// Its stderr, when not combined with stdout.
    pub stderr: Option<pipe::Receiver>,
    reaped: bool,
    registry: Arc<ChildRegistry>,
}

/// The function could not be started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpawnError(pub String);

impl FunctionProcess {
    /// Starts `argv` with the inherited environment plus `env`, in a new process group.
    /// With `combine`, stdout and stderr share one pipe, so their interleaving is kept as Go's
    /// `CombinedOutput` keeps it.
    pub fn spawn(
        argv: &[String],
        env: Vec<(OsString, OsString)>,
        combine: bool,
        registry: &Arc<ChildRegistry>,
    ) -> Result<FunctionProcess, SpawnError> {
        let (program, args) = argv.split_first().ok_or_else(|| SpawnError("exec: no command".into()))?;
        let describe = |e: std::io::Error| SpawnError(describe_spawn_error(program, &e));
        let (in_reader, in_writer) = std::io::pipe().map_err(describe)?;
        let (out_reader, out_writer) = std::io::pipe().map_err(describe)?;
        let (err_reader, stderr) = if combine {
            (None, Stdio::from(out_writer.try_clone().map_err(describe)?))
        } else {
            let (reader, writer) = std::io::pipe().map_err(describe)?;
            (Some(reader), Stdio::from(writer))
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(env)
            .stdin(Stdio::from(in_reader))
            .stdout(Stdio::from(out_writer))
            .stderr(stderr)
            .process_group(0);
        let spawned = registry.spawn(|| {
            let child = command.spawn()?;
            let pid = child.id().expect("a just-spawned child has a pid") as i32;
            Ok((child, pid))
        });
        // The command holds our copies of the child's pipe ends: close them now, or EOF never comes.
        drop(command);
        let child = spawned.map_err(describe)?;
        let group = Pid::from_raw(child.id().expect("a just-spawned child has a pid") as i32);
        let output = receiver(OwnedFd::from(out_reader)).map_err(describe)?;
        let stderr = err_reader.map(|r| receiver(OwnedFd::from(r))).transpose().map_err(describe)?;
        let stdin = StdinPipe::new(OwnedFd::from(in_writer)).map_err(describe)?;
        Ok(FunctionProcess {
            stdin: Some(stdin),
            child,
            group,
            output: Some(output),
            stderr,
            reaped: false,
            registry: Arc::clone(registry),
        })
    }

    /// Sends `signal` to the whole process group. Only called before the leader is reaped, so the group id
    /// cannot have been reused.
    pub fn signal_group(&self, signal: Signal) {
        if !self.reaped {
            let _ = killpg(self.group, signal);
        }
    }

    /// Waits for the leader to exit and reaps it.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await;
        if status.is_ok() {
            self.reaped = true;
        }
        status
    }

    /// Reaps the leader if it has already exited, without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() {
            self.reaped = true;
        }
        Ok(status)
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        // A request abandoned mid-run (its task cancelled) must not leave its processes behind. tokio's
        // orphan queue reaps the leader after this, so no zombie is left either.
        self.signal_group(Signal::SIGKILL);
        self.registry.forget(self.group.as_raw());
    }
}

/// Sets `O_NONBLOCK` on our end of a fresh pipe (the child's end is a separate open file, left blocking).
fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map(drop).map_err(std::io::Error::from)
}

/// Our read end of a pipe we just created, registered with the runtime. tokio's checked constructor would
/// `fstat` and `F_GETFL` the descriptor first: three system calls per pipe where one does.
fn receiver(fd: OwnedFd) -> std::io::Result<pipe::Receiver> {
    set_nonblocking(&fd)?;
    pipe::Receiver::from_owned_fd_unchecked(fd)
}

/// A function's stdin. Most request bodies fit in the pipe at once, so they are written straight away; the pipe
/// is registered with the runtime (an allocation and two `epoll_ctl` calls) only once a write would block.
pub struct StdinPipe(StdinState);

enum StdinState {
    /// Not registered: writes that fit go straight in.
    Direct(std::io::PipeWriter),
    /// Registered, after a write would have blocked.
    Async(pipe::Sender),
    /// Registration failed; the descriptor is closed.
    Closed,
}

impl StdinPipe {
    /// Wraps our write end of a fresh pipe.
    fn new(fd: OwnedFd) -> std::io::Result<StdinPipe> {
        set_nonblocking(&fd)?;
        Ok(StdinPipe(StdinState::Direct(std::io::PipeWriter::from(fd))))
    }

    /// Writes all of `data`, waiting for room when the pipe is full. Fails with `BrokenPipe` once the
    /// function has closed its stdin.
    pub async fn write_all(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        if let StdinState::Direct(writer) = &mut self.0 {
            while !data.is_empty() {
                match writer.write(data) {
                    Ok(n) => data = &data[n..],
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if data.is_empty() {
                return Ok(());
            }
            // Full: from here on, wait for room through the runtime.
            if let StdinState::Direct(writer) = std::mem::replace(&mut self.0, StdinState::Closed) {
                self.0 = StdinState::Async(pipe::Sender::from_owned_fd_unchecked(OwnedFd::from(writer))?);
            }
        }
        match &mut self.0 {
            StdinState::Async(sender) => sender.write_all(data).await,
            _ => Err(ErrorKind::BrokenPipe.into()),
        }
    }
}

/// When a service process that exited is started again: after a delay that doubles from `min` up to `max`, back
/// to `min` once a run has stayed ready for `reset`. A crash loop backs off; a rare crash restarts quickly.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// First delay.
    pub min: Duration,
    /// Longest delay.
    pub max: Duration,
    /// A run ready this long resets the delay to `min`.
    pub reset: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy { min: Duration::from_millis(100), max: Duration::from_secs(30), reset: Duration::from_secs(60) }
    }
}

/// A [`RestartPolicy`] applied to one supervised process.
#[derive(Debug)]
pub struct Backoff {
    policy: RestartPolicy,
    next: Duration,
}

impl Backoff {
    /// Starts at the policy's shortest delay.
    pub fn new(policy: RestartPolicy) -> Backoff {
        Backoff { policy, next: policy.min }
    }

    /// The delay before the next start, after a run that was ready for `ready_for`.
    pub fn next_delay(&mut self, ready_for: Duration) -> Duration {
        if ready_for >= self.policy.reset {
            self.next = self.policy.min;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.policy.max);
        delay
    }
}

/// Sleeps `delay` before a restart, unless `stop` fires first; returns whether to start again.
pub async fn wait_to_restart(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.cancelled() => false,
    }
}

/// A long-lived child (an http-mode worker, an upstream HTTP server): in its own process group, stdout and
/// stderr logged line by line, and killed with its whole group when dropped.
pub struct ServiceProcess {
    child: Child,
    group: Pid,
    reaped: bool,
    registry: Arc<ChildRegistry>,
}

impl ServiceProcess {
    /// Starts `argv` with the inherited environment plus `env`; its output goes to the log.
    pub fn spawn(
        argv: &[String],
        env: &[(&str, &std::ffi::OsStr)],
        log_buffer_size: usize,
        registry: &Arc<ChildRegistry>,
    ) -> Result<ServiceProcess, String> {
        let (program, args) = argv.split_first().ok_or("no fprocess")?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = registry
            .spawn(|| {
                let child = command.spawn()?;
                let pid = child.id().unwrap_or_default() as i32;
                Ok::<_, std::io::Error>((child, pid))
            })
            .map_err(|e| describe_spawn_error(program, &e))?;
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(super::logs::log_lines(stdout, "stdout", log_buffer_size));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(super::logs::log_lines(stderr, "stderr", log_buffer_size));
        }
        let group = Pid::from_raw(child.id().unwrap_or_default() as i32);
        Ok(ServiceProcess { child, group, reaped: false, registry: Arc::clone(registry) })
    }

    /// Signals the whole group, while the leader is unreaped (so the group id cannot have been reused).
    pub fn signal(&self, signal: Signal) {
        if !self.reaped {
            let _ = killpg(self.group, signal);
        }
    }

    /// Waits for the leader to exit; Go's wording of how it ended (`exit status 0` included).
    pub async fn wait(&mut self) -> String {
        match self.child.wait().await {
            Ok(status) => {
                self.reaped = true;
                describe_exit(status).unwrap_or_else(|| "exit status 0".into())
            }
            Err(e) => format!("cannot wait for the process: {e}"),
        }
    }

    /// Kills the group and reaps the leader.
    pub async fn kill(&mut self) -> String {
        self.signal(Signal::SIGKILL);
        self.wait().await
    }

    /// SIGTERM to the group, then SIGKILL if it has not exited within `grace`.
    pub async fn terminate(&mut self, grace: std::time::Duration) -> String {
        self.signal(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(status) => status,
            Err(_) => self.kill().await,
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        self.registry.forget(self.group.as_raw());
    }
}

/// `None` for a successful exit; else the text of Go's `*exec.ExitError` (`exit status 2`, `signal: killed`).
pub fn describe_exit(status: ExitStatus) -> Option<String> {
    if status.success() {
        return None;
    }
    if let Some(code) = status.code() {
        return Some(format!("exit status {code}"));
    }
    let signal = status.signal().unwrap_or(0);
    let mut text = format!("signal: {}", go_signal_name(signal));
    if status.core_dumped() {
        text.push_str(" (core dumped)");
    }
    Some(text)
}

/// Go's `syscall.Signal.String()` on Linux.
pub fn go_signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        4 => "illegal instruction",
        5 => "trace/breakpoint trap",
        6 => "aborted",
        7 => "bus error",
        8 => "floating point exception",
        9 => "killed",
        10 => "user defined signal 1",
        11 => "segmentation fault",
        12 => "user defined signal 2",
        13 => "broken pipe",
        14 => "alarm clock",
        15 => "terminated",
        16 => "stack fault",
        17 => "child exited",
        18 => "continued",
        19 => "stopped (signal)",
        20 => "stopped",
        21 => "stopped (tty input)",
        22 => "stopped (tty output)",
        23 => "urgent I/O condition",
        24 => "CPU time limit exceeded",
        25 => "file size limit exceeded",
        26 => "virtual timer expired",
        27 => "profiling timer expired",
        28 => "window changed",
        29 => "I/O possible",
        30 => "power failure",
        31 => "bad system call",
        other => return format!("signal {other}"),
    };
    name.to_string()
}

/// The text Go's `os/exec` gives when a command cannot start: `exec: "x": executable file not found in $PATH`
/// for a bare name, `fork/exec /path: permission denied` for a path.
pub fn describe_spawn_error(program: &str, error: &std::io::Error) -> String {
    if !program.contains('/') && error.kind() == std::io::ErrorKind::NotFound {
        return format!("exec: {program:?}: executable file not found in $PATH");
    }
    let reason = match error.raw_os_error() {
        Some(code) => lower_first(nix::errno::Errno::from_raw(code).desc()),
        None => error.to_string(),
    };
    format!("fork/exec {program}: {reason}")
}

fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_descriptions_match_go() {
        assert_eq!(describe_exit(ExitStatus::from_raw(0)), None);
        assert_eq!(describe_exit(ExitStatus::from_raw(1 << 8)).as_deref(), Some("exit status 1"));
        assert_eq!(describe_exit(ExitStatus::from_raw(9)).as_deref(), Some("signal: killed"));
        assert_eq!(describe_exit(ExitStatus::from_raw(15)).as_deref(), Some("signal: terminated"));
        assert_eq!(
            describe_exit(ExitStatus::from_raw(11 | 0x80)).as_deref(),
            Some("signal: segmentation fault (core dumped)")
        );
    }

    #[test]
    fn spawn_errors_match_go() {
        let not_found = std::io::Error::from_raw_os_error(2);
        assert_eq!(
            describe_spawn_error("nosuchcmd", &not_found),
            "exec: \"nosuchcmd\": executable file not found in $PATH"
        );
        assert_eq!(describe_spawn_error("/no/such", &not_found), "fork/exec /no/such: no such file or directory");
        let denied = std::io::Error::from_raw_os_error(13);
        assert_eq!(describe_spawn_error("./f", &denied), "fork/exec ./f: permission denied");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err =
            FunctionProcess::spawn(&["/definitely/not/here".into()], vec![], true, &Arc::default()).err().unwrap();
        assert_eq!(err.0, "fork/exec /definitely/not/here: no such file or directory");
    }

    #[tokio::test]
    async fn combined_output_shares_one_pipe() {
        use tokio::io::AsyncReadExt;
        let argv: Vec<String> =
            ["sh", "-c", "echo out; echo err >&2; echo out2"].iter().map(|s| s.to_string()).collect();
        let mut p = FunctionProcess::spawn(&argv, vec![], true, &Arc::default()).unwrap();
        drop(p.stdin.take());
        let mut text = String::new();
        p.output.take().unwrap().read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "out\nerr\nout2\n");
        assert!(p.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn stdin_takes_more_than_a_pipe_holds_and_reports_a_closed_reader() {
        use tokio::io::AsyncReadExt;
        let argv: Vec<String> = ["cat"].iter().map(|s| s.to_string()).collect();
        let mut p = FunctionProcess::spawn(&argv, vec![], true, &Arc::default()).unwrap();
        let mut stdin = p.stdin.take().unwrap();
        let mut output = p.output.take().unwrap();
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            output.read_to_end(&mut out).await.unwrap();
            out
        });
        // 1 MiB: the first write fills the pipe, the rest goes through the runtime once registered.
        let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
        stdin.write_all(&body[..10]).await.unwrap();
        stdin.write_all(&body[10..]).await.unwrap();
        assert!(matches!(stdin.0, StdinState::Async(_)), "a full pipe switches to the runtime");
        drop(stdin);
        assert_eq!(reader.await.unwrap(), body);
        assert!(p.wait().await.unwrap().success());

        let argv: Vec<String> = ["true"].iter().map(|s| s.to_string()).collect();
        let mut p = FunctionProcess::spawn(&argv, vec![], true, &Arc::default()).unwrap();
        let mut stdin = p.stdin.take().unwrap();
        assert!(p.wait().await.unwrap().success());
        let error = stdin.write_all(b"nobody reads this").await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::BrokenPipe);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_after_a_long_run() {
        let policy = RestartPolicy {
            min: Duration::from_millis(100),
            max: Duration::from_millis(700),
            reset: Duration::from_secs(5),
        };
        let mut backoff = Backoff::new(policy);
        let crash = Duration::ZERO;
        let delays: Vec<u64> = (0..5).map(|_| backoff.next_delay(crash).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        assert_eq!(backoff.next_delay(Duration::from_secs(5)), Duration::from_millis(100), "a long run resets");
        assert_eq!(backoff.next_delay(Duration::from_secs(4)), Duration::from_millis(200));
    }
}
