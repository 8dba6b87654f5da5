//! The real `fwatchdog` binary: flags, exit codes, the SIGTERM sequence, process groups, zombies, logs, metrics.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{alive, free_port, processes, script, Binary};

fn fwatchdog() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fwatchdog"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

async fn wait_exit(binary: &mut Binary, limit: Duration) -> std::process::ExitStatus {
    tokio::time::timeout(limit, binary.child.wait())
        .await
        .unwrap_or_else(|_| panic!("fwatchdog did not exit; log:\n{}", binary.log()))
        .unwrap()
}

async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn version_flags() {
    for flag in ["-version", "--version", "-version=true"] {
        let out = fwatchdog().arg(flag).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("Version: "), "{flag}");
    }
    let out = fwatchdog().arg("-nope").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("flag provided but not defined: -nope"));
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let out = fwatchdog().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for var in ng_watchdog::config::VARIABLES {
        assert!(text.contains(var.name) && text.contains(var.default), "{}", var.name);
    }
}

#[test]
fn run_healthcheck_checks_the_lock_file() {
    let tmp = tempfile::tempdir().unwrap();
    for flag in ["-run-healthcheck", "--run-healthcheck"] {
        let out = fwatchdog().arg(flag).env("TMPDIR", tmp.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "unable to find lock file.\n");
    }
    std::fs::write(tmp.path().join(".lock"), "").unwrap();
    let out = fwatchdog().arg("-run-healthcheck").env("TMPDIR", tmp.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn invalid_start_up_settings_exit_2_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "fprocess"),
        (&[("fprocess", "cat"), ("workers", "many")], "workers"),
        (&[("fprocess", "cat"), ("metrics_port", "-1")], "metrics_port"),
        (&[("fprocess", "cat"), ("max_body_bytes", "1GB")], "max_body_bytes"),
        (&[("fprocess", "cat"), ("cloudevents", "yes")], "cloudevents"),
        (&[("fprocess", "cat"), ("log_format", "xml")], "log_format"),
        (&[("fprocess", "cat"), ("mode", "inproc")], "mode"),
        (&[("fprocess", "cat"), ("mode", "bogus")], "mode"),
        (&[("fprocess", "cat"), ("jwt_auth", "true")], "jwt_auth"),
    ];
    for (vars, name) in cases {
        let out = fwatchdog().envs(vars.iter().copied()).env("port", free_port().to_string()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{vars:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(name),
            "{vars:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn invalid_classic_value_warns_and_keeps_the_default() {
    let binary = Binary::start(&[("fprocess", "cat"), ("exec_timeout", "soon"), ("healthcheck_interval", "0")]).await;
    let resp = reqwest::Client::new().post(binary.url("/")).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    eventually("a warning naming exec_timeout", Duration::from_secs(3), || binary.log().contains("exec_timeout")).await;
}

#[tokio::test]
async fn sigterm_sequence_drains_in_flight_requests() {
    let mut binary =
        Binary::start(&[("fprocess", "sleep 1"), ("healthcheck_interval", "700ms"), ("write_timeout", "10s")]).await;
    let client = reqwest::Client::new();
    let lock = binary.tmp.path().join(".lock");
    assert!(lock.exists());
    let in_flight = tokio::spawn(client.post(binary.url("/")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    binary.sigterm();
    // At once: the lock file is gone and health says 503.
    eventually("lock file removed", Duration::from_millis(500), || !lock.exists()).await;
    let health = reqwest::Client::new().get(binary.url("/_/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    // During healthcheck_interval, new requests are still served.
    let during = tokio::spawn(reqwest::Client::new().post(binary.url("/")).send());
    tokio::time::sleep(Duration::from_millis(800)).await;
    // After it, no new connections.
    assert!(tokio::net::TcpStream::connect(binary.addr()).await.is_err(), "listener still open");
    assert_eq!(in_flight.await.unwrap().unwrap().status(), 200);
    assert_eq!(during.await.unwrap().unwrap().status(), 200);
    let status = wait_exit(&mut binary, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
    let log = binary.log();
    assert!(log.contains("SIGTERM"), "{log}");
}

#[tokio::test]
async fn sigterm_with_zero_healthcheck_interval_exits_promptly() {
    let mut binary = Binary::start(&[("fprocess", "cat"), ("healthcheck_interval", "0")]).await;
    binary.sigterm();
    let status = wait_exit(&mut binary, Duration::from_secs(3)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_process_group() {
    let tmp = tempfile::tempdir().unwrap();
    let pids = tmp.path().join("pids");
    let f = script(
        tmp.path(),
        "f.sh",
        &format!("sleep 300 & echo $! > {p}; echo $$ >> {p}; sleep 300", p = pids.display()),
    );
    let binary = Binary::start_in(tmp, &[("fprocess", f.to_str().unwrap()), ("exec_timeout", "500ms")]).await;
    let resp = reqwest::Client::new().post(binary.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 408);
    let pids: Vec<i32> = std::fs::read_to_string(&pids).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    eventually("background child killed too", Duration::from_secs(3), || pids.iter().all(|p| !alive(*p))).await;
}

#[tokio::test]
async fn no_zombies_after_100_requests() {
    let binary = Binary::start(&[("fprocess", "cat")]).await;
    let client = reqwest::Client::new();
    for i in 0..100 {
        let resp = client.post(binary.url("/")).body(format!("{i}")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let pid = binary.pid();
    eventually("no children left", Duration::from_secs(3), || processes().iter().all(|(_, _, ppid, _)| *ppid != pid))
        .await;
}

/// The blocked-signal mask of every thread of process `pid`.
fn thread_masks(pid: i32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
            let mask = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).unwrap().trim().to_string();
            u64::from_str_radix(&mask, 16).unwrap()
        })
        .collect()
}

const SIGCHLD_BIT: u64 = 1 << (17 - 1);

#[tokio::test]
async fn forked_functions_exits_wake_no_thread_yet_functions_start_with_no_signal_blocked() {
    // The function reads its own mask: a shell script reading its shell's would race dash, which blocks every
    // signal around the vfork that starts grep.
    let binary = Binary::start(&[("fprocess", "grep SigBlk /proc/self/status")]).await;
    let resp = reqwest::Client::new().post(binary.url("/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "SigBlk:\t0000000000000000\n");
    let masks = thread_masks(binary.pid());
    assert!(masks.len() > 1 && masks.iter().all(|m| m & SIGCHLD_BIT != 0), "SIGCHLD not blocked: {masks:x?}");

    // http mode's workers are tokio children, reaped on SIGCHLD: there it must stay deliverable.
    let tmp = tempfile::tempdir().unwrap();
    let worker = script(tmp.path(), "w.sh", "sleep 30");
    let binary = Binary::spawn_in(tmp, &[("mode", "http"), ("fprocess", worker.to_str().unwrap())]);
    // Starting a thread or a process blocks every signal for a moment, so this waits out such moments.
    eventually("no thread of the http-mode watchdog blocking SIGCHLD", Duration::from_secs(5), || {
        let masks = thread_masks(binary.pid());
        masks.len() > 1 && masks.iter().all(|m| m & SIGCHLD_BIT == 0)
    })
    .await;
}

#[tokio::test]
async fn stderr_is_logged_with_and_without_prefix() {
    let binary = Binary::start(&[("fprocess", "stat x"), ("combine_output", "false")]).await;
    let resp = reqwest::Client::new().post(binary.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    eventually("stderr line logged", Duration::from_secs(3), || {
        binary.log().lines().any(|l| l.contains(" stderr: ") && l.contains("No such file or directory"))
    })
    .await;

    let binary = Binary::start(&[("fprocess", "stat x"), ("combine_output", "false"), ("prefix_logs", "false")]).await;
    reqwest::Client::new().post(binary.url("/")).send().await.unwrap();
    eventually("bare stderr line logged", Duration::from_secs(3), || {
        binary.log().lines().any(|l| l.starts_with("stat: ") && l.contains("No such file or directory"))
    })
    .await;
}

#[tokio::test]
async fn access_log_skips_kube_probes() {
    let binary = Binary::start(&[("fprocess", "cat")]).await;
    let client = reqwest::Client::new();
    client.post(binary.url("/probe-path")).header("user-agent", "kube-probe/1.29").send().await.unwrap();
    client.post(binary.url("/seen?q=1")).body("12345").send().await.unwrap();
    eventually("access line", Duration::from_secs(3), || {
        binary.log().contains("POST /seen?q=1 - 200 - ContentLength: 5B")
    })
    .await;
    assert!(!binary.log().contains("/probe-path"), "{}", binary.log());
}

/// `debug_headers` logs the request's headers as they come in and the answer's as classic-watchdog set them.
#[tokio::test]
async fn debug_headers_logs_both_directions() {
    let binary = Binary::start(&[("fprocess", "cat"), ("debug_headers", "true")]).await;
    let client = reqwest::Client::new();
    client.post(binary.url("/")).header("X-Probe", "in-value").body("x").send().await.unwrap();
    eventually("[out] lines", Duration::from_secs(3), || binary.log().contains("[out] X-Duration-Seconds=[")).await;
    assert!(binary.log().contains("[in] X-Probe=[in-value]"), "{}", binary.log());
}

/// SPEC §2: a caller's `X-Call-Id` is the request id in the logs.
#[tokio::test]
async fn access_lines_carry_the_callers_call_id() {
    let binary = Binary::start(&[("fprocess", "cat")]).await;
    let client = reqwest::Client::new();
    client.post(binary.url("/with")).header("X-Call-Id", "call-7f3a").body("x").send().await.unwrap();
    client.post(binary.url("/without")).body("x").send().await.unwrap();
    eventually("both access lines", Duration::from_secs(3), || binary.log().contains("POST /without")).await;
    let log = binary.log();
    let line = |path: &str| log.lines().find(|l| l.contains(&format!("POST {path} "))).unwrap_or_default().to_string();
    assert!(line("/with").ends_with(" request_id=call-7f3a"), "{log}");
    assert!(!line("/without").contains("request_id"), "{log}");
    let json = Binary::start(&[("fprocess", "cat"), ("log_format", "json")]).await;
    client.post(json.url("/")).header("X-Call-Id", "call-8b2c").body("x").send().await.unwrap();
    eventually("a JSON access line", Duration::from_secs(3), || json.log().contains(r#""request_id":"call-8b2c""#))
        .await;
}

#[tokio::test]
async fn json_logs() {
    let binary = Binary::start(&[("fprocess", "cat"), ("log_format", "json")]).await;
    reqwest::Client::new().post(binary.url("/")).body("x").send().await.unwrap();
    eventually("access line", Duration::from_secs(3), || binary.log().contains("ContentLength")).await;
    for line in binary.log().lines() {
        assert!(line.starts_with('{') && line.ends_with('}') && line.contains("\"message\""), "{line}");
    }
}

#[tokio::test]
async fn metrics_count_requests() {
    let (binary, metrics_port) = Binary::start_with_metrics(&[("fprocess", "cat")]).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        client.post(binary.url("/")).body("x").send().await.unwrap();
    }
    client.request(reqwest::Method::OPTIONS, binary.url("/")).send().await.unwrap();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let text = client.get(&metrics_url).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"http_requests_total{code="200",method="post"} 3"#), "{text}");
    assert!(text.contains(r#"http_requests_total{code="405",method="options"} 1"#), "{text}");
    assert!(
        text.contains(r#"http_request_duration_seconds_bucket{le="0.005",code="200",method="post"}"#)
            || text.contains(r#"http_request_duration_seconds_bucket{code="200",method="post",le="0.005"}"#),
        "{text}"
    );
    assert!(text.contains("http_requests_in_flight 0"), "{text}");
    assert!(text.contains(r#"watchdog_invocations_total{protocol="http",code="200"} 3"#), "{text}");
    assert!(text.contains("# TYPE http_requests_total counter"), "Prometheus text by default: {text}");
    let openmetrics =
        client.get(&metrics_url).header("accept", "application/openmetrics-text; version=1.0.0").send().await.unwrap();
    assert!(openmetrics.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    assert!(openmetrics.text().await.unwrap().ends_with("# EOF\n"));
}

#[tokio::test]
async fn knative_port_is_used_when_port_is_unset() {
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fwatchdog"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TMPDIR", tmp.path())
        .env("fprocess", "cat")
        .env("metrics_port", "0")
        .env("PORT", port.to_string())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/_/health");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if client.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "not listening on PORT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Dual-stack: IPv6 loopback works too where the machine has it.
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let v6 = client.get(format!("http://[::1]:{port}/_/health")).send().await.unwrap();
        assert_eq!(v6.status(), 200);
    }
    child.kill().await.unwrap();
}

#[tokio::test]
async fn as_pid_1_orphans_are_reaped_and_exit_statuses_kept() {
    // The watchdog becomes PID 1 of a new pid namespace, as in a scratch image.
    if !Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot create a pid namespace here (unshare needs root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let f = script(
        tmp.path(),
        "f.sh",
        r#"(sleep 0.2; exit 0) >/dev/null 2>&1 &
if [ "$Http_Path" = "/fail" ]; then exit 3; fi
echo ok"#,
    );
    let port = free_port();
    let mut unshare = tokio::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", env!("CARGO_BIN_EXE_fwatchdog")])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TMPDIR", tmp.path())
        .env("fprocess", f.to_str().unwrap())
        .env("port", port.to_string())
        .env("metrics_port", "0")
        .env("healthcheck_interval", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let unshare_pid = unshare.id().unwrap() as i32;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.get(url("/_/health")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "not healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let watchdog = processes().into_iter().find(|(_, _, ppid, _)| *ppid == unshare_pid).expect("watchdog process").0;
    // Killing unshare would not reach its child, the namespace's PID 1: kill the watchdog itself, even on panic.
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _kill = KillOnDrop(watchdog);
    for i in 0..20 {
        let (path, status, body) = if i % 2 == 0 { ("/", 200, "ok\n") } else { ("/fail", 500, "exit status 3\n") };
        let resp = client.post(url(path)).send().await.unwrap();
        assert_eq!(resp.status(), status, "exit statuses are not taken by the reaper");
        assert_eq!(resp.text().await.unwrap(), body);
    }
    eventually("orphans reaped", Duration::from_secs(5), || {
        !processes().iter().any(|(_, state, ppid, _)| *ppid == watchdog && *state == 'Z')
            && !processes().iter().any(|(_, _, ppid, _)| *ppid == watchdog)
    })
    .await;
    drop(_kill);
    unshare.wait().await.unwrap();
}

#[tokio::test]
async fn sigint_stops_at_once_and_terminates_running_functions() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("terminated");
    let f =
        script(tmp.path(), "f.sh", &format!("trap 'echo term > {}; exit 0' TERM; sleep 30 & wait", marker.display()));
    let mut binary = Binary::start_in(tmp, &[("fprocess", f.to_str().unwrap()), ("healthcheck_interval", "30s")]).await;
    let in_flight = tokio::spawn(reqwest::Client::new().post(binary.url("/")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(binary.pid()), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = wait_exit(&mut binary, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
    assert!(marker.exists(), "the running function got SIGTERM");
    // It answered before the watchdog exited: the trap exits 0 after printing nothing.
    assert_eq!(in_flight.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn a_client_that_disconnects_leaves_no_request_counted_in_flight() {
    let (binary, metrics_port) = Binary::start_with_metrics(&[("fprocess", "sleep 1")]).await;
    let mut stream = tokio::net::TcpStream::connect(binary.addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = client.get(&url).send().await.unwrap().text().await.unwrap();
        if text.contains("http_requests_in_flight 0\n") {
            break;
        }
        assert!(Instant::now() < deadline, "in-flight gauge never went back to 0: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SPEC §1: the binary runs in scratch and distroless images, so it must not ask for a dynamic loader (an ELF
/// `PT_INTERP` program header), and is a plain executable, with nothing to relocate at start-up.
#[test]
fn the_binary_is_statically_linked() {
    let elf = std::fs::read(env!("CARGO_BIN_EXE_fwatchdog")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "a 64-bit ELF");
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    const ET_EXEC: u16 = 2;
    const PT_INTERP: u32 = 3;
    assert_eq!(u16_at(16), ET_EXEC, "an executable, not a position-independent (relocated) one");
    let (table, entry_size, entries) = (u64_at(32) as usize, usize::from(u16_at(54)), usize::from(u16_at(56)));
    let types: Vec<u32> = (0..entries).map(|i| u32_at(table + i * entry_size)).collect();
    assert!(!types.is_empty(), "program headers");
    assert!(!types.contains(&PT_INTERP), "the binary names a dynamic loader: {types:?}");
}
