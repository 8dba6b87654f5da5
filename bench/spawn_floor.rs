//! The spawn floor: the fastest any fork-per-request server can go here.
//!
//! Two threads (second argument, default 2) each loop for DURATION seconds
//! (first argument, default 10): spawn `cat` with piped stdin, stdout and
//! stderr, write a 13-byte body, close stdin, read stdout to EOF, wait for
//! the exit. Prints the total spawns per second (stderr: the parent's own
//! CPU time per spawn). Run by `bench/run.sh`; on its own:
//!
//! ```text
//! cargo run --release --example spawn_floor -- 10 2
//! ```

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BODY: &[u8; 13] = b"Hello, world!";

fn spawn_once(out: &mut Vec<u8>) {
    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cat");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(BODY).expect("write stdin");
    drop(stdin);
    out.clear();
    child.stdout.take().expect("stdout").read_to_end(out).expect("read stdout");
    let status = child.wait().expect("wait");
    assert!(status.success() && out.as_slice() == BODY, "cat misbehaved");
}

fn main() {
    let secs: f64 = match std::env::args().nth(1) {
        Some(s) => s.parse().expect("DURATION must be a number of seconds"),
        None => 10.0,
    };
    let threads: usize = match std::env::args().nth(2) {
        Some(s) => s.parse().expect("THREADS must be a number"),
        None => 2,
    };
    let duration = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            thread::spawn(move || {
                let mut out = Vec::with_capacity(64);
                let mut n: u64 = 0;
                while start.elapsed() < duration {
                    spawn_once(&mut out);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds();
    println!("{:.1}", total as f64 / elapsed);
    eprintln!(
        "spawn_floor: {total} spawns in {elapsed:.2}s on {threads} threads; parent cpu {:.1} us/spawn",
        cpu * 1e6 / total.max(1) as f64
    );
}

/// utime + stime of this process (all its threads, children excluded), from /proc/self/stat.
fn own_cpu_seconds() -> f64 {
    const USER_HZ: f64 = 100.0; // clock ticks per second of /proc, 100 on Linux
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / USER_HZ
}
