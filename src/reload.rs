//! Hot reload of the class prototypes: file polling, SIGHUP, and the admin endpoint all end
//! in [`reload_now`], which logs in plain words, counts the result in
//! `proco_prototype_reloads_total{result}`, and updates `proco_prototypes_info`.
//!
//! Why polling (every `reload_poll_ms`, default 500 ms) rather than inotify: it works the
//! same on every filesystem (bind mounts, network and container volumes, editors that
//! replace the file by rename), and costs one `stat` per tick. A change of mtime or length
//! triggers a read; the content hash decides whether anything really changed, so an invalid
//! file is reported once, not every tick.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::app::{AppState, Serving};
use crate::prototypes::{PrototypeError, ReloadOutcome};

/// What started a reload (for the log).
#[derive(Clone, Copy, Debug)]
pub enum Trigger {
    FileChange,
    Sighup,
    Admin,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::FileChange => "the prototypes file changed",
            Trigger::Sighup => "SIGHUP",
            Trigger::Admin => "POST /admin/reload",
        })
    }
}

/// Re-reads the prototypes file and swaps it in if valid and new. Blocking (file I/O and
/// validation are quick, but call it from a blocking context anyway).
pub fn reload_now(
    state: &AppState,
    serving: &Serving,
    trigger: Trigger,
) -> Result<ReloadOutcome, PrototypeError> {
    // One reload at a time, its recording included, so that the version metric follows the
    // swaps in the order they happened.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let result = serving.store.reload();
    record(state, serving, trigger, &result);
    result
}

fn record(
    state: &AppState,
    serving: &Serving,
    trigger: Trigger,
    result: &Result<ReloadOutcome, PrototypeError>,
) {
    let path = serving.store.path().display();
    let metrics = &state.metrics;
    match result {
        Ok(ReloadOutcome::Swapped { previous, current }) => {
            metrics
                .prototype_reloads
                .with_label_values(&["success"])
                .inc();
            metrics.set_prototypes_version(Some(previous), current);
            tracing::info!(
                "reloaded prototypes after {trigger}: now serving version {current} (was {previous})"
            );
        }
        Ok(ReloadOutcome::Unchanged { version }) => {
            metrics
                .prototype_reloads
                .with_label_values(&["unchanged"])
                .inc();
            tracing::info!("{trigger}: {path} still holds version {version}; nothing to reload");
        }
        Err(e) => {
            metrics
                .prototype_reloads
                .with_label_values(&["rejected"])
                .inc();
            tracing::error!(
                "{trigger}: rejected {path}: {e}; still serving version {}",
                serving.store.snapshot().version
            );
        }
    }
}

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

/// Starts the file poller and the SIGHUP listener.
pub fn spawn_watchers(state: Arc<AppState>, serving: Arc<Serving>, hangup: Hangup) {
    let poll = state.config.reload_poll_ms;
    if poll > 0 {
        let (state, serving) = (state.clone(), serving.clone());
        tokio::spawn(async move { poll_file(state, serving, Duration::from_millis(poll)).await });
    }
    #[cfg(unix)]
    if let Some(mut hup) = hangup {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let (state, serving) = (state.clone(), serving.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    reload_now(&state, &serving, Trigger::Sighup)
                })
                .await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = hangup;
}

async fn poll_file(state: Arc<AppState>, serving: Arc<Serving>, every: Duration) {
    let path = serving.store.path().to_path_buf();
    let mut last_stamp = stamp(&path);
    let mut last_hash: Option<[u8; 32]> =
        std::fs::read(&path).ok().map(|b| Sha256::digest(&b).into());
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = stamp(&path);
        if now == last_stamp {
            continue;
        }
        last_stamp = now;
        let Ok(bytes) = tokio::fs::read(&path).await else {
            // Missing for a moment (being replaced) or unreadable: try again next tick.
            last_stamp = None;
            continue;
        };
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if Some(hash) == last_hash {
            continue;
        }
        last_hash = Some(hash);
        let (st, sv) = (state.clone(), serving.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let result = sv.store.reload_from_bytes(&bytes);
            record(&st, &sv, Trigger::FileChange, &result);
        })
        .await;
    }
}
