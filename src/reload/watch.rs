//! What watches one model's prototypes: the file poller, the SIGHUP listener, and with a shared
//! store the follower of its current version.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Reloader, Trigger};

#[derive(PartialEq, Eq, Clone)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// The SIGHUP stream, taken before the model loads: until a handler is installed, SIGHUP's
/// default action ends the process.
#[cfg(unix)]
pub type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub type Hangup = ();

/// Installs the SIGHUP handler (call early, inside the runtime).
pub fn listen_for_hangup() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP: {e}");
                None
            }
        }
    }
}

/// The tasks watching one model's prototypes; dropping it stops them (a model being unloaded).
#[derive(Default)]
pub struct Watchers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Watchers {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// Starts the file poller (every `poll`; never if zero), the SIGHUP listener, and with a
/// shared store its follower.
pub fn spawn_watchers(reloader: Arc<Reloader>, poll: Duration, hangup: Hangup) -> Watchers {
    let mut tasks: Vec<_> = reloader.spawn_follower().into_iter().collect();
    if !poll.is_zero() {
        tasks.push(tokio::spawn(poll_file(reloader.clone(), poll)));
    }
    #[cfg(unix)]
    if let Some(mut hup) = hangup {
        tasks.push(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let r = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || r.reload(Trigger::Sighup)).await;
            }
        }));
    }
    #[cfg(not(unix))]
    let _ = hangup;
    Watchers(tasks)
}

async fn poll_file(reloader: Arc<Reloader>, every: Duration) {
    let path = reloader.store.path().to_path_buf();
    let mut last_stamp = stamp(&path);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = stamp(&path);
        if now == last_stamp {
            continue;
        }
        last_stamp = now;
        let r = reloader.clone();
        let read = tokio::task::spawn_blocking(move || r.reload_if_changed()).await;
        if !path.exists() || read.is_err() {
            // Missing for a moment (being replaced) or unreadable: look again next tick.
            last_stamp = None;
        }
    }
}
