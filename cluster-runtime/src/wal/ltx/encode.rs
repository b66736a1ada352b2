//! Writing LTX files.

use std::io::Write;

use super::format::{put_uvarint, CHECKSUM_FLAG, CRC64, PAGE_FLAG_SIZE, PAGE_HEADER_SIZE};
use super::{Header, LtxError, Trailer};

/// Writes one LTX file to `W`, a page at a time.
///
/// Pages must come in strictly ascending page-number order, each exactly
/// `page_size` bytes, never the lock page and never above `commit`. A
/// snapshot (`min_txid == 1`) must contain every page `1..=commit` except
/// the lock page. Each page is stored as one LZ4 block, like Litestream
/// 0.5.16+.
///
/// ```
/// use cluster_runtime::wal::ltx::{Encoder, Header};
///
/// let header = Header { page_size: 512, commit: 2, min_txid: 1, max_txid: 1, ..Header::default() };
/// let mut enc = Encoder::new(Vec::new(), header)?;
/// enc.add_page(1, &[1u8; 512])?;
/// enc.add_page(2, &[2u8; 512])?;
/// let (bytes, trailer) = enc.finish()?;
/// assert_eq!(cluster_runtime::wal::ltx::decode(&bytes)?.trailer, trailer);
/// # Ok::<(), cluster_runtime::wal::ltx::LtxError>(())
/// ```
pub struct Encoder<W: Write> {
    out: W,
    header: Header,
    digest: crc::Digest<'static, u64>,
    /// Bytes written so far.
    offset: u64,
    /// (pgno, frame offset, frame size) per page written.
    index: Vec<(u32, u64, u64)>,
    /// Scratch buffer for one compressed page.
    block: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for Encoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("header", &self.header)
            .field("offset", &self.offset)
            .field("pages", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl<W: Write> Encoder<W> {
    /// Validates `header` and writes it to `out`.
    ///
    /// The header must have [`FLAG_NO_CHECKSUM`](super::FLAG_NO_CHECKSUM)
    /// set (we do not compute rolling database checksums) and `commit >= 1`
    /// (Litestream cannot read an empty database file without them).
    pub fn new(mut out: W, header: Header) -> Result<Self, LtxError> {
        header.validate()?;
        if !header.no_checksum() {
            return Err(LtxError::Encode(
                "header must set FLAG_NO_CHECKSUM: rolling database checksums are not supported"
                    .to_owned(),
            ));
        }
        if header.commit == 0 {
            return Err(LtxError::Encode(
                "commit is 0 (empty database); Litestream requires at least one page".to_owned(),
            ));
        }
        let bytes = header.to_bytes();
        out.write_all(&bytes)
            .map_err(|e| LtxError::io("write LTX header", e))?;
        let mut digest = CRC64.digest();
        digest.update(&bytes);
        Ok(Encoder {
            out,
            header,
            digest,
            offset: bytes.len() as u64,
            index: Vec::new(),
            block: vec![0; lz4_flex::block::get_maximum_output_size(header.page_size as usize)],
        })
    }

    /// The header being written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Appends page `pgno`; see the type docs for the ordering rules.
    pub fn add_page(&mut self, pgno: u32, data: &[u8]) -> Result<(), LtxError> {
        let h = &self.header;
        let prev = self.index.last().map_or(0, |e| e.0);
        let refuse = |msg: String| Err(LtxError::Encode(msg));
        if data.len() != h.page_size as usize {
            return refuse(format!(
                "page {pgno} is {} bytes, page size is {}",
                data.len(),
                h.page_size
            ));
        }
        if pgno == 0 || pgno > h.commit {
            return refuse(format!(
                "page {pgno} is outside the database (1..={} pages after this commit)",
                h.commit
            ));
        }
        if pgno == h.lock_pgno() {
            return refuse(format!("page {pgno} is the SQLite lock page; leave it out"));
        }
        if pgno <= prev {
            return refuse(format!(
                "page {pgno} after page {prev}: pages must be strictly ascending"
            ));
        }
        if h.is_snapshot() {
            let expected = next_snapshot_pgno(prev, h.lock_pgno());
            if pgno != expected {
                return refuse(format!(
                    "snapshot skips page {expected} (got {pgno}): a file starting at TXID 1 \
                     must contain every page"
                ));
            }
        }

        let n = lz4_flex::block::compress_into(data, &mut self.block)
            .map_err(|e| LtxError::Encode(format!("LZ4 compression of page {pgno}: {e}")))?;
        let compressed = &self.block[..n];
        let size = u32::try_from(n)
            .map_err(|_| LtxError::Encode(format!("page {pgno} compressed to {n} bytes")))?;

        let mut head = [0u8; PAGE_HEADER_SIZE + 4];
        head[0..4].copy_from_slice(&pgno.to_be_bytes());
        head[4..6].copy_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
        head[6..10].copy_from_slice(&size.to_be_bytes());
        self.out
            .write_all(&head)
            .and_then(|()| self.out.write_all(compressed))
            .map_err(|e| LtxError::io(format!("write LTX page {pgno}"), e))?;
        // The checksum covers the uncompressed page, not the LZ4 bytes.
        self.digest.update(&head);
        self.digest.update(data);

        let frame = (head.len() + n) as u64;
        self.index.push((pgno, self.offset, frame));
        self.offset += frame;
        Ok(())
    }

    /// Writes the end marker, page index and trailer; returns the output and
    /// the trailer (whose `file_checksum` identifies the file's content).
    pub fn finish(mut self) -> Result<(W, Trailer), LtxError> {
        let h = self.header;
        if h.is_snapshot() {
            let prev = self.index.last().map_or(0, |e| e.0);
            let mut last = h.commit;
            if last == h.lock_pgno() {
                last -= 1;
            }
            if prev != last {
                return Err(LtxError::Encode(format!(
                    "snapshot ends at page {prev} but the database has {} pages",
                    h.commit
                )));
            }
        }

        let mut tail = Vec::with_capacity(PAGE_HEADER_SIZE + self.index.len() * 8 + 8);
        tail.extend_from_slice(&[0u8; PAGE_HEADER_SIZE]);
        let index_start = tail.len();
        for &(pgno, offset, size) in &self.index {
            put_uvarint(&mut tail, u64::from(pgno));
            put_uvarint(&mut tail, offset);
            put_uvarint(&mut tail, size);
        }
        put_uvarint(&mut tail, 0);
        let index_len = (tail.len() - index_start) as u64;
        tail.extend_from_slice(&index_len.to_be_bytes());
        let post_apply_checksum = 0u64;
        tail.extend_from_slice(&post_apply_checksum.to_be_bytes());
        self.digest.update(&tail);
        let trailer = Trailer {
            post_apply_checksum,
            file_checksum: CHECKSUM_FLAG | self.digest.finalize(),
        };
        tail.extend_from_slice(&trailer.file_checksum.to_be_bytes());
        self.out
            .write_all(&tail)
            .and_then(|()| self.out.flush())
            .map_err(|e| LtxError::io("write LTX page index and trailer", e))?;
        Ok((self.out, trailer))
    }
}

/// The page after `prev` in a snapshot, skipping the lock page.
pub(super) fn next_snapshot_pgno(prev: u32, lock_pgno: u32) -> u32 {
    let next = prev + 1;
    if next == lock_pgno {
        next + 1
    } else {
        next
    }
}

/// Encodes a whole file in memory: `header` then `pages` as `(pgno, bytes)`.
///
/// ```
/// use cluster_runtime::wal::ltx::{self, Header};
///
/// let header = Header { page_size: 512, commit: 9, min_txid: 4, max_txid: 6, ..Header::default() };
/// let a = [0u8; 512];
/// let bytes = ltx::encode(&header, [(3, &a[..]), (9, &a[..])])?;
/// assert_eq!(ltx::decode(&bytes)?.pages.len(), 2);
/// # Ok::<(), ltx::LtxError>(())
/// ```
pub fn encode<'a>(
    header: &Header,
    pages: impl IntoIterator<Item = (u32, &'a [u8])>,
) -> Result<Vec<u8>, LtxError> {
    let mut enc = Encoder::new(Vec::new(), *header)?;
    for (pgno, data) in pages {
        enc.add_page(pgno, data)?;
    }
    Ok(enc.finish()?.0)
}
