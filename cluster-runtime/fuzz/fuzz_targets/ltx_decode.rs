//! `wal::ltx::decode` on arbitrary bytes: it must return, never panic, and
//! anything it accepts must be a file our encoder writes back identically.
//!
//! Seed with the Litestream-written fixtures so the fuzzer starts from real
//! files:
//!   mkdir -p fuzz/corpus/ltx_decode
//!   find src/wal/ltx/testdata -name '*.ltx' -exec cp {} fuzz/corpus/ltx_decode/ \;
//!   cargo +nightly fuzz run ltx_decode -- -max_total_time=60

#![no_main]

use cluster_runtime::wal::ltx;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = ltx::decode_header(data);
    let Ok(file) = ltx::decode(data) else {
        return;
    };
    assert_eq!(header.ok(), Some(file.header));
    file.header.validate().expect("accepted header is valid");
    let size = file.header.page_size as usize;
    let mut prev = 0;
    for page in &file.pages {
        assert!(page.pgno > prev && page.pgno <= file.header.commit);
        assert_eq!(page.data.len(), size);
        prev = page.pgno;
    }
    // Our encoder needs NoChecksum and at least one page in the database.
    if file.header.no_checksum() && file.header.commit >= 1 {
        let pages = file.pages.iter().map(|p| (p.pgno, p.data.as_slice()));
        let again = ltx::encode(&file.header, pages).expect("accepted file re-encodes");
        let round = ltx::decode(&again).expect("re-encoded file decodes");
        assert_eq!(round.header, file.header);
        assert_eq!(round.pages, file.pages);
    }
});
