//! Process backends against real child processes: cluster-test-http as the
//! served program, `sh` for the misbehaving ones.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cluster_runtime::backend::{
    Backend, BackendConfig, BackendError, Health, HealthProbe, ProcessBackend, ProcessState,
    RestartPolicy, Supervisor,
};

/// Long enough for any condition the tests wait for on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

/// The cluster-test-http binary: `$CLUSTER_TEST_HTTP_BIN`, else built now.
fn test_http_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(build_test_http).clone()
}

fn build_test_http() -> PathBuf {
    if let Ok(bin) = std::env::var("CLUSTER_TEST_HTTP_BIN") {
        return PathBuf::from(bin);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "cluster-testing",
            "--bin",
            "cluster-test-http",
        ])
        .current_dir(&root)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build cluster-test-http failed");
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    target.join("debug").join("cluster-test-http")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("test setup")
        .local_addr()
        .expect("test setup")
        .port()
}

fn alive(pid: i32) -> bool {
    // Signal 0 probes existence; a zombie counts as dead for us.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sh(script: &str) -> BackendConfig {
    BackendConfig::new(cluster_spec::ops::Backend::Process {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
    })
}

#[tokio::test]
async fn serves_until_stopped_and_logs_output() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("backend.log");
    let config = BackendConfig::new(cluster_spec::ops::Backend::Process {
        program: test_http_bin().display().to_string(),
        args: vec!["--listen".into(), format!("127.0.0.1:{port}")],
    })
    .env("NODE_ID", "node-a")
    .dir(dir.path())
    .log_file(&log)
    .start_timeout(DEADLINE);
    let probe = HealthProbe::new(format!("http://127.0.0.1:{port}/health"))
        .interval(Duration::from_millis(50));
    let backend = Arc::new(ProcessBackend::new(&config).unwrap());
    let supervisor = Supervisor::new(backend.clone(), Some(probe), DEADLINE);
    supervisor.start_and_wait_healthy().await.unwrap();
    assert!(*supervisor.healthy().borrow());
    assert_eq!(supervisor.backend().health().await, Health::Healthy);

    let (status, body) = cluster_runtime::nats_server::http_get(port, "/")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "node node-a"));
    // start is idempotent: no second server (it would fail to bind).
    supervisor.backend().start().await.unwrap();

    wait_until("the log file has the startup line", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stdout: cluster-test-http listening")
    })
    .await;

    supervisor.stop().await.unwrap();
    assert!(!*supervisor.healthy().borrow());
    let state = backend.state();
    assert!(
        matches!(state, ProcessState::Stopped { status: Some(s) } if s.success()),
        "cluster-test-http should exit 0 on SIGTERM: {state:?}"
    );
    assert_eq!(supervisor.backend().health().await, Health::Stopped);
    assert!(cluster_runtime::nats_server::http_get(port, "/health")
        .await
        .is_err());
    // cluster-test-http exits 0 on SIGTERM; the log shows it saw the signal.
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("SIGTERM, exiting"));
    // stop is idempotent.
    supervisor.stop().await.unwrap();
}

#[tokio::test]
async fn stop_terminates_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let marker = dir.path().join("grandchild.term");
    // The child starts a grandchild that records its pid and the SIGTERM it gets.
    let script = format!(
        "sh -c 'trap \"echo term > {m}; exit 0\" TERM; echo $$ > {p}; sleep 1000 & wait' & wait",
        m = marker.display(),
        p = pidfile.display()
    );
    let backend = ProcessBackend::new(&sh(&script).stop_grace(Duration::from_secs(20))).unwrap();
    backend.start().await.unwrap();
    wait_until("the grandchild wrote its pid", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.trim().parse::<i32>().is_ok())
    })
    .await;
    let grandchild: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let child = backend.pid().unwrap() as i32;
    assert!(alive(grandchild) && alive(child));

    backend.stop().await.unwrap();
    assert!(!alive(child), "child {child} survived stop");
    // The group's last SIGKILL is delivered asynchronously: the grandchild
    // (reparented, busy in its trap) may take a moment to go.
    wait_until(
        &format!("grandchild {grandchild} to be gone after stop"),
        || !alive(grandchild),
    )
    .await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "term");
    assert!(matches!(
        backend.state(),
        ProcessState::Stopped { status: Some(_) }
    ));
}

#[tokio::test]
async fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let script = format!(
        "trap '' TERM; touch {}; while :; do sleep 1; done",
        ready.display()
    );
    let backend = ProcessBackend::new(&sh(&script).stop_grace(Duration::from_millis(300))).unwrap();
    backend.start().await.unwrap();
    wait_until("the trap is set", || ready.exists()).await;
    let pid = backend.pid().unwrap() as i32;
    backend.stop().await.unwrap();
    assert!(!alive(pid));
    let ProcessState::Stopped {
        status: Some(status),
    } = backend.state()
    else {
        panic!("unexpected state {:?}", backend.state());
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "expected SIGKILL, got {status}");
}

#[tokio::test]
async fn on_failure_restarts_up_to_the_limit_and_reports_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let script = format!("echo run >> {}; exit 3", runs.display());
    let backend =
        ProcessBackend::new(&sh(&script).restart(RestartPolicy::OnFailure { max_restarts: 2 }))
            .unwrap();
    let mut state = backend.watch_state();
    backend.start().await.unwrap();
    let final_state = tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| matches!(s, ProcessState::Exited { .. })),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    let ProcessState::Exited { status, restarts } = final_state else {
        unreachable!()
    };
    assert_eq!(status.code(), Some(3));
    assert_eq!(restarts, 2);
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 3);
    let Health::Unhealthy(why) = backend.health().await else {
        panic!("should be unhealthy")
    };
    assert!(
        why.contains("exit status: 3") && why.contains("2 restart"),
        "{why}"
    );
}

#[tokio::test]
async fn a_clean_exit_is_not_restarted() {
    let backend =
        ProcessBackend::new(&sh("exit 0").restart(RestartPolicy::OnFailure { max_restarts: 5 }))
            .unwrap();
    let mut state = backend.watch_state();
    backend.start().await.unwrap();
    let s = tokio::time::timeout(
        DEADLINE,
        state.wait_for(|s| matches!(s, ProcessState::Exited { .. })),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert!(
        matches!(s, ProcessState::Exited { restarts: 0, status } if status.success()),
        "{s:?}"
    );
}

#[tokio::test]
async fn start_timeout_names_the_last_failure_and_leaves_nothing_running() {
    let port = free_port();
    let config = BackendConfig::new(cluster_spec::ops::Backend::Process {
        program: test_http_bin().display().to_string(),
        args: vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--fail-health".into(),
        ],
    })
    .start_timeout(Duration::from_millis(1500))
    .probe(
        HealthProbe::new(format!("http://127.0.0.1:{port}/health"))
            .interval(Duration::from_millis(50)),
    );
    let backend = Arc::new(ProcessBackend::new(&config).unwrap());
    let mut state = backend.watch_state();
    let supervisor = Supervisor::new(
        backend.clone(),
        Some(
            HealthProbe::new(format!("http://127.0.0.1:{port}/health"))
                .interval(Duration::from_millis(50)),
        ),
        Duration::from_millis(1500),
    );
    let seen_pid = tokio::spawn(async move {
        state
            .wait_for(|s| matches!(s, ProcessState::Running { .. }))
            .await
            .map(|s| match *s {
                ProcessState::Running { pid, .. } => pid,
                _ => 0,
            })
    });
    let err = supervisor.start_and_wait_healthy().await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            BackendError::StartTimeout {
                kind: "process",
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("answered 503, expected 200"), "{text}");
    let pid = seen_pid.await.unwrap().unwrap() as i32;
    assert!(!alive(pid), "the timed-out backend {pid} is still running");
    assert!(matches!(backend.state(), ProcessState::Stopped { .. }));
    assert!(!*supervisor.healthy().borrow());
}

#[tokio::test]
async fn a_missing_program_is_a_clear_error() {
    let config = BackendConfig::parse("process:/nonexistent/app --serve").unwrap();
    let supervisor = Supervisor::from_config(config).unwrap();
    let err = supervisor.start_and_wait_healthy().await.unwrap_err();
    assert!(
        matches!(&err, BackendError::ProgramNotFound { program } if program == "/nonexistent/app")
    );
    assert_eq!(
        err.to_string(),
        "program `/nonexistent/app` not found (not a path to an executable, nor on PATH)"
    );
}

#[tokio::test]
async fn a_custom_backend_plugs_into_the_supervisor() {
    #[derive(Debug, Default)]
    struct Flag(std::sync::atomic::AtomicBool);
    impl Backend for Flag {
        fn kind(&self) -> &'static str {
            "flag"
        }
        fn start(&self) -> futures::future::BoxFuture<'_, Result<(), BackendError>> {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
        fn stop(&self) -> futures::future::BoxFuture<'_, Result<(), BackendError>> {
            self.0.store(false, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
        fn health(&self) -> futures::future::BoxFuture<'_, Health> {
            let h = if self.0.load(std::sync::atomic::Ordering::SeqCst) {
                Health::Healthy
            } else {
                Health::Stopped
            };
            Box::pin(async move { h })
        }
    }
    let flag = Arc::new(Flag::default());
    let supervisor = Supervisor::new(flag.clone(), None, DEADLINE);
    supervisor.start_and_wait_healthy().await.unwrap();
    assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
    supervisor.stop().await.unwrap();
    assert!(!flag.0.load(std::sync::atomic::Ordering::SeqCst));
}
