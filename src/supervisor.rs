//! Lifecycle of the watchdog: the lock file and health state, and the SIGTERM sequence
//! (unhealthy at once → keep serving for `healthcheck_interval` → refuse new requests → drain for up to
//! `write_timeout` → SIGTERM, then SIGKILL, to functions still running → exit).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Health state shared by the probes and the shutdown sequence.
pub struct Lifecycle {
    accepting: AtomicBool,
    /// Set by the SIGTERM sequence: a worker that becomes ready afterwards must not write the lock file again.
    stopping: AtomicBool,
    lock_path: PathBuf,
    suppress_lock: bool,
    /// Cancelled when running functions must be stopped (drain deadline passed).
    pub terminate: CancellationToken,
}

impl Lifecycle {
    /// A lifecycle for `config`, not yet accepting.
    pub fn new(config: &Config) -> Lifecycle {
        Lifecycle {
            accepting: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            lock_path: config.lock_path(),
            suppress_lock: config.suppress_lock,
            terminate: CancellationToken::new(),
        }
    }

    /// Marks the watchdog ready: writes the lock file (unless suppressed) and starts accepting.
    pub fn start(&self) -> std::io::Result<()> {
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        if self.suppress_lock {
            tracing::warn!(
                "Warning: \"suppress_lock\" is enabled. No automated health-checks will be in place for your function."
            );
        } else {
            tracing::info!("Writing lock-file to: {}", self.lock_path.display());
            write_lock_file(&self.lock_path)?;
        }
        self.accepting.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Marks the watchdog unhealthy: stops reporting ready and removes the lock file.
    pub fn mark_unhealthy(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.accepting.store(false, Ordering::SeqCst);
        tracing::info!("Removing lock-file : {}", self.lock_path.display());
        if let Err(e) = std::fs::remove_file(&self.lock_path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("Unable to mark server as unhealthy: {e}");
            }
        }
    }

    /// Whether `/_/health` is 200: accepting and the lock file present (as the originals check it).
    pub fn healthy(&self) -> bool {
        self.accepting.load(Ordering::SeqCst) && self.lock_path.exists()
    }

    /// Whether start-up completed and shutdown has not begun.
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Whether shutdown has begun (SIGTERM or SIGINT received).
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

fn write_lock_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o660).open(path).map(drop)
}

/// `-run-healthcheck`: whether the lock file exists.
pub fn lock_file_present(config_tmp_dir: &std::path::Path) -> bool {
    config_tmp_dir.join(".lock").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_after_shutdown_began_writes_no_lock_file() {
        let tmp = tempfile::tempdir().unwrap();
        let tmp_dir = tmp.path().display().to_string();
        let config = Config::from_pairs([("fprocess", "cat"), ("TMPDIR", tmp_dir.as_str())]).unwrap();
        let lifecycle = Lifecycle::new(&config);
        lifecycle.start().unwrap();
        assert!(lifecycle.healthy());
        lifecycle.mark_unhealthy();
        assert!(!config.lock_path().exists());
        // A worker that only now becomes ready must not bring the watchdog back.
        lifecycle.start().unwrap();
        assert!(!config.lock_path().exists());
        assert!(!lifecycle.healthy());
    }
}
