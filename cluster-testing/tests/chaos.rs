//! The chaos suites in a bounded CI form (fixed seeds, 15 s of workload
//! each, run one at a time), and proof that every checker can fail.
//!
//! Before the runtime gated API calls on lease validity and fenced the
//! singleton's KV writes, the counter, register and nats suites failed
//! here (seed 1, 30 s: 558 duplicate acknowledged counts; 1564 writes
//! stored by a node without a valid lease; overlapping holders) — the
//! checkers below can fail, and did.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use cluster_testing::jepsen::exec::{self, Execution};
use cluster_testing::jepsen::fencing::{self, StoredWrite};
use cluster_testing::jepsen::history::{Call, History, Op, Outcome};
use cluster_testing::jepsen::linearizable::{self, CounterModel, Limits, RegisterModel};
use cluster_testing::jepsen::runner::{self, duplicate_counts, Binaries, RunConfig, Suite};
use cluster_testing::jepsen::set;

/// Seconds of workload per suite in CI.
const SECONDS: u64 = 15;

/// The ring suite's CI seed.
const RING_SEED: u64 = 1;

/// One suite at a time: they share 2 cores with the rest of the tests.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The chaos node from this package, and `quickstart` built into the same
/// target directory (binaries of other packages have no `CARGO_BIN_EXE_*`).
fn binaries() -> Binaries {
    static QUICKSTART: OnceLock<PathBuf> = OnceLock::new();
    let quickstart = QUICKSTART.get_or_init(|| {
        // target/<profile>/deps/chaos-HASH → target/<profile>
        let exe = std::env::current_exe().expect("test exe");
        let profile_dir = exe.parent().and_then(|d| d.parent()).expect("profile dir");
        let target_dir = profile_dir.parent().expect("target dir");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "-p", "quickstart"])
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building quickstart failed");
        profile_dir.join("quickstart")
    });
    Binaries {
        chaos_node: PathBuf::from(env!("CARGO_BIN_EXE_cluster-chaos-node")),
        quickstart: quickstart.clone(),
    }
}

async fn assert_suite_passes(suite: Suite, seed: u64) {
    assert_suite_passes_for(suite, seed, SECONDS).await;
}

async fn assert_suite_passes_for(suite: Suite, seed: u64, seconds: u64) {
    let _one_at_a_time = SERIAL.lock().await;
    let cfg = RunConfig::new(suite, seed, seconds, binaries());
    let report = runner::run(&cfg).await.expect("the run takes place");
    let line = serde_json::to_string(&report).expect("report json");
    eprintln!("{line}");
    assert!(report.ok > 0, "no operation succeeded: {line}");
    assert!(
        report.faults.values().sum::<u64>() > 0,
        "no fault injected: {line}"
    );
    assert!(
        report.passed(),
        "chaos.{} seed {seed}: {} violations, {} unverified; artifacts in {:?}",
        suite.as_str(),
        report.violations,
        report.unverified,
        report.artifacts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_suite_is_linearizable_under_faults() {
    assert_suite_passes(Suite::Counter, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_suite_is_linearizable_fenced_and_exclusive() {
    assert_suite_passes(Suite::Register, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_suite_loses_no_acknowledged_add() {
    assert_suite_passes(Suite::Set, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_suite_survives_server_kills() {
    assert_suite_passes(Suite::Nats, 4).await;
}

/// Ring faults (owner kill, owner pause past the TTL, pause-kill-successor,
/// SIGTERM, spare joins and leaves) against `kvring`: per-key
/// linearizability, per-key partition-token fencing, per-partition
/// execution overlap. 30 s: joins and leaves need room among the faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_suite_is_linearizable_fenced_and_exclusive_per_key() {
    assert_suite_passes_for(Suite::Ring, RING_SEED, 30).await;
}

// ---- Every checker can fail: known-bad histories. ----

fn op(process: u32, call: Call, t: (u64, u64), outcome: Outcome) -> Op {
    Op {
        id: 0,
        process,
        key: "k".into(),
        call,
        invoke_ns: t.0,
        complete_ns: t.1,
        outcome,
        node: None,
        epoch: None,
    }
}

fn ok(v: serde_json::Value) -> Outcome {
    Outcome::Ok { value: v }
}

fn history(ops: Vec<Op>) -> History {
    let mut h = History::default();
    for o in ops {
        h.push(o);
    }
    h
}

#[test]
fn linearizability_checker_rejects_duplicate_counts_and_stale_reads() {
    let incr = Call::Incr { by: 1 };
    let dup = history(vec![
        op(0, incr.clone(), (0, 1), ok(1.into())),
        op(1, incr.clone(), (2, 3), ok(2.into())),
        op(2, incr.clone(), (4, 5), ok(2.into())),
    ]);
    let r = linearizable::check(&CounterModel, &dup, Limits::default());
    assert_eq!(r.violations(), 1, "{r:?}");
    assert_eq!(duplicate_counts(&dup), vec![(2, vec![1, 2])]);

    let stale = history(vec![
        op(
            0,
            Call::Write { value: 1 },
            (0, 1),
            ok(serde_json::Value::Null),
        ),
        op(
            0,
            Call::Write { value: 2 },
            (2, 3),
            ok(serde_json::Value::Null),
        ),
        op(1, Call::Read, (4, 5), ok(1.into())),
    ]);
    let r = linearizable::check(&RegisterModel, &stale, Limits::default());
    assert_eq!(r.violations(), 1, "{r:?}");
}

#[test]
fn a_saved_failing_history_fails_again_when_reloaded() {
    let incr = Call::Incr { by: 1 };
    let h = history(vec![
        op(0, incr.clone(), (0, 1), ok(1.into())),
        op(1, incr, (2, 3), ok(1.into())),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.jsonl");
    h.save(&path).expect("save");
    let loaded = History::load(&path).expect("load");
    assert_eq!(loaded, h);
    let r = linearizable::check(&CounterModel, &loaded, Limits::default());
    assert_eq!(r.violations(), 1);
}

#[test]
fn set_checker_reports_a_lost_acknowledged_add() {
    let h = history(vec![
        op(
            0,
            Call::Add { element: 1 },
            (0, 1),
            ok(serde_json::Value::Null),
        ),
        op(
            0,
            Call::Add { element: 2 },
            (2, 3),
            ok(serde_json::Value::Null),
        ),
    ]);
    let r = set::check(&h, &BTreeSet::from([1]));
    assert_eq!(r.lost, vec![2]);
    assert_eq!(r.violations(), 1);
}

#[test]
fn exec_checker_reports_two_valid_holders_at_once() {
    let e = |node: &str, epoch, s, t| Execution {
        node: node.into(),
        app: "register".into(),
        method: "write".into(),
        epoch: Some(epoch),
        partition: None,
        start_ns: s,
        end_ns: t,
        active_at_start: true,
        // Valid when it looked at the end too: it believed it held the
        // lease throughout (one that found itself deposed at its end is a
        // paused handler whose effects the fence refuses).
        active_at_end: true,
        cancelled: false,
    };
    let overlaps = exec::check(&[e("n1", 1, 0, 100), e("n2", 4, 50, 60)], "register");
    assert_eq!(overlaps.len(), 1);
}

#[test]
fn ring_checkers_work_per_key_and_per_partition() {
    // Two keys, one register each: reading a value of the other key is
    // a violation on this key only.
    let mut a = op(
        0,
        Call::Write { value: 1 },
        (0, 1),
        ok(serde_json::Value::Null),
    );
    a.key = "k0".into();
    let mut b = op(1, Call::Read, (2, 3), ok(2.into()));
    b.key = "k0".into();
    let mut c = op(
        2,
        Call::Write { value: 2 },
        (0, 1),
        ok(serde_json::Value::Null),
    );
    c.key = "k1".into();
    let r = linearizable::check(&RegisterModel, &history(vec![a, b, c]), Limits::default());
    assert_eq!(r.violations(), 1, "{r:?}");
    assert_eq!(r.keys["k1"], linearizable::Verdict::Linearizable);

    // A deposed owner's write (token 3) stored after its successor's (9)
    // on the same key.
    let w = |seq, epoch| StoredWrite {
        seq,
        epoch: Some(epoch),
        value: serde_json::json!({"value": seq, "epoch": epoch}),
    };
    let by_key = std::collections::BTreeMap::from([
        ("reg.k0".to_owned(), vec![w(1, 3), w(4, 9), w(6, 3)]),
        ("reg.k1".to_owned(), vec![w(2, 5), w(5, 5)]),
    ]);
    let r = fencing::check_keys(&by_key);
    assert_eq!(r.violations(), 1, "{r:?}");
    assert!(r.failing.contains_key("reg.k0"));

    // Two nodes running partition 7 at once, both owning it.
    let e = |node: &str, partition, token, s, t| Execution {
        node: node.into(),
        app: "kvring".into(),
        method: "write".into(),
        epoch: Some(token),
        partition: Some(partition),
        start_ns: s,
        end_ns: t,
        active_at_start: true,
        active_at_end: true,
        cancelled: false,
    };
    assert!(exec::check(&[e("n1", 7, 3, 0, 100), e("n2", 8, 4, 50, 60)], "kvring").is_empty());
    assert_eq!(
        exec::check(&[e("n1", 7, 3, 0, 100), e("n2", 7, 9, 50, 60)], "kvring").len(),
        1
    );
}

#[test]
fn fencing_checker_reports_a_stale_epoch_stored_after_a_newer_one() {
    let w = |seq, epoch| StoredWrite {
        seq,
        epoch: Some(epoch),
        value: serde_json::json!({"value": seq, "epoch": epoch}),
    };
    let r = fencing::check(&[w(1, 1), w(2, 5), w(3, 1)]);
    assert_eq!(r.stale_count, 1);
    assert_eq!(r.violations(), 1);
}
