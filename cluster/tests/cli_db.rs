//! `cluster db replicate` and `cluster db restore`: the real binary against
//! a real nats-server, real SQLite files and stock Litestream 0.5.17.
//!
//! - a database under writes, replicated until SIGTERM, restores (with
//!   stock `litestream restore` and with `cluster db restore`) to exactly
//!   the source;
//! - a bucket stock `litestream replicate` wrote restores with
//!   `cluster db restore` to exactly the source;
//! - `--txid` restores an earlier state; an existing output, a missing
//!   bucket, an unknown TXID, a corrupt object, a missing database and an
//!   unreachable NATS are refused with a message naming the culprit.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cluster::runtime::wal::bucket::WalBucket;
use cluster_testing::litestream::{Litestream, LitestreamConfig};
use cluster_testing::{NatsServer, ServerOptions};
use rusqlite::Connection;

const CLI: &str = env!("CARGO_BIN_EXE_cluster");

/// The outcome of one `cluster` run.
#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn cli(url: &str, args: &[&str]) -> Run {
    let out = Command::new(CLI)
        .args(["--nats", url])
        .args(args)
        .output()
        .expect("run cluster");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

async fn start_server() -> NatsServer {
    NatsServer::start(ServerOptions::default())
        .await
        .expect("start nats-server (run scripts/test.sh to install it)")
}

async fn jetstream(server: &NatsServer) -> async_nats::jetstream::Context {
    let client = async_nats::connect(server.url()).await.expect("connect");
    async_nats::jetstream::new(client)
}

// ---------------------------------------------------------------------------
// A running `cluster db replicate`
// ---------------------------------------------------------------------------

struct Replicating {
    child: Option<Child>,
    stdout: BufReader<ChildStdout>,
    stderr_path: PathBuf,
}

impl Replicating {
    /// Starts `cluster db replicate` and waits for its start line.
    fn start(url: &str, db: &Path, bucket: &str, dir: &Path) -> (Self, String) {
        let stderr_path = dir.join(format!("replicate-{bucket}.err"));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(CLI)
            .args(["--nats", url, "db", "replicate", "--db", path_str(db)])
            .args(["--bucket", bucket])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn cluster db replicate");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut r = Replicating {
            child: Some(child),
            stdout,
            stderr_path,
        };
        let mut line = String::new();
        r.stdout.read_line(&mut line).expect("read start line");
        assert!(
            line.starts_with("replicating "),
            "no start line: {line:?}; stderr:\n{}",
            r.stderr()
        );
        (r, line)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM; waits (up to 30 s) for the exit. Returns the status and
    /// the rest of stdout.
    fn terminate(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "cluster db replicate ignored SIGTERM for 30 s; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("read stdout");
        (status, rest)
    }
}

impl Drop for Replicating {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM, expect exit 0 and the final TXID line; returns that TXID.
fn stop(r: Replicating, bucket: &str) -> u64 {
    let stderr_path = r.stderr_path.clone();
    let (status, rest) = r.terminate();
    let stderr = std::fs::read_to_string(stderr_path).unwrap_or_default();
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    let prefix = format!("stopped; bucket `{bucket}` holds TXID ");
    let hex = rest
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no final TXID line in {rest:?}; stderr:\n{stderr}"));
    assert_eq!(hex.len(), 16, "{hex:?}");
    u64::from_str_radix(hex, 16).expect("hex TXID")
}

// ---------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------

fn create_db(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
    )
    .expect("create");
    conn
}

/// One transaction: four inserts (some overflowing a page), an update and
/// two deletes of older rows, all derived from `step`.
fn write_step(conn: &Connection, step: i64) {
    conn.execute_batch("BEGIN").expect("begin");
    for i in 0..4 {
        let id = step * 10 + i;
        let len = ((id * 131) % 9000 + 1) as usize;
        let v: Vec<u8> = (0..len).map(|k| (id as usize * 7 + k) as u8).collect();
        conn.execute("INSERT INTO t (id, v) VALUES (?1, ?2)", (id, v))
            .expect("insert");
    }
    conn.execute(
        "UPDATE t SET v = randomblob(64) WHERE id % 13 = ?1",
        [step % 13],
    )
    .expect("update");
    conn.execute(
        "DELETE FROM t WHERE id IN (?1, ?2)",
        [(step - 3) * 10 + 1, (step - 5) * 10 + 2],
    )
    .expect("delete");
    conn.execute_batch("COMMIT").expect("commit");
}

/// `PRAGMA integrity_check`, the row count and a digest of every row.
fn contents(path: &Path) -> (String, usize, u64) {
    let conn = Connection::open(path).expect("open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    let mut stmt = conn
        .prepare("SELECT id, v FROM t ORDER BY id")
        .expect("prepare");
    let rows: Vec<(i64, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, v) in &rows {
        for b in id.to_le_bytes().iter().chain(v) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    (check, rows.len(), h)
}

fn assert_same(restored: &Path, source: &(String, usize, u64), what: &str) {
    let got = contents(restored);
    assert_eq!(got.0, "ok", "{what}: integrity_check");
    assert_eq!(got, *source, "{what}: rows differ from the source");
}

/// `cluster db restore`; expects success and the summary line, returns
/// the TXID it names.
fn cluster_restore(url: &str, bucket: &str, out: &Path, extra: &[&str]) -> u64 {
    let run = cli(
        url,
        &[
            &["db", "restore", "--bucket", bucket, "-o", path_str(out)],
            extra,
        ]
        .concat(),
    );
    assert!(run.ok, "cluster db restore failed: {}", run.stderr);
    let line = run.stdout.trim_end();
    let rest = line
        .strip_prefix("restored TXID ")
        .unwrap_or_else(|| panic!("unexpected output {line:?}"));
    assert!(
        line.ends_with(&format!(" bytes) to {}", out.display())),
        "{line:?}"
    );
    assert!(rest.contains(" files, "), "{line:?}");
    u64::from_str_radix(&rest[..16], 16).expect("hex TXID")
}

fn stock_restore(dir: &Path, url: &str, db: &Path, bucket: &str, out: &Path) {
    let conf_dir = dir.join(format!("ls-{bucket}"));
    std::fs::create_dir_all(&conf_dir).expect("mkdir");
    Litestream::new(&conf_dir, LitestreamConfig::new(db, url, bucket))
        .expect("litestream (run `source scripts/lib/tools.sh && ensure_litestream`)")
        .restore(out)
        .expect("litestream restore");
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Replicate under writes, SIGTERM: exit 0, and both stock `litestream
/// restore` and `cluster db restore` give back the source at the printed
/// TXID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_until_sigterm_restores_with_litestream_and_cluster() {
    let server = start_server().await;
    let url = server.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = create_db(&db);
    for step in 0..5 {
        write_step(&conn, step);
    }

    let (replicating, start) = Replicating::start(&url, &db, "cli_app_wal", dir.path());
    assert!(start.contains("cli_app_wal"), "{start:?}");
    // Writes from another thread while the replicator runs; the WAL
    // passes the auto-checkpoint threshold several times.
    let writer_db = db.clone();
    let writer = std::thread::spawn(move || {
        let conn = create_db(&writer_db);
        for step in 5..400 {
            write_step(&conn, step);
            if step % 40 == 0 {
                std::thread::sleep(Duration::from_millis(15));
            }
        }
    });
    writer.join().expect("writer");
    // No wait: SIGTERM must ship what is committed before it exits.
    let txid = stop(replicating, "cli_app_wal");
    let source = contents(&db);
    assert_eq!(source.0, "ok");
    assert!(source.1 > 500, "{source:?}");

    let theirs = dir.path().join("theirs.db");
    stock_restore(dir.path(), &url, &db, "cli_app_wal", &theirs);
    assert_same(&theirs, &source, "litestream restore");

    let ours = dir.path().join("ours.db");
    assert_eq!(cluster_restore(&url, "cli_app_wal", &ours, &[]), txid);
    assert_same(&ours, &source, "cluster db restore");

    // --json: the same restore as one object.
    let json_out = dir.path().join("json.db");
    let run = cli(
        &url,
        &[
            "--json",
            "db",
            "restore",
            "--bucket",
            "cli_app_wal",
            "-o",
            path_str(&json_out),
        ],
    );
    assert!(run.ok, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(v["txid"], format!("{txid:016x}"));
    assert_eq!(v["bucket"], "cli_app_wal");
    assert!(v["files"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(v["bytes"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert_same(&json_out, &source, "cluster db restore --json");
}

/// A bucket stock `litestream replicate` wrote restores with `cluster db
/// restore` to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_a_bucket_stock_litestream_replicated() {
    let server = start_server().await;
    let url = server.url();
    let js = jetstream(&server).await;
    // Litestream 0.5.17 does not create its bucket.
    WalBucket::open_or_create(&js, "cli_ls_wal", 1)
        .await
        .expect("create bucket");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = create_db(&db);
    let ls_dir = dir.path().join("ls");
    std::fs::create_dir_all(&ls_dir).expect("mkdir");
    let mut config = LitestreamConfig::new(&db, &url, "cli_ls_wal");
    config.monitor_interval = Some(Duration::from_millis(50));
    config.sync_interval = Some(Duration::from_millis(50));
    let litestream = Litestream::new(&ls_dir, config).expect("litestream");
    let mut replicating = litestream.replicate().expect("litestream replicate");
    for step in 0..120 {
        write_step(&conn, step);
        if step % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let source = contents(&db);

    // Litestream ships asynchronously: wait until its own restore matches.
    let theirs = dir.path().join("theirs.db");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = std::fs::remove_file(&theirs);
        if litestream.restore(&theirs).is_ok() && contents(&theirs) == source {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "litestream never shipped everything; its log:\n{}",
            replicating.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    replicating.stop();

    let ours = dir.path().join("ours.db");
    cluster_restore(&url, "cli_ls_wal", &ours, &[]);
    assert_same(&ours, &source, "cluster db restore of a Litestream bucket");
}

/// `--txid` restores the state as of an earlier TXID; an existing output
/// needs `--force`; a missing bucket and an unknown TXID are errors naming
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txid_force_and_missing_bucket() {
    let server = start_server().await;
    let url = server.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = create_db(&db);

    // Two replication sessions: the first stops at `early`, the second
    // continues the same bucket to `late`.
    let (r, _) = Replicating::start(&url, &db, "cli_txid_wal", dir.path());
    for step in 0..30 {
        write_step(&conn, step);
    }
    let early = stop(r, "cli_txid_wal");
    let early_rows = contents(&db);
    let (r, start) = Replicating::start(&url, &db, "cli_txid_wal", dir.path());
    assert!(
        start.contains(&format!("after TXID {early:016x}")),
        "{start:?}"
    );
    for step in 30..80 {
        write_step(&conn, step);
    }
    let late = stop(r, "cli_txid_wal");
    let late_rows = contents(&db);
    assert!(late > early, "{early} {late}");
    assert_ne!(early_rows, late_rows);

    // Short hex works as well as 16 digits.
    let out = dir.path().join("early.db");
    let short = format!("{early:x}");
    assert_eq!(
        cluster_restore(&url, "cli_txid_wal", &out, &["--txid", &short]),
        early
    );
    assert_same(&out, &early_rows, "restore --txid");

    // OUT exists: refused, untouched; --force replaces it.
    let run = cli(
        &url,
        &[
            "db",
            "restore",
            "--bucket",
            "cli_txid_wal",
            "-o",
            path_str(&out),
        ],
    );
    assert!(!run.ok, "overwrote without --force: {}", run.stdout);
    assert!(
        run.stderr.contains("already exists") && run.stderr.contains("--force"),
        "{}",
        run.stderr
    );
    assert_same(&out, &early_rows, "refused restore left OUT alone");
    assert_eq!(
        cluster_restore(&url, "cli_txid_wal", &out, &["--force"]),
        late
    );
    assert_same(&out, &late_rows, "restore --force");

    // A TXID the bucket never reached; a TXID that is not hex.
    let beyond = format!("{:016x}", late + 100);
    let missing = dir.path().join("beyond.db");
    let run = cli(
        &url,
        &[
            "db",
            "restore",
            "--bucket",
            "cli_txid_wal",
            "-o",
            path_str(&missing),
            "--txid",
            &beyond,
        ],
    );
    assert!(!run.ok, "restored an unknown TXID: {}", run.stdout);
    assert!(run.stderr.contains(&beyond), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("{late:016x}")),
        "names the newest TXID: {}",
        run.stderr
    );
    assert!(!missing.exists());
    let run = cli(
        &url,
        &[
            "db",
            "restore",
            "--bucket",
            "cli_txid_wal",
            "-o",
            path_str(&missing),
            "--txid",
            "12345678901234567",
        ],
    );
    assert!(!run.ok);
    assert!(run.stderr.contains("is not a TXID"), "{}", run.stderr);

    // A bucket nobody wrote.
    let run = cli(
        &url,
        &[
            "db",
            "restore",
            "--bucket",
            "nobody_wal",
            "-o",
            path_str(&missing),
        ],
    );
    assert!(!run.ok, "restored a missing bucket: {}", run.stdout);
    assert!(run.stderr.contains("`nobody_wal`"), "{}", run.stderr);
    assert!(!missing.exists());
}

/// A missing database, an unreachable NATS and a corrupt object each stop
/// the command with exit ≠ 0 and a message naming the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.db");

    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let nowhere = format!("nats://127.0.0.1:{port}");
    let run = cli(
        &nowhere,
        &["db", "restore", "--bucket", "b_wal", "-o", path_str(&out)],
    );
    assert!(!run.ok);
    assert!(
        run.stderr.contains("cannot connect to NATS") && run.stderr.contains(&nowhere),
        "{}",
        run.stderr
    );

    let server = start_server().await;
    let url = server.url();

    let db = dir.path().join("missing.db");
    let run = cli(
        &url,
        &[
            "db",
            "replicate",
            "--db",
            path_str(&db),
            "--bucket",
            "b_wal",
        ],
    );
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains(&format!("database `{}` does not exist", db.display())),
        "{}",
        run.stderr
    );
    assert!(!db.exists(), "replicate created the database");

    // An object with an LTX name but no LTX inside.
    let js = jetstream(&server).await;
    WalBucket::open_or_create(&js, "b_wal", 1)
        .await
        .expect("create bucket");
    let store = js.get_object_store("b_wal").await.expect("object store");
    let name = "ltx/0/0000000000000001-0000000000000001.ltx";
    store
        .put(name, &mut &b"not an LTX file at all"[..])
        .await
        .expect("put");
    let run = cli(
        &url,
        &["db", "restore", "--bucket", "b_wal", "-o", path_str(&out)],
    );
    assert!(!run.ok, "restored a corrupt object: {}", run.stdout);
    assert!(
        run.stderr.contains(&format!("refusing `{name}`")),
        "{}",
        run.stderr
    );
    assert!(!out.exists(), "a refused restore wrote OUT");
}
