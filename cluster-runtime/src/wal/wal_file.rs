//! Reading SQLite's write-ahead log (`<db>-wal`) frame by frame.
//!
//! The WAL is a 32-byte header followed by frames of a 24-byte header and one
//! page. A frame belongs to the current WAL *generation* only if its salts
//! equal the header's and its cumulative checksum (seeded by the header's)
//! matches; the first frame that fails either check ends the log, exactly as
//! SQLite's own recovery reads it. A frame with a non-zero "commit size" ends
//! a transaction; frames after the last such frame are an uncommitted (or
//! torn) transaction and are never returned.
//!
//! [`WalCursor`] remembers where the last committed transaction ended and the
//! checksum there, so each call reads only what was appended since.
//!
//! ```no_run
//! use cluster_runtime::wal::wal_file::{read_header, WalCursor};
//! # fn main() -> Result<(), cluster_runtime::wal::WalError> {
//! let path = std::path::Path::new("app.db-wal");
//! let mut file = std::fs::File::open(path).map_err(|e| cluster_runtime::wal::WalError::io(path, e))?;
//! if let Some(header) = read_header(&mut file, path)? {
//!     let mut cursor = WalCursor::new(header);
//!     for tx in cursor.read_commits(&mut file, path)? {
//!         println!("commit: {} pages, database now {} pages", tx.pages.len(), tx.db_size);
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::WalError;

/// Size of the WAL file header.
pub const WAL_HEADER_SIZE: u64 = 32;
/// Size of a WAL frame header.
pub const FRAME_HEADER_SIZE: u64 = 24;
/// Magic with little-endian checksum words.
const MAGIC_LE: u32 = 0x377f_0682;
/// Magic with big-endian checksum words.
const MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version SQLite writes.
const VERSION: u32 = 3_007_000;

/// The WAL file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Checksum words are big-endian (magic `0x377f0683`).
    pub big_endian: bool,
    /// Database page size.
    pub page_size: u32,
    /// Checkpoint sequence number (incremented on every WAL restart).
    pub checkpoint_seq: u32,
    /// Salt-1: incremented on every WAL restart.
    pub salt1: u32,
    /// Salt-2: a fresh random value on every WAL restart.
    pub salt2: u32,
    /// The header checksum, which seeds the first frame's.
    pub checksum: (u32, u32),
}

impl WalHeader {
    /// Parses and verifies 32 header bytes; `None` when they are not a valid
    /// header (SQLite then treats the WAL as empty).
    pub fn parse(b: &[u8]) -> Option<WalHeader> {
        if b.len() < WAL_HEADER_SIZE as usize {
            return None;
        }
        let magic = be32(b, 0);
        let big_endian = match magic {
            MAGIC_BE => true,
            MAGIC_LE => false,
            _ => return None,
        };
        if be32(b, 4) != VERSION {
            return None;
        }
        let page_size = be32(b, 8);
        let page_size = if page_size == 1 { 65536 } else { page_size };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return None;
        }
        let checksum = (be32(b, 24), be32(b, 28));
        if wal_checksum(big_endian, (0, 0), &b[..24]) != checksum {
            return None;
        }
        Some(WalHeader {
            big_endian,
            page_size,
            checkpoint_seq: be32(b, 12),
            salt1: be32(b, 16),
            salt2: be32(b, 20),
            checksum,
        })
    }

    /// Both salts, which identify one WAL generation.
    pub fn salts(&self) -> (u32, u32) {
        (self.salt1, self.salt2)
    }
}

/// Reads the header of an open WAL file; `Ok(None)` when the file is shorter
/// than a header or the header is invalid (an empty or reset WAL).
pub fn read_header(file: &mut File, path: &Path) -> Result<Option<WalHeader>, WalError> {
    let mut buf = [0u8; WAL_HEADER_SIZE as usize];
    file.seek(SeekFrom::Start(0))
        .map_err(|e| WalError::io(path, e))?;
    match file.read_exact(&mut buf) {
        Ok(()) => Ok(WalHeader::parse(&buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(WalError::io(path, e)),
    }
}

/// One committed transaction read from the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalCommit {
    /// The latest version of every page the transaction wrote.
    pub pages: BTreeMap<u32, Vec<u8>>,
    /// Database size in pages after the commit.
    pub db_size: u32,
    /// Offset of the transaction's first frame.
    pub offset: u64,
    /// Offset just past its commit frame.
    pub end: u64,
    /// Frames the transaction occupies.
    pub frames: u64,
}

/// A position in one WAL generation: just after the last committed frame
/// read, with the running checksum there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalCursor {
    /// The generation's header.
    pub header: WalHeader,
    /// Offset of the next frame to read.
    pub offset: u64,
    /// Cumulative checksum after the last committed frame read.
    pub checksum: (u32, u32),
}

impl WalCursor {
    /// A cursor at the first frame of the generation `header` starts.
    pub fn new(header: WalHeader) -> Self {
        WalCursor {
            header,
            offset: WAL_HEADER_SIZE,
            checksum: header.checksum,
        }
    }

    /// Size of one frame (header + page).
    pub fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE + u64::from(self.header.page_size)
    }

    /// Frames of this generation before the cursor.
    pub fn frames_before(&self) -> u64 {
        (self.offset - WAL_HEADER_SIZE) / self.frame_size()
    }

    /// True when a valid frame of this generation starts at the cursor: a
    /// cheap test (one 24-byte read) for "something was appended".
    pub fn has_next_frame(&self, file: &mut File, path: &Path) -> Result<bool, WalError> {
        let mut fh = [0u8; FRAME_HEADER_SIZE as usize];
        file.seek(SeekFrom::Start(self.offset))
            .map_err(|e| WalError::io(path, e))?;
        match file.read_exact(&mut fh) {
            Ok(()) => Ok((be32(&fh, 8), be32(&fh, 12)) == self.header.salts()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(WalError::io(path, e)),
        }
    }

    /// Reads every transaction committed after the cursor and advances the
    /// cursor past the last one. Stops silently at the first frame that is
    /// not part of this generation (wrong salts or checksum) or is
    /// truncated: that is where SQLite's log ends too.
    pub fn read_commits(
        &mut self,
        file: &mut File,
        path: &Path,
    ) -> Result<Vec<WalCommit>, WalError> {
        let len = file.metadata().map_err(|e| WalError::io(path, e))?.len();
        if len <= self.offset {
            return Ok(Vec::new());
        }
        let frame_size = self.frame_size();
        let frames = (len - self.offset) / frame_size;
        if frames == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; usize::try_from(frames * frame_size).unwrap_or(usize::MAX)];
        file.seek(SeekFrom::Start(self.offset))
            .map_err(|e| WalError::io(path, e))?;
        // The file may shrink under us only through a truncation of the WAL
        // by a checkpoint; then we read what is there and stop at EOF.
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(WalError::io(path, e)),
            }
        }
        let usable = filled - filled % frame_size as usize;
        let page_size = self.header.page_size as usize;
        let mut commits = Vec::new();
        let mut pending: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let mut checksum = self.checksum;
        let mut tx_start = self.offset;
        let mut tx_frames = 0;
        for (i, frame) in buf[..usable].chunks_exact(frame_size as usize).enumerate() {
            let (fh, page) = frame.split_at(FRAME_HEADER_SIZE as usize);
            if (be32(fh, 8), be32(fh, 12)) != self.header.salts() {
                break;
            }
            let sum = wal_checksum(self.header.big_endian, checksum, &fh[..8]);
            let sum = wal_checksum(self.header.big_endian, sum, page);
            if sum != (be32(fh, 16), be32(fh, 20)) {
                break;
            }
            checksum = sum;
            let pgno = be32(fh, 0);
            if pgno == 0 {
                break;
            }
            pending.insert(pgno, page[..page_size].to_vec());
            tx_frames += 1;
            let db_size = be32(fh, 4);
            if db_size != 0 {
                let end = self.offset + (i as u64 + 1) * frame_size;
                // Pages past the new end of the database were truncated away.
                pending.retain(|&p, _| p <= db_size);
                commits.push(WalCommit {
                    pages: std::mem::take(&mut pending),
                    db_size,
                    offset: tx_start,
                    end,
                    frames: tx_frames,
                });
                self.checksum = checksum;
                tx_start = end;
                tx_frames = 0;
            }
        }
        if let Some(last) = commits.last() {
            self.offset = last.end;
        }
        Ok(commits)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// SQLite's WAL checksum (`walChecksumBytes`): Fibonacci-weighted sums of
/// 32-bit words in the byte order the magic selects. `data.len()` is a
/// multiple of 8 for every caller.
pub fn wal_checksum(big_endian: bool, seed: (u32, u32), data: &[u8]) -> (u32, u32) {
    let (mut s1, mut s2) = seed;
    for chunk in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(chunk, 0), be32(chunk, 4))
        } else {
            (
                u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            )
        };
        s1 = s1.wrapping_add(x0).wrapping_add(s2);
        s2 = s2.wrapping_add(x1).wrapping_add(s1);
    }
    (s1, s2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(big_endian: bool, page_size: u32, salts: (u32, u32)) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(if big_endian { MAGIC_BE } else { MAGIC_LE }).to_be_bytes());
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.extend_from_slice(&page_size.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&salts.0.to_be_bytes());
        b.extend_from_slice(&salts.1.to_be_bytes());
        let (c1, c2) = wal_checksum(big_endian, (0, 0), &b);
        b.extend_from_slice(&c1.to_be_bytes());
        b.extend_from_slice(&c2.to_be_bytes());
        b
    }

    #[allow(clippy::too_many_arguments)]
    fn frame(
        wal: &mut Vec<u8>,
        big_endian: bool,
        sum: &mut (u32, u32),
        pgno: u32,
        commit: u32,
        salts: (u32, u32),
        fill: u8,
        page_size: usize,
    ) {
        let mut fh = Vec::new();
        fh.extend_from_slice(&pgno.to_be_bytes());
        fh.extend_from_slice(&commit.to_be_bytes());
        fh.extend_from_slice(&salts.0.to_be_bytes());
        fh.extend_from_slice(&salts.1.to_be_bytes());
        let page = vec![fill; page_size];
        *sum = wal_checksum(big_endian, *sum, &fh[..8]);
        *sum = wal_checksum(big_endian, *sum, &page);
        fh.extend_from_slice(&sum.0.to_be_bytes());
        fh.extend_from_slice(&sum.1.to_be_bytes());
        wal.extend_from_slice(&fh);
        wal.extend_from_slice(&page);
    }

    #[test]
    fn reads_commits_and_stops_at_torn_or_foreign_frames() {
        for big_endian in [false, true] {
            let salts = (7, 9);
            let mut wal = header_bytes(big_endian, 512, salts);
            let header = WalHeader::parse(&wal).expect("valid header");
            let mut sum = header.checksum;
            frame(&mut wal, big_endian, &mut sum, 2, 0, salts, 1, 512);
            frame(&mut wal, big_endian, &mut sum, 3, 3, salts, 2, 512);
            frame(&mut wal, big_endian, &mut sum, 2, 3, salts, 3, 512);
            // An uncommitted frame, then one of an older generation.
            frame(&mut wal, big_endian, &mut sum, 1, 0, salts, 4, 512);
            frame(&mut wal, big_endian, &mut sum, 1, 5, (6, 9), 5, 512);
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("db-wal");
            std::fs::write(&path, &wal).expect("write");
            let mut file = File::open(&path).expect("open");
            let mut cursor = WalCursor::new(read_header(&mut file, &path).unwrap().unwrap());
            let commits = cursor.read_commits(&mut file, &path).unwrap();
            assert_eq!(commits.len(), 2);
            assert_eq!(commits[0].pages.keys().copied().collect::<Vec<_>>(), [2, 3]);
            assert_eq!(commits[0].db_size, 3);
            assert_eq!(commits[1].pages[&2], vec![3u8; 512]);
            assert_eq!(cursor.offset, 32 + 3 * (24 + 512));
            assert!(cursor.has_next_frame(&mut file, &path).unwrap());
            // Nothing new is committed: a second read returns nothing.
            assert!(cursor.read_commits(&mut file, &path).unwrap().is_empty());
            // A flipped byte in a committed page ends the log before it.
            wal[32 + 24 + 5] ^= 1;
            std::fs::write(&path, &wal).expect("write");
            let mut cursor = WalCursor::new(header);
            assert!(cursor.read_commits(&mut file, &path).unwrap().is_empty());
        }
    }

    #[test]
    fn refuses_bad_headers() {
        let good = header_bytes(false, 4096, (1, 2));
        assert!(WalHeader::parse(&good).is_some());
        for i in 0..32 {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(WalHeader::parse(&bad).is_none(), "byte {i}");
        }
        assert!(WalHeader::parse(&good[..31]).is_none());
    }
}
