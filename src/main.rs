//! `fwatchdog`: reads the configuration from the environment and runs the watchdog.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use ng_watchdog::config::Config;
use ng_watchdog::Shutdown;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env = |key: &str| std::env::var(key).ok();
    let flags = match Flags::parse(&args) {
        Ok(flags) => flags,
        Err(message) => {
            eprintln!("{message}\n\n{}", Config::help_text());
            return ExitCode::from(2);
        }
    };

    if flags.run_healthcheck {
        let tmp = std::path::PathBuf::from(env("TMPDIR").filter(|t| !t.is_empty()).unwrap_or_else(|| "/tmp".into()));
        if ng_watchdog::supervisor::lock_file_present(&tmp) {
            return ExitCode::SUCCESS;
        }
        eprintln!("unable to find lock file.");
        return ExitCode::from(1);
    }
    if flags.version {
        println!("Version: {VERSION}\tSHA: {}", option_env!("GIT_COMMIT").unwrap_or("unknown"));
        return ExitCode::SUCCESS;
    }
    if flags.help {
        print!("{}", Config::help_text());
        return ExitCode::SUCCESS;
    }

    let (config, warnings) = match Config::from_source(&env) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("fwatchdog: {error}");
            return ExitCode::from(2);
        }
    };
    // Before any other thread starts, so that every one inherits the mask.
    let muted =
        ng_watchdog::reaper::child_exits_unwatched(config.mode.is_fork()).then(ng_watchdog::reaper::mute_child_exits);
    let _log_guard = ng_watchdog::logging::init(config.log_format, config.prefix_logs);
    if let Some(Err(error)) = muted {
        tracing::warn!("cannot block SIGCHLD (functions' exits will wake idle threads): {error}");
    }
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

/// The command-line flags, parsed as Go's `flag` package parses the originals': `-name` or `--name`, a boolean
/// value as `-name=false`; parsing stops at the first argument that is not a flag (or after `--`), and the rest
/// are ignored.
#[derive(Debug, Default, PartialEq, Eq)]
struct Flags {
    /// `-version`: print the version and exit.
    version: bool,
    /// `-run-healthcheck`: exit 0 when the lock file exists.
    run_healthcheck: bool,
    /// `-h` / `-help`: print the variables and exit.
    help: bool,
}

impl Flags {
    /// The flags in `args`, or the message Go prints for a bad one.
    fn parse(args: &[String]) -> Result<Flags, String> {
        let mut flags = Flags::default();
        for arg in args {
            if arg == "--" {
                break;
            }
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|f| !f.is_empty()) else {
                break;
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (flag, None),
            };
            let on = match value {
                None => true,
                Some(text) => {
                    go_bool(text).ok_or_else(|| format!("invalid boolean value {text:?} for -{name}: parse error"))?
                }
            };
            match name {
                "version" => flags.version = on,
                "run-healthcheck" => flags.run_healthcheck = on,
                "h" | "help" => flags.help = true,
                _ => return Err(format!("flag provided but not defined: -{name}")),
            }
        }
        Ok(flags)
    }
}

/// Go's `strconv.ParseBool`.
fn go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, String> {
        Flags::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_parse_as_gos_flag_package() {
        assert_eq!(parse(&[]), Ok(Flags::default()));
        assert_eq!(parse(&["-version"]).unwrap(), Flags { version: true, ..Flags::default() });
        assert_eq!(parse(&["--version=true"]).unwrap(), Flags { version: true, ..Flags::default() });
        assert_eq!(parse(&["-version=false"]).unwrap(), Flags::default());
        assert!(parse(&["-run-healthcheck=1"]).unwrap().run_healthcheck);
        assert!(parse(&["--help"]).unwrap().help);
        // The first argument that is not a flag ends parsing; what follows is ignored, as Go ignores it.
        assert_eq!(parse(&["serve", "-nope"]), Ok(Flags::default()));
        assert_eq!(parse(&["--", "-nope"]), Ok(Flags::default()));
        assert_eq!(parse(&["-nope"]), Err("flag provided but not defined: -nope".into()));
        assert_eq!(parse(&["-version=maybe"]), Err("invalid boolean value \"maybe\" for -version: parse error".into()));
    }
}
