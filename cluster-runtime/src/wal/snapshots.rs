//! Manual snapshots: full images of an app's database kept in the object
//! store `P_A_snapshots` (name from
//! [`Names::app_snapshots_bucket`](crate::naming::Names::app_snapshots_bucket)),
//! independent of the replica bucket and its retention.
//!
//! # Guarantees
//!
//! - A snapshot is a consistent image: SQLite copies the database in one
//!   read transaction (`VACUUM INTO`), so concurrent writers neither block
//!   it nor tear it. It is stored as one LTX snapshot file (checksummed).
//! - Ids sort by creation time: `<unix-ms, 13 digits>-<txid, 16 hex>`.
//! - A restore decodes (verifies) the object, builds the database beside the
//!   destination, runs `PRAGMA integrity_check`, switches it to WAL mode and
//!   renames it into place; a refused snapshot writes nothing.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, object_store};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::error::WalError;
use super::ltx;
use super::restorer::{Check, RestoreInfo, Staged};

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Sortable id: `<unix-ms>-<txid hex>`.
    pub id: String,
    /// The replication TXID the database was at, when the caller knew it.
    pub txid: Option<u64>,
    /// Stored size in bytes (the `gc_snapshot_size_bytes` metric).
    pub size: u64,
    /// When it was taken.
    pub created: SystemTime,
}

impl SnapshotInfo {
    fn from_name(name: &str, size: u64) -> Option<Self> {
        let id = name.strip_suffix(".ltx")?;
        let (ms, txid) = id.split_once('-')?;
        if ms.len() != 13 || txid.len() != 16 {
            return None;
        }
        let ms: u64 = ms.parse().ok()?;
        let txid = u64::from_str_radix(txid, 16).ok()?;
        Some(SnapshotInfo {
            id: id.to_owned(),
            txid: (txid != 0).then_some(txid),
            size,
            created: UNIX_EPOCH + Duration::from_millis(ms),
        })
    }

    fn object_name(&self) -> String {
        format!("{}.ltx", self.id)
    }
}

/// The manual snapshots of one app.
///
/// ```no_run
/// # async fn run(js: async_nats::jetstream::Context) -> Result<(), cluster_runtime::wal::WalError> {
/// use cluster_runtime::naming::Names;
/// use cluster_runtime::wal::snapshots::Snapshots;
/// let names = Names::new("prod").expect("valid platform name");
/// let snapshots = Snapshots::open_or_create(&js, &names.app_snapshots_bucket("db"), 1).await?;
/// let taken = snapshots.create("/var/lib/db/app.db".as_ref()).await?;
/// let latest = snapshots.latest().await?.expect("just taken");
/// assert_eq!(latest.id, taken.id);
/// snapshots.restore(&latest.id, "/tmp/app-copy.db".as_ref()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Snapshots {
    store: object_store::ObjectStore,
    name: String,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("name", &self.name)
            .finish()
    }
}

fn nats(bucket: &str, action: &str, e: impl std::fmt::Display) -> WalError {
    WalError::Nats {
        bucket: bucket.to_owned(),
        action: action.to_owned(),
        reason: e.to_string(),
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Snapshots {
    /// Opens the snapshot store, creating it (file storage, `replicas`
    /// copies) if needed.
    pub async fn open_or_create(
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<Self, WalError> {
        let wrap = |store| Snapshots {
            store,
            name: bucket.to_owned(),
        };
        if let Ok(store) = js.get_object_store(bucket).await {
            return Ok(wrap(store));
        }
        let config = object_store::Config {
            bucket: bucket.to_owned(),
            description: Some("cluster: manual SQLite snapshots (LTX)".into()),
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas.max(1),
            ..Default::default()
        };
        match js.create_object_store(config).await {
            Ok(store) => Ok(wrap(store)),
            Err(e) => js
                .get_object_store(bucket)
                .await
                .map(wrap)
                .map_err(|_| nats(bucket, "create", e)),
        }
    }

    /// Opens an existing snapshot store.
    pub async fn open(js: &jetstream::Context, bucket: &str) -> Result<Self, WalError> {
        js.get_object_store(bucket)
            .await
            .map(|store| Snapshots {
                store,
                name: bucket.to_owned(),
            })
            .map_err(|_| WalError::NoBucket(bucket.to_owned()))
    }

    /// Snapshots the database at `db_path` (TXID unknown).
    pub async fn create(&self, db_path: &Path) -> Result<SnapshotInfo, WalError> {
        self.create_at(db_path, None).await
    }

    /// Snapshots the database at `db_path`, recording the replication TXID
    /// it is at when the caller (the primary) knows it.
    pub async fn create_at(
        &self,
        db_path: &Path,
        txid: Option<u64>,
    ) -> Result<SnapshotInfo, WalError> {
        let created = SystemTime::now();
        let ms = unix_ms(created);
        let info = SnapshotInfo {
            id: format!("{ms:013}-{:016x}", txid.unwrap_or(0)),
            txid,
            size: 0,
            created: UNIX_EPOCH + Duration::from_millis(ms),
        };
        let db = db_path.to_owned();
        let work = tempfile::tempdir_in(db.parent().unwrap_or(Path::new(".")))
            .or_else(|_| tempfile::tempdir())
            .map_err(|e| WalError::io(&db, e))?;
        let copy = work.path().join("copy.db");
        let encoded = work.path().join("snapshot.ltx");
        let (copy2, encoded2) = (copy.clone(), encoded.clone());
        tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(&db).map_err(|e| sqlite(&db, e))?;
            conn.execute("VACUUM INTO ?1", [copy2.to_string_lossy().as_ref()])
                .map_err(|e| sqlite(&db, format!("VACUUM INTO: {e}")))?;
            drop(conn);
            let out = std::fs::File::create(&encoded2).map_err(|e| WalError::io(&encoded2, e))?;
            let out = std::io::BufWriter::new(out);
            let ts = i64::try_from(ms).unwrap_or(i64::MAX);
            ltx::write_snapshot_from_db(&copy2, txid.unwrap_or(1).max(1), ts, out)?
                .into_inner()
                .map_err(|e| WalError::io(&encoded2, e.into_error()))?
                .sync_all()
                .map_err(|e| WalError::io(&encoded2, e))
        })
        .await
        .map_err(|_| WalError::Stopped("snapshot"))??;
        let mut file = tokio::fs::File::open(&encoded)
            .await
            .map_err(|e| WalError::io(&encoded, e))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| WalError::io(&encoded, e))?
            .len();
        let name = info.object_name();
        let meta = object_store::ObjectMetadata {
            name: name.clone(),
            description: Some(format!("SQLite snapshot of {}", db_path.display())),
            chunk_size: Some(1024 * 1024),
            ..Default::default()
        };
        self.store
            .put(meta, &mut file)
            .await
            .map_err(|e| nats(&self.name, &format!("put {name}"), e))?;
        Ok(SnapshotInfo { size, ..info })
    }

    /// Every snapshot, oldest first.
    pub async fn list(&self) -> Result<Vec<SnapshotInfo>, WalError> {
        let mut list = self
            .store
            .list()
            .await
            .map_err(|e| nats(&self.name, "list", e))?;
        let mut out = Vec::new();
        while let Some(item) = list.next().await {
            let info = item.map_err(|e| nats(&self.name, "list", e))?;
            if info.deleted {
                continue;
            }
            match SnapshotInfo::from_name(&info.name, info.size as u64) {
                Some(s) => out.push(s),
                None => {
                    tracing::debug!(bucket = %self.name, object = %info.name, "not a snapshot; skipped")
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The newest snapshot, if any.
    pub async fn latest(&self) -> Result<Option<SnapshotInfo>, WalError> {
        Ok(self.list().await?.pop())
    }

    /// Restores snapshot `id` into `dest`, which must not exist.
    pub async fn restore(&self, id: &str, dest: &Path) -> Result<RestoreInfo, WalError> {
        self.restore_with(id, dest, false).await
    }

    /// Restores snapshot `id` into `dest`, replacing an existing database
    /// (and its `-wal`/`-shm`) only if `overwrite`.
    pub async fn restore_with(
        &self,
        id: &str,
        dest: &Path,
        overwrite: bool,
    ) -> Result<RestoreInfo, WalError> {
        let name = format!("{id}.ltx");
        if SnapshotInfo::from_name(&name, 0).is_none() {
            return Err(WalError::Corrupt {
                name,
                reason: "not a snapshot id (<unix-ms>-<txid hex>)".to_owned(),
            });
        }
        if !overwrite && dest.exists() {
            return Err(WalError::io(
                dest,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "refusing to overwrite an existing database",
                ),
            ));
        }
        let mut object = self
            .store
            .get(&name)
            .await
            .map_err(|e| nats(&self.name, &format!("get {name}"), e))?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| nats(&self.name, &format!("read {name}"), e))?;
        let dest = dest.to_owned();
        tokio::task::spawn_blocking(move || {
            let corrupt = |reason: String| WalError::Corrupt {
                name: name.clone(),
                reason,
            };
            let decoded = ltx::decode(&bytes).map_err(|e| corrupt(e.to_string()))?;
            if !decoded.header.is_snapshot() {
                return Err(corrupt("not a full-image (snapshot) LTX file".to_owned()));
            }
            let mut staged = Staged::new(&dest)?;
            staged.apply(&name, &decoded)?;
            let txid = staged.txid();
            let pages = staged.finish(Check::Integrity, overwrite)?;
            Ok(RestoreInfo {
                txid,
                files: 1,
                bytes: bytes.len() as u64,
                pages,
            })
        })
        .await
        .map_err(|_| WalError::Stopped("snapshot restore"))?
    }
}

fn sqlite(path: &Path, e: impl std::fmt::Display) -> WalError {
    WalError::Sqlite {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}
