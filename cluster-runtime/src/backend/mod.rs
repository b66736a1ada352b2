//! Managed backends: the program a singleton's active instance runs.
//!
//! A backend is started when a node becomes active and stopped when it steps
//! down (DESIGN §4.7). The active counts as *serving* only once the backend is
//! healthy: its kind-specific liveness ([`Backend::health`]: the process is
//! alive, the unit is active, the container is running) **and**, when a
//! [`HealthProbe`] is configured, an HTTP GET answering the expected status.
//! [`Supervisor`] does that waiting, bounded by the start timeout, and keeps
//! probing afterwards.
//!
//! Three kinds come with the crate, chosen by the string users write
//! ([`cluster_spec::ops::Backend`]): `process:CMD ARGS` ([`ProcessBackend`]),
//! `systemd:UNIT` ([`SystemdBackend`], over D-Bus) and `docker:IMAGE`
//! ([`DockerBackend`], over the Docker Engine API). Custom backends implement
//! [`Backend`] and hand an `Arc<dyn Backend>` to [`Supervisor::new`].
//!
//! Guarantees: `start` and `stop` are idempotent; `stop` returns only once the
//! backend has stopped (a process group is SIGKILLed after the grace period);
//! a start that does not become healthy in time is stopped again, so nothing
//! is left running behind an error.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cluster_runtime::backend::BackendError> {
//! use cluster_runtime::backend::{BackendConfig, HealthProbe, Supervisor};
//! use std::time::Duration;
//!
//! let spec = cluster_spec::ops::Backend::parse("process:/usr/bin/myapp --port 8080")
//!     .map_err(cluster_runtime::backend::BackendError::Config)?;
//! let config = BackendConfig::new(spec)
//!     .start_timeout(Duration::from_secs(30))
//!     .probe(HealthProbe::new("http://127.0.0.1:8080/health"));
//! let supervisor = Supervisor::from_config(config)?;
//! let took = supervisor.start_and_wait_healthy().await?;
//! println!("backend healthy after {took:?}");
//! supervisor.stop().await?;
//! # Ok(()) }
//! ```

mod docker;
mod probe;
mod process;
mod systemd;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use docker::DockerBackend;
pub use probe::probe;
pub use process::{ProcessBackend, ProcessState};
pub use systemd::SystemdBackend;

/// A program the active instance runs and stops; dyn-compatible so custom
/// kinds plug into the same [`Supervisor`].
///
/// ```
/// use cluster_runtime::backend::{Backend, BackendError, Health};
/// use futures::future::BoxFuture;
///
/// /// A backend that is always there (say, a service managed elsewhere).
/// #[derive(Debug)]
/// struct External;
///
/// impl Backend for External {
///     fn kind(&self) -> &'static str { "external" }
///     fn start(&self) -> BoxFuture<'_, Result<(), BackendError>> { Box::pin(async { Ok(()) }) }
///     fn stop(&self) -> BoxFuture<'_, Result<(), BackendError>> { Box::pin(async { Ok(()) }) }
///     fn health(&self) -> BoxFuture<'_, Health> { Box::pin(async { Health::Healthy }) }
/// }
/// ```
pub trait Backend: Send + Sync + fmt::Debug {
    /// `"process"`, `"systemd"`, `"docker"` or a custom kind: for logs and errors.
    fn kind(&self) -> &'static str;
    /// Starts the backend; succeeds at once when it already runs.
    fn start(&self) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Stops the backend and returns once it has stopped; succeeds at once
    /// when it is not running.
    fn stop(&self) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Stops the backend at once, without a grace period (SIGKILL where
    /// the kind allows it): used when the lease is lost and another node
    /// may start its own backend any moment. Defaults to [`stop`](Self::stop).
    fn kill(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.stop()
    }
    /// The kind's own liveness (process alive, unit active, container
    /// running and Docker-healthy), without the HTTP probe.
    fn health(&self) -> BoxFuture<'_, Health>;
}

/// What a backend says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Running as it should.
    Healthy,
    /// On its way up (unit activating, container health `starting`, process
    /// between restarts).
    Starting,
    /// Present but not serving, with the reason.
    Unhealthy(String),
    /// Not running (never started, or stopped).
    Stopped,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Healthy => f.write_str("healthy"),
            Health::Starting => f.write_str("starting"),
            Health::Unhealthy(why) => write!(f, "unhealthy: {why}"),
            Health::Stopped => f.write_str("stopped"),
        }
    }
}

/// An HTTP GET that must answer `expect_status` for the backend to count as
/// serving: liveness alone does not prove the program accepts requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthProbe {
    /// `http://HOST:PORT/PATH` (plain HTTP; no TLS).
    pub url: String,
    /// The status a healthy backend answers (default 200).
    pub expect_status: u16,
    /// Pause between probes while waiting and, once healthy, between checks
    /// (default 1 s).
    pub interval: Duration,
    /// How long one probe may take (default 2 s).
    pub timeout: Duration,
}

impl HealthProbe {
    /// A probe of `url` expecting 200 every second with a 2 s timeout.
    pub fn new(url: impl Into<String>) -> HealthProbe {
        HealthProbe {
            url: url.into(),
            expect_status: 200,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
        }
    }

    /// Expects `status` instead of 200.
    pub fn expect_status(mut self, status: u16) -> HealthProbe {
        self.expect_status = status;
        self
    }

    /// Probes every `interval`.
    pub fn interval(mut self, interval: Duration) -> HealthProbe {
        self.interval = interval;
        self
    }

    /// Gives one probe at most `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> HealthProbe {
        self.timeout = timeout;
        self
    }
}

/// When a process backend that exits by itself is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Never: an exit is reported and the backend stays down.
    #[default]
    Never,
    /// After a non-zero exit (or death by signal), up to `max_restarts` times
    /// over the backend's run; a clean exit (status 0) is not restarted.
    OnFailure {
        /// How many restarts at most.
        max_restarts: u32,
    },
}

/// Container settings of a `docker:IMAGE` backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerOptions {
    /// Container name (default `cluster-<image>` with unsafe characters
    /// replaced): a fixed name makes start and stop idempotent across
    /// restarts of the node.
    pub name: Option<String>,
    /// Published ports as `(host port, container port)`, TCP.
    pub ports: Vec<(u16, u16)>,
    /// Bind mounts in Docker's `HOST:CONTAINER[:ro]` form.
    pub volumes: Vec<String>,
    /// Container environment (added to [`BackendConfig::env`]).
    pub env: BTreeMap<String, String>,
    /// Network mode (`bridge`, `host`, `none` or a network name).
    pub network: Option<String>,
    /// Arguments after the image's entrypoint (default: the image's `CMD`).
    pub cmd: Option<Vec<String>>,
    /// Docker socket path (default: `$DOCKER_HOST` or `/var/run/docker.sock`).
    pub socket: Option<String>,
}

/// Everything needed to run one backend: the user's spec string plus the
/// operational settings around it.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    spec: cluster_spec::ops::Backend,
    dir: Option<PathBuf>,
    env: BTreeMap<String, String>,
    log_file: Option<PathBuf>,
    restart: RestartPolicy,
    stop_grace: Duration,
    start_timeout: Duration,
    probe: Option<HealthProbe>,
    docker: DockerOptions,
    systemd_bus: Option<String>,
}

impl BackendConfig {
    /// Defaults: no probe, 10 s stop grace, 60 s start timeout, no restarts,
    /// the system bus for systemd, the local Docker socket.
    pub fn new(spec: cluster_spec::ops::Backend) -> BackendConfig {
        BackendConfig {
            spec,
            dir: None,
            env: BTreeMap::new(),
            log_file: None,
            restart: RestartPolicy::Never,
            stop_grace: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            probe: None,
            docker: DockerOptions::default(),
            systemd_bus: None,
        }
    }

    /// Parses the spec string (`process:…`, `systemd:…`, `docker:…`).
    pub fn parse(spec: &str) -> Result<BackendConfig, BackendError> {
        cluster_spec::ops::Backend::parse(spec)
            .map(BackendConfig::new)
            .map_err(BackendError::Config)
    }

    /// The backend spec.
    pub fn spec(&self) -> &cluster_spec::ops::Backend {
        &self.spec
    }

    /// Working directory of a process backend.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> BackendConfig {
        self.dir = Some(dir.into());
        self
    }

    /// Adds an environment variable (process and docker backends).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> BackendConfig {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Appends a process backend's stdout/stderr lines to this file too.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> BackendConfig {
        self.log_file = Some(path.into());
        self
    }

    /// Restart policy of a process backend.
    pub fn restart(mut self, policy: RestartPolicy) -> BackendConfig {
        self.restart = policy;
        self
    }

    /// How long `stop` waits after SIGTERM before SIGKILL (process, docker).
    pub fn stop_grace(mut self, grace: Duration) -> BackendConfig {
        self.stop_grace = grace;
        self
    }

    /// How long [`Supervisor::start_and_wait_healthy`] waits for health.
    pub fn start_timeout(mut self, timeout: Duration) -> BackendConfig {
        self.start_timeout = timeout;
        self
    }

    /// The HTTP probe that must pass besides the kind's liveness.
    pub fn probe(mut self, probe: HealthProbe) -> BackendConfig {
        self.probe = Some(probe);
        self
    }

    /// Container settings of a docker backend.
    pub fn docker(mut self, options: DockerOptions) -> BackendConfig {
        self.docker = options;
        self
    }

    /// D-Bus address of the systemd backend (default: the system bus), e.g.
    /// `unix:path=/run/dbus/system_bus_socket`.
    pub fn systemd_bus(mut self, address: impl Into<String>) -> BackendConfig {
        self.systemd_bus = Some(address.into());
        self
    }
}

/// Why a backend could not be started, checked or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The spec string or a setting is invalid.
    #[error("invalid backend config: {0}")]
    Config(String),
    /// The program of a process backend does not exist.
    #[error("program `{program}` not found (not a path to an executable, nor on PATH)")]
    ProgramNotFound {
        /// The program as configured.
        program: String,
    },
    /// The program exists but could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program as configured.
        program: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The backend did not become healthy in time (it has been stopped again).
    #[error("{kind} backend not healthy within {waited:?}; last: {last}")]
    StartTimeout {
        /// The backend kind.
        kind: &'static str,
        /// How long it was given.
        waited: Duration,
        /// What health or the probe said last.
        last: String,
    },
    /// The systemd unit does not exist.
    #[error("systemd unit `{unit}` not found")]
    UnitNotFound {
        /// The unit name.
        unit: String,
    },
    /// The D-Bus bus could not be reached.
    #[error("cannot reach D-Bus at {address}: {reason}")]
    BusUnreachable {
        /// The bus address (or "the system bus").
        address: String,
        /// What failed.
        reason: String,
    },
    /// A systemd call or job failed.
    #[error("systemd {op} of `{unit}` failed: {reason}")]
    Systemd {
        /// `start`, `stop`, `restart`, …
        op: &'static str,
        /// The unit name.
        unit: String,
        /// What systemd said.
        reason: String,
    },
    /// The Docker daemon could not be reached.
    #[error("cannot reach the Docker daemon: {reason}")]
    DockerUnreachable {
        /// What failed.
        reason: String,
    },
    /// The image is not in the local engine.
    #[error("no such image `{image}`; this engine has no registry — build or import it")]
    ImageMissing {
        /// The image reference.
        image: String,
    },
    /// A Docker Engine API call failed.
    #[error("docker {op} of `{name}` failed: {reason}")]
    Docker {
        /// `create`, `start`, `stop`, `remove`, …
        op: &'static str,
        /// The container name.
        name: String,
        /// What the engine said.
        reason: String,
    },
    /// Stopping did not complete.
    #[error("cannot stop {kind} backend: {reason}")]
    Stop {
        /// The backend kind.
        kind: &'static str,
        /// Why.
        reason: String,
    },
}

/// Builds the backend the spec names.
///
/// ```
/// use cluster_runtime::backend::{build, BackendConfig};
/// let backend = build(BackendConfig::parse("process:/bin/true").unwrap()).unwrap();
/// assert_eq!(backend.kind(), "process");
/// ```
pub fn build(config: BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(match &config.spec {
        cluster_spec::ops::Backend::Process { .. } => Arc::new(ProcessBackend::new(&config)?),
        cluster_spec::ops::Backend::Systemd { .. } => Arc::new(SystemdBackend::new(&config)?),
        cluster_spec::ops::Backend::Docker { .. } => Arc::new(DockerBackend::new(&config)?),
    })
}

/// Runs a backend for the active role: start, wait (up to the start timeout)
/// until the kind's health is [`Health::Healthy`] and the probe (if any)
/// answers the expected status, then keep checking at the probe interval.
///
/// Dropping a supervisor inside a tokio runtime stops its backend in the
/// background; call [`Supervisor::stop`] to know when it has stopped.
#[derive(Debug)]
pub struct Supervisor {
    backend: Arc<dyn Backend>,
    probe: Option<HealthProbe>,
    start_timeout: Duration,
    healthy: watch::Sender<bool>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

/// First pause between start-up health checks; it doubles up to the
/// probe interval.
const STARTUP_CHECK_PAUSE: Duration = Duration::from_millis(10);

/// Pause between health checks while waiting, when no probe sets one.
const DEFAULT_INTERVAL: Duration = Duration::from_millis(200);

impl Supervisor {
    /// Supervises `backend` with an optional probe and a start timeout.
    pub fn new(
        backend: Arc<dyn Backend>,
        probe: Option<HealthProbe>,
        start_timeout: Duration,
    ) -> Supervisor {
        Supervisor {
            backend,
            probe,
            start_timeout,
            healthy: watch::Sender::new(false),
            watcher: Mutex::new(None),
        }
    }

    /// Builds the configured backend ([`build`]) and supervises it.
    pub fn from_config(config: BackendConfig) -> Result<Supervisor, BackendError> {
        let probe = config.probe.clone();
        let start_timeout = config.start_timeout;
        Ok(Supervisor::new(build(config)?, probe, start_timeout))
    }

    /// The supervised backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Starts the backend and waits until it is healthy; returns how long
    /// that took. On timeout the backend is stopped again and the error
    /// carries what health said last.
    pub async fn start_and_wait_healthy(&self) -> Result<Duration, BackendError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.start_timeout;
        let timeout = |last: String| BackendError::StartTimeout {
            kind: self.backend.kind(),
            waited: self.start_timeout,
            last,
        };
        match tokio::time::timeout_at(deadline, self.backend.start()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.stop_quietly().await;
                return Err(e);
            }
            Err(_) => {
                self.stop_quietly().await;
                return Err(timeout("start did not return".to_owned()));
            }
        }
        let interval = self.interval();
        // Start-up checks come fast and slow down to the probe interval: a
        // process is usually listening within milliseconds, and waiting a
        // whole interval (1 s by default) would sit on the failover path.
        let mut pause = STARTUP_CHECK_PAUSE.min(interval);
        // The last answer a check gave (a check cut off by the deadline
        // keeps the one before it: that is the informative one).
        let mut last = "no health check finished".to_owned();
        loop {
            match tokio::time::timeout_at(deadline, self.check()).await {
                Ok(Ok(())) => break,
                Ok(Err(why)) => last = why,
                Err(_) => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                self.stop_quietly().await;
                return Err(timeout(last));
            }
            tracing::debug!(kind = self.backend.kind(), %last, "backend not healthy yet");
            tokio::time::sleep_until((now + pause).min(deadline)).await;
            pause = (pause * 2).min(interval);
        }
        self.healthy.send_replace(true);
        self.spawn_watcher();
        let took = started.elapsed();
        tracing::info!(kind = self.backend.kind(), ?took, "backend healthy");
        Ok(took)
    }

    /// Stops the backend and waits until it has stopped; returns how long
    /// that took.
    pub async fn stop(&self) -> Result<Duration, BackendError> {
        let started = Instant::now();
        self.stop_watcher();
        self.healthy.send_replace(false);
        self.backend.stop().await?;
        Ok(started.elapsed())
    }

    /// Stops the backend without a grace period ([`Backend::kill`]) and
    /// waits until it has stopped; returns how long that took.
    pub async fn kill(&self) -> Result<Duration, BackendError> {
        let started = Instant::now();
        self.stop_watcher();
        self.healthy.send_replace(false);
        self.backend.kill().await?;
        Ok(started.elapsed())
    }

    /// `true` while the backend passes its checks; updated every probe
    /// interval after [`Supervisor::start_and_wait_healthy`] succeeded.
    pub fn healthy(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    /// One check: the kind's health, then the probe. `Err` says what failed.
    pub async fn check(&self) -> Result<(), String> {
        check(&*self.backend, self.probe.as_ref()).await
    }

    fn interval(&self) -> Duration {
        self.probe
            .as_ref()
            .map_or(DEFAULT_INTERVAL, |p| p.interval)
            .max(Duration::from_millis(10))
    }

    fn spawn_watcher(&self) {
        let backend = Arc::clone(&self.backend);
        let probe = self.probe.clone();
        let healthy = self.healthy.clone();
        let interval = self.interval();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let result = check(&*backend, probe.as_ref()).await;
                if let Err(why) = &result {
                    tracing::warn!(kind = backend.kind(), %why, "backend health check failed");
                }
                healthy.send_if_modified(|h| {
                    let changed = *h != result.is_ok();
                    *h = result.is_ok();
                    changed
                });
            }
        });
        if let Some(old) = self.lock_watcher().replace(task) {
            old.abort();
        }
    }

    fn stop_watcher(&self) {
        if let Some(task) = self.lock_watcher().take() {
            task.abort();
        }
    }

    fn lock_watcher(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn stop_quietly(&self) {
        if let Err(e) = self.backend.stop().await {
            tracing::warn!(kind = self.backend.kind(), error = %e, "stopping a backend that did not start failed");
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_watcher();
        if *self.healthy.borrow() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let backend = Arc::clone(&self.backend);
                runtime.spawn(async move {
                    if let Err(e) = backend.stop().await {
                        tracing::warn!(kind = backend.kind(), error = %e, "stopping a dropped backend failed");
                    }
                });
            }
        }
    }
}

async fn check(backend: &dyn Backend, probe: Option<&HealthProbe>) -> Result<(), String> {
    match backend.health().await {
        Health::Healthy => {}
        other => return Err(format!("{} health: {other}", backend.kind())),
    }
    if let Some(p) = probe {
        probe::probe(p).await.map_err(|e| format!("probe: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_the_spec_and_rejects_garbage() {
        assert!(matches!(
            BackendConfig::parse("process:/bin/true").map(|c| c.spec().clone()),
            Ok(cluster_spec::ops::Backend::Process { .. })
        ));
        let err = BackendConfig::parse("k8s:pod").err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("unknown backend kind `k8s`")),
            "{err:?}"
        );
    }

    #[test]
    fn health_reads_well() {
        assert_eq!(Health::Unhealthy("x".into()).to_string(), "unhealthy: x");
        assert_eq!(Health::Stopped.to_string(), "stopped");
    }

    #[test]
    fn image_missing_says_what_to_do() {
        let e = BackendError::ImageMissing {
            image: "app:1".into(),
        };
        assert_eq!(
            e.to_string(),
            "no such image `app:1`; this engine has no registry — build or import it"
        );
    }
}
