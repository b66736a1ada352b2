//! Compaction: merging L0 files into higher levels, level-9 snapshots and
//! retention — Litestream's scheme, with shorter default intervals.
//!
//! Level `n` (1..=3) holds merges of the level `n-1` files newer than its
//! own newest file, written every `levels[n-1]`. A merge keeps, per page,
//! the version from the highest TXID, the `commit` of the newest file, and
//! spans `min` of the first to `max` of the last file; only contiguous runs
//! are merged, so every compacted file is a valid LTX file that stock
//! `litestream restore` reads. A level-9 snapshot is the full database at a
//! TXID, built from the bucket itself (newest snapshot + the chain after
//! it) so it never depends on the local file. Retention deletes L0 files a
//! level-1 file covers (after `l0_retention`), level 1-2 files covered by
//! the level above, and snapshots and level-3 files older than `retention`
//! that the newest snapshot covers. The newest snapshot and everything
//! after it are never deleted.
//!
//! ```no_run
//! # async fn demo(bucket: cluster_runtime::wal::bucket::WalBucket) -> Result<(), cluster_runtime::wal::WalError> {
//! use cluster_runtime::wal::compact::{CompactionConfig, Compactor};
//! let compactor = Compactor::new(bucket, CompactionConfig::default());
//! compactor.compact_level(1).await?;   // L0 -> L1
//! compactor.snapshot().await?;         // L9
//! compactor.retain().await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::bucket::{FileInfo, WalBucket, SNAPSHOT_LEVEL};
use super::ltx::{self, Header, FLAG_NO_CHECKSUM};
use super::WalError;

/// When to compact, snapshot and delete.
#[derive(Debug, Clone)]
pub struct CompactionConfig {
    /// Interval of levels 1, 2, 3 (Litestream: 30 s, 5 min, 1 h).
    pub levels: Vec<Duration>,
    /// Compact L0 into L1 early once this many L0 files are waiting.
    pub l1_max_files: usize,
    /// How often a level-9 snapshot is written.
    pub snapshot_interval: Duration,
    /// Write a snapshot at start-up when the bucket has none.
    pub snapshot_on_start: bool,
    /// Keep L0 files this long after a level-1 file covers them (replicas
    /// following the bucket read L0).
    pub l0_retention: Duration,
    /// Keep superseded snapshots and covered higher-level files this long.
    pub retention: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            levels: vec![
                Duration::from_secs(30),
                Duration::from_secs(300),
                Duration::from_secs(3600),
            ],
            l1_max_files: 1000,
            snapshot_interval: Duration::from_secs(6 * 3600),
            snapshot_on_start: true,
            l0_retention: Duration::from_secs(300),
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Compacts one bucket; see the module docs.
#[derive(Debug, Clone)]
pub struct Compactor {
    bucket: WalBucket,
    config: CompactionConfig,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn max_of(files: Option<&Vec<FileInfo>>) -> u64 {
    files
        .and_then(|f| f.iter().map(|f| f.max_txid).max())
        .unwrap_or(0)
}

impl Compactor {
    /// A compactor for `bucket`.
    pub fn new(bucket: WalBucket, config: CompactionConfig) -> Self {
        Compactor { bucket, config }
    }

    /// Merges the level `level - 1` files newer than level `level`'s newest
    /// into one level-`level` file (1..=8). Returns it, or `None` when
    /// there was nothing to merge.
    pub async fn compact_level(&self, level: u8) -> Result<Option<FileInfo>, WalError> {
        if !(1..SNAPSHOT_LEVEL).contains(&level) {
            return Err(WalError::Corrupt {
                name: format!("ltx/{level}"),
                reason: "compaction targets levels 1..=8".to_owned(),
            });
        }
        let files = self.bucket.list().await?;
        let done = max_of(files.get(&level));
        let Some(src) = files.get(&(level - 1)) else {
            return Ok(None);
        };
        let mut run: Vec<&FileInfo> = Vec::new();
        for f in src.iter().filter(|f| f.min_txid > done) {
            match run.last() {
                Some(prev) if f.min_txid != prev.max_txid + 1 => break,
                _ => run.push(f),
            }
        }
        if run.is_empty() {
            return Ok(None);
        }
        let mut merged = Merge::default();
        for f in &run {
            merged.apply(self.bucket.get_decoded(f).await?);
        }
        let bytes = merged.encode(run[0].min_txid)?;
        let info = self.bucket.put(level, Bytes::from(bytes)).await?;
        tracing::debug!(level, min = info.min_txid, max = info.max_txid, "compacted");
        Ok(Some(info))
    }

    /// Writes a level-9 snapshot of the newest TXID the bucket can restore:
    /// the newest snapshot plus the chain after it, merged. `None` when the
    /// bucket is empty or the newest snapshot is already current.
    pub async fn snapshot(&self) -> Result<Option<FileInfo>, WalError> {
        let files = self.bucket.list().await?;
        let chain = restore_chain(&files)?;
        let Some(last) = chain.last() else {
            return Ok(None);
        };
        if chain.len() == 1 && last.level == SNAPSHOT_LEVEL {
            return Ok(None);
        }
        let mut merged = Merge::default();
        for f in &chain {
            merged.apply(self.bucket.get_decoded(f).await?);
        }
        let bytes = merged.encode(1)?;
        let info = self.bucket.put(SNAPSHOT_LEVEL, Bytes::from(bytes)).await?;
        tracing::debug!(max = info.max_txid, "snapshot");
        Ok(Some(info))
    }

    /// Deletes what retention allows (see the module docs); returns the
    /// files deleted.
    pub async fn retain(&self) -> Result<Vec<FileInfo>, WalError> {
        let files = self.bucket.list().await?;
        let now = now_ms();
        let older = |f: &FileInfo, keep: Duration| {
            let age = now - f.timestamp_ms.unwrap_or(now);
            age >= i64::try_from(keep.as_millis()).unwrap_or(i64::MAX)
        };
        let newest_snapshot = max_of(files.get(&SNAPSHOT_LEVEL));
        let mut doomed = Vec::new();
        for level in 0..SNAPSHOT_LEVEL {
            let Some(list) = files.get(&level) else {
                continue;
            };
            let above = max_of(files.get(&(level + 1)));
            let keep = if level == 0 {
                self.config.l0_retention
            } else {
                self.config.retention
            };
            for f in list {
                let covered_above = level + 1 < SNAPSHOT_LEVEL && f.max_txid <= above;
                let covered_snapshot = f.max_txid <= newest_snapshot;
                if (covered_above || covered_snapshot) && older(f, keep) {
                    doomed.push(f.clone());
                }
            }
        }
        if let Some(snaps) = files.get(&SNAPSHOT_LEVEL) {
            for f in snaps {
                if f.max_txid < newest_snapshot && older(f, self.config.retention) {
                    doomed.push(f.clone());
                }
            }
        }
        // Never delete a file the newest restore chain needs.
        let needed = restore_chain(&files)?;
        doomed.retain(|f| !needed.contains(f));
        self.bucket.delete(&doomed).await?;
        Ok(doomed)
    }

    /// Runs compaction on its timers until `stop()` returns true.
    pub async fn run(&self, stop: impl Fn() -> bool) {
        let start = Instant::now();
        let mut last: HashMap<u8, Instant> = HashMap::new();
        let mut last_snapshot = None;
        let tick = self
            .config
            .levels
            .iter()
            .copied()
            .chain([self.config.snapshot_interval])
            .min()
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            if stop() {
                return;
            }
            if let Err(e) = self.round(start, &mut last, &mut last_snapshot).await {
                tracing::warn!(bucket = %self.bucket.name(), error = %e, "compaction failed");
            }
            tokio::time::sleep(tick).await;
        }
    }

    async fn round(
        &self,
        start: Instant,
        last: &mut HashMap<u8, Instant>,
        last_snapshot: &mut Option<Instant>,
    ) -> Result<(), WalError> {
        for (i, interval) in self.config.levels.iter().enumerate() {
            let level = u8::try_from(i + 1).unwrap_or(SNAPSHOT_LEVEL);
            if level >= SNAPSHOT_LEVEL {
                break;
            }
            let since = last.get(&level).copied().unwrap_or(start);
            let mut due = since.elapsed() >= *interval;
            if level == 1 && !due {
                let files = self.bucket.list().await?;
                let done = max_of(files.get(&1));
                let waiting = files
                    .get(&0)
                    .map_or(0, |l| l.iter().filter(|f| f.min_txid > done).count());
                due = waiting >= self.config.l1_max_files;
            }
            if due {
                self.compact_level(level).await?;
                last.insert(level, Instant::now());
            }
        }
        let snapshot_due = match last_snapshot {
            Some(t) => t.elapsed() >= self.config.snapshot_interval,
            None => {
                (self.config.snapshot_on_start
                    && !self.bucket.list().await?.contains_key(&SNAPSHOT_LEVEL))
                    || start.elapsed() >= self.config.snapshot_interval
            }
        };
        if snapshot_due {
            self.snapshot().await?;
            *last_snapshot = Some(Instant::now());
        }
        self.retain().await?;
        Ok(())
    }
}

/// Files `litestream restore` would apply for the newest TXID: the newest
/// snapshot, then repeatedly the file (any level) that extends the range
/// furthest. Stops at a gap.
pub fn restore_chain(files: &HashMap<u8, Vec<FileInfo>>) -> Result<Vec<FileInfo>, WalError> {
    let mut chain = Vec::new();
    let mut pos = 0;
    if let Some(snap) = files
        .get(&SNAPSHOT_LEVEL)
        .and_then(|s| s.iter().max_by_key(|f| f.max_txid))
    {
        pos = snap.max_txid;
        chain.push(snap.clone());
    }
    loop {
        let next = files
            .iter()
            .filter(|(l, _)| **l != SNAPSHOT_LEVEL)
            .flat_map(|(_, l)| l)
            .filter(|f| f.min_txid <= pos + 1 && f.max_txid > pos)
            // A file starting at 1 restores alone; others need a base.
            .filter(|f| pos > 0 || f.min_txid == 1)
            .max_by_key(|f| (f.max_txid, std::cmp::Reverse(f.level)));
        match next {
            Some(f) => {
                pos = f.max_txid;
                chain.push(f.clone());
            }
            None => return Ok(chain),
        }
    }
}

/// Pages merged from a TXID-ordered sequence of files.
#[derive(Debug, Default)]
struct Merge {
    pages: BTreeMap<u32, Vec<u8>>,
    header: Option<Header>,
}

impl Merge {
    fn apply(&mut self, file: ltx::Decoded) {
        let h = file.header;
        self.pages.retain(|&p, _| p <= h.commit);
        for page in file.pages {
            self.pages.insert(page.pgno, page.data);
        }
        self.header = Some(h);
    }

    fn encode(&self, min_txid: u64) -> Result<Vec<u8>, WalError> {
        let Some(last) = self.header else {
            return Err(WalError::Corrupt {
                name: "compaction".to_owned(),
                reason: "no files to merge".to_owned(),
            });
        };
        let header = Header {
            flags: FLAG_NO_CHECKSUM,
            page_size: last.page_size,
            commit: last.commit,
            min_txid,
            max_txid: last.max_txid,
            timestamp_ms: last.timestamp_ms,
            ..Header::default()
        };
        let mut enc = ltx::Encoder::new(Vec::new(), header)?;
        for (&pgno, data) in self.pages.range(..=last.commit) {
            enc.add_page(pgno, data)?;
        }
        Ok(enc.finish()?.0)
    }
}
