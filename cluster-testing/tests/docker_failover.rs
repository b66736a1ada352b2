//! A Docker backend follows the active instance, against this machine's
//! Docker engine (no registry: the image `cluster-test-http:test` is built
//! and imported by `scripts/lib/images.sh`). Two node processes, each with
//! its own container name and published port (on one engine, as if each
//! were its own host): only the active node's container runs; a graceful
//! hand-over removes it and starts the other; after a SIGKILL of the active
//! (and the loss of its host's containers) the container runs on the new
//! active. Privileged: `cargo test -p cluster-testing --test docker_failover
//! -- --ignored` (run by `.ci/run`).

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_runtime::app::Role;
use cluster_runtime::nats_server::http_get;
use cluster_testing::node::{NodeSpec, Nodes};
use cluster_testing::{NatsServer, ServerOptions};

const BIN: &str = env!("CARGO_BIN_EXE_cluster-test-node");
const APP: &str = "web";
const IMAGE: &str = "cluster-test-http:test";
const WAIT: Duration = Duration::from_secs(60);

fn ensure_image() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let ok = Command::new("bash")
        .args([
            "-c",
            "source scripts/lib/images.sh && ensure_test_http_image",
        ])
        .current_dir(root)
        .status()
        .expect("run images.sh")
        .success();
    assert!(ok, "could not build the test image");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn container(node: &str) -> String {
    format!("cluster-fo-{node}")
}

fn spec(nats: &str, id: &str, port: u16) -> NodeSpec {
    let mut spec = NodeSpec::new(BIN, id, nats);
    spec.app = APP.into();
    spec.extra_args = vec![
        "--backend".into(),
        format!("docker:{IMAGE}"),
        "--backend-env".into(),
        "LISTEN=0.0.0.0:8080".into(),
        "--docker-name".into(),
        container(id),
        "--docker-port".into(),
        format!("{port}:8080"),
        "--backend-health".into(),
        format!("http://127.0.0.1:{port}/health"),
    ];
    spec
}

/// Names of running test containers.
fn running() -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "--filter",
            "name=cluster-fo-",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker ps");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

fn remove(name: &str) {
    let _ = Command::new("docker").args(["rm", "-f", name]).output();
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let end = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out waiting until {what}; running: {:?}",
            running()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node whose container answers on its port with its own id, when it
/// is the only test container running.
async fn serving(ports: &[(String, u16)]) -> Option<String> {
    let names = running();
    let [name] = names.as_slice() else {
        return None;
    };
    let (id, port) = ports.iter().find(|(id, _)| container(id) == *name)?;
    match http_get(*port, "/").await {
        Ok((200, body)) if body.trim() == format!("node {id}") => Some(id.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run by .ci/run"]
async fn container_runs_only_on_the_active_and_moves_on_failover() {
    ensure_image();
    let ports: Vec<(String, u16)> = ["k1", "k2"]
        .iter()
        .map(|id| (id.to_string(), free_port()))
        .collect();
    for (id, _) in &ports {
        remove(&container(id));
    }
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let mut nodes = Nodes::start(
        ports
            .iter()
            .map(|(id, p)| spec(&server.url(), id, *p))
            .collect(),
    )
    .await
    .expect("nodes");

    let first = nodes.wait_for_active(APP, WAIT).await.expect("active");
    let by = until("the active's container serves", async || {
        serving(&ports).await
    })
    .await;
    assert_eq!(by, first);

    // Graceful hand-over: the manager removes its container, the other
    // node starts its own.
    nodes
        .get(&first)
        .expect("node")
        .terminate()
        .expect("SIGTERM");
    let second = until("the other container serves", async || {
        serving(&ports).await.filter(|by| *by != first)
    })
    .await;
    assert_eq!(nodes.with_role(APP, Role::Active), vec![second.clone()]);

    // Bring the first back (standby), then SIGKILL the active: its host's
    // containers go with it; the container comes up on the first again.
    nodes.get(&first).expect("node").restart().expect("restart");
    nodes
        .wait_until(WAIT, || {
            nodes
                .roles(APP)
                .iter()
                .any(|(n, r)| *n == first && *r == Some(Role::Standby))
                .then_some(())
        })
        .await
        .expect("first back as standby");
    nodes.get(&second).expect("node").kill();
    remove(&container(&second));
    let third = until("the container serves on the new active", async || {
        serving(&ports).await.filter(|by| *by != second)
    })
    .await;
    assert_eq!(third, first);

    nodes
        .get(&first)
        .expect("node")
        .terminate()
        .expect("SIGTERM");
    until("the last container is removed on shutdown", async || {
        running().is_empty().then_some(())
    })
    .await;
}
