//! The standby side of replication: rebuild a database from the replica
//! bucket once ([`restore`]), or keep a replica file following it
//! ([`Restorer`]).
//!
//! # Guarantees
//!
//! - **Plans like Litestream 0.5.** [`plan`] starts from the newest level-9
//!   snapshot at or below the target, then repeatedly takes, from any
//!   compaction level, the file that extends the contiguous TXID range the
//!   furthest (ties: the narrower start, then the higher level). A hole in
//!   the TXIDs is [`WalError::Gap`], never a silently older database.
//! - **Nothing half-written.** A one-shot restore builds the database in a
//!   temporary file beside `out`, verifies every file (LTX checksum, name
//!   against header, page size, page count against `commit`), runs
//!   `PRAGMA integrity_check`, switches the file to WAL mode, fsyncs and only
//!   then renames it onto `out`. Any refusal leaves `out` as it was.
//! - **A replica knows where it is.** A following replica records its TXID
//!   in the sidecar `<replica>.pos`, written (fsynced, renamed) only after
//!   the pages it covers are fsynced. A crash mid-apply leaves the file ahead
//!   of its recorded position by some pages of the next files; re-applying
//!   from the recorded position rewrites every such page, so a restart
//!   resumes safely. A replica without a readable position, or ahead of the
//!   bucket, is rebuilt from the latest snapshot.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch, Mutex, OwnedMutexGuard};
use tokio::task::JoinHandle;

use super::bucket::{FileInfo, WalBucket, SNAPSHOT_LEVEL};
use super::error::WalError;
use super::ltx::{self, Decoded};

// ---------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------

/// Is `next` a better next file than `curr`? Litestream's order: reaches
/// further, then starts earlier, then comes from a higher level.
fn better(curr: &FileInfo, next: &FileInfo) -> bool {
    (next.max_txid, std::cmp::Reverse(next.min_txid), next.level)
        > (curr.max_txid, std::cmp::Reverse(curr.min_txid), curr.level)
}

/// Chooses the files that bring a database holding TXIDs `..=from` (0 = an
/// empty database, so a snapshot first) to `target`, or to the newest TXID
/// the bucket holds.
///
/// `listing` is [`WalBucket::list`]'s result. With `from > 0` snapshots are
/// not used: a follower extends its file and only re-bootstraps on a gap.
/// Every chosen file starts at or before the previous file's max + 1 and
/// ends after it; a compacted file overlapping what the database already
/// holds is fine, since it carries the newest version of each page it has.
///
/// ```
/// use std::collections::HashMap;
/// use cluster_runtime::wal::bucket::FileInfo;
/// use cluster_runtime::wal::restorer::plan;
///
/// let f = |level, min_txid, max_txid| FileInfo { level, min_txid, max_txid, size: 1, timestamp_ms: None };
/// let listing = HashMap::from([
///     (9, vec![f(9, 1, 10)]),
///     (1, vec![f(1, 1, 10), f(1, 11, 20)]),
///     (0, vec![f(0, 19, 20), f(0, 21, 21), f(0, 22, 22)]),
/// ]);
/// let chosen: Vec<_> = plan("b", &listing, 0, None)?.iter().map(|f| (f.level, f.min_txid, f.max_txid)).collect();
/// assert_eq!(chosen, [(9, 1, 10), (1, 11, 20), (0, 21, 21), (0, 22, 22)]);
/// # Ok::<(), cluster_runtime::wal::WalError>(())
/// ```
pub fn plan(
    bucket: &str,
    listing: &HashMap<u8, Vec<FileInfo>>,
    from: u64,
    target: Option<u64>,
) -> Result<Vec<FileInfo>, WalError> {
    let within = |f: &FileInfo| target.is_none_or(|t| f.max_txid <= t);
    let mut chosen = Vec::new();
    let mut current = from;
    if from == 0 {
        let snapshot = listing
            .get(&SNAPSHOT_LEVEL)
            .into_iter()
            .flatten()
            .filter(|f| f.min_txid == 1 && within(f))
            .max_by_key(|f| f.max_txid);
        if let Some(snapshot) = snapshot {
            current = snapshot.max_txid;
            chosen.push(snapshot.clone());
        }
    }

    // One cursor per compaction level over files sorted by min TXID. As
    // `current` only grows, the files that can continue the chain are a
    // growing prefix of each level, and the best of a prefix stays the best
    // until `current` passes its end.
    let levels: Vec<&Vec<FileInfo>> = (0..SNAPSHOT_LEVEL)
        .filter_map(|level| listing.get(&level))
        .collect();
    let mut cursors = vec![0usize; levels.len()];
    let mut bests: Vec<Option<&FileInfo>> = vec![None; levels.len()];
    while target.is_none_or(|t| current < t) {
        let mut next: Option<&FileInfo> = None;
        for (i, files) in levels.iter().enumerate() {
            while let Some(f) = files.get(cursors[i]) {
                if f.min_txid > current.saturating_add(1) {
                    break;
                }
                cursors[i] += 1;
                if f.max_txid > current && within(f) && bests[i].is_none_or(|b| better(b, f)) {
                    bests[i] = Some(f);
                }
            }
            if let Some(b) = bests[i].filter(|b| b.max_txid > current) {
                if next.is_none_or(|n| better(n, b)) {
                    next = Some(b);
                }
            }
        }
        let Some(next) = next else { break };
        current = next.max_txid;
        chosen.push(next.clone());
    }

    // The first file past the chain (in any level but snapshots), if any.
    let beyond = levels
        .iter()
        .flat_map(|files| files.iter())
        .filter(|f| f.min_txid > current.saturating_add(1) && within(f))
        .map(|f| f.min_txid)
        .min();
    match target {
        Some(t) if current < t => Err(match beyond {
            Some(next) if next <= t => WalError::Gap {
                bucket: bucket.to_owned(),
                have: current,
                next,
            },
            _ => WalError::Unavailable {
                bucket: bucket.to_owned(),
                reason: format!("TXID {t:016x} was requested; the files reach {current:016x}"),
            },
        }),
        _ => match beyond {
            Some(next) => Err(WalError::Gap {
                bucket: bucket.to_owned(),
                have: current,
                next,
            }),
            None if current == 0 => Err(WalError::Unavailable {
                bucket: bucket.to_owned(),
                reason: "it holds no LTX files".to_owned(),
            }),
            None => Ok(chosen),
        },
    }
}

/// The newest TXID any file in `listing` reaches (0 for an empty bucket).
fn newest(listing: &HashMap<u8, Vec<FileInfo>>) -> u64 {
    listing
        .values()
        .flatten()
        .map(|f| f.max_txid)
        .max()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------

async fn fetch_decoded(bucket: &WalBucket, file: &FileInfo) -> Result<Decoded, WalError> {
    let bytes: Bytes = bucket.get(file).await?;
    let file = file.clone();
    tokio::task::spawn_blocking(move || super::bucket::decode_named(&file, &bytes))
        .await
        .map_err(|_| WalError::Stopped("LTX decoding"))?
}

// ---------------------------------------------------------------------------
// Writing a database file
// ---------------------------------------------------------------------------

/// A database file being built from a chain of LTX files: pages are written
/// in place, runs of adjacent pages in one write, and nothing is synced
/// until [`finish`](Self::finish).
struct DbWriter {
    file: File,
    path: PathBuf,
    page_size: u32,
    commit: u32,
    txid: u64,
}

impl DbWriter {
    fn create(file: File, path: &Path) -> Self {
        DbWriter {
            file,
            path: path.to_owned(),
            page_size: 0,
            commit: 0,
            txid: 0,
        }
    }

    /// Applies one decoded file, refusing one that does not continue the
    /// chain or does not fit the database.
    fn apply(&mut self, name: &str, d: &Decoded) -> Result<(), WalError> {
        let h = &d.header;
        let corrupt = |reason: String| WalError::Corrupt {
            name: name.to_owned(),
            reason,
        };
        if self.txid == 0 && !h.is_snapshot() {
            return Err(corrupt(
                "the first file of a restore must be a snapshot".into(),
            ));
        }
        if h.min_txid > self.txid + 1 || h.max_txid <= self.txid {
            return Err(corrupt(format!(
                "TXIDs {:016x}-{:016x} do not continue a database at {:016x}",
                h.min_txid, h.max_txid, self.txid
            )));
        }
        if self.txid != 0 && h.page_size != self.page_size {
            return Err(corrupt(format!(
                "page size {} differs from the database's {}",
                h.page_size, self.page_size
            )));
        }
        if let Some(p) = d
            .pages
            .iter()
            .find(|p| p.pgno == 0 || p.pgno > h.commit || p.data.len() != h.page_size as usize)
        {
            return Err(corrupt(format!(
                "page {} does not fit a {}-page database",
                p.pgno, h.commit
            )));
        }
        let page_size = u64::from(h.page_size);
        let io = |e| WalError::io(&self.path, e);
        // Coalesce runs of adjacent pages into one write of up to 4 MiB.
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        for page in &d.pages {
            let offset = u64::from(page.pgno - 1) * page_size;
            if run_start + run.len() as u64 != offset || run.len() >= 4 << 20 {
                if !run.is_empty() {
                    self.file.write_all_at(&run, run_start).map_err(io)?;
                    run.clear();
                }
                run_start = offset;
            }
            run.extend_from_slice(&page.data);
        }
        if !run.is_empty() {
            self.file.write_all_at(&run, run_start).map_err(io)?;
        }
        self.file
            .set_len(u64::from(h.commit) * page_size)
            .map_err(io)?;
        self.page_size = h.page_size;
        self.commit = h.commit;
        self.txid = h.max_txid;
        Ok(())
    }

    fn sync(&self) -> Result<(), WalError> {
        self.file
            .sync_all()
            .map_err(|e| WalError::io(&self.path, e))
    }
}

/// Which SQLite check a finished database must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// `PRAGMA integrity_check`: every b-tree, index and free page.
    Integrity,
    /// `PRAGMA quick_check`: the same without comparing indexes to tables.
    Quick,
}

fn sqlite_err(path: &Path, e: impl std::fmt::Display) -> WalError {
    WalError::Sqlite {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Path of a SQLite sidecar (`-wal`, `-shm`) of a database file.
pub(crate) fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Removes `-wal` and `-shm` beside `path`: a stale WAL replayed onto a
/// different database file corrupts it.
pub(crate) fn remove_sqlite_sidecars(path: &Path) -> Result<(), WalError> {
    for suffix in ["-wal", "-shm"] {
        let p = sidecar(path, suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WalError::io(p, e)),
        }
    }
    Ok(())
}

/// Opens the database at `path` (not in use by anyone else), puts it in WAL
/// mode and runs `check`; returns the page count. Closes the connection,
/// so SQLite checkpoints and removes its `-wal`/`-shm`.
pub(crate) fn verify_db(path: &Path, check: Check) -> Result<u64, WalError> {
    let result = (|| {
        let conn = rusqlite::Connection::open(path).map_err(|e| sqlite_err(path, e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| sqlite_err(path, format!("set journal_mode=WAL: {e}")))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(sqlite_err(
                path,
                format!("journal_mode is `{mode}`, WAL could not be set"),
            ));
        }
        let pragma = match check {
            Check::Integrity => "integrity_check",
            Check::Quick => "quick_check",
        };
        let mut stmt = conn
            .prepare(&format!("PRAGMA {pragma}"))
            .map_err(|e| sqlite_err(path, format!("{pragma}: {e}")))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.take(5).collect::<Result<Vec<_>, _>>())
            .map_err(|e| sqlite_err(path, format!("{pragma}: {e}")))?;
        if rows != ["ok"] {
            return Err(sqlite_err(
                path,
                format!("{pragma} failed: {}", rows.join("; ")),
            ));
        }
        drop(stmt);
        let pages = conn
            .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
            .map_err(|e| sqlite_err(path, e))?;
        let pages = u64::try_from(pages).unwrap_or(0);
        conn.close().map_err(|(_, e)| sqlite_err(path, e))?;
        Ok(pages)
    })();
    remove_sqlite_sidecars(path)?;
    result
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(dir, e))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// A database built in a temporary file beside its destination; dropped
/// unfinished, the temporary file is removed and the destination untouched.
pub(crate) struct Staged {
    tmp: tempfile::NamedTempFile,
    writer: DbWriter,
    out: PathBuf,
}

impl Staged {
    pub(crate) fn new(out: &Path) -> Result<Self, WalError> {
        let dir = parent_dir(out);
        let stem = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{stem}.restore-"))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| WalError::io(&dir, e))?;
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| WalError::io(tmp.path(), e))?;
        let writer = DbWriter::create(file, tmp.path());
        Ok(Staged {
            tmp,
            writer,
            out: out.to_owned(),
        })
    }

    pub(crate) fn apply(&mut self, name: &str, d: &Decoded) -> Result<(), WalError> {
        self.writer.apply(name, d)
    }

    pub(crate) fn txid(&self) -> u64 {
        self.writer.txid
    }

    /// Verifies the staged database, fsyncs it and renames it onto the
    /// destination (refusing an existing one unless `overwrite`), then
    /// fsyncs the directory. Returns the page count.
    pub(crate) fn finish(self, check: Check, overwrite: bool) -> Result<u64, WalError> {
        if self.writer.txid == 0 {
            return Err(WalError::Corrupt {
                name: self.out.display().to_string(),
                reason: "no files were applied".to_owned(),
            });
        }
        let tmp_path = self.tmp.path().to_owned();
        // Before SQLite opens it: the header page count must match what the
        // last file says the database holds.
        check_page_count(&tmp_path, self.writer.page_size, self.writer.commit)?;
        let pages = verify_db(&tmp_path, check)?;
        // SQLite may have rewritten page 1 for journal_mode=WAL.
        self.writer.sync()?;
        if !overwrite && self.out.exists() {
            return Err(WalError::io(
                &self.out,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "refusing to overwrite an existing database",
                ),
            ));
        }
        remove_sqlite_sidecars(&self.out)?;
        let out = self.out.clone();
        let persisted = if overwrite {
            self.tmp.persist(&out)
        } else {
            self.tmp.persist_noclobber(&out)
        };
        persisted.map_err(|e| WalError::io(&out, e.error))?;
        sync_dir(&parent_dir(&out))?;
        Ok(pages)
    }
}

/// Checks that the database file at `path` holds exactly `commit` pages:
/// its length, and SQLite's in-header page count where SQLite considers it
/// valid (change counter = version-valid-for).
pub(crate) fn check_page_count(path: &Path, page_size: u32, commit: u32) -> Result<(), WalError> {
    let mut file = File::open(path).map_err(|e| WalError::io(path, e))?;
    let len = file.metadata().map_err(|e| WalError::io(path, e))?.len();
    let bad = |reason: String| sqlite_err(path, reason);
    if len != u64::from(commit) * u64::from(page_size) {
        return Err(bad(format!(
            "{len} bytes after apply, expected {commit} pages of {page_size}"
        )));
    }
    let mut header = [0u8; 100];
    std::io::Read::read_exact(&mut file, &mut header).map_err(|e| WalError::io(path, e))?;
    let in_header = u32::from_be_bytes([header[28], header[29], header[30], header[31]]);
    if header[24..28] == header[92..96] && in_header != 0 && in_header != commit {
        return Err(bad(format!(
            "the database header says {in_header} pages, the last LTX file {commit}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// One-shot restore
// ---------------------------------------------------------------------------

/// What a restore produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreInfo {
    /// The TXID the database is at.
    pub txid: u64,
    /// How many LTX files were applied.
    pub files: usize,
    /// How many bytes of LTX files were read from the bucket.
    pub bytes: u64,
    /// The restored database's size in pages.
    pub pages: u64,
}

/// How [`restore_with`] restores.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Stop at this TXID (it must be the end of some file); `None` = the
    /// newest the bucket holds.
    pub target: Option<u64>,
    /// Replace an existing database at `out` (and remove its stale
    /// `-wal`/`-shm`). Off by default: a restore never clobbers data unasked.
    pub overwrite: bool,
}

/// Restores the bucket's database into `out`, which must not exist yet.
///
/// See [`restore_with`].
///
/// ```no_run
/// # async fn run(js: async_nats::jetstream::Context) -> Result<(), cluster_runtime::wal::WalError> {
/// use cluster_runtime::wal::{bucket::WalBucket, restorer};
/// let bucket = WalBucket::open(&js, "prod_db_wal").await?;
/// let info = restorer::restore(&bucket, "/var/lib/app/restored.db".as_ref(), None).await?;
/// println!("restored TXID {:016x} from {} files", info.txid, info.files);
/// # Ok(()) }
/// ```
pub async fn restore(
    bucket: &WalBucket,
    out: &Path,
    target: Option<u64>,
) -> Result<RestoreInfo, WalError> {
    restore_with(
        bucket,
        out,
        &RestoreOptions {
            target,
            overwrite: false,
        },
    )
    .await
}

/// Restores the bucket's database into `out`: plans the files
/// ([`plan`]), fetches them (the next one while the current one is
/// written), verifies and applies each, runs `PRAGMA integrity_check`,
/// switches the file to WAL mode and renames it onto `out`.
///
/// A corrupt, truncated or misnamed object (and any object under `ltx/`
/// that is not an LTX name) is a [`WalError::Corrupt`] naming it, and
/// nothing is written to `out`.
pub async fn restore_with(
    bucket: &WalBucket,
    out: &Path,
    options: &RestoreOptions,
) -> Result<RestoreInfo, WalError> {
    if !options.overwrite && out.exists() {
        return Err(WalError::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "refusing to overwrite an existing database",
            ),
        ));
    }
    let listing = bucket.list_strict().await?;
    let files = plan(bucket.name(), &listing, 0, options.target)?;
    let staged = Staged::new(out)?;
    let (staged, bytes) = apply_chain(bucket, &files, staged).await?;
    let txid = staged.txid();
    let overwrite = options.overwrite;
    let pages = blocking(move || staged.finish(Check::Integrity, overwrite)).await?;
    Ok(RestoreInfo {
        txid,
        files: files.len(),
        bytes,
        pages,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WalError> + Send + 'static,
) -> Result<T, WalError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        WalError::Stopped(if e.is_panic() {
            "restore (panicked)"
        } else {
            "restore"
        })
    })?
}

/// Fetches and decodes `files` in one task and applies them in another,
/// so the network, the decoder and the disk overlap.
async fn apply_chain(
    bucket: &WalBucket,
    files: &[FileInfo],
    mut staged: Staged,
) -> Result<(Staged, u64), WalError> {
    let (tx, mut rx) = mpsc::channel::<Result<(String, Decoded), WalError>>(2);
    let fetch_bucket = bucket.clone();
    let fetch_files = files.to_vec();
    let fetcher = tokio::spawn(async move {
        for file in &fetch_files {
            let item = fetch_decoded(&fetch_bucket, file)
                .await
                .map(|d| (file.name(), d));
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    let applier = tokio::task::spawn_blocking(move || {
        while let Some(item) = rx.blocking_recv() {
            let (name, decoded) = item?;
            staged.apply(&name, &decoded)?;
        }
        Ok::<_, WalError>(staged)
    });
    let result = applier.await;
    fetcher.abort();
    let staged = result.map_err(|_| WalError::Stopped("restore"))??;
    if staged.txid() != files.last().map_or(0, |f| f.max_txid) {
        return Err(WalError::Stopped("restore (fetching stopped early)"));
    }
    Ok((staged, files.iter().map(|f| f.size).sum()))
}

// ---------------------------------------------------------------------------
// Follow mode
// ---------------------------------------------------------------------------

/// Where a replica file is: the last TXID applied, when, and when the
/// primary wrote that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaPosition {
    /// The last TXID applied to the replica file.
    pub txid: u64,
    /// When it was applied (or the replica was opened at it).
    pub applied_at: SystemTime,
    /// The LTX header timestamp of the last applied file (Unix ms): when
    /// the primary committed it.
    pub primary_timestamp_ms: i64,
}

/// The sidecar file holding a replica's position: `<replica>.pos`.
pub fn position_path_for(replica: &Path) -> PathBuf {
    sidecar(replica, ".pos")
}

/// The recorded state of a replica file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recorded {
    txid: u64,
    page_size: u32,
    commit: u32,
    timestamp_ms: i64,
}

impl Recorded {
    fn encode(&self) -> String {
        format!(
            "txid {:016x}\npage_size {}\ncommit {}\ntimestamp_ms {}\n",
            self.txid, self.page_size, self.commit, self.timestamp_ms
        )
    }

    fn parse(s: &str) -> Option<Self> {
        let mut fields = HashMap::new();
        for line in s.lines() {
            let (k, v) = line.split_once(' ')?;
            fields.insert(k, v);
        }
        Some(Recorded {
            txid: u64::from_str_radix(fields.get("txid")?, 16).ok()?,
            page_size: fields.get("page_size")?.parse().ok()?,
            commit: fields.get("commit")?.parse().ok()?,
            timestamp_ms: fields.get("timestamp_ms")?.parse().ok()?,
        })
    }
}

/// Reads `<replica>.pos`; `None` if missing or unreadable.
pub(crate) fn read_position(replica: &Path) -> Option<u64> {
    read_recorded(replica).map(|r| r.txid)
}

fn read_recorded(replica: &Path) -> Option<Recorded> {
    let text = std::fs::read_to_string(position_path_for(replica)).ok()?;
    Recorded::parse(&text).filter(|r| r.txid > 0)
}

/// Atomically replaces `<replica>.pos` (write, fsync, rename, fsync dir).
fn write_recorded(replica: &Path, rec: &Recorded) -> Result<(), WalError> {
    let pos = position_path_for(replica);
    let tmp = sidecar(&pos, ".tmp");
    (|| {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, rec.encode().as_bytes())?;
        f.sync_all()
    })()
    .map_err(|e| WalError::io(&tmp, e))?;
    std::fs::rename(&tmp, &pos).map_err(|e| WalError::io(&pos, e))?;
    sync_dir(&parent_dir(&pos))
}

fn remove_recorded(replica: &Path) -> Result<(), WalError> {
    let pos = position_path_for(replica);
    match std::fs::remove_file(&pos) {
        Ok(()) => sync_dir(&parent_dir(&pos)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalError::io(pos, e)),
    }
}

/// The replica file and its recorded position; one holder at a time.
#[derive(Debug)]
struct Replica {
    path: PathBuf,
    rec: Recorded,
}

impl Replica {
    /// Applies a decoded file in place, checks the page count and records
    /// the new position. Files the replica already holds are skipped.
    fn apply(&mut self, name: &str, d: &Decoded) -> Result<bool, WalError> {
        let h = &d.header;
        if h.max_txid <= self.rec.txid {
            return Ok(false);
        }
        let corrupt = |reason: String| WalError::Corrupt {
            name: name.to_owned(),
            reason,
        };
        if h.min_txid > self.rec.txid + 1 {
            return Err(corrupt(format!(
                "starts at {:016x}, the replica is at {:016x}",
                h.min_txid, self.rec.txid
            )));
        }
        if h.page_size != self.rec.page_size {
            return Err(corrupt(format!(
                "page size {} differs from the replica's {}",
                h.page_size, self.rec.page_size
            )));
        }
        ltx::apply_to_db(d, &self.path).map_err(|e| corrupt(format!("apply: {e}")))?;
        check_page_count(&self.path, h.page_size, h.commit)?;
        let rec = Recorded {
            txid: h.max_txid,
            page_size: h.page_size,
            commit: h.commit,
            timestamp_ms: h.timestamp_ms,
        };
        write_recorded(&self.path, &rec)?;
        self.rec = rec;
        Ok(true)
    }
}

#[derive(Debug, Default)]
struct Behind {
    /// The newest TXID seen in the bucket.
    newest_seen: u64,
    /// Since when the replica has known of a file it has not applied.
    since: Option<SystemTime>,
}

#[derive(Debug)]
struct Shared {
    bucket: WalBucket,
    replica: Arc<Mutex<Replica>>,
    position: watch::Sender<ReplicaPosition>,
    behind: std::sync::Mutex<Behind>,
}

/// A replica file following the bucket: bootstrapped from the latest
/// snapshot and later files, then extended with each new file as the
/// primary stores it.
///
/// ```no_run
/// # async fn run(bucket: cluster_runtime::wal::bucket::WalBucket) -> Result<(), cluster_runtime::wal::WalError> {
/// use cluster_runtime::wal::restorer::Restorer;
/// let restorer = Restorer::start(bucket, "/var/lib/app/app.db-replica").await?;
/// let mut position = restorer.position();
/// position.changed().await.ok();
/// println!("at {:016x}, lag {:?}", position.borrow().txid, restorer.lag());
/// // Promotion: apply everything stored, then stop following.
/// let txid = restorer.catch_up().await?;
/// restorer.stop().await;
/// # let _ = txid; Ok(()) }
/// ```
#[derive(Debug)]
pub struct Restorer {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Restorer {
    /// Opens (or bootstraps) the replica file at `replica_path` and starts
    /// following the bucket.
    ///
    /// A replica with a readable `<replica>.pos` resumes from it (re-applying
    /// the next files repairs a crash mid-apply, then `PRAGMA quick_check`);
    /// anything else — no file, no position, a replica ahead of the bucket,
    /// a hole the bucket can only bridge with a snapshot, a failed check —
    /// is rebuilt from the latest snapshot and later files. Corrupt objects
    /// are refused, and the replica is then left as it was.
    pub async fn start(
        bucket: WalBucket,
        replica_path: impl Into<PathBuf>,
    ) -> Result<Restorer, WalError> {
        let path: PathBuf = replica_path.into();
        let resumed = read_recorded(&path).filter(|_| path.is_file());
        let replica = Replica {
            path: path.clone(),
            rec: resumed.unwrap_or(Recorded {
                txid: 0,
                page_size: 0,
                commit: 0,
                timestamp_ms: 0,
            }),
        };
        let (position, _) = watch::channel(ReplicaPosition {
            txid: replica.rec.txid,
            applied_at: SystemTime::now(),
            primary_timestamp_ms: replica.rec.timestamp_ms,
        });
        let shared = Arc::new(Shared {
            bucket,
            replica: Arc::new(Mutex::new(replica)),
            position,
            behind: std::sync::Mutex::new(Behind::default()),
        });
        {
            let guard = shared.replica.clone().lock_owned().await;
            let guard = if resumed.is_some() {
                let guard = shared.sync(guard).await?;
                let check_path = guard.path.clone();
                let (guard, ok) = blocking_with(guard, move |_| {
                    Ok(verify_db(&check_path, Check::Quick).map_err(|e| {
                        tracing::warn!(error = %e, "replica failed quick_check; rebuilding it");
                    }))
                })
                .await?;
                match ok {
                    Ok(_) => guard,
                    Err(()) => shared.bootstrap(guard).await?,
                }
            } else {
                shared.bootstrap(guard).await?
            };
            drop(guard);
        }
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(follow(shared.clone(), stop_rx));
        Ok(Restorer {
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The replica's position, updated after each applied file.
    pub fn position(&self) -> watch::Receiver<ReplicaPosition> {
        self.shared.position.subscribe()
    }

    /// How far the replica trails the primary: while it knows of a file it
    /// has not applied, the time since then; otherwise how long the last
    /// applied file took from the primary's commit to this replica.
    pub fn lag(&self) -> Duration {
        let since = self.shared.behind.lock().ok().and_then(|b| b.since);
        if let Some(since) = since {
            return SystemTime::now()
                .duration_since(since)
                .unwrap_or(Duration::ZERO);
        }
        let pos = *self.shared.position.borrow();
        let primary = UNIX_EPOCH
            + Duration::from_millis(u64::try_from(pos.primary_timestamp_ms).unwrap_or(0));
        pos.applied_at
            .duration_since(primary)
            .unwrap_or(Duration::ZERO)
    }

    /// Applies everything the bucket holds right now and returns the
    /// replica's TXID — the promotion's final catch-up.
    pub async fn catch_up(&self) -> Result<u64, WalError> {
        let guard = self.shared.replica.clone().lock_owned().await;
        let guard = self.shared.sync(guard).await?;
        Ok(guard.rec.txid)
    }

    /// Stops following once the file being applied (if any) is done; the
    /// replica file and its position stay consistent. Returns the final
    /// position.
    pub async fn stop(mut self) -> ReplicaPosition {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        // Wait out a catch_up still applying.
        drop(self.shared.replica.lock().await);
        *self.shared.position.borrow()
    }
}

impl Drop for Restorer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Runs `f` on a blocking thread with the replica held, so the replica lock
/// is released only when the work is done even if the caller goes away.
async fn blocking_with<T: Send + 'static>(
    mut guard: OwnedMutexGuard<Replica>,
    f: impl FnOnce(&mut Replica) -> Result<T, WalError> + Send + 'static,
) -> Result<(OwnedMutexGuard<Replica>, T), WalError> {
    tokio::task::spawn_blocking(move || {
        let r = f(&mut guard);
        r.map(|t| (guard, t))
    })
    .await
    .map_err(|_| WalError::Stopped("restorer"))?
}

impl Shared {
    fn publish(&self, rec: &Recorded) {
        self.position.send_replace(ReplicaPosition {
            txid: rec.txid,
            applied_at: SystemTime::now(),
            primary_timestamp_ms: rec.timestamp_ms,
        });
        if let Ok(mut b) = self.behind.lock() {
            if rec.txid >= b.newest_seen {
                b.since = None;
            }
        }
    }

    fn saw(&self, newest: u64, when: SystemTime) {
        if let Ok(mut b) = self.behind.lock() {
            b.newest_seen = b.newest_seen.max(newest);
            if b.newest_seen > self.position.borrow().txid && b.since.is_none() {
                b.since = Some(when);
            }
        }
    }

    fn behind(&self) -> bool {
        self.behind
            .lock()
            .map(|b| b.newest_seen > self.position.borrow().txid)
            .unwrap_or(false)
    }

    /// Rebuilds the replica from the latest snapshot and later files: into
    /// a temporary file, checked, then renamed over the replica; the old
    /// position is removed first so a crash in between re-bootstraps.
    async fn bootstrap(
        &self,
        guard: OwnedMutexGuard<Replica>,
    ) -> Result<OwnedMutexGuard<Replica>, WalError> {
        let listing = self.bucket.list_strict().await?;
        let files = plan(self.bucket.name(), &listing, 0, None)?;
        self.saw(newest(&listing), SystemTime::now());
        let staged = Staged::new(&guard.path)?;
        let (staged, _) = apply_chain(&self.bucket, &files, staged).await?;
        let rec = Recorded {
            txid: staged.writer.txid,
            page_size: staged.writer.page_size,
            commit: staged.writer.commit,
            timestamp_ms: 0,
        };
        let last = files.last().cloned();
        let (guard, rec) = blocking_with(guard, move |replica| {
            remove_recorded(&replica.path)?;
            staged.finish(Check::Quick, true)?;
            let rec = Recorded {
                timestamp_ms: last.and_then(|f| f.timestamp_ms).unwrap_or(0),
                ..rec
            };
            write_recorded(&replica.path, &rec)?;
            replica.rec = rec;
            Ok(rec)
        })
        .await?;
        tracing::info!(replica = %guard.path.display(), txid = rec.txid, files = files.len(), "replica bootstrapped");
        self.publish(&rec);
        Ok(guard)
    }

    /// Lists the bucket and applies every file past the replica's position;
    /// bootstraps when the replica is ahead of the bucket or the bucket can
    /// bridge the hole only with a snapshot.
    async fn sync(
        &self,
        mut guard: OwnedMutexGuard<Replica>,
    ) -> Result<OwnedMutexGuard<Replica>, WalError> {
        let listing = self.bucket.list_strict().await?;
        let newest = newest(&listing);
        let from = guard.rec.txid;
        self.saw(newest, SystemTime::now());
        if from == 0 || from > newest {
            if from > newest {
                tracing::warn!(replica = %guard.path.display(), from, newest, "replica is ahead of the bucket; rebuilding it");
            }
            return self.bootstrap(guard).await;
        }
        let files = match plan(self.bucket.name(), &listing, from, None) {
            Ok(files) => files,
            Err(WalError::Gap { have, .. })
                if have == from
                    && listing
                        .get(&SNAPSHOT_LEVEL)
                        .is_some_and(|s| s.iter().any(|f| f.max_txid > from)) =>
            {
                tracing::warn!(replica = %guard.path.display(), from, "no files continue the replica; rebuilding it from a snapshot");
                return self.bootstrap(guard).await;
            }
            Err(e) => return Err(e),
        };
        for file in files {
            let decoded = fetch_decoded(&self.bucket, &file).await?;
            let name = file.name();
            let (g, applied) = blocking_with(guard, move |replica| {
                Ok(replica.apply(&name, &decoded)?.then_some(replica.rec))
            })
            .await?;
            guard = g;
            if let Some(rec) = applied {
                self.publish(&rec);
            }
        }
        Ok(guard)
    }

    /// Applies one file the watch announced, if it continues the replica;
    /// re-lists on a hole or when newer files are known.
    async fn on_file(&self, file: FileInfo) -> Result<(), WalError> {
        let when = file
            .timestamp_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
        self.saw(file.max_txid, when);
        let guard = self.replica.clone().lock_owned().await;
        let at = guard.rec.txid;
        if file.max_txid <= at {
            return Ok(());
        }
        if file.level == SNAPSHOT_LEVEL || file.min_txid > at + 1 {
            // A hole (files arriving out of order, or compacted away):
            // the listing knows better.
            self.sync(guard).await?;
            return Ok(());
        }
        let decoded = fetch_decoded(&self.bucket, &file).await?;
        let name = file.name();
        let (guard, applied) = blocking_with(guard, move |replica| {
            Ok(replica.apply(&name, &decoded)?.then_some(replica.rec))
        })
        .await?;
        if let Some(rec) = applied {
            self.publish(&rec);
        }
        if self.behind() {
            self.sync(guard).await?;
        }
        Ok(())
    }
}

/// The follow loop: watch the bucket, apply new files, re-list after each
/// (re)start of the watch and every second while behind.
async fn follow(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    while !*stop.borrow() {
        let watch = match shared.bucket.watch().await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "replica watch failed; retrying");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut watch = Box::pin(watch);
        // Files stored while no watch was open.
        let guard = shared.replica.clone().lock_owned().await;
        if let Err(e) = shared.sync(guard).await {
            tracing::warn!(error = %e, "replica catch-up failed");
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                event = watch.next() => match event {
                    Some(Ok(file)) => {
                        backoff = Duration::from_millis(100);
                        if let Err(e) = shared.on_file(file).await {
                            tracing::warn!(error = %e, "replica apply failed");
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "replica watch broke; restarting it");
                        break;
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if shared.behind() {
                        let guard = shared.replica.clone().lock_owned().await;
                        if let Err(e) = shared.sync(guard).await {
                            tracing::warn!(error = %e, "replica catch-up failed");
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(level: u8, min_txid: u64, max_txid: u64) -> FileInfo {
        FileInfo {
            level,
            min_txid,
            max_txid,
            size: 1,
            timestamp_ms: None,
        }
    }

    fn ranges(files: &[FileInfo]) -> Vec<(u8, u64, u64)> {
        files
            .iter()
            .map(|f| (f.level, f.min_txid, f.max_txid))
            .collect()
    }

    fn listing(files: &[FileInfo]) -> HashMap<u8, Vec<FileInfo>> {
        let mut m: HashMap<u8, Vec<FileInfo>> = HashMap::new();
        for file in files {
            m.entry(file.level).or_default().push(file.clone());
        }
        for v in m.values_mut() {
            v.sort_by_key(|f| (f.min_txid, f.max_txid));
        }
        m
    }

    #[test]
    fn snapshot_then_widest_files_then_l0() {
        let l = listing(&[
            f(9, 1, 5),
            f(9, 1, 12),
            f(0, 1, 1),
            f(0, 2, 2),
            f(1, 1, 8),
            f(1, 9, 16),
            f(2, 1, 14),
            f(0, 15, 15),
            f(0, 16, 16),
            f(0, 17, 17),
            f(0, 18, 19),
        ]);
        // Snapshot 1-12, then L2 1-14 does not beat L1 9-16 (reaches less).
        assert_eq!(
            ranges(&plan("b", &l, 0, None).unwrap()),
            [(9, 1, 12), (1, 9, 16), (0, 17, 17), (0, 18, 19)]
        );
        // A target picks the newest snapshot within it and stops exactly.
        assert_eq!(
            ranges(&plan("b", &l, 0, Some(8)).unwrap()),
            [(9, 1, 5), (1, 1, 8)]
        );
        assert_eq!(
            ranges(&plan("b", &l, 0, Some(15)).unwrap()),
            [(9, 1, 12), (2, 1, 14), (0, 15, 15)]
        );
        // From a replica's position, without snapshots.
        assert_eq!(
            ranges(&plan("b", &l, 16, None).unwrap()),
            [(0, 17, 17), (0, 18, 19)]
        );
        assert!(plan("b", &l, 19, None).unwrap().is_empty());
        // A target inside a multi-TXID file cannot be reached exactly.
        assert!(matches!(
            plan("b", &l, 0, Some(18)),
            Err(WalError::Unavailable { .. })
        ));
    }

    #[test]
    fn gaps_and_empty_buckets_are_errors() {
        let l = listing(&[f(0, 1, 3), f(0, 4, 4), f(0, 6, 7)]);
        match plan("b", &l, 0, None) {
            Err(WalError::Gap { have, next, .. }) => assert_eq!((have, next), (4, 6)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ranges(&plan("b", &l, 0, Some(4)).unwrap()),
            [(0, 1, 3), (0, 4, 4)]
        );
        assert!(matches!(
            plan("b", &l, 0, Some(7)),
            Err(WalError::Gap { .. })
        ));
        // No full image at TXID 1.
        let l = listing(&[f(0, 2, 3)]);
        assert!(matches!(
            plan("b", &l, 0, None),
            Err(WalError::Gap {
                have: 0,
                next: 2,
                ..
            })
        ));
        assert!(matches!(
            plan("b", &HashMap::new(), 0, None),
            Err(WalError::Unavailable { .. })
        ));
    }

    #[test]
    fn position_sidecar_round_trips() {
        let rec = Recorded {
            txid: 0x2a,
            page_size: 4096,
            commit: 7,
            timestamp_ms: 1_700_000_000_000,
        };
        assert_eq!(Recorded::parse(&rec.encode()), Some(rec));
        assert_eq!(Recorded::parse("txid zz\n"), None);
    }
}
