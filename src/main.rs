//! `fwatchdog`: reads the configuration from the environment and runs the watchdog.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use ng_watchdog::config::Config;
use ng_watchdog::Shutdown;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |names: &[&str]| args.iter().any(|a| names.contains(&a.as_str()));
    let env = |key: &str| std::env::var(key).ok();

    if flag(&["-run-healthcheck", "--run-healthcheck"]) {
        let tmp = std::path::PathBuf::from(env("TMPDIR").filter(|t| !t.is_empty()).unwrap_or_else(|| "/tmp".into()));
        if ng_watchdog::supervisor::lock_file_present(&tmp) {
            return ExitCode::SUCCESS;
        }
        eprintln!("unable to find lock file.");
        return ExitCode::from(1);
    }
    if flag(&["-version", "--version"]) {
        println!("Version: {VERSION}\tSHA: {}", option_env!("GIT_COMMIT").unwrap_or("unknown"));
        return ExitCode::SUCCESS;
    }
    if flag(&["-h", "-help", "--help"]) {
        print!("{}", Config::help_text());
        return ExitCode::SUCCESS;
    }
    if let Some(unknown) = args.first() {
        eprintln!("flag provided but not defined: {unknown}\n\n{}", Config::help_text());
        return ExitCode::from(2);
    }

    let (config, warnings) = match Config::from_source(&env) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("fwatchdog: {error}");
            return ExitCode::from(2);
        }
    };
    let _log_guard = ng_watchdog::logging::init(config.log_format, config.prefix_logs);
    tracing::info!("Version: {VERSION}\tSHA: {}", option_env!("GIT_COMMIT").unwrap_or("unknown"));
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("fwatchdog: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = match config.runtime_threads() {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?,
    };
    runtime.block_on(async move {
        let listener = ng_watchdog::bind(config.port)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on port {}: {e}", config.port))?;
        ng_watchdog::run(listener, config, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM (the graceful sequence) or SIGINT (stop now).
async fn shutdown_signal() -> Shutdown {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => Shutdown::Graceful,
        _ = int.recv() => Shutdown::Immediate,
    }
}
