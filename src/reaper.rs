//! PID 1 duties. In a scratch image the watchdog is PID 1, so processes orphaned by functions (a backgrounded
//! grandchild) are re-parented to it and must be reaped, or they stay zombies. The watchdog's own children
//! are reaped by their owners (tokio, or the fork backend through a pidfd), which need their exit statuses, so
//! the reaper skips every pid in the [`ChildRegistry`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// The watchdog's own child processes, when orphan reaping is active.
#[derive(Default)]
pub struct ChildRegistry {
    /// pid → how many live registrations (a pid can be reused while an old entry is being removed).
    children: Option<Mutex<HashMap<i32, usize>>>,
}

impl ChildRegistry {
    /// A registry that tracks children only when `active` (the watchdog is PID 1).
    pub fn new(active: bool) -> ChildRegistry {
        ChildRegistry { children: active.then(Mutex::default) }
    }

    /// Whether orphans are being reaped.
    pub fn is_active(&self) -> bool {
        self.children.is_some()
    }

    /// Holds the registry while `spawn` runs and records the pid it returns, so the reaper never sees a child
    /// of ours that is not yet registered.
    pub fn spawn<T, E>(&self, spawn: impl FnOnce() -> Result<(T, i32), E>) -> Result<T, E> {
        let Some(children) = &self.children else {
            return spawn().map(|(value, _)| value);
        };
        let mut children = lock(children);
        let (value, pid) = spawn()?;
        *children.entry(pid).or_default() += 1;
        Ok(value)
    }

    /// Forgets a child once it has been reaped (by tokio, or by the fork backend through its pidfd).
    pub fn forget(&self, pid: i32) {
        if let Some(children) = &self.children {
            let mut children = lock(children);
            if let Some(count) = children.get_mut(&pid) {
                *count -= 1;
                if *count == 0 {
                    children.remove(&pid);
                }
            }
        }
    }
}

/// Whether [`mute_child_exits`] suits this watchdog: it forks a function per request and nothing waits for
/// SIGCHLD (an http-mode worker or upstream server is a tokio child, reaped on it; as PID 1 the orphan reaper
/// is woken by it).
pub fn child_exits_unwatched(fork_mode: bool) -> bool {
    fork_mode && std::process::id() != 1
}

/// Blocks SIGCHLD in the calling thread and every thread it starts from now on; call it first thing in `main`.
///
/// Forked functions are reaped through their pidfds, so nobody needs SIGCHLD. Its default action is to be
/// ignored, but the kernel still delivers it, waking an idle thread that then drops it, whenever the thread that
/// started the child blocks signals at that moment, which glibc's `posix_spawn` does while starting the next
/// one: measured under load, about 0.7 such wake-ups per request, a few microseconds of CPU each. Blocked in
/// every thread, it stays pending once and is never delivered again. Functions start with no signal blocked
/// (their spawn attributes clear the mask).
pub fn mute_child_exits() -> nix::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
}

fn lock(children: &Mutex<HashMap<i32, usize>>) -> MutexGuard<'_, HashMap<i32, usize>> {
    children.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reaps zombies re-parented to this process that are not in `registry`, on every SIGCHLD (and every second,
/// in case signals were merged). Runs until the runtime stops.
pub async fn reap_orphans(registry: Arc<ChildRegistry>) {
    let Some(children) = &registry.children else {
        return;
    };
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::warn!("cannot watch SIGCHLD, orphans will not be reaped: {e}");
            return;
        }
    };
    let me = std::process::id() as i32;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = tick.tick() => {}
        }
        let ours = lock(children);
        for pid in zombie_children(me) {
            if !ours.contains_key(&pid) {
                let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
            }
        }
    }
}

/// Pids of zombie processes whose parent is `parent`, from /proc.
fn zombie_children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Format: pid (comm) state ppid ...; comm may contain spaces and parentheses.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                return false;
            };
            let mut fields = rest.split(' ');
            fields.next() == Some("Z") && fields.next().and_then(|p| p.parse::<i32>().ok()) == Some(parent)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inactive_registry_spawns_without_tracking() {
        let registry = ChildRegistry::new(false);
        assert_eq!(registry.spawn(|| Ok::<_, ()>(("x", 42))).unwrap(), "x");
        assert!(!registry.is_active());
    }

    #[test]
    fn active_registry_counts_reused_pids() {
        let registry = ChildRegistry::new(true);
        registry.spawn(|| Ok::<_, ()>(((), 7))).unwrap();
        registry.spawn(|| Ok::<_, ()>(((), 7))).unwrap();
        registry.forget(7);
        assert!(lock(registry.children.as_ref().unwrap()).contains_key(&7));
        registry.forget(7);
        assert!(!lock(registry.children.as_ref().unwrap()).contains_key(&7));
    }

    #[test]
    fn finds_a_zombie_child() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !zombie_children(std::process::id() as i32).contains(&pid) {
            assert!(std::time::Instant::now() < deadline, "zombie not seen");
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait().unwrap();
    }
}
