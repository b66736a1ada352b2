//! systemd backends against a real systemd: a Debian bookworm container with
//! systemd as PID 1 (scripts/lib/images.sh builds it with debootstrap), its
//! /run/dbus bind-mounted from a host directory so zbus on the host talks to
//! the container's system bus. The unit runs cluster-test-http, reached
//! through a published port. Privileged: run with `-- --ignored`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_runtime::backend::{
    Backend, BackendConfig, BackendError, Health, HealthProbe, Supervisor, SystemdBackend,
};

const DEADLINE: Duration = Duration::from_secs(60);
const IMAGE: &str = "cluster-systemd:bookworm-1";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bash(script: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", script])
        .current_dir(root())
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("test setup")
        .local_addr()
        .expect("test setup")
        .port()
}

/// A running systemd container, removed on drop.
struct SystemdHost {
    name: String,
    bus: String,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

impl SystemdHost {
    async fn start(tag: &str) -> SystemdHost {
        bash("source scripts/lib/images.sh && ensure_systemd_image");
        let bin = bash("source scripts/lib/images.sh && build_test_http && echo $TEST_HTTP_BIN");
        let dir = tempfile::tempdir().expect("test setup");
        let bus_dir = dir.path().join("dbus");
        std::fs::create_dir(&bus_dir).expect("test setup");
        let unit = dir.path().join("cluster-test-http.service");
        std::fs::write(
            &unit,
            "[Unit]\nDescription=cluster test backend\n\n[Service]\n\
             Environment=NODE_ID=systemd-node\n\
             ExecStart=/usr/local/bin/cluster-test-http --listen 0.0.0.0:8080\n",
        )
        .expect("test setup");
        let port = free_port();
        let name = format!("cluster-test-systemd-{tag}-{}", std::process::id());
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        // systemd as PID 1 needs the host's cgroups and most capabilities
        // (this sandbox refuses --privileged's CAP_SYS_RESOURCE).
        let out = Command::new("docker")
            .args(["run", "-d", "--name", &name])
            .args(["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE"])
            .args(["--security-opt", "seccomp=unconfined", "--cgroupns=host"])
            .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"])
            .args(["--tmpfs", "/run", "--tmpfs", "/run/lock"])
            .args(["-v", &format!("{}:/run/dbus", bus_dir.display())])
            .args(["-v", &format!("{bin}:/usr/local/bin/cluster-test-http:ro")])
            .args([
                "-v",
                &format!(
                    "{}:/etc/systemd/system/cluster-test-http.service:ro",
                    unit.display()
                ),
            ])
            .args(["-p", &format!("127.0.0.1:{port}:8080")])
            .args(["-e", "container=docker", IMAGE])
            .output()
            .expect("run docker");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let host = SystemdHost {
            bus: format!("unix:path={}/system_bus_socket", bus_dir.display()),
            name,
            port,
            _dir: dir,
        };
        // Wait until systemd has booted (running, or degraded by some
        // container-hostile unit we do not need).
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let out = Command::new("docker")
                .args(["exec", &host.name, "systemctl", "is-system-running"])
                .output()
                .expect("test setup");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "systemd did not boot: {state}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        host
    }

    fn config(&self, unit: &str) -> BackendConfig {
        BackendConfig::parse(&format!("systemd:{unit}"))
            .expect("test setup")
            .systemd_bus(&self.bus)
            .start_timeout(DEADLINE)
    }

    /// systemd's own view, through the CLI inside the container.
    fn active_state(&self, unit: &str) -> String {
        let out = Command::new("docker")
            .args(["exec", &self.name, "systemctl", "is-active", unit])
            .output()
            .expect("test setup");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

#[tokio::test]
#[ignore = "privileged: run by .ci/run"]
async fn starts_checks_restarts_and_stops_a_real_unit() {
    let host = SystemdHost::start("unit").await;
    let probe = HealthProbe::new(format!("http://127.0.0.1:{}/health", host.port))
        .interval(Duration::from_millis(100));
    let backend =
        std::sync::Arc::new(SystemdBackend::new(&host.config("cluster-test-http")).unwrap());
    assert_eq!(backend.unit(), "cluster-test-http.service");
    assert_eq!(backend.health().await, Health::Stopped);
    let supervisor = Supervisor::new(backend.clone(), Some(probe), DEADLINE);

    let took = supervisor.start_and_wait_healthy().await.unwrap();
    eprintln!("systemd backend healthy after {took:?}");
    assert_eq!(host.active_state("cluster-test-http"), "active");
    let (active, sub) = backend.state().await.unwrap();
    assert_eq!((active.as_str(), sub.as_str()), ("active", "running"));
    let (status, body) = cluster_runtime::nats_server::http_get(host.port, "/")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "node systemd-node"));
    // Idempotent start.
    backend.start().await.unwrap();

    // Restart gives a new main process.
    let pid_before = main_pid(&host);
    backend.restart().await.unwrap();
    assert_eq!(backend.health().await, Health::Healthy);
    assert_ne!(main_pid(&host), pid_before);

    let took = supervisor.stop().await.unwrap();
    eprintln!("systemd backend stopped after {took:?}");
    assert_eq!(host.active_state("cluster-test-http"), "inactive");
    assert_eq!(backend.health().await, Health::Stopped);
    assert!(cluster_runtime::nats_server::http_get(host.port, "/health")
        .await
        .is_err());
    backend.stop().await.unwrap();
}

fn main_pid(host: &SystemdHost) -> String {
    let out = Command::new("docker")
        .args([
            "exec",
            &host.name,
            "systemctl",
            "show",
            "-P",
            "MainPID",
            "cluster-test-http",
        ])
        .output()
        .expect("test setup");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
#[ignore = "privileged: run by .ci/run"]
async fn a_missing_unit_is_a_clear_error() {
    let host = SystemdHost::start("missing").await;
    let backend = SystemdBackend::new(&host.config("no-such-app")).unwrap();
    let err = backend.start().await.unwrap_err();
    assert!(matches!(err, BackendError::UnitNotFound { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "systemd unit `no-such-app.service` not found"
    );
    let Health::Unhealthy(why) = backend.health().await else {
        panic!("a missing unit must be unhealthy");
    };
    assert!(why.contains("not found"), "{why}");
    // Stopping what does not exist is not an error.
    backend.stop().await.unwrap();
}

/// Unprivileged: nothing listens at the bus address.
#[tokio::test]
async fn an_unreachable_bus_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix:path={}/no_bus_socket", dir.path().display());
    let config = BackendConfig::parse("systemd:app")
        .unwrap()
        .systemd_bus(&address);
    let backend = SystemdBackend::new(&config).unwrap();
    let err = backend.start().await.unwrap_err();
    assert!(matches!(err, BackendError::BusUnreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot reach D-Bus at {address}")),
        "{err}"
    );
}
