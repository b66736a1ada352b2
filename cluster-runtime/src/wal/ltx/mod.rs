//! LTX v3 files: one SQLite transaction (or a compacted range of them) as
//! the changed pages, exactly as Litestream 0.5.x stores them.
//!
//! # Guarantees
//!
//! - [`encode`] / [`Encoder`] write what Litestream 0.5.16+ writes (one LZ4
//!   *block* per page) and refuse anything its reader would refuse: pages out
//!   of order, the SQLite lock page, a snapshot with a missing page.
//! - [`decode`] reads both page layouts Litestream 0.5.x has used (LZ4 blocks
//!   and, for files from 0.5.4–0.5.15, one LZ4 *frame* per page), checks the
//!   CRC-64/ISO file checksum and the page index, and returns an error — never
//!   panics — on corrupt, truncated or padded input. It trusts no count in
//!   the file: it allocates one page buffer per page frame actually present
//!   and decompressed, so memory stays within LZ4's maximum ratio (about
//!   255x) of the input plus one page.
//!
//! # Layout
//!
//! All integers are big-endian unless noted.
//!
//! ```text
//! header   100 B  "LTX1", flags u32, page size u32, commit u32 (db size in
//!                 pages after the tx), min/max TXID u64, timestamp ms i64,
//!                 pre-apply checksum u64, WAL offset i64, WAL size i64,
//!                 WAL salt1/salt2 u32, node id u64, 20 zero bytes
//! pages    per page, ascending pgno: pgno u32, flags u16 (bit 0 = "size
//!                 follows"), size u32, LZ4 block of exactly page-size bytes
//!                 (legacy: flags 0 and an LZ4 frame instead of size+block)
//! end      6 zero bytes (a page header with pgno 0, flags 0)
//! index    per page: uvarint pgno, uvarint offset, uvarint frame size;
//!          uvarint 0; then u64 byte length of the index
//! trailer  post-apply checksum u64, file checksum u64
//! ```
//!
//! The file checksum is `1 << 63 | crc64_iso(...)` over the header, page
//! headers, size fields, the *uncompressed* page bytes, the end marker, the
//! index and the post-apply checksum — every byte except the compressed
//! payloads and the checksum itself. Litestream sets the `NoChecksum` flag
//! (0x2) and leaves the rolling database checksums at 0; so do we.
//!
//! # Example
//!
//! ```
//! use cluster_runtime::wal::ltx::{self, Header};
//!
//! let page = vec![7u8; 4096];
//! let header = Header { page_size: 4096, commit: 3, min_txid: 5, max_txid: 5, ..Header::default() };
//! let bytes = ltx::encode(&header, [(2, page.as_slice())])?;
//!
//! let file = ltx::decode(&bytes)?;
//! assert_eq!(file.header, header);
//! assert_eq!(file.pages[0].pgno, 2);
//! assert_eq!(file.pages[0].data, page);
//! assert_eq!(ltx::file_name(5, 5), "0000000000000005-0000000000000005.ltx");
//! # Ok::<(), ltx::LtxError>(())
//! ```

mod db;
mod decode;
mod encode;
mod error;
mod format;

pub use db::{apply_to_db, snapshot_from_db, write_snapshot_from_db};
pub use decode::{decode, decode_header, Decoded, Page};
pub use encode::{encode, Encoder};
pub use error::LtxError;
pub use format::{
    file_name, lock_pgno, parse_file_name, Header, Trailer, CHECKSUM_FLAG, FLAG_NO_CHECKSUM,
    HEADER_SIZE, MAGIC, MAX_PAGE_SIZE, MIN_PAGE_SIZE, PAGE_HEADER_SIZE, TRAILER_SIZE,
};

#[cfg(test)]
mod tests;
