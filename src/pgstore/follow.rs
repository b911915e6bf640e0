//! A replica following one model's current version in the shared store: `LISTEN` on a
//! connection of its own, and after every notification naming the model, after every
//! (re)connect, and every few seconds as a fallback (which also checks that the listening
//! connection still answers), catch up (the caller's function re-reads
//! the current row and swaps it in if it is new). While the store is unreachable the replica
//! keeps serving what it has; the gauge says so, the log says so once, and it retries every
//! second until the store is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use super::{SharedStore, StoreError};

/// How often the current row is read even without a notification.
const FALLBACK_POLL: Duration = Duration::from_secs(5);
/// The wait between connection attempts while the store is unreachable.
const RETRY: Duration = Duration::from_secs(1);

/// Re-reads the model's current version and serves it if new. Blocking (it takes the
/// reloader's lock): run on a blocking thread.
pub type CatchUp = Arc<dyn Fn() -> Result<(), StoreError> + Send + Sync>;

/// Follows `model` until the task is aborted (the model unloaded, the process ending).
/// `up` is set to 1 while the store is reachable, 0 while not.
pub fn spawn_follower(
    store: Arc<SharedStore>,
    model: String,
    up: IntGauge,
    catch_up: CatchUp,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut down_since: Option<Instant> = None;
        loop {
            let error = follow_once(&store, &model, &up, &catch_up, &mut down_since).await;
            up.set(0);
            if down_since.is_none() {
                down_since = Some(Instant::now());
                tracing::warn!(
                    "{error}: model {model} keeps serving the prototypes it has, and admin changes to them are refused (503) until the store is back; retrying every {} s",
                    RETRY.as_secs()
                );
            }
            tokio::time::sleep(RETRY).await;
        }
    })
}

/// One connection's worth of following; returns why it ended.
async fn follow_once(
    store: &SharedStore,
    model: &str,
    up: &IntGauge,
    catch_up: &CatchUp,
    down_since: &mut Option<Instant>,
) -> StoreError {
    let (client, mut notes) = match store.listen().await {
        Ok(listening) => listening,
        Err(e) => return e,
    };
    // Notifications sent while this replica was away are lost: read the current row first.
    if let Err(e) = run(catch_up).await {
        return e;
    }
    up.set(1);
    if let Some(since) = down_since.take() {
        tracing::info!(
            "the shared prototype store {} is reachable again after {:.1} s; model {model} caught up",
            store.shown(),
            since.elapsed().as_secs_f64()
        );
    }
    loop {
        let wake = tokio::select! {
            note = notes.recv() => match note {
                Some(name) => name == model,
                None => return StoreError::Unavailable {
                    store: store.shown().to_string(),
                    reason: "the listening connection was closed".to_string(),
                },
            },
            () = tokio::time::sleep(FALLBACK_POLL) => {
                // A connection cut without a word (a network partition) is found here.
                let ping = tokio::time::timeout(FALLBACK_POLL, client.simple_query("SELECT 1"));
                if !matches!(ping.await, Ok(Ok(_))) {
                    return StoreError::Unavailable {
                        store: store.shown().to_string(),
                        reason: "the listening connection stopped answering".to_string(),
                    };
                }
                true
            }
        };
        if wake {
            if let Err(e) = run(catch_up).await {
                return e;
            }
        }
    }
}

async fn run(catch_up: &CatchUp) -> Result<(), StoreError> {
    let f = catch_up.clone();
    tokio::task::spawn_blocking(move || f())
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Unavailable {
                store: String::new(),
                reason: format!("catching up panicked: {e}"),
            })
        })
}
