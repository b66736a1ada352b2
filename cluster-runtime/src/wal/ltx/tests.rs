//! Codec tests: round trips, refusals, corruption, and files written by real
//! Litestream 0.5.15 (LZ4 frames), 0.5.16 and 0.5.17 (LZ4 blocks) in
//! `testdata/`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::format::{self, CRC64};
use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Pages that compress differently: zeros, a pattern, pseudo-random bytes.
fn varied_page(page_size: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..page_size)
        .map(|i| match seed % 3 {
            0 => 0,
            1 => (i % 7) as u8,
            _ => {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
        })
        .collect()
}

fn header(page_size: u32, commit: u32, min_txid: u64, max_txid: u64) -> Header {
    Header {
        page_size,
        commit,
        min_txid,
        max_txid,
        timestamp_ms: 1_700_000_000_123,
        ..Header::default()
    }
}

#[test]
fn crc64_iso_matches_the_catalog_check_value() {
    // CRC-64/GO-ISO check value for "123456789" (Go's crc64.ISO table).
    assert_eq!(CRC64.checksum(b"123456789"), 0xb909_56c7_75a4_1001);
}

#[test]
fn header_fields_survive_a_round_trip() -> TestResult {
    let h = Header {
        flags: FLAG_NO_CHECKSUM,
        page_size: 65536,
        commit: 0x0102_0304,
        min_txid: 0x1112_1314_1516_1718,
        max_txid: 0x2122_2324_2526_2728,
        timestamp_ms: -5,
        pre_apply_checksum: 0,
        wal_offset: 32,
        wal_size: 0x4060,
        wal_salt1: 0xdead_beef,
        wal_salt2: 0x0bad_f00d,
        node_id: u64::MAX,
    };
    let bytes = h.to_bytes();
    assert_eq!(&bytes[..4], b"LTX1");
    assert_eq!(&bytes[80..], &[0u8; 20]);
    assert_eq!(Header::from_bytes(&bytes)?, h);
    Ok(())
}

#[test]
fn incremental_file_round_trips() -> TestResult {
    for page_size in [512u32, 4096, 65536] {
        let pages: Vec<(u32, Vec<u8>)> = [2u32, 3, 9, 40]
            .iter()
            .map(|&p| (p, varied_page(page_size as usize, p)))
            .collect();
        let h = header(page_size, 40, 7, 9);
        let bytes = encode(&h, pages.iter().map(|(p, d)| (*p, d.as_slice())))?;
        let file = decode(&bytes)?;
        assert_eq!(file.header, h);
        let got: Vec<(u32, Vec<u8>)> = file.pages.into_iter().map(|p| (p.pgno, p.data)).collect();
        assert_eq!(got, pages);
        assert_eq!(file.trailer.post_apply_checksum, 0);
        assert_ne!(file.trailer.file_checksum & CHECKSUM_FLAG, 0);
        // The trailer is the last 16 bytes, checksum last.
        assert_eq!(
            &bytes[bytes.len() - 8..],
            &file.trailer.file_checksum.to_be_bytes()
        );
    }
    Ok(())
}

#[test]
fn snapshot_round_trips_and_is_deterministic() -> TestResult {
    let pages: Vec<Vec<u8>> = (1..=12).map(|p| varied_page(1024, p)).collect();
    let h = header(1024, 12, 1, 3);
    let encode_once = || {
        encode(
            &h,
            pages
                .iter()
                .enumerate()
                .map(|(i, d)| (i as u32 + 1, d.as_slice())),
        )
    };
    let bytes = encode_once()?;
    assert_eq!(bytes, encode_once()?);
    let file = decode(&bytes)?;
    assert!(file.header.is_snapshot());
    assert_eq!(file.pages.len(), 12);
    for (i, page) in file.pages.iter().enumerate() {
        assert_eq!(page.pgno, i as u32 + 1);
        assert_eq!(page.data, pages[i]);
    }
    Ok(())
}

#[test]
fn encoder_refuses_what_litestream_would_refuse() {
    let p = vec![0u8; 512];
    type Case<'a> = (&'a str, Header, Vec<(u32, &'a [u8])>);
    let cases: Vec<Case<'_>> = vec![
        ("short page", header(512, 4, 2, 2), vec![(2, &p[..100])]),
        ("page 0", header(512, 4, 2, 2), vec![(0, &p)]),
        ("beyond commit", header(512, 4, 2, 2), vec![(5, &p)]),
        ("descending", header(512, 4, 2, 2), vec![(3, &p), (2, &p)]),
        ("duplicate", header(512, 4, 2, 2), vec![(3, &p), (3, &p)]),
        (
            "lock page",
            header(512, 3_000_000, 2, 2),
            vec![(lock_pgno(512), &p)],
        ),
        ("snapshot gap", header(512, 3, 1, 1), vec![(1, &p), (3, &p)]),
        (
            "snapshot short",
            header(512, 3, 1, 1),
            vec![(1, &p), (2, &p)],
        ),
        ("snapshot not from 1", header(512, 3, 1, 1), vec![(2, &p)]),
        ("commit 0", header(512, 0, 2, 2), vec![]),
        ("txid 0", header(512, 1, 0, 1), vec![]),
        ("reversed txids", header(512, 1, 5, 4), vec![]),
        ("page size 1000", header(1000, 1, 2, 2), vec![]),
        (
            "checksums tracked",
            Header {
                flags: 0,
                pre_apply_checksum: CHECKSUM_FLAG | 1,
                ..header(512, 1, 2, 2)
            },
            vec![],
        ),
        (
            "unknown flag",
            Header {
                flags: 0x6,
                ..header(512, 1, 2, 2)
            },
            vec![],
        ),
        (
            "salt without offset",
            Header {
                wal_salt1: 1,
                ..header(512, 1, 2, 2)
            },
            vec![],
        ),
        (
            "size without offset",
            Header {
                wal_size: 1,
                ..header(512, 1, 2, 2)
            },
            vec![],
        ),
    ];
    for (name, h, pages) in cases {
        let result = encode(&h, pages);
        assert!(
            result.is_err(),
            "{name}: expected a refusal, got {result:?}"
        );
    }
}

#[test]
fn lock_page_is_skipped_in_snapshot_order() {
    let lock = lock_pgno(4096);
    assert_eq!(lock, 262_145);
    assert_eq!(encode::next_snapshot_pgno(lock - 2, lock), lock - 1);
    assert_eq!(encode::next_snapshot_pgno(lock - 1, lock), lock + 1);
    assert_eq!(lock_pgno(512), 2_097_153);
    assert_eq!(lock_pgno(65536), 16_385);
}

#[test]
fn file_names_round_trip_and_reject_lookalikes() -> TestResult {
    assert_eq!(file_name(1, 1), "0000000000000001-0000000000000001.ltx");
    assert_eq!(
        file_name(0xabc, u64::MAX),
        "0000000000000abc-ffffffffffffffff.ltx"
    );
    assert_eq!(
        parse_file_name(&file_name(0xabc, u64::MAX))?,
        (0xabc, u64::MAX)
    );
    for bad in [
        "",
        "0000000000000001-0000000000000001",
        "0000000000000001-0000000000000001.ltx.tmp",
        "000000000000001-0000000000000001.ltx",
        "0000000000000001_0000000000000001.ltx",
        "000000000000000A-000000000000000B.ltx",
        "0000000000000000-0000000000000001.ltx",
        "0000000000000002-0000000000000001.ltx",
        "+000000000000001-0000000000000001.ltx",
        "00000000000000é-0000000000000001.ltx",
    ] {
        assert!(
            matches!(parse_file_name(bad), Err(LtxError::InvalidFileName { .. })),
            "{bad:?} accepted"
        );
    }
    Ok(())
}

/// A small file with pages of every compressibility.
fn sample_file() -> Vec<u8> {
    let pages: Vec<Vec<u8>> = (1..=3).map(|p| varied_page(512, p + 2)).collect();
    let h = Header {
        wal_offset: 32,
        wal_size: 1560,
        wal_salt1: 7,
        wal_salt2: 8,
        node_id: 42,
        ..header(512, 5, 4, 4)
    };
    encode(
        &h,
        [(2, pages[0].as_slice()), (3, &pages[1]), (5, &pages[2])],
    )
    .unwrap()
}

#[test]
fn every_truncation_is_refused() {
    let bytes = sample_file();
    for len in 0..bytes.len() {
        assert!(
            decode(&bytes[..len]).is_err(),
            "truncated to {len} bytes accepted"
        );
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = sample_file();
    bytes.push(0);
    assert!(decode(&bytes).is_err());
}

/// Every byte of the sample file, replaced by each of the 255 other values,
/// is refused — except where the change is inside a compressed payload and
/// the block still decompresses to the same page (an LZ4 match offset moved
/// to an identical earlier run). The file checksum covers uncompressed
/// pages, so those decode to exactly the original content: no wrong data is
/// ever returned.
#[test]
fn every_single_byte_corruption_is_refused_or_harmless() {
    let bytes = sample_file();
    let original = decode(&bytes).unwrap();
    let mut payload = vec![false; bytes.len()];
    let mut pos = HEADER_SIZE;
    for _ in &original.pages {
        let size = u32::from_be_bytes(bytes[pos + 6..pos + 10].try_into().unwrap()) as usize;
        payload[pos + 10..pos + 10 + size].fill(true);
        pos += 10 + size;
    }
    let mut harmless = 0;
    let mut refused = 0;
    let mut corrupt = bytes.clone();
    for i in 0..bytes.len() {
        for delta in 1..=255u8 {
            corrupt[i] = bytes[i].wrapping_add(delta);
            match decode(&corrupt) {
                Err(_) => refused += 1,
                Ok(decoded) => {
                    assert!(payload[i], "corrupt byte {i} outside LZ4 payload accepted");
                    assert_eq!(decoded, original, "byte {i} changed the decoded content");
                    harmless += 1;
                }
            }
        }
        corrupt[i] = bytes[i];
    }
    eprintln!(
        "{} bytes x 255 corruptions: {refused} refused, {harmless} decoded to identical pages",
        bytes.len()
    );
    assert!(
        harmless * 100 < refused,
        "too many harmless corruptions: {harmless}"
    );
}

#[test]
fn hostile_counts_do_not_allocate() {
    // A header claiming 4 billion 64 KiB pages with no pages behind it.
    let h = header(65536, u32::MAX, 2, 2);
    let bytes = encode(&h, []).unwrap();
    let file = decode(&bytes).unwrap();
    assert!(file.pages.is_empty());
    // A block size field far beyond the input is a truncation, not an allocation.
    let mut bytes = sample_file();
    bytes[HEADER_SIZE + 6..HEADER_SIZE + 10].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(decode(&bytes), Err(LtxError::Truncated { .. })));
}

#[test]
fn errors_say_what_and_where() {
    let bytes = sample_file();
    let msg = decode(&bytes[..50]).unwrap_err().to_string();
    assert!(msg.contains("truncated") && msg.contains("header"), "{msg}");
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(decode(&bad).unwrap_err().to_string().contains("LTX1"));
    let mut bad = bytes.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(decode(&bad)
        .unwrap_err()
        .to_string()
        .contains("checksum mismatch"));
}

// ---------------------------------------------------------------------------
// Files written by real Litestream (see testdata/make-fixtures.sh).

fn testdata(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/wal/ltx/testdata")
        .join(version)
        .join("ltx")
}

/// level -> [(min, max, bytes)] sorted by min TXID.
fn fixture_files(version: &str) -> BTreeMap<u32, Vec<(u64, u64, Vec<u8>)>> {
    let mut levels = BTreeMap::new();
    for level_dir in std::fs::read_dir(testdata(version)).unwrap() {
        let level_dir = level_dir.unwrap();
        let level: u32 = level_dir.file_name().to_str().unwrap().parse().unwrap();
        let mut files = Vec::new();
        for f in std::fs::read_dir(level_dir.path()).unwrap() {
            let f = f.unwrap();
            let (min, max) = parse_file_name(f.file_name().to_str().unwrap()).unwrap();
            files.push((min, max, std::fs::read(f.path()).unwrap()));
        }
        files.sort_by_key(|f| f.0);
        levels.insert(level, files);
    }
    levels
}

fn expected_rows() -> Vec<(i64, String)> {
    let row = |i: usize| format!("row-{i}-{}", "x".repeat(150 * i));
    vec![
        (1, row(1)),
        (2, "updated".to_owned()),
        (3, row(3)),
        (5, row(5)),
    ]
}

fn rows_and_integrity(path: &Path) -> (Vec<(i64, String)>, String) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (rows, check)
}

fn check_fixture(version: &str, frames: bool) {
    let levels = fixture_files(version);
    assert_eq!(levels.keys().copied().collect::<Vec<_>>(), vec![0, 1, 9]);
    for (level, files) in &levels {
        for (min, max, bytes) in files {
            let file =
                decode(bytes).unwrap_or_else(|e| panic!("{version} L{level} {min}-{max}: {e}"));
            let h = file.header;
            assert_eq!((h.min_txid, h.max_txid), (*min, *max));
            assert_eq!(
                (h.flags, h.page_size, h.pre_apply_checksum),
                (FLAG_NO_CHECKSUM, 1024, 0)
            );
            assert_eq!(file.trailer.post_apply_checksum, 0);
            // Page layout: flags 0 + LZ4 frame (0.5.15) or flag 1 + block.
            let flags = u16::from_be_bytes([bytes[HEADER_SIZE + 4], bytes[HEADER_SIZE + 5]]);
            assert_eq!(flags, if frames { 0 } else { 1 }, "{version} page flags");
            // What Litestream wrote, our encoder can write too.
            let again = encode(&h, file.pages.iter().map(|p| (p.pgno, p.data.as_slice()))).unwrap();
            assert_eq!(decode(&again).unwrap().pages, file.pages);
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let rebuild = |name: &str, chain: &[&(u64, u64, Vec<u8>)]| {
        let path = dir.path().join(name);
        let mut next = 1;
        for (min, max, bytes) in chain {
            assert_eq!(*min, next, "{name}: chain not contiguous");
            apply_to_db(&decode(bytes).unwrap(), &path).unwrap();
            next = max + 1;
        }
        assert_eq!(next, 9, "{name}: chain does not reach TXID 8");
        let (rows, check) = rows_and_integrity(&path);
        assert_eq!(check, "ok", "{version} {name}");
        assert_eq!(rows, expected_rows(), "{version} {name}");
    };
    rebuild("l0.db", &levels[&0].iter().collect::<Vec<_>>());
    rebuild("l1.db", &levels[&1].iter().collect::<Vec<_>>());
    rebuild("l9.db", &[levels[&9].last().unwrap()]);
}

#[test]
fn reads_litestream_0_5_17_block_files() {
    check_fixture("litestream-0.5.17", false);
}

#[test]
fn reads_litestream_0_5_16_block_files() {
    check_fixture("litestream-0.5.16", false);
}

#[test]
fn reads_litestream_0_5_15_frame_files() {
    check_fixture("litestream-0.5.15", true);
}

/// The legacy layout has the same guarantee: a changed byte is refused or
/// decodes to the identical page (an LZ4 match offset moved within a run).
#[test]
fn legacy_frame_corruption_is_refused_or_harmless() {
    let levels = fixture_files("litestream-0.5.15");
    let bytes = &levels[&0][4].2;
    let original = decode(bytes).unwrap();
    let mut corrupt = bytes.clone();
    let mut harmless = 0;
    for i in 0..bytes.len() {
        for delta in [0x01u8, 0x55, 0x80, 0xff] {
            corrupt[i] = bytes[i].wrapping_add(delta);
            if let Ok(decoded) = decode(&corrupt) {
                assert_eq!(decoded, original, "byte {i} changed the decoded content");
                harmless += 1;
            }
        }
        corrupt[i] = bytes[i];
    }
    eprintln!(
        "{} bytes x 4 corruptions: {harmless} decoded to identical pages, the rest refused",
        bytes.len()
    );
    for len in 0..bytes.len() {
        assert!(decode(&bytes[..len]).is_err());
    }
}

/// Writes a file in the 0.5.4–0.5.15 layout (flags 0 + one LZ4 frame per
/// page) with the given frame options, computing the checksum by the rules.
fn legacy_file(h: &Header, pages: &[(u32, Vec<u8>)], info: &lz4_flex::frame::FrameInfo) -> Vec<u8> {
    use std::io::Write;
    let mut out = h.to_bytes().to_vec();
    let mut crc = CRC64.digest();
    crc.update(&out);
    let mut index = Vec::new();
    for (pgno, data) in pages {
        let at = out.len();
        let mut head = pgno.to_be_bytes().to_vec();
        head.extend([0, 0]);
        crc.update(&head);
        crc.update(data);
        out.extend(&head);
        let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info.clone(), Vec::new());
        enc.write_all(data).unwrap();
        out.extend(enc.finish().unwrap());
        index.push((*pgno, at, out.len() - at));
    }
    let tail = out.len();
    out.extend([0u8; 6]);
    let index_at = out.len();
    for (pgno, at, len) in index {
        for v in [u64::from(pgno), at as u64, len as u64] {
            format::put_uvarint(&mut out, v);
        }
    }
    format::put_uvarint(&mut out, 0);
    let index_len = (out.len() - index_at) as u64;
    out.extend(index_len.to_be_bytes());
    out.extend(0u64.to_be_bytes());
    crc.update(&out[tail..]);
    out.extend((CHECKSUM_FLAG | crc.finalize()).to_be_bytes());
    out
}

#[test]
fn legacy_frames_with_optional_fields_decode() {
    use lz4_flex::frame::{BlockMode, BlockSize, FrameInfo};
    let pages: Vec<(u32, Vec<u8>)> = [1u32, 2, 3]
        .iter()
        .map(|&p| (p, varied_page(65536, p)))
        .collect();
    let h = header(65536, 3, 1, 2);
    let plain = FrameInfo::new().block_size(BlockSize::Max64KB);
    let options = [
        plain.clone(),
        plain.clone().content_checksum(true),
        plain
            .clone()
            .block_checksums(true)
            .content_size(Some(65536)),
        plain
            .clone()
            .block_mode(BlockMode::Linked)
            .content_checksum(true),
    ];
    for info in &options {
        let bytes = legacy_file(&h, &pages, info);
        let file = decode(&bytes).unwrap_or_else(|e| panic!("{info:?}: {e}"));
        let got: Vec<(u32, Vec<u8>)> = file.pages.into_iter().map(|p| (p.pgno, p.data)).collect();
        assert_eq!(got, pages, "{info:?}");
    }
    // Larger LZ4 blocks than Litestream ever wrote are refused (bounded allocation).
    let big = legacy_file(&h, &pages, &FrameInfo::new().block_size(BlockSize::Max4MB));
    assert!(matches!(decode(&big), Err(LtxError::InvalidPage { .. })));
}

// ---------------------------------------------------------------------------
// Database-file helpers against real SQLite.

fn sqlite_db(path: &Path, rows: std::ops::Range<i64>) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    for i in rows {
        conn.execute(
            "INSERT INTO t VALUES (?1, ?2)",
            (i, "v".repeat(i as usize % 3000)),
        )
        .unwrap();
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
}

/// Pages of `new` that differ from `old` (what a replicator would ship).
fn changed_pages(old: &[u8], new: &[u8], page_size: usize) -> Vec<(u32, Vec<u8>)> {
    new.chunks(page_size)
        .enumerate()
        .filter(|(i, page)| old.get(i * page_size..(i + 1) * page_size) != Some(*page))
        .map(|(i, page)| (i as u32 + 1, page.to_vec()))
        .collect()
}

#[test]
fn snapshot_then_incrementals_rebuild_a_real_database() -> TestResult {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.db");
    let dst = dir.path().join("dst.db");
    sqlite_db(&src, 0..300);

    let snap = snapshot_from_db(&src, 1, 1_700_000_000_000)?;
    let file = decode(&snap)?;
    assert_eq!(
        file.header.commit as usize * 4096,
        std::fs::metadata(&src)?.len() as usize
    );
    apply_to_db(&file, &dst)?;
    assert_eq!(std::fs::read(&dst)?, std::fs::read(&src)?);

    // Grow, then shrink (delete + VACUUM lowers commit, apply truncates).
    let mut txid = 1;
    for step in 0..2 {
        let before = std::fs::read(&src)?;
        if step == 0 {
            sqlite_db(&src, 300..600);
        } else {
            let conn = rusqlite::Connection::open(&src)?;
            conn.execute_batch(
                "DELETE FROM t WHERE id % 2 = 0; VACUUM; PRAGMA wal_checkpoint(TRUNCATE);",
            )?;
        }
        let after = std::fs::read(&src)?;
        let changed = changed_pages(&before, &after, 4096);
        txid += 1;
        let h = header(4096, (after.len() / 4096) as u32, txid, txid);
        let bytes = encode(&h, changed.iter().map(|(p, d)| (*p, d.as_slice())))?;
        apply_to_db(&decode(&bytes)?, &dst)?;
        assert_eq!(std::fs::read(&dst)?, after, "step {step}");
    }
    let (_, check) = {
        let conn = rusqlite::Connection::open(&dst)?;
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        ((), check)
    };
    assert_eq!(check, "ok");
    Ok(())
}

#[test]
fn apply_refuses_what_would_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let incremental = decode(&encode(&header(4096, 2, 5, 5), [(2, &[0u8; 4096][..])])?)?;
    // No database to apply an incremental onto.
    let missing = dir.path().join("missing.db");
    assert!(matches!(
        apply_to_db(&incremental, &missing),
        Err(LtxError::Io { .. })
    ));
    assert!(!missing.exists());
    // Page size differs from the database's.
    let db = dir.path().join("small.db");
    sqlite_db(&db, 0..1);
    let other = decode(&encode(&header(1024, 2, 5, 5), [(2, &[0u8; 1024][..])])?)?;
    let err = apply_to_db(&other, &db).unwrap_err();
    assert!(err.to_string().contains("page size"), "{err}");
    // Not a database at all.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![1u8; 4096])?;
    assert!(matches!(
        apply_to_db(&incremental, &junk),
        Err(LtxError::Database { .. })
    ));
    assert!(matches!(
        snapshot_from_db(&junk, 1, 0),
        Err(LtxError::Database { .. })
    ));
    Ok(())
}
