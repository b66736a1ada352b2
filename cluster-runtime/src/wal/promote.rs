//! Promotion: the followed replica file becomes the app's database.
//!
//! # Guarantees
//!
//! - The replica is checked (`PRAGMA integrity_check`, WAL mode) *before*
//!   anything happens to the data path: a corrupt replica is refused and the
//!   current database stays where it is.
//! - The switch is one `rename(2)` onto the data path after the replica is
//!   fsynced, followed by an fsync of the directory; stale `-wal`/`-shm`
//!   files of the data path are removed first so SQLite never replays an old
//!   WAL onto the promoted file.
//!
//! Stepping down needs nothing moved: the old primary starts a fresh
//! [`Restorer`](super::restorer::Restorer) at [`replica_path_for`] its data
//! path, which bootstraps from the bucket.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use super::error::WalError;
use super::restorer::{
    position_path_for, read_position, remove_sqlite_sidecars, sidecar, sync_dir, verify_db, Check,
};

/// What a promotion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromoteInfo {
    /// The replica's recorded TXID (from `<replica>.pos`), if it had one.
    pub txid: Option<u64>,
    /// The promoted database's size in pages.
    pub pages: u64,
    /// The promoted database's size in bytes.
    pub bytes: u64,
}

/// Where a node keeps the replica of the database at `data_path`:
/// `<data_path>-replica`, beside it so the promotion is a same-directory
/// rename.
///
/// ```
/// use cluster_runtime::wal::promote::replica_path_for;
/// assert_eq!(replica_path_for("/var/lib/app/app.db".as_ref()).to_str(), Some("/var/lib/app/app.db-replica"));
/// ```
pub fn replica_path_for(data_path: &Path) -> PathBuf {
    sidecar(data_path, "-replica")
}

/// Moves the replica file (no longer followed: stop the
/// [`Restorer`](super::restorer::Restorer) first) onto `data_path`, which
/// the backend must not have open.
///
/// ```no_run
/// # async fn run() -> Result<(), cluster_runtime::wal::WalError> {
/// use cluster_runtime::wal::promote::{promote, replica_path_for};
/// let data = std::path::Path::new("/var/lib/app/app.db");
/// let info = promote(&replica_path_for(data), data).await?;
/// println!("promoted at TXID {:?}", info.txid);
/// # Ok(()) }
/// ```
pub async fn promote(replica: &Path, data_path: &Path) -> Result<PromoteInfo, WalError> {
    let replica = replica.to_owned();
    let data_path = data_path.to_owned();
    tokio::task::spawn_blocking(move || promote_blocking(&replica, &data_path))
        .await
        .map_err(|_| WalError::Stopped("promotion"))?
}

fn promote_blocking(replica: &Path, data_path: &Path) -> Result<PromoteInfo, WalError> {
    let txid = read_position(replica);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(replica)
        .map_err(|e| WalError::io(replica, e))?;
    file.sync_all().map_err(|e| WalError::io(replica, e))?;
    // Check in place, before the data path is touched.
    let pages = verify_db(replica, Check::Integrity)?;
    // journal_mode=WAL may have rewritten page 1.
    file.sync_all().map_err(|e| WalError::io(replica, e))?;
    let bytes = file.metadata().map_err(|e| WalError::io(replica, e))?.len();
    drop(file);

    remove_sqlite_sidecars(data_path)?;
    std::fs::rename(replica, data_path).map_err(|e| WalError::io(data_path, e))?;
    let dir = match data_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    sync_dir(&dir)?;
    let pos = position_path_for(replica);
    if let Err(e) = std::fs::remove_file(&pos) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %pos.display(), error = %e, "could not remove the old replica position");
        }
    }

    // What the backend will see: WAL mode and a readable database.
    let conn = rusqlite::Connection::open(data_path).map_err(|e| sqlite(data_path, e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|e| sqlite(data_path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(sqlite(
            data_path,
            format!("journal_mode is `{mode}` after promotion, not WAL"),
        ));
    }
    let open_pages = conn
        .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .map_err(|e| sqlite(data_path, e))?;
    conn.close().map_err(|(_, e)| sqlite(data_path, e))?;
    if u64::try_from(open_pages).ok() != Some(pages) {
        return Err(sqlite(
            data_path,
            format!("{open_pages} pages after promotion, the replica had {pages}"),
        ));
    }
    tracing::info!(data = %data_path.display(), ?txid, pages, "replica promoted");
    Ok(PromoteInfo { txid, pages, bytes })
}

fn sqlite(path: &Path, e: impl std::fmt::Display) -> WalError {
    WalError::Sqlite {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}
