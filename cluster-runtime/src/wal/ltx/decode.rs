//! Reading LTX files.

use std::io::Read;

use super::format::{
    be_u16, be_u32, be_u64, get_uvarint, CHECKSUM_FLAG, CRC64, HEADER_SIZE, PAGE_FLAG_SIZE,
    PAGE_HEADER_SIZE, TRAILER_SIZE,
};
use super::{Header, LtxError, Trailer};

/// One database page from an LTX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number; the page lives at `(pgno - 1) * page_size`.
    pub pgno: u32,
    /// Exactly `page_size` bytes.
    pub data: Vec<u8>,
}

/// A verified LTX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The header.
    pub header: Header,
    /// The pages, strictly ascending by page number.
    pub pages: Vec<Page>,
    /// The trailer; its file checksum matched the content.
    pub trailer: Trailer,
}

/// Reads just the header of an LTX file (e.g. to list files without
/// decompressing them). Validates the header; checks nothing else.
///
/// ```
/// use cluster_runtime::wal::ltx::{self, Header};
/// let h = Header { page_size: 512, commit: 1, min_txid: 1, max_txid: 1, ..Header::default() };
/// let bytes = ltx::encode(&h, [(1, &[0u8; 512][..])])?;
/// assert_eq!(ltx::decode_header(&bytes)?, h);
/// # Ok::<(), ltx::LtxError>(())
/// ```
pub fn decode_header(bytes: &[u8]) -> Result<Header, LtxError> {
    let raw = take(bytes, 0, HEADER_SIZE, "header")?;
    let mut arr = [0u8; HEADER_SIZE];
    arr.copy_from_slice(raw);
    let header = Header::from_bytes(&arr)?;
    header.validate()?;
    Ok(header)
}

/// Decodes and verifies a whole LTX file.
///
/// Accepts pages stored as LZ4 blocks (Litestream 0.5.16+, our encoder) and
/// as LZ4 frames (Litestream 0.5.4–0.5.15). Verifies the header rules, page
/// order (strictly ascending, within `commit`, no lock page, complete for a
/// snapshot), that every page decompresses to exactly `page_size` bytes, the
/// page index, the trailer and the file checksum. Any violation is an
/// [`LtxError`]; nothing is returned from a file that fails.
///
/// ```
/// use cluster_runtime::wal::ltx::{self, Header, LtxError};
/// let h = Header { page_size: 512, commit: 1, min_txid: 1, max_txid: 1, ..Header::default() };
/// let mut bytes = ltx::encode(&h, [(1, &[0u8; 512][..])])?;
/// assert!(ltx::decode(&bytes).is_ok());
/// bytes[39] ^= 1; // flip a bit of the timestamp
/// assert!(matches!(ltx::decode(&bytes), Err(LtxError::ChecksumMismatch { .. })));
/// # Ok::<(), LtxError>(())
/// ```
pub fn decode(bytes: &[u8]) -> Result<Decoded, LtxError> {
    let header = decode_header(bytes)?;
    let mut digest = CRC64.digest();
    digest.update(&bytes[..HEADER_SIZE]);

    let page_size = header.page_size as usize;
    let lock_pgno = header.lock_pgno();
    let mut pages: Vec<Page> = Vec::new();
    let mut frames: Vec<(u32, u64, u64)> = Vec::new();
    let mut pos = HEADER_SIZE;
    loop {
        let head = take(bytes, pos, PAGE_HEADER_SIZE, "page header")?;
        digest.update(head);
        let pgno = be_u32(head, 0);
        let flags = be_u16(head, 4);
        if pgno == 0 && flags == 0 {
            pos += PAGE_HEADER_SIZE;
            break;
        }
        let bad = |reason: String| LtxError::InvalidPage {
            offset: pos,
            pgno,
            reason,
        };
        if pgno == 0 {
            return Err(bad(format!("page number 0 with flags {flags:#06x}")));
        }
        if flags & !PAGE_FLAG_SIZE != 0 {
            return Err(bad(format!("unknown page flags {flags:#06x}")));
        }
        let prev = pages.last().map_or(0, |p| p.pgno);
        if pgno <= prev {
            return Err(bad(format!("follows page {prev}; pages must ascend")));
        }
        if pgno > header.commit {
            return Err(bad(format!(
                "beyond the database size of {} pages",
                header.commit
            )));
        }
        if pgno == lock_pgno {
            return Err(bad("is the SQLite lock page".to_owned()));
        }
        if header.is_snapshot() {
            let expected = if prev + 1 == lock_pgno {
                prev + 2
            } else {
                prev + 1
            };
            if pgno != expected {
                return Err(bad(format!("snapshot is missing page {expected}")));
            }
        }

        let mut data = vec![0u8; page_size];
        let frame_len = if flags & PAGE_FLAG_SIZE != 0 {
            let size_field = take(bytes, pos + PAGE_HEADER_SIZE, 4, "page size field")?;
            digest.update(size_field);
            let size = be_u32(size_field, 0) as usize;
            let payload_at = pos + PAGE_HEADER_SIZE + 4;
            let block = take(bytes, payload_at, size, "LZ4 block")?;
            let n = lz4_flex::block::decompress_into(block, &mut data)
                .map_err(|e| bad(format!("LZ4 block does not decompress: {e}")))?;
            if n != page_size {
                return Err(bad(format!(
                    "LZ4 block decompresses to {n} bytes, page size is {page_size}"
                )));
            }
            PAGE_HEADER_SIZE + 4 + size
        } else {
            let rest = bytes.get(pos + PAGE_HEADER_SIZE..).unwrap_or_default();
            let len = lz4_frame_len(rest).map_err(&bad)?;
            decompress_frame(&rest[..len], &mut data).map_err(&bad)?;
            PAGE_HEADER_SIZE + len
        };
        digest.update(&data);
        frames.push((pgno, pos as u64, frame_len as u64));
        pages.push(Page { pgno, data });
        pos += frame_len;
    }
    if header.is_snapshot() {
        let prev = pages.last().map_or(0, |p| p.pgno);
        let last = if header.commit == lock_pgno {
            header.commit - 1
        } else {
            header.commit
        };
        if prev != last {
            return Err(LtxError::InvalidPage {
                offset: pos - PAGE_HEADER_SIZE,
                pgno: 0,
                reason: format!(
                    "snapshot ends at page {prev} but the database has {} pages",
                    header.commit
                ),
            });
        }
    }

    // Index and trailer: the trailer is the last 16 bytes; the index fills
    // the space between the end marker and the trailer.
    let index_start = pos;
    let min_tail = 1 + 8 + TRAILER_SIZE; // empty index: 0 terminator + length
    take(bytes, index_start, min_tail, "page index and trailer")?;
    let trailer_start = bytes.len() - TRAILER_SIZE;
    digest.update(&bytes[index_start..bytes.len() - 8]);
    let trailer = Trailer {
        post_apply_checksum: be_u64(bytes, trailer_start),
        file_checksum: be_u64(bytes, trailer_start + 8),
    };
    let computed = CHECKSUM_FLAG | digest.finalize();
    if computed != trailer.file_checksum {
        return Err(LtxError::ChecksumMismatch {
            stored: trailer.file_checksum,
            computed,
        });
    }
    trailer.validate(&header)?;
    check_index(&bytes[index_start..trailer_start], index_start, &frames)?;

    Ok(Decoded {
        header,
        pages,
        trailer,
    })
}

/// Checks that the index region (entries, terminator, u64 length) lists
/// exactly the page frames that were read, in order.
fn check_index(region: &[u8], offset: usize, frames: &[(u32, u64, u64)]) -> Result<(), LtxError> {
    let bad = |reason: String| LtxError::InvalidIndex { offset, reason };
    let mut pos = 0usize;
    let mut next = || get_uvarint(region, &mut pos).ok_or_else(|| bad("bad varint".to_owned()));
    for &(pgno, frame_offset, frame_len) in frames {
        let entry = (next()?, next()?, next()?);
        if entry != (u64::from(pgno), frame_offset, frame_len) {
            return Err(bad(format!(
                "entry (pgno {}, offset {}, size {}) does not match the page frame \
                 (pgno {pgno}, offset {frame_offset}, size {frame_len})",
                entry.0, entry.1, entry.2
            )));
        }
    }
    let terminator = next()?;
    if terminator != 0 {
        return Err(bad(format!(
            "lists page {terminator} that is not in the file"
        )));
    }
    let rest = &region[pos..];
    if rest.len() != 8 {
        return Err(bad(format!(
            "{} bytes between the index terminator and the trailer, expected the 8-byte index length",
            rest.len()
        )));
    }
    let stated = be_u64(rest, 0);
    if stated != pos as u64 {
        return Err(bad(format!(
            "stated index length {stated} but the index is {pos} bytes"
        )));
    }
    Ok(())
}

/// `len` bytes at `at`, or a `Truncated` error naming `what`.
fn take<'a>(
    bytes: &'a [u8],
    at: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], LtxError> {
    at.checked_add(len)
        .and_then(|end| bytes.get(at..end))
        .ok_or(LtxError::Truncated {
            what,
            offset: at,
            needed: len,
            available: bytes.len().saturating_sub(at),
        })
}

const LZ4_FRAME_MAGIC: u32 = 0x184D_2204;

/// Length of the LZ4 frame at the start of `buf` (LZ4 frame format v1.6),
/// found by walking its block sizes. Frames are self-delimiting only this
/// way: Litestream 0.5.4–0.5.15 wrote no length before them.
fn lz4_frame_len(buf: &[u8]) -> Result<usize, String> {
    let truncated = || "LZ4 frame truncated".to_owned();
    let magic_bytes = buf.get(0..4).ok_or_else(truncated)?;
    let magic = u32::from_le_bytes([
        magic_bytes[0],
        magic_bytes[1],
        magic_bytes[2],
        magic_bytes[3],
    ]);
    if magic != LZ4_FRAME_MAGIC {
        return Err(format!(
            "page has neither the size flag nor an LZ4 frame (magic {magic:#010x})"
        ));
    }
    let flg = *buf.get(4).ok_or_else(truncated)?;
    let bd = *buf.get(5).ok_or_else(truncated)?;
    if flg >> 6 != 1 || flg & 0b10 != 0 || bd & 0b1000_1111 != 0 {
        return Err(format!(
            "unsupported LZ4 frame descriptor {flg:#04x} {bd:#04x}"
        ));
    }
    // Litestream's frame writer always used 64 KiB blocks (BD 0x40). Larger
    // ones are refused so a tiny hostile frame cannot make the LZ4 decoder
    // allocate megabytes.
    let max_block = 64 << 10;
    if (bd >> 4) & 0b111 != 4 {
        return Err(format!(
            "LZ4 frame block size code {} (Litestream writes 4 = 64 KiB)",
            (bd >> 4) & 0b111
        ));
    }
    let block_checksums = flg & 0x10 != 0;
    let mut pos = 6 + if flg & 0x08 != 0 { 8 } else { 0 } + if flg & 0x01 != 0 { 4 } else { 0 } + 1;
    loop {
        let size = buf.get(pos..pos + 4).ok_or_else(truncated)?;
        let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]);
        pos += 4;
        if size == 0 {
            break;
        }
        let len = (size & 0x7fff_ffff) as usize;
        if len > max_block {
            return Err(format!(
                "LZ4 block of {len} bytes exceeds the frame's {max_block}"
            ));
        }
        pos += len + if block_checksums { 4 } else { 0 };
        if pos > buf.len() {
            return Err(truncated());
        }
    }
    if flg & 0x04 != 0 {
        pos += 4;
    }
    if pos > buf.len() {
        return Err(truncated());
    }
    Ok(pos)
}

/// Decompresses one complete LZ4 frame into `page`, which it must fill
/// exactly. lz4_flex checks the header, block and content checksums.
fn decompress_frame(frame: &[u8], page: &mut [u8]) -> Result<(), String> {
    let limit = page.len() as u64 + 1;
    let mut out = Vec::with_capacity(page.len());
    lz4_flex::frame::FrameDecoder::new(frame)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| format!("LZ4 frame does not decompress: {e}"))?;
    if out.len() != page.len() {
        return Err(format!(
            "LZ4 frame decompresses to {}{} bytes, page size is {}",
            if out.len() > page.len() {
                "more than "
            } else {
                ""
            },
            out.len().min(page.len()),
            page.len()
        ));
    }
    page.copy_from_slice(&out);
    Ok(())
}
