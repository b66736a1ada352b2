//! The replica bucket: LTX files in a JetStream object store, laid out the
//! way Litestream 0.5's NATS replica client lays them out.
//!
//! Object names are `ltx/<level>/<min>-<max>.ltx` (decimal level, 16
//! lowercase hex digits per TXID) and every object carries the
//! `Litestream-Timestamp` header (the LTX header's timestamp, RFC 3339 with
//! nanoseconds, UTC). That is exactly what `litestream restore` lists and
//! reads, and what `litestream replicate` writes, so one bucket serves both.
//!
//! Level 0 holds one file per shipped commit (or group of commits), higher
//! levels hold compactions of lower ones, and level [`SNAPSHOT_LEVEL`] holds
//! full database images.

use std::collections::HashMap;

use async_nats::jetstream::{self, object_store};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;

use super::error::WalError;
use super::ltx;

/// The level Litestream keeps full-database snapshots in.
pub const SNAPSHOT_LEVEL: u8 = 9;

/// The object header carrying the LTX file's timestamp.
pub const TIMESTAMP_HEADER: &str = "Litestream-Timestamp";

/// One LTX object in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Compaction level (0 = as shipped, 9 = snapshot).
    pub level: u8,
    /// First transaction in the file.
    pub min_txid: u64,
    /// Last transaction in the file.
    pub max_txid: u64,
    /// Object size in bytes.
    pub size: u64,
    /// The `Litestream-Timestamp` header, in Unix milliseconds, when present
    /// and well-formed.
    pub timestamp_ms: Option<i64>,
}

impl FileInfo {
    /// The object name of this file.
    pub fn name(&self) -> String {
        object_name(self.level, self.min_txid, self.max_txid)
    }
}

/// The object name for a file: `ltx/<level>/<min>-<max>.ltx`.
///
/// ```
/// use cluster_runtime::wal::bucket::object_name;
/// assert_eq!(object_name(0, 1, 2), "ltx/0/0000000000000001-0000000000000002.ltx");
/// ```
pub fn object_name(level: u8, min_txid: u64, max_txid: u64) -> String {
    format!("ltx/{level}/{}", ltx::file_name(min_txid, max_txid))
}

/// Parses an object name into (level, min TXID, max TXID); anything else in
/// the bucket is not an LTX file and is refused with the reason.
pub fn parse_object_name(name: &str) -> Result<(u8, u64, u64), WalError> {
    let corrupt = |reason: String| WalError::Corrupt {
        name: name.to_owned(),
        reason,
    };
    let mut parts = name.split('/');
    let (Some("ltx"), Some(level), Some(file), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(corrupt("not named ltx/<level>/<min>-<max>.ltx".into()));
    };
    let level: u8 = level
        .parse()
        .ok()
        .filter(|l| *l <= SNAPSHOT_LEVEL)
        .ok_or_else(|| corrupt(format!("level `{level}` is not 0..=9")))?;
    let (min, max) = ltx::parse_file_name(file).map_err(|e| corrupt(e.to_string()))?;
    Ok((level, min, max))
}

/// Formats an LTX timestamp (Unix ms) the way Litestream writes the header.
pub fn format_timestamp(timestamp_ms: i64) -> String {
    let nanos = i128::from(timestamp_ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn parse_timestamp(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// An open replica bucket.
#[derive(Clone)]
pub struct WalBucket {
    store: object_store::ObjectStore,
    /// The object store's stream (`OBJ_<bucket>`), for consumer-free reads.
    stream: jetstream::stream::Stream<()>,
    name: String,
}

impl std::fmt::Debug for WalBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalBucket")
            .field("name", &self.name)
            .finish()
    }
}

impl WalBucket {
    /// Opens the bucket, creating it (file storage, `replicas` copies) if it
    /// does not exist yet — the primary's path.
    pub async fn open_or_create(
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<Self, WalError> {
        match js.get_object_store(bucket).await {
            Ok(store) => Self::wrap(js, store, bucket).await,
            Err(_) => {
                let config = object_store::Config {
                    bucket: bucket.to_owned(),
                    description: Some("cluster: SQLite replica (Litestream 0.5 layout)".into()),
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                };
                match js.create_object_store(config).await {
                    Ok(store) => Self::wrap(js, store, bucket).await,
                    // Lost a creation race: open what the other node made.
                    Err(e) => match js.get_object_store(bucket).await {
                        Ok(store) => Self::wrap(js, store, bucket).await,
                        Err(_) => Err(nats_error(bucket, "create", e)),
                    },
                }
            }
        }
    }

    /// Opens an existing bucket — the restore path: a missing bucket is an
    /// error, not an empty database.
    pub async fn open(js: &jetstream::Context, bucket: &str) -> Result<Self, WalError> {
        let store = js
            .get_object_store(bucket)
            .await
            .map_err(|_| WalError::NoBucket(bucket.to_owned()))?;
        Self::wrap(js, store, bucket).await
    }

    async fn wrap(
        js: &jetstream::Context,
        store: object_store::ObjectStore,
        bucket: &str,
    ) -> Result<Self, WalError> {
        let stream = js
            .get_stream_no_info(format!("OBJ_{bucket}"))
            .await
            .map_err(|e| nats_error(bucket, "open stream", e))?;
        Ok(WalBucket {
            store,
            stream,
            name: bucket.to_owned(),
        })
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stores an encoded LTX file under its level and TXID range, with the
    /// `Litestream-Timestamp` header taken from the file's header. Returns
    /// once JetStream has acknowledged the object.
    pub async fn put(&self, level: u8, bytes: Bytes) -> Result<FileInfo, WalError> {
        let header = ltx::decode_header(&bytes)?;
        let name = object_name(level, header.min_txid, header.max_txid);
        let mut headers = HeaderMap::new();
        headers.insert(
            TIMESTAMP_HEADER,
            format_timestamp(header.timestamp_ms).as_str(),
        );
        let meta = object_store::ObjectMetadata {
            name: name.clone(),
            headers: Some(headers),
            // One chunk per file when it fits: fewer publishes per commit.
            chunk_size: Some(bytes.len().clamp(1, 1024 * 1024)),
            ..Default::default()
        };
        let size = bytes.len() as u64;
        let mut reader = bytes.as_ref();
        self.store
            .put(meta, &mut reader)
            .await
            .map_err(|e| nats_error(&self.name, &format!("put {name}"), e))?;
        Ok(FileInfo {
            level,
            min_txid: header.min_txid,
            max_txid: header.max_txid,
            size,
            timestamp_ms: Some(header.timestamp_ms),
        })
    }

    /// Every LTX file in the bucket, by level, each level sorted by min TXID.
    /// Objects that are not LTX files are skipped (and logged), as
    /// Litestream skips them.
    pub async fn list(&self) -> Result<HashMap<u8, Vec<FileInfo>>, WalError> {
        self.list_inner(false).await
    }

    /// Like [`list`](Self::list), but an object under `ltx/` whose name is
    /// not `ltx/<level>/<min>-<max>.ltx` is an error naming it instead of
    /// being skipped: restores refuse a bucket someone else wrote into.
    pub async fn list_strict(&self) -> Result<HashMap<u8, Vec<FileInfo>>, WalError> {
        self.list_inner(true).await
    }

    async fn list_inner(&self, strict: bool) -> Result<HashMap<u8, Vec<FileInfo>>, WalError> {
        let mut by_level: HashMap<u8, Vec<FileInfo>> = HashMap::new();
        let mut list = match self.store.list().await {
            Ok(list) => list,
            Err(e) => return Err(nats_error(&self.name, "list", e)),
        };
        while let Some(item) = list.next().await {
            let info = item.map_err(|e| nats_error(&self.name, "list", e))?;
            if info.deleted {
                continue;
            }
            let (level, min_txid, max_txid) = match parse_object_name(&info.name) {
                Ok(parsed) => parsed,
                Err(e) if strict && info.name.starts_with("ltx/") => return Err(e),
                Err(e) => {
                    tracing::debug!(bucket = %self.name, error = %e, "skipping object");
                    continue;
                }
            };
            let timestamp_ms = info
                .headers
                .as_ref()
                .and_then(|h| h.get(TIMESTAMP_HEADER))
                .and_then(|v| parse_timestamp(v.as_str()));
            by_level.entry(level).or_default().push(FileInfo {
                level,
                min_txid,
                max_txid,
                size: info.size as u64,
                timestamp_ms,
            });
        }
        for files in by_level.values_mut() {
            files.sort_by_key(|f| (f.min_txid, f.max_txid));
        }
        Ok(by_level)
    }

    /// The files of one level, sorted by min TXID.
    pub async fn list_level(&self, level: u8) -> Result<Vec<FileInfo>, WalError> {
        Ok(self.list().await?.remove(&level).unwrap_or_default())
    }

    /// Reads a file's bytes. The caller decodes (and so verifies) them.
    ///
    /// A file stored in one chunk (every file our replicator writes, up to
    /// 1 MiB) is read with two stream requests and no consumer: a standby
    /// following hundreds of commits a second would otherwise create a
    /// consumer per file. Larger files are read through a consumer.
    pub async fn get(&self, file: &FileInfo) -> Result<Bytes, WalError> {
        let name = file.name();
        let info = self
            .store
            .info(&name)
            .await
            .map_err(|e| nats_error(&self.name, &format!("info {name}"), e))?;
        if info.chunks == 1 {
            let chunk = format!("$O.{}.C.{}", self.name, info.nuid);
            let message = self
                .stream
                .get_last_raw_message_by_subject(&chunk)
                .await
                .map_err(|e| nats_error(&self.name, &format!("get {name}"), e))?;
            if message.payload.len() != info.size {
                return Err(WalError::Corrupt {
                    name,
                    reason: format!(
                        "object holds {} bytes, its metadata says {}",
                        message.payload.len(),
                        info.size
                    ),
                });
            }
            return Ok(message.payload);
        }
        let mut object = self
            .store
            .get(&name)
            .await
            .map_err(|e| nats_error(&self.name, &format!("get {name}"), e))?;
        let mut buf = Vec::with_capacity(usize::try_from(file.size).unwrap_or(0));
        object
            .read_to_end(&mut buf)
            .await
            .map_err(|e| nats_error(&self.name, &format!("read {name}"), e))?;
        Ok(Bytes::from(buf))
    }

    /// Reads and decodes a file, refusing it unless its header's TXID range
    /// matches its name.
    pub async fn get_decoded(&self, file: &FileInfo) -> Result<ltx::Decoded, WalError> {
        let bytes = self.get(file).await?;
        decode_named(file, &bytes)
    }

    /// Deletes files (compacted or past retention). Missing files are fine.
    pub async fn delete(&self, files: &[FileInfo]) -> Result<(), WalError> {
        for file in files {
            let name = file.name();
            if let Err(e) = self.store.delete(&name).await {
                if !matches!(e.kind(), object_store::DeleteErrorKind::NotFound) {
                    return Err(nats_error(&self.name, &format!("delete {name}"), e));
                }
            }
        }
        Ok(())
    }

    /// New files as they are stored (no history): names of objects put
    /// after the call. Replicas use it to follow the primary without polling.
    pub async fn watch(
        &self,
    ) -> Result<impl futures::Stream<Item = Result<FileInfo, WalError>> + Send + 'static, WalError>
    {
        let bucket = self.name.clone();
        let watch = self
            .store
            .watch()
            .await
            .map_err(|e| nats_error(&bucket, "watch", e))?;
        Ok(watch
            .map_err(move |e| nats_error(&bucket, "watch", e))
            .try_filter_map(|info| async move {
                if info.deleted {
                    return Ok(None);
                }
                Ok(parse_object_name(&info.name)
                    .ok()
                    .map(|(level, min_txid, max_txid)| FileInfo {
                        level,
                        min_txid,
                        max_txid,
                        size: info.size as u64,
                        timestamp_ms: info
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(TIMESTAMP_HEADER))
                            .and_then(|v| parse_timestamp(v.as_str())),
                    }))
            }))
    }
}

/// Decodes an object's bytes (verifying the checksum) and refuses them
/// unless the header's TXID range is the one the object's name says.
/// CPU-bound for large files: call it off the async runtime.
pub fn decode_named(file: &FileInfo, bytes: &[u8]) -> Result<ltx::Decoded, WalError> {
    let name = file.name();
    let decoded = ltx::decode(bytes).map_err(|e| WalError::Corrupt {
        name: name.clone(),
        reason: e.to_string(),
    })?;
    let h = &decoded.header;
    if (h.min_txid, h.max_txid) != (file.min_txid, file.max_txid) {
        return Err(WalError::Corrupt {
            name,
            reason: format!(
                "header holds TXIDs {:016x}-{:016x}, not the range its name says",
                h.min_txid, h.max_txid
            ),
        });
    }
    Ok(decoded)
}

fn nats_error(bucket: &str, action: &str, e: impl std::fmt::Display) -> WalError {
    WalError::Nats {
        bucket: bucket.to_owned(),
        action: action.to_owned(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_refuse_others() {
        let name = object_name(9, 1, 0x2a);
        assert_eq!(name, "ltx/9/0000000000000001-000000000000002a.ltx");
        assert_eq!(parse_object_name(&name).unwrap(), (9, 1, 0x2a));
        for bad in [
            "ltx/0/1-2.ltx",
            "ltx/10/0000000000000001-0000000000000001.ltx",
            "ltx/x/0000000000000001-0000000000000001.ltx",
            "wal/0/0000000000000001-0000000000000001.ltx",
            "ltx/0/0000000000000001-0000000000000001.ltx/extra",
            "ltx/0/0000000000000001-0000000000000001.LTX",
        ] {
            assert!(parse_object_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn timestamps_round_trip_in_rfc3339() {
        let ms = 1_764_358_200_123;
        let s = format_timestamp(ms);
        assert!(s.ends_with('Z'), "{s}");
        assert_eq!(parse_timestamp(&s), Some(ms));
    }
}
