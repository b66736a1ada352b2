//! SQLite replication: the write-ahead stream an app's database is shipped as.
//!
//! A primary turns each SQLite commit into an immutable LTX file numbered by
//! transaction ID; replicas and restores apply those files in TXID order.
//! The files are byte-compatible with Litestream 0.5.x, so stock
//! `litestream restore` can read what we write and we can read what it
//! writes (see `docs/replication-format.md`).
//!
//! - [`ltx`]: the LTX v3 file codec (encode, decode, file names) and the two
//!   database-file helpers everything else builds on: a full-image snapshot
//!   of a database file and applying a decoded file onto one.
//! - [`bucket`]: the replica bucket (object store, Litestream's NATS layout).
//! - [`restorer`]: the standby side — restore planning, one-shot restore,
//!   and a replica file that follows the bucket.
//! - [`promote`]: the followed replica becomes the app's database.
//! - [`snapshots`]: manual full-image snapshots in `P_A_snapshots`.
//! - [`wal_file`]: reading SQLite's `-wal` file, frame by frame.
//! - [`replicator`]: the primary: follows the WAL and ships every commit.
//! - [`fence`]: TXID reservation so only one primary writes the bucket.
//! - [`compact`]: higher levels, level-9 snapshots and retention.

pub mod bucket;
pub mod compact;
mod error;
pub mod fence;
pub mod ltx;
pub mod promote;
pub mod replicator;
pub mod restorer;
pub mod snapshots;
pub mod wal_file;

pub use error::WalError;
