//! The fixed parts of the format: header, trailer, file names, checksum.

use super::LtxError;

/// First four bytes of every LTX file. LTX v3 still says `LTX1`: the version
/// is implied by the layout, not stored.
pub const MAGIC: &[u8; 4] = b"LTX1";
/// Size of the file header.
pub const HEADER_SIZE: usize = 100;
/// Size of a page header (pgno u32 + flags u16).
pub const PAGE_HEADER_SIZE: usize = 6;
/// Size of the file trailer (post-apply checksum + file checksum).
pub const TRAILER_SIZE: usize = 16;
/// Smallest SQLite page size.
pub const MIN_PAGE_SIZE: u32 = 512;
/// Largest SQLite page size.
pub const MAX_PAGE_SIZE: u32 = 65536;

/// Header flag: the rolling database checksums are not tracked (both are 0).
/// Litestream 0.5.x always sets it; our encoder requires it.
pub const FLAG_NO_CHECKSUM: u32 = 1 << 1;
/// Every header flag the format defines.
pub(crate) const HEADER_FLAG_MASK: u32 = FLAG_NO_CHECKSUM;

/// Bit 63, set on every checksum stored in a file so that a stored checksum
/// is never 0.
pub const CHECKSUM_FLAG: u64 = 1 << 63;

/// Page header flag: a u32 compressed size follows and the page is one LZ4
/// block. Without it (files from Litestream 0.5.4–0.5.15) the page is one
/// LZ4 frame.
pub(crate) const PAGE_FLAG_SIZE: u16 = 1;

/// CRC-64 with Go's `crc64.ISO` table (`CRC-64/GO-ISO`).
pub(crate) static CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO);

/// SQLite's pending-byte offset; the page containing it is never written.
const PENDING_BYTE: u64 = 0x4000_0000;

/// The page number SQLite never uses (it holds the 1 GiB lock byte) for a
/// given page size. LTX files never contain it.
///
/// ```
/// assert_eq!(cluster_runtime::wal::ltx::lock_pgno(4096), 262_145);
/// ```
pub fn lock_pgno(page_size: u32) -> u32 {
    let page_size = u64::from(page_size.max(1));
    // PENDING_BYTE / 512 + 1 fits in u32 for every page size.
    u32::try_from(PENDING_BYTE / page_size + 1).unwrap_or(u32::MAX)
}

/// The 100-byte LTX header, field for field.
///
/// `Header::default()` has the `NoChecksum` flag set and everything else
/// zero except a 4096-byte page size; fill in `commit` and the TXIDs.
///
/// ```
/// use cluster_runtime::wal::ltx::Header;
///
/// let h = Header { commit: 1, min_txid: 1, max_txid: 1, ..Header::default() };
/// assert!(h.is_snapshot());
/// h.validate()?;
/// # Ok::<(), cluster_runtime::wal::ltx::LtxError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Header flags; only [`FLAG_NO_CHECKSUM`] is defined.
    pub flags: u32,
    /// Database page size in bytes (a power of two, 512..=65536).
    pub page_size: u32,
    /// Database size in pages after this file is applied.
    pub commit: u32,
    /// First transaction in the file.
    pub min_txid: u64,
    /// Last transaction in the file.
    pub max_txid: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Rolling database checksum before applying; 0 with `NoChecksum`.
    pub pre_apply_checksum: u64,
    /// Offset in the source WAL the pages came from; 0 if not from a WAL.
    pub wal_offset: i64,
    /// Bytes of the source WAL covered; 0 if not from a WAL.
    pub wal_size: i64,
    /// Salt-1 of the source WAL header; 0 if not from a WAL.
    pub wal_salt1: u32,
    /// Salt-2 of the source WAL header; 0 if not from a WAL.
    pub wal_salt2: u32,
    /// Id of the node that wrote the file; 0 if unset.
    pub node_id: u64,
}

impl Default for Header {
    fn default() -> Self {
        Header {
            flags: FLAG_NO_CHECKSUM,
            page_size: 4096,
            commit: 0,
            min_txid: 0,
            max_txid: 0,
            timestamp_ms: 0,
            pre_apply_checksum: 0,
            wal_offset: 0,
            wal_size: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            node_id: 0,
        }
    }
}

impl Header {
    /// A file whose range starts at TXID 1 holds the whole database.
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    /// True when the rolling database checksums are not tracked.
    pub fn no_checksum(&self) -> bool {
        self.flags & FLAG_NO_CHECKSUM != 0
    }

    /// The lock page for this header's page size; see [`lock_pgno`].
    pub fn lock_pgno(&self) -> u32 {
        lock_pgno(self.page_size)
    }

    /// Checks the rules Litestream's reader applies to a header.
    pub fn validate(&self) -> Result<(), LtxError> {
        let bad = |msg: String| Err(LtxError::InvalidHeader(msg));
        if self.flags & !HEADER_FLAG_MASK != 0 {
            return bad(format!(
                "unknown flags {:#010x} (only NoChecksum 0x2 is defined)",
                self.flags
            ));
        }
        if !is_valid_page_size(self.page_size) {
            return bad(format!(
                "page size {} is not a power of two between 512 and 65536",
                self.page_size
            ));
        }
        if self.min_txid == 0 || self.max_txid == 0 {
            return bad(format!(
                "TXID range {}..={} includes 0; TXIDs start at 1",
                self.min_txid, self.max_txid
            ));
        }
        if self.min_txid > self.max_txid {
            return bad(format!(
                "TXID range {}..={} is reversed",
                self.min_txid, self.max_txid
            ));
        }
        if self.wal_offset < 0 || self.wal_size < 0 {
            return bad(format!(
                "negative WAL offset {} or size {}",
                self.wal_offset, self.wal_size
            ));
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            return bad("WAL salts set without a WAL offset".to_owned());
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return bad("WAL size set without a WAL offset".to_owned());
        }
        if self.is_snapshot() || self.no_checksum() {
            if self.pre_apply_checksum != 0 {
                return bad(format!(
                    "pre-apply checksum {:#018x} must be 0 on a snapshot or with NoChecksum",
                    self.pre_apply_checksum
                ));
            }
        } else if self.pre_apply_checksum & CHECKSUM_FLAG == 0 {
            return bad(format!(
                "pre-apply checksum {:#018x} lacks bit 63 (required when checksums are tracked)",
                self.pre_apply_checksum
            ));
        }
        Ok(())
    }

    /// The 100 bytes of the header.
    pub(crate) fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// Parses the header fields; does not [`validate`](Self::validate).
    pub(crate) fn from_bytes(b: &[u8; HEADER_SIZE]) -> Result<Header, LtxError> {
        if &b[0..4] != MAGIC {
            return Err(LtxError::BadMagic {
                found: [b[0], b[1], b[2], b[3]],
            });
        }
        Ok(Header {
            flags: be_u32(b, 4),
            page_size: be_u32(b, 8),
            commit: be_u32(b, 12),
            min_txid: be_u64(b, 16),
            max_txid: be_u64(b, 24),
            timestamp_ms: be_u64(b, 32) as i64,
            pre_apply_checksum: be_u64(b, 40),
            wal_offset: be_u64(b, 48) as i64,
            wal_size: be_u64(b, 56) as i64,
            wal_salt1: be_u32(b, 64),
            wal_salt2: be_u32(b, 68),
            node_id: be_u64(b, 72),
        })
    }
}

/// The 16-byte LTX trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trailer {
    /// Rolling database checksum after applying; 0 with `NoChecksum`.
    pub post_apply_checksum: u64,
    /// `CHECKSUM_FLAG | crc64_iso(...)` of the file; see the module docs.
    pub file_checksum: u64,
}

impl Trailer {
    pub(crate) fn validate(&self, header: &Header) -> Result<(), LtxError> {
        if header.no_checksum() {
            if self.post_apply_checksum != 0 {
                return Err(LtxError::InvalidTrailer(format!(
                    "post-apply checksum {:#018x} must be 0 with NoChecksum",
                    self.post_apply_checksum
                )));
            }
        } else if self.post_apply_checksum & CHECKSUM_FLAG == 0 {
            return Err(LtxError::InvalidTrailer(format!(
                "post-apply checksum {:#018x} lacks bit 63",
                self.post_apply_checksum
            )));
        }
        if self.file_checksum & CHECKSUM_FLAG == 0 {
            return Err(LtxError::InvalidTrailer(format!(
                "file checksum {:#018x} lacks bit 63",
                self.file_checksum
            )));
        }
        Ok(())
    }
}

/// True for the page sizes SQLite allows.
pub(crate) fn is_valid_page_size(size: u32) -> bool {
    (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&size) && size.is_power_of_two()
}

/// The object name of a file covering `min_txid..=max_txid`.
///
/// ```
/// use cluster_runtime::wal::ltx;
/// assert_eq!(ltx::file_name(1, 0x2a), "0000000000000001-000000000000002a.ltx");
/// ```
pub fn file_name(min_txid: u64, max_txid: u64) -> String {
    format!("{min_txid:016x}-{max_txid:016x}.ltx")
}

/// Parses a name made by [`file_name`] back into `(min_txid, max_txid)`.
///
/// Only the exact form is accepted: 16 lowercase hex digits each, `.ltx`,
/// and `1 <= min <= max`.
///
/// ```
/// use cluster_runtime::wal::ltx;
/// assert_eq!(ltx::parse_file_name("0000000000000003-0000000000000007.ltx")?, (3, 7));
/// assert!(ltx::parse_file_name("0000000000000003-0000000000000007.LTX").is_err());
/// # Ok::<(), ltx::LtxError>(())
/// ```
pub fn parse_file_name(name: &str) -> Result<(u64, u64), LtxError> {
    let invalid = || LtxError::InvalidFileName {
        name: name.to_owned(),
    };
    let b = name.as_bytes();
    if b.len() != 37 || b[16] != b'-' || &b[33..] != b".ltx" {
        return Err(invalid());
    }
    let hex = |s: &[u8]| -> Option<u64> {
        s.iter().try_fold(0u64, |acc, &c| {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            Some(acc << 4 | u64::from(d))
        })
    };
    let min = hex(&b[0..16]).ok_or_else(invalid)?;
    let max = hex(&b[17..33]).ok_or_else(invalid)?;
    if min == 0 || min > max {
        return Err(invalid());
    }
    Ok((min, max))
}

pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(a)
}

pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Appends `v` as a Go `binary.PutUvarint` (LEB128).
pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a Go `binary.Uvarint` at `*pos`; `None` if truncated or over 64 bits.
pub(crate) fn get_uvarint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *buf.get(pos.checked_add(i)?)?;
        if i == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            *pos += i + 1;
            return Some(value);
        }
    }
    None
}
