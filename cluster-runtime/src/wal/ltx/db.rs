//! Between LTX files and SQLite database files: take a full-image snapshot
//! of a database file, and apply a decoded file onto one.
//!
//! Both work on the *main database file* only. The caller makes sure it is
//! quiescent: for a snapshot, checkpoint the WAL into it first and keep
//! writers and checkpoints out while it is read; for apply, the file must
//! not be open in SQLite (a restore target or a stopped replica) and stale
//! `-wal`/`-shm` files beside it must be removed.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::format::is_valid_page_size;
use super::{Decoded, Encoder, Header, LtxError, FLAG_NO_CHECKSUM};

/// The 16-byte magic at the start of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Reads the page size from a database file header (offset 16, where 1
/// means 65536).
fn page_size_of(header: &[u8; 100], path: &Path) -> Result<u32, LtxError> {
    if &header[..16] != SQLITE_MAGIC {
        return Err(LtxError::Database {
            path: path.to_owned(),
            reason: "not a SQLite database (bad magic)".to_owned(),
        });
    }
    let raw = u32::from(u16::from_be_bytes([header[16], header[17]]));
    let size = if raw == 1 { 65536 } else { raw };
    if !is_valid_page_size(size) {
        return Err(LtxError::Database {
            path: path.to_owned(),
            reason: format!("invalid page size {size} in the database header"),
        });
    }
    Ok(size)
}

fn read_db_header(file: &mut File, path: &Path) -> Result<[u8; 100], LtxError> {
    let mut header = [0u8; 100];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut header))
        .map_err(|e| LtxError::io(format!("read database header of {}", path.display()), e))?;
    Ok(header)
}

/// Writes a full-image LTX file of the database file at `path` to `out`:
/// TXIDs `1..=max_txid`, every page but the lock page, `commit` = the file's
/// page count. Streams page by page, so memory use is one page.
///
/// See the module docs for what the caller must guarantee about `path`.
pub fn write_snapshot_from_db<W: Write>(
    path: &Path,
    max_txid: u64,
    timestamp_ms: i64,
    out: W,
) -> Result<W, LtxError> {
    let open_err = |e| LtxError::io(format!("open database {}", path.display()), e);
    let mut file = File::open(path).map_err(open_err)?;
    let len = file.metadata().map_err(open_err)?.len();
    if len < 100 {
        return Err(LtxError::Database {
            path: path.to_owned(),
            reason: format!("{len} bytes is too small to be a SQLite database"),
        });
    }
    let page_size = page_size_of(&read_db_header(&mut file, path)?, path)?;
    if len % u64::from(page_size) != 0 {
        return Err(LtxError::Database {
            path: path.to_owned(),
            reason: format!("size {len} is not a multiple of the page size {page_size}"),
        });
    }
    let commit = u32::try_from(len / u64::from(page_size)).map_err(|_| LtxError::Database {
        path: path.to_owned(),
        reason: format!("{len} bytes is more pages than SQLite allows"),
    })?;
    let header = Header {
        flags: FLAG_NO_CHECKSUM,
        page_size,
        commit,
        min_txid: 1,
        max_txid,
        timestamp_ms,
        ..Header::default()
    };
    let mut enc = Encoder::new(out, header)?;
    let lock = header.lock_pgno();
    let mut page = vec![0u8; page_size as usize];
    file.seek(SeekFrom::Start(0))
        .map_err(|e| LtxError::io(format!("seek database {}", path.display()), e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    for pgno in 1..=commit {
        reader.read_exact(&mut page).map_err(|e| {
            LtxError::io(
                format!(
                    "read page {pgno} of {} (changed while reading?)",
                    path.display()
                ),
                e,
            )
        })?;
        if pgno != lock {
            enc.add_page(pgno, &page)?;
        }
    }
    Ok(enc.finish()?.0)
}

/// [`write_snapshot_from_db`] into memory.
///
/// ```
/// use cluster_runtime::wal::ltx;
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("app.db");
/// # let mut page = vec![0u8; 512];
/// # page[..16].copy_from_slice(b"SQLite format 3\0");
/// # page[16..18].copy_from_slice(&512u16.to_be_bytes());
/// # std::fs::write(&path, &page)?;
/// let bytes = ltx::snapshot_from_db(&path, 1, 0)?;
/// let file = ltx::decode(&bytes)?;
/// assert_eq!((file.header.min_txid, file.header.max_txid, file.header.commit), (1, 1, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn snapshot_from_db(
    path: &Path,
    max_txid: u64,
    timestamp_ms: i64,
) -> Result<Vec<u8>, LtxError> {
    write_snapshot_from_db(path, max_txid, timestamp_ms, Vec::new())
}

/// Applies a decoded LTX file onto the database file at `path`: writes each
/// page at `(pgno - 1) * page_size`, sets the length to `commit * page_size`
/// and syncs.
///
/// A snapshot (`min_txid == 1`) may create the file or replace any content.
/// Any other file needs an existing database with the same page size —
/// applying files out of TXID order is the caller's bug and is not
/// detectable here. See the module docs for what the caller must guarantee.
///
/// ```
/// use cluster_runtime::wal::ltx::{self, Header};
/// # let dir = tempfile::tempdir()?;
/// let path = dir.path().join("restored.db");
/// let mut page = vec![0u8; 512];
/// page[..16].copy_from_slice(b"SQLite format 3\0");
/// page[16..18].copy_from_slice(&512u16.to_be_bytes());
/// let snap = Header { page_size: 512, commit: 1, min_txid: 1, max_txid: 1, ..Header::default() };
/// ltx::apply_to_db(&ltx::decode(&ltx::encode(&snap, [(1, &page[..])])?)?, &path)?;
/// assert_eq!(std::fs::read(&path)?, page);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn apply_to_db(decoded: &Decoded, path: &Path) -> Result<(), LtxError> {
    let h = &decoded.header;
    let ctx = |what: &str| format!("{what} {}", path.display());
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(h.is_snapshot())
        .truncate(false)
        .open(path)
        .map_err(|e| {
            LtxError::io(
                if h.is_snapshot() {
                    ctx("open or create database")
                } else {
                    ctx("open database (apply a snapshot first)")
                },
                e,
            )
        })?;
    if !h.is_snapshot() {
        let existing = page_size_of(&read_db_header(&mut file, path)?, path)?;
        if existing != h.page_size {
            return Err(LtxError::Database {
                path: path.to_owned(),
                reason: format!(
                    "page size {existing} differs from the LTX file's {}; \
                     this file belongs to another database",
                    h.page_size
                ),
            });
        }
    }
    if let Some(page) = decoded
        .pages
        .iter()
        .find(|p| p.pgno == 0 || p.pgno > h.commit || p.data.len() != h.page_size as usize)
    {
        return Err(LtxError::Encode(format!(
            "page {} with {} bytes does not fit a {}-page database of {}-byte pages",
            page.pgno,
            page.data.len(),
            h.commit,
            h.page_size
        )));
    }
    let page_size = u64::from(h.page_size);
    let mut out = BufWriter::with_capacity(1 << 20, &mut file);
    let mut next_offset = None;
    for page in &decoded.pages {
        let offset = u64::from(page.pgno - 1) * page_size;
        if next_offset != Some(offset) {
            out.seek(SeekFrom::Start(offset))
                .map_err(|e| LtxError::io(ctx("seek in"), e))?;
        }
        out.write_all(&page.data).map_err(|e| {
            LtxError::io(format!("write page {} of {}", page.pgno, path.display()), e)
        })?;
        next_offset = Some(offset + page_size);
    }
    out.flush().map_err(|e| LtxError::io(ctx("write"), e))?;
    drop(out);
    file.set_len(u64::from(h.commit) * page_size)
        .map_err(|e| LtxError::io(ctx("set the length of"), e))?;
    file.sync_all().map_err(|e| LtxError::io(ctx("sync"), e))?;
    Ok(())
}
