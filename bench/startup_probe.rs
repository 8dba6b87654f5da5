//! Time from launch to the first 200, measured from a small compiled program so that the probe's own cost (an
//! interpreter's fork and exec) stays out of the figure. The clock starts just before the spawn and stops when a
//! `GET` answers `HTTP/1.1 200`; a refused connection is retried after 50 µs.
//!
//! Usage: `startup_probe ROUNDS PATH -- COMMAND [ARG...]`. Each round picks a free port, passes it to the
//! command as the environment variable `port` and in place of `{port}` in its arguments, gives it an empty
//! `TMPDIR` (so a lock file left by the round before cannot answer for it), and kills the command once
//! answered. Prints the median and the minimum in milliseconds.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--").expect("usage: startup_probe ROUNDS PATH -- COMMAND [ARG...]");
    let (head, command) = (&args[..split], &args[split + 1..]);
    let [rounds, path] = head else { panic!("usage: startup_probe ROUNDS PATH -- COMMAND [ARG...]") };
    let rounds: usize = rounds.parse().expect("ROUNDS must be a number");
    let (program, rest) = command.split_first().expect("a command to start");
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let args: Vec<String> = rest.iter().map(|a| a.replace("{port}", &port.to_string())).collect();
        let tmp = std::env::temp_dir().join(format!("startup-probe-{}-{round}", std::process::id()));
        std::fs::create_dir_all(&tmp).expect("a temporary directory");
        times.push(first_200(program, &args, port, path, &tmp));
        let _ = std::fs::remove_dir_all(&tmp);
        std::thread::sleep(Duration::from_millis(50));
    }
    times.sort_by(f64::total_cmp);
    println!("first 200 after {:.2} ms (median of {rounds}, min {:.2})", times[rounds / 2], times[0]);
}

fn first_200(program: &str, args: &[String], port: u16, path: &str, tmp: &std::path::Path) -> f64 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env("port", port.to_string())
        .env("TMPDIR", tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let elapsed = loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{program} exited during start-up: {status}");
        }
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            // Refused: not listening yet. A short pause keeps the probe from taking a core the starting server
            // needs on a small machine, and bounds the reading's granularity to 50 µs.
            std::thread::sleep(Duration::from_micros(50));
            continue;
        };
        let mut head = [0u8; 12];
        if stream.write_all(request.as_bytes()).is_ok()
            && stream.read_exact(&mut head).is_ok()
            && &head == b"HTTP/1.1 200"
        {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{program} gave no 200 on {path} within 10 s");
    };
    let _ = child.kill();
    let _ = child.wait();
    elapsed.as_secs_f64() * 1000.0
}
