//! gRPC load client: N concurrent unary `watchdog.v1.Function/Invoke` calls for D seconds against an address,
//! then calls/s and latency percentiles. The calls share a few HTTP/2 connections, as a real client's channel does.
//!
//! ```text
//! cargo run --release --example grpc_load -- --addr 127.0.0.1:8080 --concurrency 32 --seconds 10 --body 64
//! ```

use std::time::{Duration, Instant};

use ng_watchdog::envelope::pb::watchdog::v1::function_client::FunctionClient;
use ng_watchdog::envelope::pb::watchdog::v1::InvokeRequest;
use tonic::transport::Channel;

/// Command-line settings.
struct Args {
    /// Where the server listens (host:port).
    addr: String,
    /// Calls in flight at once.
    concurrency: usize,
    /// How long to run.
    seconds: u64,
    /// Request body size in bytes.
    body: usize,
    /// HTTP/2 connections to spread the calls over.
    connections: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { addr: "127.0.0.1:8080".into(), concurrency: 32, seconds: 10, body: 64, connections: 4 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--addr" => args.addr = value.clone(),
            "--concurrency" | "-c" => args.concurrency = number()?.max(1),
            "--seconds" | "-d" => args.seconds = number()? as u64,
            "--body" => args.body = number()?,
            "--connections" => args.connections = number()?.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(Channel::from_shared(format!("http://{}", args.addr))?.connect().await?);
    }
    let body = bytes::Bytes::from(vec![b'x'; args.body]);
    let stop = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let mut client = FunctionClient::new(channels[i % channels.len()].clone());
            let body = body.clone();
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < stop {
                    let request = InvokeRequest { body: body.clone(), ..Default::default() };
                    let t = Instant::now();
                    match client.invoke(request).await {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied();
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN);
    println!(
        "calls: {} errors: {errors} calls/s: {:.1} p50: {:.3}ms p99: {:.3}ms",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        ms(pct(0.50)),
        ms(pct(0.99))
    );
    Ok(())
}
