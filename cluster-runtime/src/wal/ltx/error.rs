//! Why an LTX file could not be written, read or applied.

use std::io;
use std::path::PathBuf;

/// Why an LTX file could not be encoded, decoded or applied.
///
/// Decoding errors say where in the file the problem is; a corrupt or
/// truncated file is never partially returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LtxError {
    /// The input ends before a structure that must be there.
    #[error(
        "LTX file truncated: {what} needs {needed} bytes at offset {offset}, \
         but only {available} remain (incomplete upload or download?)"
    )]
    Truncated {
        /// The structure being read (`header`, `page header`, ...).
        what: &'static str,
        /// Byte offset where it starts.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left in the input from `offset`.
        available: usize,
    },
    /// The first four bytes are not `LTX1`.
    #[error("not an LTX file: starts with {found:02x?}, expected \"LTX1\"")]
    BadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// A header field is out of range or inconsistent with another.
    #[error("invalid LTX header: {0}")]
    InvalidHeader(String),
    /// A page frame is malformed, out of order or does not decompress to
    /// exactly one page.
    #[error("invalid LTX page frame at offset {offset} (page {pgno}): {reason}")]
    InvalidPage {
        /// Byte offset of the page header.
        offset: usize,
        /// Page number from the page header (0 if unreadable).
        pgno: u32,
        /// What is wrong.
        reason: String,
    },
    /// The page index after the pages is malformed or does not describe the
    /// page frames.
    #[error("invalid LTX page index at offset {offset}: {reason}")]
    InvalidIndex {
        /// Byte offset where the index starts.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// The trailer's checksums are malformed for this header's flags.
    #[error("invalid LTX trailer: {0}")]
    InvalidTrailer(String),
    /// The file checksum in the trailer does not match the content.
    #[error(
        "LTX file checksum mismatch: trailer says {stored:#018x}, content hashes to \
         {computed:#018x}; the file is corrupt — fetch it again or restore from an earlier snapshot"
    )]
    ChecksumMismatch {
        /// Checksum stored in the trailer.
        stored: u64,
        /// Checksum of the bytes read.
        computed: u64,
    },
    /// A file name is not `<16 hex>-<16 hex>.ltx` with `1 <= min <= max`.
    #[error(
        "invalid LTX file name {name:?}: expected <min>-<max>.ltx with 16 lowercase hex \
         digits each and 1 <= min <= max, e.g. 0000000000000001-0000000000000001.ltx"
    )]
    InvalidFileName {
        /// The refused name.
        name: String,
    },
    /// The caller asked the encoder for something the format cannot hold.
    #[error("cannot encode LTX file: {0}")]
    Encode(String),
    /// A database file is not one we can snapshot or apply onto.
    #[error("{path}: {reason}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file or stream failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path if there is one.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl LtxError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        LtxError::Io {
            context: context.into(),
            source,
        }
    }
}
