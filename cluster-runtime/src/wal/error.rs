//! Why replication, restore or a bucket operation failed.

use std::path::PathBuf;

use super::ltx::LtxError;

/// Why replicating, restoring or reading the replica bucket failed.
///
/// Every variant names the object, file or setting involved, so one log
/// line is enough to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// A JetStream call (object store, KV) failed.
    #[error("replica bucket `{bucket}`: {action} failed: {reason}")]
    Nats {
        /// The bucket involved.
        bucket: String,
        /// What was being done (`put ltx/0/...`, `list`, ...).
        action: String,
        /// The underlying error.
        reason: String,
    },
    /// The bucket does not exist (restore from a bucket nobody wrote).
    #[error("replica bucket `{0}` does not exist")]
    NoBucket(String),
    /// An object in the bucket is not a well-formed, correctly named LTX file.
    #[error("refusing `{name}`: {reason}")]
    Corrupt {
        /// The object name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The files in the bucket do not form a contiguous TXID sequence.
    #[error("TXID gap in replica bucket `{bucket}`: have up to {have:016x}, next file starts at {next:016x}")]
    Gap {
        /// The bucket.
        bucket: String,
        /// The last TXID we hold.
        have: u64,
        /// The first TXID of the next available file.
        next: u64,
    },
    /// The bucket cannot produce the requested database: it is empty, or
    /// its files do not reach the requested TXID.
    #[error("replica bucket `{bucket}`: nothing to restore: {reason}")]
    Unavailable {
        /// The bucket.
        bucket: String,
        /// What is missing.
        reason: String,
    },
    /// Another primary reserved TXIDs under a newer epoch: we are deposed
    /// and must not write another file.
    #[error("fenced: `wal.head` is held by epoch {current}, ours is {ours}; this node is no longer the primary")]
    Fenced {
        /// Our epoch.
        ours: u64,
        /// The epoch found in `wal.head`.
        current: u64,
    },
    /// The lease this primary ships under is no longer valid (its
    /// deadline passed, it was lost, or replication was aborted because
    /// it was): nothing more is reserved or stored, and no commit that was
    /// not stored while the lease was still valid is acknowledged.
    #[error("deposed: the lease of epoch {epoch} is no longer valid ({what}); this node is no longer the primary")]
    Deposed {
        /// Our epoch.
        epoch: u64,
        /// What was refused or abandoned.
        what: &'static str,
    },
    /// The LTX codec refused a file.
    #[error("LTX: {0}")]
    Ltx(#[from] LtxError),
    /// SQLite refused an operation on a database file.
    #[error("SQLite database `{path}`: {reason}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The replicator or restorer was stopped while the call waited.
    #[error("{0} stopped")]
    Stopped(&'static str),
}

impl WalError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WalError::Io {
            path: path.into(),
            source,
        }
    }
}
