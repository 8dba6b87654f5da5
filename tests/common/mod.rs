//! Shared helpers for the end-to-end tests: an in-process server on port 0, the real binary, raw HTTP.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ng_watchdog::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A watchdog served by `run()` in this process.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its TMPDIR (lock file, spilled output, test scripts).
    pub tmp: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ng_watchdog::Error>>>,
}

impl Server {
    /// Starts a watchdog configured by `vars` (plus a private TMPDIR, metrics off, no shutdown wait).
    pub async fn start(vars: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        Server::start_in(tmp, vars).await
    }

    /// Starts a watchdog whose TMPDIR is `tmp` (so scripts can be put there first).
    pub async fn start_in(tmp: tempfile::TempDir, vars: &[(&str, &str)]) -> Server {
        let mut server = Server::launch(tmp, vars).await;
        server.wait_healthy().await;
        server
    }

    /// Starts a watchdog without waiting for it to become healthy.
    pub async fn start_in_unready(tmp: tempfile::TempDir, vars: &[(&str, &str)]) -> Server {
        let server = Server::launch(tmp, vars).await;
        // The listener is bound before run() starts, so requests work at once.
        server
    }

    async fn launch(tmp: tempfile::TempDir, vars: &[(&str, &str)]) -> Server {
        Server::launch_with(tmp, vars, |_| {}).await
    }

    /// Starts a watchdog after `adjust` has changed its configuration (for settings that are not variables).
    pub async fn start_adjusted(
        tmp: tempfile::TempDir,
        vars: &[(&str, &str)],
        adjust: impl FnOnce(&mut Config),
    ) -> Server {
        Server::launch_with(tmp, vars, adjust).await
    }

    async fn launch_with(tmp: tempfile::TempDir, vars: &[(&str, &str)], adjust: impl FnOnce(&mut Config)) -> Server {
        let mut map: HashMap<String, String> = HashMap::new();
        map.insert("TMPDIR".into(), tmp.path().display().to_string());
        map.insert("metrics_port".into(), "0".into());
        map.insert("healthcheck_interval".into(), "0".into());
        for (k, v) in vars {
            map.insert(k.to_string(), v.to_string());
        }
        let (mut config, _) = Config::from_source(&map).expect("valid test config");
        adjust(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(ng_watchdog::run(listener, config, async move {
            let _ = rx.await;
            ng_watchdog::Shutdown::Graceful
        }));
        Server { addr, tmp, shutdown: Some(tx), handle: Some(handle) }
    }

    /// Full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn wait_healthy(&mut self) {
        if let Err(error) = self.try_wait_healthy().await {
            panic!("watchdog did not become healthy: {error}");
        }
    }

    /// Waits for `/_/health`; an error if `run` returned first (with its error) or after 10 s.
    async fn try_wait_healthy(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = client.get(self.url("/_/health")).send().await {
                if r.status() == 200 || self.lock_suppressed() {
                    return Ok(());
                }
            }
            if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
                let ended = self.handle.take().expect("checked").await.expect("run does not panic");
                return Err(format!("run() returned {ended:?}"));
            }
            if Instant::now() >= deadline {
                return Err("no 200 within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts a watchdog with metrics on a free port, returned with it. Another test can take a port between
    /// [`free_port`] and the bind, so a lost race is retried with a new port.
    pub async fn start_with_metrics(vars: &[(&str, &str)]) -> (Server, u16) {
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let port_text = port.to_string();
            let mut all = vars.to_vec();
            all.push(("metrics_port", &port_text));
            let mut server = Server::launch(tempfile::tempdir().unwrap(), &all).await;
            match server.try_wait_healthy().await {
                Ok(()) => return (server, port),
                Err(error) => last_error = error,
            }
        }
        panic!("watchdog with metrics did not start: {last_error}");
    }

    fn lock_suppressed(&self) -> bool {
        !self.tmp.path().join(".lock").exists() && self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Starts the shutdown sequence (SIGTERM) without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Runs the shutdown sequence and waits for `run` to return.
    pub async fn stop(mut self) {
        self.begin_stop();
        self.handle.take().unwrap().await.unwrap().unwrap();
    }
}

/// Writes an executable shell script `name` into `dir` and returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The status line and header lines as sent.
    pub head: String,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` bytes on a fresh connection and reads one response (the server closes or sends a length).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

/// Reads one HTTP/1.1 response from `stream`.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let body = if let Some(len) = get("content-length") {
        let len: usize = len.parse().unwrap();
        while rest.len() < len {
            let mut chunk = [0u8; 65536];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-body");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if get("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            if find(&rest, b"0\r\n\r\n").is_some_and(|p| p == 0 || rest[..p].ends_with(b"\r\n")) {
                break;
            }
            let mut chunk = [0u8; 65536];
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        dechunk(&rest)
    } else {
        rest
    };
    RawResponse { status, headers, head, body }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(data, b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
    out
}

/// The real `fwatchdog` binary, started with exactly `vars` (and PATH), its stderr captured to a file.
pub struct Binary {
    /// The child process.
    pub child: tokio::process::Child,
    /// The main port.
    pub port: u16,
    /// Its TMPDIR.
    pub tmp: tempfile::TempDir,
    /// Where its stderr goes.
    pub log_path: PathBuf,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Binary {
    /// Starts the binary and waits until `/_/health` is 200.
    pub async fn start(vars: &[(&str, &str)]) -> Binary {
        let tmp = tempfile::tempdir().unwrap();
        Binary::start_in(tmp, vars).await
    }

    /// Starts the binary with TMPDIR `tmp`. A port that was free can be taken by another test before the binary
    /// binds it; such a start is retried on a new port.
    pub async fn start_in(tmp: tempfile::TempDir, vars: &[(&str, &str)]) -> Binary {
        let mut tmp = Some(tmp);
        for _ in 0..5 {
            let mut binary = Binary::spawn_in(tmp.take().expect("kept between tries"), vars);
            match binary.try_wait_healthy().await {
                Ok(()) => return binary,
                Err(log) if log.contains("cannot listen") => tmp = Some(binary.tmp),
                Err(log) => panic!("fwatchdog did not become healthy; log:\n{log}"),
            }
        }
        panic!("fwatchdog never found a free port");
    }

    /// Starts the binary with metrics on a free port, returned with it (retried like [`Binary::start_in`]).
    pub async fn start_with_metrics(vars: &[(&str, &str)]) -> (Binary, u16) {
        for _ in 0..5 {
            let port = free_port();
            let port_text = port.to_string();
            let mut all = vars.to_vec();
            all.push(("metrics_port", &port_text));
            let mut binary = Binary::spawn_in(tempfile::tempdir().unwrap(), &all);
            match binary.try_wait_healthy().await {
                Ok(()) => return (binary, port),
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("fwatchdog did not become healthy; log:\n{log}"),
            }
        }
        panic!("fwatchdog never found free ports");
    }

    /// Polls `/_/health` until 200; the log as the error if the binary exits first or 20 s pass.
    async fn try_wait_healthy(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(self.url("/_/health")).send().await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            if self.child.try_wait().ok().flatten().is_some() || Instant::now() >= deadline {
                return Err(self.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the binary without waiting for it.
    pub fn spawn_in(tmp: tempfile::TempDir, vars: &[(&str, &str)]) -> Binary {
        let port = free_port();
        let log_path = tmp.path().join("watchdog.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fwatchdog"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TMPDIR", tmp.path())
            .env("port", port.to_string())
            .env("metrics_port", "0")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = cmd.spawn().unwrap();
        Binary { child, port, tmp, log_path }
    }

    /// Full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The main address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A field of /proc/<pid>/status, in kB (e.g. "VmHWM").
    pub fn status_kb(&self, field: &str) -> u64 {
        proc_status_kb(self.pid(), field)
    }
}

/// A kB field of /proc/<pid>/status.
pub fn proc_status_kb(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// (pid, state, ppid, pgrp) of every process.
pub fn processes() -> Vec<(i32, char, i32, i32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let state = fields[0].chars().next().unwrap_or('?');
        out.push((pid, state, fields[1].parse().unwrap_or(0), fields[2].parse().unwrap_or(0)));
    }
    out
}

/// Whether a process is still alive (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    processes().iter().any(|(p, state, _, _)| *p == pid && *state != 'Z')
}
