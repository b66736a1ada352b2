//! Docker backends against this machine's Docker engine (no registry: the
//! image is built by scripts/lib/images.sh from cluster-test-http).
//! Privileged: run with `-- --ignored` (by .ci/run).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cluster_runtime::backend::{
    Backend, BackendConfig, BackendError, DockerBackend, DockerOptions, Health, HealthProbe,
    Supervisor,
};

const DEADLINE: Duration = Duration::from_secs(60);
const IMAGE: &str = "cluster-test-http:test";

/// Builds and imports the test image (once per test binary).
fn ensure_image() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new("bash")
            .args([
                "-c",
                "source scripts/lib/images.sh && ensure_test_http_image",
            ])
            .current_dir(&root)
            .status()
            .expect("run bash");
        assert!(status.success(), "building {IMAGE} failed");
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("test setup")
        .local_addr()
        .expect("test setup")
        .port()
}

/// Whether the engine knows a container of that name (docker CLI as an
/// independent witness).
fn container_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["container", "inspect", name])
        .output()
        .expect("run docker")
        .status
        .success()
}

fn config(name: &str, port: u16) -> BackendConfig {
    BackendConfig::parse(&format!("docker:{IMAGE}"))
        .expect("test setup")
        .env("NODE_ID", "docker-node")
        .stop_grace(Duration::from_secs(5))
        .start_timeout(DEADLINE)
        .docker(DockerOptions {
            name: Some(name.to_owned()),
            ports: vec![(port, 8080)],
            env: [("LISTEN".to_owned(), "0.0.0.0:8080".to_owned())].into(),
            ..Default::default()
        })
        .probe(
            HealthProbe::new(format!("http://127.0.0.1:{port}/health"))
                .interval(Duration::from_millis(100)),
        )
}

#[tokio::test]
#[ignore = "privileged: run by .ci/run"]
async fn runs_a_container_until_stopped() {
    ensure_image();
    let port = free_port();
    let name = format!("cluster-test-docker-{}", std::process::id());
    let supervisor = Supervisor::from_config(config(&name, port)).unwrap();
    let took = supervisor.start_and_wait_healthy().await.unwrap();
    eprintln!("docker backend healthy after {took:?}");
    assert!(container_exists(&name));
    assert_eq!(supervisor.backend().health().await, Health::Healthy);
    // Served through the published port, with the configured environment.
    let (status, body) = cluster_runtime::nats_server::http_get(port, "/")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "node docker-node"));
    // Idempotent start: the running container is kept.
    supervisor.backend().start().await.unwrap();
    assert!(container_exists(&name));

    let took = supervisor.stop().await.unwrap();
    eprintln!("docker backend stopped and removed after {took:?}");
    assert!(!container_exists(&name), "container {name} still exists");
    assert_eq!(supervisor.backend().health().await, Health::Stopped);
    assert!(cluster_runtime::nats_server::http_get(port, "/health")
        .await
        .is_err());
    supervisor.stop().await.unwrap();
}

#[tokio::test]
#[ignore = "privileged: run by .ci/run"]
async fn a_stale_stopped_container_is_replaced() {
    ensure_image();
    let port = free_port();
    let name = format!("cluster-test-docker-stale-{}", std::process::id());
    // A leftover of an earlier run, created but never started.
    let out = Command::new("docker")
        .args(["create", "--name", &name, IMAGE])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backend = DockerBackend::new(&config(&name, port)).unwrap();
    backend.start().await.unwrap();
    let supervisor = Supervisor::new(
        std::sync::Arc::new(backend),
        Some(HealthProbe::new(format!("http://127.0.0.1:{port}/health"))),
        DEADLINE,
    );
    supervisor.start_and_wait_healthy().await.unwrap();
    supervisor.stop().await.unwrap();
    assert!(!container_exists(&name));
}

#[tokio::test]
#[ignore = "privileged: run by .ci/run"]
async fn a_missing_image_is_a_clear_error() {
    let name = format!("cluster-test-docker-missing-{}", std::process::id());
    let config = BackendConfig::parse("docker:cluster-no-such-image:0")
        .unwrap()
        .docker(DockerOptions {
            name: Some(name.clone()),
            ..Default::default()
        });
    let err = Supervisor::from_config(config)
        .unwrap()
        .start_and_wait_healthy()
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::ImageMissing { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "no such image `cluster-no-such-image:0`; this engine has no registry — build or import it"
    );
    assert!(!container_exists(&name));
}

/// Unprivileged: no engine at the socket.
#[tokio::test]
async fn an_unreachable_daemon_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let config = BackendConfig::parse("docker:app:1")
        .unwrap()
        .docker(DockerOptions {
            socket: Some(socket.display().to_string()),
            ..Default::default()
        });
    let backend = DockerBackend::new(&config).unwrap();
    let err = backend.start().await.unwrap_err();
    assert!(
        matches!(err, BackendError::DockerUnreachable { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("cannot reach the Docker daemon"),
        "{err}"
    );
    assert!(matches!(backend.health().await, Health::Unhealthy(_)));
}
