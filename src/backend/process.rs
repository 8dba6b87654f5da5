//! One forked function process: spawned in its own process group so a timeout or shutdown reaches everything it
//! started, with pipes the watchdog reads, and exits and start failures described as Go's `os/exec` does.
//!
//! Function processes are started with `posix_spawnp` directly and reaped by pid (through a pidfd when a wait
//! must block), not through `std::process::Command`: one spawn per request made the standard library's
//! environment handling (a sorted copy of the whole environment, merged and copied again into C strings, on
//! every spawn) about sixty of the hundred allocations a request cost. The program, its arguments and the
//! inherited environment are prepared once ([`SpawnTemplate`]); a request adds only its own variables.

use std::ffi::{CStr, CString, OsString};
use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::spawn::{posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{killpg, SigSet, Signal};
use nix::unistd::Pid;
use rustix::process::{pidfd_open, waitid, PidfdFlags, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::reaper::ChildRegistry;

/// What every spawn of one function shares, prepared once: the program, its arguments and the watchdog's own
/// environment as C strings, and the spawn attributes (own process group, no blocked signals, SIGPIPE at its
/// default).
pub struct SpawnTemplate {
    /// `fprocess` split on spaces, as given (for messages).
    argv: Vec<String>,
    /// The same as C strings; empty when an argument holds a NUL byte (then every spawn fails, as exec would).
    c_argv: Vec<CString>,
    /// The inherited environment, `NAME=value` each.
    inherited: Vec<CString>,
    /// Attributes for `posix_spawnp`, or why they could not be set up (then every spawn fails with it).
    attr: Result<PosixSpawnAttr, nix::errno::Errno>,
}

impl std::fmt::Debug for SpawnTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnTemplate").field("argv", &self.argv).finish_non_exhaustive()
    }
}

impl SpawnTemplate {
    /// A template for `argv` with the current process environment.
    pub fn new(argv: &[String]) -> SpawnTemplate {
        SpawnTemplate::with_environment(argv, std::env::vars_os())
    }

    /// A template for `argv` with `environment` as the inherited part.
    pub fn with_environment(argv: &[String], environment: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let c_argv: Option<Vec<CString>> = argv.iter().map(|a| CString::new(a.as_bytes()).ok()).collect();
        let inherited = environment
            .into_iter()
            .filter_map(|(name, value)| EnvVar::new(name.as_bytes(), value.as_bytes()).into_c_string())
            .collect();
        SpawnTemplate { argv: argv.to_vec(), c_argv: c_argv.unwrap_or_default(), inherited, attr: spawn_attr() }
    }

    /// `fprocess` as given.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }
}

/// One variable of a function's environment, `NAME=value` in one buffer with room for the C string's NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    entry: Vec<u8>,
    name_len: usize,
}

impl EnvVar {
    /// `name=value`.
    pub fn new(name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> EnvVar {
        EnvVar::from_name_parts(name.as_ref(), std::iter::empty(), value.as_ref())
    }

    /// `prefix` and `rest` make the name (`Http_` and a header's name), without building the name apart.
    pub fn from_name_parts(prefix: &[u8], rest: impl ExactSizeIterator<Item = u8>, value: &[u8]) -> EnvVar {
        let mut entry = Vec::with_capacity(prefix.len() + rest.len() + 1 + value.len() + 1);
        entry.extend_from_slice(prefix);
        entry.extend(rest);
        let name_len = entry.len();
        entry.push(b'=');
        entry.extend_from_slice(value);
        EnvVar { entry, name_len }
    }

    /// The name.
    pub fn name(&self) -> &[u8] {
        &self.entry[..self.name_len]
    }

    /// The value.
    pub fn value(&self) -> &[u8] {
        &self.entry[self.name_len + 1..]
    }

    /// `NAME=value` as a C string, in the same buffer (it has room for the NUL); `None` when either part holds a
    /// NUL byte.
    fn into_c_string(self) -> Option<CString> {
        CString::new(self.entry).ok()
    }
}

/// The name part of a `NAME=value` entry (names cannot hold `=`).
fn name_of(entry: &CStr) -> &[u8] {
    let bytes = entry.to_bytes();
    bytes.split(|b| *b == b'=').next().unwrap_or(bytes)
}

/// The attributes every function is spawned with: its own process group, no blocked signals, and SIGPIPE back
/// at its default (Rust ignores it; a function gets what the Go watchdogs give it).
fn spawn_attr() -> Result<PosixSpawnAttr, nix::errno::Errno> {
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    attr.set_pgroup(Pid::from_raw(0))?;
    attr.set_sigmask(&SigSet::empty())?;
    let mut defaults = SigSet::empty();
    defaults.add(Signal::SIGPIPE);
    attr.set_sigdefault(&defaults)?;
    Ok(attr)
}

/// A spawned child, reaped by pid. A pidfd is opened and registered with the runtime only when the child is
/// waited for before it has exited: a classic function has usually exited by the time its output ends, and
/// skipping the pidfd then saves five system calls a request. The pid cannot be reused meanwhile, since only
/// its parent (we) can reap it and the orphan reaper skips registered children.
struct Reapable {
    /// The child's pid.
    pid: rustix::process::Pid,
    /// Its pidfd, once a wait had to block.
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl Reapable {
    /// Waits until the child has exited and reaps it.
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            match &self.pidfd {
                Some(pidfd) => pidfd.readable().await?.clear_ready(),
                // Registered after the exit, the pidfd still reports readable at once.
                None => match register_pidfd(self.pid) {
                    Ok(pidfd) => self.pidfd = Some(pidfd),
                    // Out of descriptors: poll rather than leave the child unreaped.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
            }
        }
    }

    /// Reaps the child if it has exited.
    fn try_wait(&self) -> std::io::Result<Option<ExitStatus>> {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
        let status = waitid(WaitId::Pid(self.pid), options)?;
        Ok(status.map(|status| {
            // Back to the raw wait status `ExitStatus` is made from: code << 8, or the signal (| 0x80 if dumped).
            let raw = match (status.exit_status(), status.terminating_signal()) {
                (Some(code), _) if status.exited() => (code & 0xff) << 8,
                (_, Some(signal)) => signal | if status.dumped() { 0x80 } else { 0 },
                _ => 0,
            };
            ExitStatus::from_raw(raw)
        }))
    }
}

/// A running function process and its pipes.
pub struct FunctionProcess {
    /// The child, until it is reaped (or handed to a reaping task on drop).
    child: Option<Reapable>,
    /// Its process group (the child's pid).
    pub group: Pid,
    /// Its stdin, until the request body has been written.
    pub stdin: Option<StdinPipe>,
    /// Its stdout, or stdout and stderr together when output is combined.
    pub output: Option<pipe::Receiver>,
    /// Its stderr, when not combined with stdout.
    pub stderr: Option<pipe::Receiver>,
    registry: Arc<ChildRegistry>,
}

/// The function could not be started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpawnError(pub String);

impl FunctionProcess {
    /// Starts `template`'s program with the inherited environment plus `env` (which wins over a same-named
    /// inherited variable), in a new process group. With `combine`, stdout and stderr share one pipe, so their
    /// interleaving is kept as Go's `CombinedOutput` keeps it.
    pub fn spawn(
        template: &SpawnTemplate,
        env: Vec<EnvVar>,
        combine: bool,
        registry: &Arc<ChildRegistry>,
    ) -> Result<FunctionProcess, SpawnError> {
        let program = template.argv.first().ok_or_else(|| SpawnError("exec: no command".into()))?;
        let describe = |e: std::io::Error| SpawnError(describe_spawn_error(program, &e));
        let invalid = |what: &str| SpawnError(format!("fork/exec {program}: {what} contains a NUL byte"));
        if template.c_argv.len() != template.argv.len() {
            return Err(invalid("the command line"));
        }
        let errno = |e: nix::errno::Errno| describe(std::io::Error::from(e));
        let attr = template.attr.as_ref().map_err(|e| errno(*e))?;
        let overridden = |entry: &CStr| env.iter().any(|v| v.name() == name_of(entry));
        let mut envp: Vec<&CStr> =
            template.inherited.iter().map(CString::as_c_str).filter(|e| !overridden(e)).collect();
        // As Go's os/exec, a name given twice (a `Method` header's Http_Method and the real one) keeps its last
        // value. Removed in place: duplicates are rare, and a request should not pay an allocation to look.
        let mut env = env;
        let mut i = 0;
        while i < env.len() {
            if env[i + 1..].iter().any(|later| later.name() == env[i].name()) {
                env.remove(i);
            } else {
                i += 1;
            }
        }
        let own: Vec<CString> =
            env.into_iter().map(EnvVar::into_c_string).collect::<Option<_>>().ok_or_else(|| invalid("a variable"))?;
        envp.extend(own.iter().map(CString::as_c_str));

        let (in_reader, in_writer) = std::io::pipe().map_err(describe)?;
        let (out_reader, out_writer) = std::io::pipe().map_err(describe)?;
        let (err_reader, err_writer) = if combine {
            (None, None)
        } else {
            let (reader, writer) = std::io::pipe().map_err(describe)?;
            (Some(reader), Some(writer))
        };
        let mut actions = PosixSpawnFileActions::init().map_err(errno)?;
        // The originals are close-on-exec, so the child keeps only these copies.
        actions.add_dup2(in_reader.as_raw_fd(), 0).map_err(errno)?;
        actions.add_dup2(out_writer.as_raw_fd(), 1).map_err(errno)?;
        let err_fd = err_writer.as_ref().map_or(out_writer.as_raw_fd(), AsRawFd::as_raw_fd);
        actions.add_dup2(err_fd, 2).map_err(errno)?;

        let pid = registry.spawn(|| {
            let pid = posix_spawnp(&template.c_argv[0], &actions, attr, &template.c_argv, &envp)?;
            Ok::<_, nix::errno::Errno>((pid, pid.as_raw()))
        });
        // Our copies of the child's ends: closed now, or EOF never comes.
        drop((in_reader, out_writer, err_writer));
        let pid = pid.map_err(errno)?;
        let raw = rustix::process::Pid::from_raw(pid.as_raw()).ok_or_else(|| SpawnError("spawned pid 0".into()))?;
        // From here a failure drops `process`, which kills and reaps the child.
        let mut process = FunctionProcess {
            stdin: None,
            child: Some(Reapable { pid: raw, pidfd: None }),
            group: pid,
            output: None,
            stderr: None,
            registry: Arc::clone(registry),
        };
        process.output = Some(receiver(OwnedFd::from(out_reader)).map_err(describe)?);
        process.stderr = err_reader.map(|r| receiver(OwnedFd::from(r))).transpose().map_err(describe)?;
        process.stdin = Some(StdinPipe::new(OwnedFd::from(in_writer)).map_err(describe)?);
        Ok(process)
    }

    /// Sends `signal` to the whole process group. Only called before the leader is reaped, so the group id
    /// cannot have been reused.
    pub fn signal_group(&self, signal: Signal) {
        if self.child.is_some() {
            let _ = killpg(self.group, signal);
        }
    }

    /// Waits for the leader to exit and reaps it.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let child = self.child.as_mut().ok_or_else(|| std::io::Error::other("the function was already reaped"))?;
        let status = child.wait().await?;
        self.child = None;
        Ok(status)
    }

    /// Reaps the leader if it has already exited, without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        let Some(child) = &self.child else { return Ok(None) };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        // A request abandoned mid-run (its task cancelled) must not leave its processes behind, nor a zombie:
        // the group is killed and the leader reaped in the background.
        self.signal_group(Signal::SIGKILL);
        let registry = Arc::clone(&self.registry);
        let pid = self.group.as_raw();
        match (self.child.take(), tokio::runtime::Handle::try_current()) {
            (Some(mut child), Ok(runtime)) => {
                runtime.spawn(async move {
                    let _ = child.wait().await;
                    registry.forget(pid);
                });
            }
            (Some(child), Err(_)) => {
                drop(child);
                let _ = nix::sys::wait::waitpid(self.group, None);
                registry.forget(pid);
            }
            (None, _) => registry.forget(pid),
        }
    }
}

/// A pidfd for `pid`, registered with the runtime.
fn register_pidfd(pid: rustix::process::Pid) -> std::io::Result<AsyncFd<OwnedFd>> {
    let pidfd = pidfd_open(pid, PidfdFlags::empty())?;
    // tokio deprecated this constructor (tokio#8587) because a `T` that can close or swap its descriptor while
    // registered breaks the reactor's bookkeeping; an `OwnedFd` owned by the `AsyncFd` cannot, and is closed
    // only after deregistration. The replacement, `register`, is `unsafe`, which this crate forbids.
    #[allow(deprecated)]
    AsyncFd::with_interest(pidfd, tokio::io::Interest::READABLE)
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
        let err = FunctionProcess::spawn(
            &SpawnTemplate::new(&["/definitely/not/here".into()]),
            vec![],
            true,
            &Arc::default(),
        )
        .err()
        .unwrap();
        assert_eq!(err.0, "fork/exec /definitely/not/here: no such file or directory");
    }

    #[tokio::test]
    async fn combined_output_shares_one_pipe() {
        use tokio::io::AsyncReadExt;
        let argv: Vec<String> =
            ["sh", "-c", "echo out; echo err >&2; echo out2"].iter().map(|s| s.to_string()).collect();
        let mut p = FunctionProcess::spawn(&SpawnTemplate::new(&argv), vec![], true, &Arc::default()).unwrap();
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
        let mut p = FunctionProcess::spawn(&SpawnTemplate::new(&argv), vec![], true, &Arc::default()).unwrap();
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
        let mut p = FunctionProcess::spawn(&SpawnTemplate::new(&argv), vec![], true, &Arc::default()).unwrap();
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

    /// Runs `script` with `sh -c` from a template whose inherited environment is `inherited` plus PATH; returns
    /// the output and the exit status.
    async fn run_script(
        script: &str,
        inherited: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> (String, std::process::ExitStatus) {
        use tokio::io::AsyncReadExt;
        let argv: Vec<String> = ["sh", "-c", script].iter().map(|s| s.to_string()).collect();
        let mut environment: Vec<(OsString, OsString)> =
            inherited.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect();
        environment.push(("PATH".into(), std::env::var_os("PATH").unwrap_or_default()));
        let template = SpawnTemplate::with_environment(&argv, environment);
        let env = env.iter().map(|(k, v)| EnvVar::new(k, v)).collect();
        let mut p = FunctionProcess::spawn(&template, env, true, &Arc::default()).unwrap();
        drop(p.stdin.take());
        let mut text = String::new();
        p.output.take().unwrap().read_to_string(&mut text).await.unwrap();
        (text, p.wait().await.unwrap())
    }

    #[tokio::test]
    async fn the_request_environment_wins_over_the_inherited_one() {
        let (text, status) = run_script(
            r#"echo "$KEEP $Http_X""#,
            &[("KEEP", "kept"), ("Http_X", "inherited")],
            &[("Http_X", "request")],
        )
        .await;
        assert_eq!(text, "kept request\n");
        assert!(status.success());
    }

    #[tokio::test]
    async fn a_function_runs_in_its_own_group_with_default_signals() {
        // Field 5 of /proc/PID/stat is the process group; SigIgn is the mask of ignored signals (the test
        // harness, like the watchdog, ignores SIGPIPE).
        let script = r#"echo $$ $(cut -d' ' -f5 /proc/$$/stat) $(grep SigIgn /proc/$$/status | cut -f2)"#;
        let (text, _) = run_script(script, &[], &[]).await;
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields[0], fields[1], "the function leads its own process group: {text}");
        let ignored = u64::from_str_radix(fields[2], 16).unwrap();
        assert_eq!(ignored & (1 << (Signal::SIGPIPE as u32 - 1)), 0, "SIGPIPE is back to its default: {text}");
    }

    #[tokio::test]
    async fn exit_codes_and_signals_come_back_as_go_describes_them() {
        let (_, status) = run_script("exit 3", &[], &[]).await;
        assert_eq!(describe_exit(status).as_deref(), Some("exit status 3"));
        let (_, status) = run_script("kill -KILL $$", &[], &[]).await;
        assert_eq!(describe_exit(status).as_deref(), Some("signal: killed"));
    }

    #[tokio::test]
    async fn a_nul_byte_in_a_variable_is_a_spawn_error() {
        let argv: Vec<String> = vec!["true".into()];
        let env = vec![EnvVar::new("Http_Path", "/a\0b")];
        let err = FunctionProcess::spawn(&SpawnTemplate::new(&argv), env, true, &Arc::default()).err().unwrap();
        assert!(err.0.contains("NUL byte"), "{}", err.0);
    }

    #[tokio::test]
    async fn an_exit_is_read_whether_it_comes_before_or_after_the_output_ends() {
        use tokio::io::AsyncReadExt;
        // Exited before the wait: read without a pidfd. Still running when waited for: a pidfd is registered.
        for (script, code, needs_pidfd) in
            [("echo done; exit 3", 3, false), ("echo done; exec >&- 2>&-; sleep 0.3; exit 4", 4, true)]
        {
            let argv: Vec<String> = ["sh", "-c", script].iter().map(|s| s.to_string()).collect();
            let mut p = FunctionProcess::spawn(&SpawnTemplate::new(&argv), vec![], true, &Arc::default()).unwrap();
            drop(p.stdin.take());
            let mut text = String::new();
            p.output.take().unwrap().read_to_string(&mut text).await.unwrap();
            assert_eq!(text, "done\n");
            let mut child = p.child.take().unwrap();
            if needs_pidfd {
                assert!(child.try_wait().unwrap().is_none(), "still sleeping");
            } else {
                // The shell's exit follows its output's end closely, but not atomically: wait for the zombie.
                let stat = format!("/proc/{}/stat", p.group.as_raw());
                let zombie = || {
                    std::fs::read_to_string(&stat)
                        .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| r.starts_with("Z ")))
                };
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while !zombie() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
            assert_eq!(status.code(), Some(code), "{script}");
            assert_eq!(child.pidfd.is_some(), needs_pidfd, "{script}");
            assert!(child.try_wait().is_err(), "reaped once");
        }
    }

    #[tokio::test]
    async fn a_dropped_process_is_killed_and_reaped() {
        let argv: Vec<String> = ["sleep", "60"].iter().map(|s| s.to_string()).collect();
        let p = FunctionProcess::spawn(&SpawnTemplate::new(&argv), vec![], true, &Arc::default()).unwrap();
        let pid = p.group.as_raw();
        drop(p);
        // Gone entirely (not a zombie) once the background reaper has run.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(std::time::Instant::now() < deadline, "pid {pid} still exists");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
