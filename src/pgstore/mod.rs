//! The shared prototype store of several replicas (`prototype_store = "postgres://..."`).
//!
//! Every version of every model's prototypes is a row of `proco_prototype_versions` (content id,
//! parent, cause, time, the replica that made it, the canonical document), and the version each
//! model serves is one row of `proco_prototype_current`. A change is one transaction: it locks
//! the model's current row, computes the new document from the version it found there, inserts
//! it with that version as its parent, moves the current row, and sends `NOTIFY
//! proco_prototypes` with the model name. Two replicas changing one model at once are thus
//! serialised by the row lock: both changes land, the second computed from the first's result.
//! Replicas follow with `LISTEN` ([`follow`]), re-reading the current row after every
//! notification and after every reconnect, so a notification missed while away is not a version
//! missed.
//!
//! The schema is created by the server on first use, from the checked-in migrations
//! (`migrations/postgres/`), recorded in `proco_schema_migrations`, under an advisory lock so
//! that replicas starting together do not race.

mod follow;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use serde::Serialize;
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

pub use follow::spawn_follower;

/// The channel the replicas listen on; the payload is the model name.
const CHANNEL: &str = "proco_prototypes";

/// The migrations, in order: (schema version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "prototype_versions",
    include_str!("../../migrations/postgres/0001_prototype_versions.sql"),
)];

/// Serialises schema changes of replicas starting together (an arbitrary, fixed key).
const MIGRATION_LOCK: i64 = 0x7072_6f63_6f00_0001;

/// Longest a connection attempt may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a whole change may take before it is given up (and answered 503).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the store could not be used; nothing was changed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the shared prototype store {store} is unreachable: {reason}")]
    Unavailable { store: String, reason: String },
    #[error("the shared prototype store {store} has no prototypes for model {model:?}")]
    NotSeeded { store: String, model: String },
}

/// The version a model serves, as the store holds it.
#[derive(Clone, Debug)]
pub struct Current {
    /// Row id: grows with every change.
    pub id: i64,
    pub version: String,
    pub cause: String,
    pub replica: String,
    pub document: String,
}

/// A new version a change proposes.
pub struct NewVersion {
    /// The canonical document (UTF-8 JSON).
    pub document: String,
    pub version: String,
    /// `file`, `learned`, `deleted` or `rollback`.
    pub cause: &'static str,
    pub classes: usize,
}

/// What a change did in the store.
pub enum Committed {
    /// The new version is current; `previous` is the version it replaced.
    Written { previous: String },
    /// The proposed version is the current one already.
    Unchanged,
}

/// One entry of a model's history in the store.
#[derive(Clone, Debug, Serialize)]
pub struct StoredVersion {
    pub version: String,
    /// The version it replaced (none for a seed from a model folder).
    pub parent: Option<String>,
    /// UTC, RFC 3339.
    pub time: String,
    pub cause: String,
    pub classes: i32,
    /// The replica that made it: host name and process id.
    pub replica: String,
}

/// A pool of connections to one PostgreSQL database, shared by every model of the process.
pub struct SharedStore {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// The URL without its password: the only form that is logged or shown.
    shown: String,
    /// Versions kept per model (at least the current one).
    keep: i64,
    /// Host name and process id, recorded with every version this process makes.
    replica: String,
}

impl SharedStore {
    /// Connects, and creates or migrates the schema. Every error names the setting.
    pub async fn connect(url: &str, keep: usize) -> anyhow::Result<Arc<SharedStore>> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            anyhow!("prototype_store: not a PostgreSQL URL like postgres://user:password@host:5432/database ({e})")
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // TCP keepalive probes after 30 s idle rather than the system's 2 hours, so that a dead
        // peer is noticed on the listening connection too.
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(30));
        }
        if config.get_application_name().is_none() {
            config.application_name("proco-serve");
        }
        let shown = redacted(&config);
        let tls = tls().map_err(|e| anyhow!("prototype_store: cannot set up TLS: {e}"))?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(4)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CHANGE_TIMEOUT))
            .create_timeout(Some(CHANGE_TIMEOUT))
            .recycle_timeout(Some(CHANGE_TIMEOUT))
            .build()
            .map_err(|e| anyhow!("prototype_store: {e}"))?;
        let store = SharedStore {
            pool,
            config,
            tls,
            shown,
            keep: keep.max(1) as i64,
            replica: replica_name(),
        };
        let schema = store
            .migrate()
            .await
            .map_err(|e| anyhow!("prototype_store: cannot use {}: {e}", store.shown))?;
        tracing::info!(
            "prototypes are shared through PostgreSQL at {} (schema version {schema}); this replica is {}",
            store.shown,
            store.replica
        );
        Ok(Arc::new(store))
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The version `model` serves in the store, seeding it with `seed` (read from the model
    /// folder) when the store has none yet. Replicas starting together seed once.
    pub async fn seed(&self, model: &str, seed: &NewVersion) -> Result<Current, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.down(&e))?;
        let lock = "SELECT pg_advisory_xact_lock(hashtext('proco-serve:' || $1))";
        tx.execute(lock, &[&model])
            .await
            .map_err(|e| self.down(&e))?;
        if let Some(current) = self.current_in(&tx, model, false).await? {
            return Ok(current);
        }
        let id = self.insert(&tx, model, None, seed).await?;
        tx.execute(
            "INSERT INTO proco_prototype_current (model, version_id, version) VALUES ($1, $2, $3)",
            &[&model, &id, &seed.version],
        )
        .await
        .map_err(|e| self.down(&e))?;
        tx.commit().await.map_err(|e| self.down(&e))?;
        tracing::info!(
            "the shared store had no prototypes for model {model}: seeded it with version {} from the model folder",
            seed.version
        );
        Ok(Current {
            id,
            version: seed.version.clone(),
            cause: seed.cause.to_string(),
            replica: self.replica.clone(),
            document: seed.document.clone(),
        })
    }

    /// The version `model` serves in the store now.
    pub async fn current(&self, model: &str) -> Result<Current, StoreError> {
        let client = self.client().await?;
        self.current_in(&client, model, false)
            .await?
            .ok_or_else(|| self.not_seeded(model))
    }

    /// One change of `model`, in one transaction: `make` gets the version current in the store
    /// (locked until the end) and proposes the next one, or refuses (`E`), or proposes nothing.
    pub async fn change<E, F>(&self, model: &str, make: F) -> Result<Committed, E>
    where
        E: From<StoreError>,
        F: FnOnce(&Current) -> Result<Option<NewVersion>, E>,
    {
        let work = async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.down(&e))?;
            let current = self
                .current_in(&tx, model, true)
                .await?
                .ok_or_else(|| self.not_seeded(model))?;
            let next = match make(&current)? {
                Some(next) if next.version != current.version => next,
                _ => return Ok(Committed::Unchanged),
            };
            let id = self
                .insert(&tx, model, Some(&current.version), &next)
                .await?;
            let moved = tx
                .execute(
                    "UPDATE proco_prototype_current SET version_id = $2, version = $3 WHERE model = $1",
                    &[&model, &id, &next.version],
                )
                .await;
            // Delivered to every listener when (and only if) the transaction commits.
            let notified = tx
                .execute("SELECT pg_notify('proco_prototypes', $1)", &[&model])
                .await;
            let trimmed = tx
                .execute(
                    "DELETE FROM proco_prototype_versions WHERE model = $1 AND id IN \
                     (SELECT id FROM proco_prototype_versions WHERE model = $1 ORDER BY id DESC OFFSET $2)",
                    &[&model, &self.keep],
                )
                .await;
            for result in [moved, notified, trimmed] {
                result.map_err(|e| self.down(&e))?;
            }
            tx.commit().await.map_err(|e| self.down(&e))?;
            Ok(Committed::Written {
                previous: current.version,
            })
        };
        match tokio::time::timeout(CHANGE_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable {
                store: self.shown.clone(),
                reason: format!("no answer within {} s", CHANGE_TIMEOUT.as_secs()),
            }
            .into()),
        }
    }

    /// The kept versions of `model`, oldest first.
    pub async fn versions(&self, model: &str) -> Result<Vec<StoredVersion>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT version, parent, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                 cause, classes, replica FROM proco_prototype_versions WHERE model = $1 ORDER BY id",
                &[&model],
            )
            .await
            .map_err(|e| self.down(&e))?;
        Ok(rows
            .iter()
            .map(|r| StoredVersion {
                version: r.get(0),
                parent: r.get(1),
                time: r.get(2),
                cause: r.get(3),
                classes: r.get(4),
                replica: r.get(5),
            })
            .collect())
    }

    /// The document of a kept version of `model`, if it is kept.
    pub async fn document(&self, model: &str, version: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT document FROM proco_prototype_versions WHERE model = $1 AND version = $2 ORDER BY id DESC LIMIT 1",
                &[&model, &version],
            )
            .await
            .map_err(|e| self.down(&e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// A dedicated connection listening on the channel; the receiver yields the model names
    /// notified and ends when the connection does.
    async fn listen(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::sync::mpsc::UnboundedReceiver<String>,
        ),
        StoreError,
    > {
        use futures_util::StreamExt;
        let (client, mut connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.down(&e))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| self.down(&e))?;
        Ok((client, rx))
    }

    /// Applies the migrations not applied yet; returns the schema version.
    async fn migrate(&self) -> Result<i32, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.down(&e))?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({MIGRATION_LOCK}); \
             CREATE TABLE IF NOT EXISTS proco_schema_migrations (version integer PRIMARY KEY, \
             name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .map_err(|e| self.down(&e))?;
        let applied: Vec<i32> = tx
            .query("SELECT version FROM proco_schema_migrations", &[])
            .await
            .map_err(|e| self.down(&e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if let Some(newer) = applied.iter().copied().filter(|v| *v > known).max() {
            return Err(StoreError::Unavailable {
                store: self.shown.clone(),
                reason: format!("its schema is version {newer}, newer than this server's {known}: upgrade the server"),
            });
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| !applied.contains(&m.0)) {
            tx.batch_execute(sql).await.map_err(|e| self.down(&e))?;
            tx.execute(
                "INSERT INTO proco_schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(|e| self.down(&e))?;
            tracing::info!("shared prototype store: applied migration {version} ({name})");
        }
        tx.commit().await.map_err(|e| self.down(&e))?;
        Ok(known)
    }

    /// The current version of `model`; with `for_update`, its row stays locked to the end of
    /// the transaction.
    async fn current_in(
        &self,
        client: &impl GenericClient,
        model: &str,
        for_update: bool,
    ) -> Result<Option<Current>, StoreError> {
        if for_update {
            // Lock first, then read in a second statement: under READ COMMITTED a locking join
            // re-checked after waiting for another change would look for that change's new
            // version row in the old snapshot, not find it, and return nothing.
            let lock = "SELECT 1 FROM proco_prototype_current WHERE model = $1 FOR UPDATE";
            client
                .query_opt(lock, &[&model])
                .await
                .map_err(|e| self.down(&e))?;
        }
        let row = client
            .query_opt(
                "SELECT v.id, v.version, v.cause, v.replica, v.document FROM proco_prototype_current c \
                 JOIN proco_prototype_versions v ON v.id = c.version_id WHERE c.model = $1",
                &[&model],
            )
            .await
            .map_err(|e| self.down(&e))?;
        Ok(row.map(|r| Current {
            id: r.get(0),
            version: r.get(1),
            cause: r.get(2),
            replica: r.get(3),
            document: r.get(4),
        }))
    }

    async fn insert(
        &self,
        tx: &impl GenericClient,
        model: &str,
        parent: Option<&str>,
        next: &NewVersion,
    ) -> Result<i64, StoreError> {
        let classes = i32::try_from(next.classes).unwrap_or(i32::MAX);
        let row = tx
            .query_one(
                "INSERT INTO proco_prototype_versions (model, version, parent, cause, classes, replica, document) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                &[&model, &next.version, &parent, &next.cause, &classes, &self.replica, &next.document],
            )
            .await
            .map_err(|e| self.down(&e))?;
        Ok(row.get(0))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Unavailable {
            store: self.shown.clone(),
            reason: match e {
                PoolError::Backend(e) => describe(&e),
                PoolError::Timeout(_) => {
                    format!("no connection within {} s", CHANGE_TIMEOUT.as_secs())
                }
                other => other.to_string(),
            },
        })
    }

    fn down(&self, e: &tokio_postgres::Error) -> StoreError {
        StoreError::Unavailable {
            store: self.shown.clone(),
            reason: describe(e),
        }
    }

    fn not_seeded(&self, model: &str) -> StoreError {
        StoreError::NotSeeded {
            store: self.shown.clone(),
            model: model.to_string(),
        }
    }
}

/// What went wrong, in PostgreSQL's words when it said something (a wrong password, a missing
/// database), otherwise the connection's error and its cause.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

/// `postgres://user@host:port/database`: the URL with its password left out.
fn redacted(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            Host::Tcp(name) => format!("{name}:{port}"),
            #[cfg(unix)]
            Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// TLS for `sslmode=prefer|require` in the URL: rustls with the system's trust store. The ring
/// provider builds with the C compiler alone (aws-lc would need CMake); rustls deprecates it
/// only for lacking post-quantum key exchange.
#[allow(deprecated)]
fn tls() -> anyhow::Result<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// `host/pid`: who made a version.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    format!("{host}/{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        let config =
            tokio_postgres::Config::from_str("postgres://proco:s3cret@db.internal:6432/protos")
                .unwrap();
        let shown = redacted(&config);
        assert_eq!(shown, "postgres://proco@db.internal:6432/protos");
        assert!(!shown.contains("s3cret"));
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (version, _, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i as i32 + 1);
            assert!(sql.contains("CREATE TABLE"));
        }
    }
}
