//! A managed process backend follows the active instance: node processes on
//! a real nats-server, each configured to run `cluster-test-http` on its own
//! port while active. Only the active node's port answers, with its id; after
//! a SIGKILL of the active the backend runs (healthy) on the new active; a
//! graceful hand-over stops it before the new active starts its own.

use std::time::{Duration, SystemTime};

use cluster_runtime::app::Role;
use cluster_runtime::config::Config;
use cluster_runtime::nats_server::http_get;
use cluster_runtime::observe::AuditFilter;
use cluster_runtime::platform::Platform;
use cluster_testing::node::{NodeSpec, Nodes};
use cluster_testing::{NatsServer, ServerOptions};

const BIN: &str = env!("CARGO_BIN_EXE_cluster-test-node");
const HTTP: &str = env!("CARGO_BIN_EXE_cluster-test-http");
const APP: &str = "web";
const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spec(nats: &str, id: &str, port: u16) -> NodeSpec {
    let mut spec = NodeSpec::new(BIN, id, nats);
    spec.app = APP.into();
    spec.extra_args = vec![
        "--backend".into(),
        format!("process:{HTTP} --listen 127.0.0.1:{port}"),
        "--backend-health".into(),
        format!("http://127.0.0.1:{port}/health"),
    ];
    spec
}

/// Which node's backend answers on `port` (`None`: nothing listens).
async fn served_by(port: u16) -> Option<String> {
    match http_get(port, "/").await {
        Ok((200, body)) => body.trim().strip_prefix("node ").map(str::to_owned),
        _ => None,
    }
}

/// The node whose port answers, checking that no other port does.
async fn only_backend(ports: &[(String, u16)]) -> Option<String> {
    let mut serving = Vec::new();
    for (id, port) in ports {
        if let Some(by) = served_by(*port).await {
            assert_eq!(&by, id, "port of {id} answered for {by}");
            serving.push(by);
        }
    }
    assert!(serving.len() <= 1, "backends running on {serving:?}");
    serving.pop()
}

async fn wait_until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills what a SIGKILLed node left behind, as if its host had died with it:
/// a process backend lives in its own process group and outlives its
/// manager (systemd's `KillMode=control-group` does this in production).
fn kill_orphans(port: u16) {
    let needle = format!("--listen 127.0.0.1:{port}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(HTTP) && cmdline.contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_runs_only_on_the_active_and_follows_it() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let ports: Vec<(String, u16)> = ["b1", "b2", "b3"]
        .iter()
        .map(|id| (id.to_string(), free_port()))
        .collect();
    let mut nodes = Nodes::start(
        ports
            .iter()
            .map(|(id, port)| spec(&server.url(), id, *port))
            .collect(),
    )
    .await
    .expect("nodes");

    // The first active serves through its backend; no one else does.
    let first = nodes.wait_for_active(APP, WAIT).await.expect("active");
    let serving = wait_until("backend on the active", async || only_backend(&ports).await).await;
    assert_eq!(serving, first);

    // SIGKILL the active (and, as with its host, its backend).
    let first_port = ports
        .iter()
        .find(|(id, _)| *id == first)
        .map(|p| p.1)
        .expect("port");
    nodes.get(&first).expect("node").kill();
    kill_orphans(first_port);
    let second = wait_until("a new active serving", async || {
        let by = only_backend(&ports).await?;
        (by != first).then_some(by)
    })
    .await;
    assert_eq!(nodes.with_role(APP, Role::Active), vec![second.clone()]);

    // Graceful hand-over: SIGTERM the active. Its backend stops before the
    // next active's starts (audit order), and the next one serves.
    let since = SystemTime::now();
    nodes
        .get(&second)
        .expect("node")
        .terminate()
        .expect("SIGTERM");
    let third = wait_until("a third active serving", async || {
        let by = only_backend(&ports).await?;
        (by != first && by != second).then_some(by)
    })
    .await;

    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.node = "auditor".into();
    config.platform = "test".into();
    let auditor = Platform::builder()
        .config(config)
        .start()
        .await
        .expect("auditor");
    let filter = AuditFilter::new().app(APP).category("backend").since(since);
    let entries = wait_until("backend audit entries", async || {
        let got = auditor.audit().query(filter.clone()).await.ok()?;
        let has_start = got
            .iter()
            .any(|e| e.node == third && e.action == "backend.started");
        has_start.then_some(got)
    })
    .await;
    let stopped = entries
        .iter()
        .find(|e| e.node == second && e.action == "backend.stopped")
        .unwrap_or_else(|| panic!("no backend.stopped by {second}: {entries:?}"));
    let started = entries
        .iter()
        .find(|e| e.node == third && e.action == "backend.started")
        .expect("started");
    assert!(
        stopped.seq < started.seq,
        "backend of {second} stopped (seq {}) after {third}'s started (seq {})",
        stopped.seq,
        started.seq
    );
    assert_eq!(
        started.data["kind"], "process",
        "audit details name the kind: {:?}",
        started.data
    );
    auditor.shutdown().await;
}
