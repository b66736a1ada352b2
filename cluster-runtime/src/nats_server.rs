//! Local `nats-server` child processes (for `--dev` and the test harness).
//!
//! A [`NatsServer`] is one `nats-server` process on loopback, with its own
//! directory holding its config file, its log (the child's stdout and stderr)
//! and, unless told otherwise, its JetStream store. A [`NatsCluster`] is N of
//! them joined by routes into one JetStream cluster.
//!
//! Guarantees:
//!
//! - `start` returns only once the server is *ready*: its `/healthz` monitoring
//!   endpoint answers `200` (which, with JetStream on, means JetStream is
//!   running and, in a cluster, that a meta leader is known and this server is
//!   current with it) and its client port accepts connections. A server that
//!   dies or is not ready by the deadline is an error that carries the tail of
//!   its log.
//! - The process is killed (`SIGKILL`) and reaped when its handle is dropped;
//!   the temporary directory (and the store inside it) is removed after.
//! - [`NatsServer::restart`] brings the server back on the same ports with the
//!   same store, so clients reconnect and JetStream data survives.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cluster_runtime::nats_server::NatsServerError> {
//! use cluster_runtime::nats_server::{NatsServer, ServerOptions};
//!
//! let server = NatsServer::start(ServerOptions::default()).await?;
//! let client = async_nats::connect(server.url()).await;
//! # drop(client);
//! # Ok(())
//! # }
//! ```

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The environment variable naming the `nats-server` binary to use.
pub const BINARY_ENV: &str = "NATS_SERVER_BIN";

/// How long `start`/`restart` wait for readiness unless told otherwise.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(15);

/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Per-request limit of the readiness probe's HTTP GET.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times a start that lost a free port to another process is retried
/// with fresh ports.
const PORT_ATTEMPTS: usize = 4;

/// Lines of the server log quoted in errors.
const LOG_TAIL_LINES: usize = 20;

/// Why a local `nats-server` could not be found, started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    /// No binary in `$NATS_SERVER_BIN`, on `PATH` or under `.tools/bin`.
    #[error(
        "nats-server binary not found: set {BINARY_ENV} to its path, put `nats-server` on PATH, \
         or run `source scripts/lib/tools.sh && ensure_nats_server` in the workspace"
    )]
    BinaryNotFound,
    /// `$NATS_SERVER_BIN` is set but does not name an executable file.
    #[error("{BINARY_ENV}={} does not name an executable file", path.display())]
    BadBinaryEnv {
        /// The value of the variable.
        path: PathBuf,
    },
    /// A file-system or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. "write config /tmp/x/nats.conf".
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A port the server needs is taken by another process.
    #[error("nats-server {name} could not bind its ports ({ports}): address already in use; log {}:\n{tail}", log.display())]
    AddressInUse {
        /// The server's name (or its client URL when unnamed).
        name: String,
        /// The ports it tried to bind.
        ports: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// The process exited before it was ready.
    #[error("nats-server {name} (pid {pid}) exited during start-up ({status}); log {}:\n{tail}", log.display())]
    Exited {
        /// The server's name (or its client URL when unnamed).
        name: String,
        /// Its process id.
        pid: u32,
        /// How it exited.
        status: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// The process runs but did not become ready before the deadline.
    #[error(
        "nats-server {name} (pid {pid}) not ready after {waited:?}; last check: {last_check}; log {}:\n{tail}",
        log.display()
    )]
    NotReady {
        /// The server's name (or its client URL when unnamed).
        name: String,
        /// Its process id.
        pid: u32,
        /// How long readiness was awaited.
        waited: Duration,
        /// The last readiness probe's outcome, e.g. the `/healthz` body.
        last_check: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// The operation needs a running process, and this one was killed.
    #[error("nats-server {name} is not running (killed or exited); restart it first")]
    NotRunning {
        /// The server's name (or its client URL when unnamed).
        name: String,
    },
    /// Sending a signal failed.
    #[error("cannot send {signal} to nats-server {name} (pid {pid}): {source}")]
    Signal {
        /// The server's name (or its client URL when unnamed).
        name: String,
        /// Its process id.
        pid: u32,
        /// The signal, e.g. `SIGSTOP`.
        signal: Signal,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// `NatsCluster::start(0)`.
    #[error("a NATS cluster needs at least one server, got 0")]
    EmptyCluster,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NatsServerError {
    let what = what.into();
    move |source| NatsServerError::Io { what, source }
}

/// Finds the `nats-server` binary: `$NATS_SERVER_BIN` if set, else
/// `nats-server` on `PATH`, else `.tools/bin/nats-server` in the current
/// directory or one of its parents (where `scripts/lib/tools.sh` installs it).
pub fn find_binary() -> Result<PathBuf, NatsServerError> {
    if let Some(value) = std::env::var_os(BINARY_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(NatsServerError::BadBinaryEnv { path })
        };
    }
    if let Some(path_var) = std::env::var_os("PATH") {
        if let Some(found) = std::env::split_paths(&path_var)
            .map(|dir| dir.join("nats-server"))
            .find(|p| is_executable(p))
        {
            return Ok(found);
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(found) = cwd
            .ancestors()
            .map(|dir| dir.join(".tools/bin/nats-server"))
            .find(|p| is_executable(p))
        {
            return Ok(found);
        }
    }
    Err(NatsServerError::BinaryNotFound)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Reserves `count` distinct free loopback ports: binds them all at once (so
/// the kernel cannot hand out one twice), reads the numbers, releases them.
/// Another process may grab one before the server binds it; callers retry on
/// [`NatsServerError::AddressInUse`].
fn free_ports(count: usize) -> Result<Vec<u16>, NatsServerError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err("reserve a free loopback port"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err("read a reserved port"))
}

/// How to start a [`NatsServer`]. `ServerOptions::default()` is a JetStream
/// server on a free port with a temporary store.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Enable JetStream (default `true`).
    pub jetstream: bool,
    /// Client port; `None` picks a free one.
    pub port: Option<u16>,
    /// JetStream store directory; `None` uses a directory inside the
    /// server's temporary directory, removed on drop. A given directory is
    /// left in place.
    pub store_dir: Option<PathBuf>,
    /// `max_payload` in bytes; `None` keeps the server default (1 MiB).
    pub max_payload: Option<u32>,
    /// `server_name`; `None` lets the server choose.
    pub server_name: Option<String>,
    /// The binary; `None` uses [`find_binary`].
    pub binary: Option<PathBuf>,
    /// How long `start` and `restart` wait for readiness.
    pub start_timeout: Duration,
    /// Extra nats-server configuration appended verbatim (e.g. an
    /// `authorization { ... }` block for auth tests).
    pub extra_config: Option<String>,
    /// Accept clients on every interface (`0.0.0.0`), not only loopback:
    /// for nodes in other network namespaces (default `false`).
    pub listen_any: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            jetstream: true,
            port: None,
            store_dir: None,
            max_payload: None,
            server_name: None,
            binary: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            extra_config: None,
            listen_any: false,
        }
    }
}

/// Route settings of a cluster member.
#[derive(Debug, Clone)]
struct RouteConfig {
    cluster_name: String,
    port: u16,
    peers: Vec<u16>,
}

/// The ports one server binds.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    http: u16,
    route: Option<u16>,
}

/// One local `nats-server` process. Killed and reaped on drop; its temporary
/// directory is removed after.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    name: Option<String>,
    ports: Ports,
    start_timeout: Duration,
    config_path: PathBuf,
    log_path: PathBuf,
    store_dir: Option<PathBuf>,
    child: Option<Child>,
    pid: u32,
    /// Length of the log when the current process was spawned: errors quote
    /// only what this run wrote.
    log_offset: u64,
    // Declared last so it is removed after the process is gone.
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server and waits until it is ready (see the module docs).
    /// With `opts.port == None` a start that lost its free port to another
    /// process is retried on fresh ports.
    pub async fn start(opts: ServerOptions) -> Result<NatsServer, NatsServerError> {
        let binary = match &opts.binary {
            Some(b) => b.clone(),
            None => find_binary()?,
        };
        let attempts = if opts.port.is_some() {
            1
        } else {
            PORT_ATTEMPTS
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let free = free_ports(2)?;
            let ports = Ports {
                client: opts.port.unwrap_or(free[0]),
                http: free[1],
                route: None,
            };
            let mut server = Self::prepare(&binary, &opts, ports, None)?;
            server.spawn()?;
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(NatsServerError::AddressInUse { .. }) if attempt < attempts => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates the server's directory and config file; does not spawn.
    fn prepare(
        binary: &Path,
        opts: &ServerOptions,
        ports: Ports,
        route: Option<RouteConfig>,
    ) -> Result<NatsServer, NatsServerError> {
        let dir = tempfile::Builder::new()
            .prefix("nats-server-")
            .tempdir()
            .map_err(io_err("create a temporary directory for nats-server"))?;
        let store_dir = opts.jetstream.then(|| {
            opts.store_dir
                .clone()
                .unwrap_or_else(|| dir.path().join("jetstream"))
        });
        let ports = Ports {
            route: route.as_ref().map(|r| r.port),
            ..ports
        };
        let config = render_config(opts, ports, store_dir.as_deref(), route.as_ref());
        let config_path = dir.path().join("nats-server.conf");
        fs::write(&config_path, config)
            .map_err(io_err(format!("write {}", config_path.display())))?;
        Ok(NatsServer {
            binary: binary.to_path_buf(),
            name: opts.server_name.clone(),
            ports,
            start_timeout: opts.start_timeout,
            log_path: dir.path().join("nats-server.log"),
            config_path,
            store_dir,
            child: None,
            pid: 0,
            log_offset: 0,
            dir,
        })
    }

    /// Spawns the process (the previous one must be gone), output appended to
    /// the log.
    fn spawn(&mut self) -> Result<(), NatsServerError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io_err(format!("open {}", self.log_path.display())))?;
        self.log_offset = log
            .metadata()
            .map_err(io_err(format!("stat {}", self.log_path.display())))?
            .len();
        let stderr = log
            .try_clone()
            .map_err(io_err(format!("duplicate {}", self.log_path.display())))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(io_err(format!("spawn {}", self.binary.display())))?;
        self.pid = child.id();
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the running process is ready, it exits, or
    /// `start_timeout` passes.
    pub async fn wait_ready(&mut self) -> Result<(), NatsServerError> {
        let started = Instant::now();
        let deadline = started + self.start_timeout;
        loop {
            self.check_alive()?;
            let last_check = match self.probe().await {
                Ok(()) => return Ok(()),
                Err(check) => check,
            };
            if Instant::now() >= deadline {
                return Err(self.not_ready(started.elapsed(), last_check));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Errors if the process is gone; reaps it if it has exited.
    fn check_alive(&mut self) -> Result<(), NatsServerError> {
        let Some(child) = self.child.as_mut() else {
            return Err(NatsServerError::NotRunning { name: self.label() });
        };
        if let Some(status) = child
            .try_wait()
            .map_err(io_err(format!("wait for nats-server pid {}", self.pid)))?
        {
            self.child = None;
            return Err(self.exit_error(status));
        }
        Ok(())
    }

    /// One readiness probe: `/healthz` answers 200 and the client port
    /// accepts a connection. The error describes what was seen.
    async fn probe(&self) -> Result<(), String> {
        match http_get(self.ports.http, "/healthz").await {
            Ok((200, _)) => TcpStream::connect(("127.0.0.1", self.ports.client))
                .await
                .map(drop)
                .map_err(|e| format!("connect to client port {}: {e}", self.ports.client)),
            Ok((status, body)) => Err(format!("GET /healthz: {status} {body}")),
            Err(e) => Err(format!("GET /healthz: {e}")),
        }
    }

    fn not_ready(&self, waited: Duration, last_check: String) -> NatsServerError {
        NatsServerError::NotReady {
            name: self.label(),
            pid: self.pid,
            waited,
            last_check,
            log: self.log_path.clone(),
            tail: self.log_tail(),
        }
    }

    fn exit_error(&self, status: ExitStatus) -> NatsServerError {
        let tail = self.log_tail();
        if tail.contains("address already in use") {
            let mut ports = format!("client {}, monitor {}", self.ports.client, self.ports.http);
            if let Some(route) = self.ports.route {
                let _ = write!(ports, ", route {route}");
            }
            NatsServerError::AddressInUse {
                name: self.label(),
                ports,
                log: self.log_path.clone(),
                tail,
            }
        } else {
            NatsServerError::Exited {
                name: self.label(),
                pid: self.pid,
                status: status.to_string(),
                log: self.log_path.clone(),
                tail,
            }
        }
    }

    /// The last lines the current process wrote to the log.
    pub fn log_tail(&self) -> String {
        read_tail(&self.log_path, self.log_offset, LOG_TAIL_LINES)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.url())
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.ports.client)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.ports.client
    }

    /// The monitoring URL (`/healthz`, `/varz`, `/jsz`, ...).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    /// The `server_name`, if one was set.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The pid of the current (or, after `kill`, the last) process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The log file: the process's stdout and stderr, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The JetStream store directory (`None` without JetStream).
    pub fn store_dir(&self) -> Option<&Path> {
        self.store_dir.as_deref()
    }

    /// Whether the process has not exited (a paused process is running).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) => {
                self.child = None;
                false
            }
            Some(Err(_)) => true,
            None => false,
        }
    }

    /// Kills the process with `SIGKILL` (works on a paused one too) and reaps
    /// it. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it has already exited; wait() reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process if it runs, starts it again on the same ports with
    /// the same store, and waits until it is ready. In a cluster, ready means
    /// it rejoined: it is current with the meta leader and with the streams
    /// it holds. That takes 1-5 s with nats-server 2.15: a restarted member
    /// reports "not established contact with a meta leader" until the
    /// leader's next heartbeat reaches it.
    pub async fn restart(&mut self) -> Result<(), NatsServerError> {
        let deadline = Instant::now() + self.start_timeout;
        loop {
            self.respawn()?;
            match self.wait_ready().await {
                // The port is ours; another process took it while we were
                // down. Wait for it to be released.
                Err(NatsServerError::AddressInUse { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// Kills the process if it runs and spawns it again on the same ports
    /// with the same store, without waiting for readiness. Use it when
    /// readiness depends on other servers coming back too (e.g. restarting
    /// a whole cluster), then [`wait_ready`](Self::wait_ready).
    pub fn respawn(&mut self) -> Result<(), NatsServerError> {
        self.kill();
        self.spawn()
    }

    /// Freezes the process with `SIGSTOP`: it keeps its sockets but answers
    /// nothing, like a hung host.
    pub fn pause(&self) -> Result<(), NatsServerError> {
        self.signal(Signal::SIGSTOP)
    }

    /// Resumes a paused process with `SIGCONT`.
    pub fn resume(&self) -> Result<(), NatsServerError> {
        self.signal(Signal::SIGCONT)
    }

    fn signal(&self, sig: Signal) -> Result<(), NatsServerError> {
        // Only an unreaped child is signalled, so the pid cannot have been
        // reused by another process.
        if self.child.is_none() {
            return Err(NatsServerError::NotRunning { name: self.label() });
        }
        let pid = i32::try_from(self.pid).map_err(|_| NatsServerError::Signal {
            name: self.label(),
            pid: self.pid,
            signal: sig,
            source: nix::Error::EINVAL,
        })?;
        signal::kill(Pid::from_raw(pid), sig).map_err(|source| NatsServerError::Signal {
            name: self.label(),
            pid: self.pid,
            signal: sig,
            source,
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Renders a nats-server config file. Strings are JSON-quoted, which the
/// NATS config syntax accepts.
fn render_config(
    opts: &ServerOptions,
    ports: Ports,
    store_dir: Option<&Path>,
    route: Option<&RouteConfig>,
) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut c = String::new();
    if let Some(name) = &opts.server_name {
        let _ = writeln!(c, "server_name: {}", q(name));
    }
    let host = if opts.listen_any {
        "0.0.0.0"
    } else {
        "127.0.0.1"
    };
    let _ = writeln!(c, "listen: \"{host}:{}\"", ports.client);
    let _ = writeln!(c, "http: \"127.0.0.1:{}\"", ports.http);
    if let Some(max) = opts.max_payload {
        let _ = writeln!(c, "max_payload: {max}");
    }
    if let Some(store) = store_dir {
        let _ = writeln!(
            c,
            "jetstream {{\n  store_dir: {}\n}}",
            q(&store.to_string_lossy())
        );
    }
    if let Some(route) = route {
        let routes = route
            .peers
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            c,
            "cluster {{\n  name: {}\n  listen: \"127.0.0.1:{}\"\n  routes: [{routes}]\n}}",
            q(&route.cluster_name),
            route.port
        );
    }
    if let Some(extra) = &opts.extra_config {
        c.push_str(extra);
        c.push('\n');
    }
    c
}

/// The last `lines` lines of `path` from byte `offset` on, without the
/// server's `Healthcheck failed` lines: the server logs one per failing
/// readiness probe, which would crowd out the lines that explain why (the
/// last probe's answer is reported on its own).
fn read_tail(path: &Path, offset: u64, lines: usize) -> io::Result<String> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("Healthcheck failed"))
        .collect();
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

/// A minimal HTTP/1.0 `GET` of `path` on `127.0.0.1:port`: returns the status
/// code and body. Used to probe nats-server's monitoring port, and by tests
/// to read a node's `/status` without an HTTP client dependency.
pub async fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let request = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, io::Error>(response)
    };
    let response = tokio::time::timeout(PROBE_TIMEOUT, request)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response within 2s"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed HTTP response: {head:?}"),
            )
        })?;
    Ok((status, body.trim().to_string()))
}

/// A local JetStream cluster: N [`NatsServer`]s named `n0`, `n1`, ... joined
/// by routes, each with its own store. Every server is killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` servers and waits until the cluster is ready: every server
    /// answers `/healthz` (a JetStream meta leader is elected and every server
    /// is current with it) and the meta leader sees all `n` peers, so an R`n`
    /// stream or KV bucket can be created right away.
    pub async fn start(n: usize) -> Result<NatsCluster, NatsServerError> {
        Self::start_with(n, ServerOptions::default()).await
    }

    /// Like [`start`](Self::start), with options applied to every server
    /// (`jetstream` is forced on; `port`, `store_dir` and `server_name` are
    /// chosen per server).
    pub async fn start_with(n: usize, opts: ServerOptions) -> Result<NatsCluster, NatsServerError> {
        if n == 0 {
            return Err(NatsServerError::EmptyCluster);
        }
        let binary = match &opts.binary {
            Some(b) => b.clone(),
            None => find_binary()?,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(&binary, n, &opts).await {
                Err(NatsServerError::AddressInUse { .. }) if attempt < PORT_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    async fn try_start(
        binary: &Path,
        n: usize,
        opts: &ServerOptions,
    ) -> Result<NatsCluster, NatsServerError> {
        let ports = free_ports(3 * n)?;
        let route_ports: Vec<u16> = ports.iter().skip(2 * n).copied().collect();
        let cluster_name = format!("local-{}", route_ports[0]);
        let mut servers = Vec::with_capacity(n);
        for i in 0..n {
            let member_opts = ServerOptions {
                jetstream: true,
                port: None,
                store_dir: None,
                server_name: Some(format!("n{i}")),
                ..opts.clone()
            };
            let route = RouteConfig {
                cluster_name: cluster_name.clone(),
                port: route_ports[i],
                peers: route_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| *p)
                    .collect(),
            };
            let server_ports = Ports {
                client: ports[2 * i],
                http: ports[2 * i + 1],
                route: None,
            };
            servers.push(NatsServer::prepare(
                binary,
                &member_opts,
                server_ports,
                Some(route),
            )?);
        }
        for server in &mut servers {
            server.spawn()?;
        }
        let mut cluster = NatsCluster { servers };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Waits until every server is ready and the meta leader sees all peers
    /// as current (see [`start`](Self::start)). Use after faults, e.g. after
    /// restarting several servers with [`NatsServer::respawn`]. Fails early
    /// if a server exits.
    pub async fn wait_ready(&mut self) -> Result<(), NatsServerError> {
        let timeout = self
            .servers
            .iter()
            .map(|s| s.start_timeout)
            .max()
            .unwrap_or(DEFAULT_START_TIMEOUT);
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let mut lagging = None;
            for (i, server) in self.servers.iter_mut().enumerate() {
                server.check_alive()?;
                if lagging.is_none() {
                    if let Err(check) = server.probe().await {
                        lagging = Some((i, check));
                    }
                }
            }
            let (culprit, last_check) = match lagging {
                Some(lagging) => lagging,
                None => match self.meta_state().await {
                    Ok(state) if state.all_current(self.servers.len()) => return Ok(()),
                    Ok(state) => (0, state.to_string()),
                    Err(e) => (0, format!("meta group: {e}")),
                },
            };
            if Instant::now() >= deadline {
                return Err(self.servers[culprit].not_ready(started.elapsed(), last_check));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Reads the meta group as the meta leader sees it.
    async fn meta_state(&self) -> io::Result<MetaState> {
        let first = &self.servers[0];
        let leader = meta_cluster(first.ports.http)
            .await?
            .get("leader")
            .and_then(|l| l.as_str())
            .map(str::to_string)
            .ok_or_else(|| io::Error::other("no meta leader"))?;
        let leader_server = self
            .servers
            .iter()
            .find(|s| s.name.as_deref() == Some(leader.as_str()))
            .ok_or_else(|| io::Error::other(format!("meta leader {leader} is not ours")))?;
        let meta = meta_cluster(leader_server.ports.http).await?;
        let current = meta
            .get("replicas")
            .and_then(|r| r.as_array())
            .map_or(0, |replicas| {
                replicas
                    .iter()
                    .filter(|r| r.get("current").and_then(|c| c.as_bool()) == Some(true))
                    .count()
            });
        Ok(MetaState {
            leader,
            cluster_size: meta
                .get("cluster_size")
                .and_then(|s| s.as_u64())
                .unwrap_or(0),
            current_followers: current,
        })
    }

    /// Comma-separated client URLs of all servers, as `NATS_URL` and
    /// `--nats` take them.
    pub fn urls(&self) -> String {
        self.client_urls().join(",")
    }

    /// The client URL of every server; `async_nats::connect` takes this list
    /// (it does not split a comma-separated string).
    pub fn client_urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// Server `i` (named `n{i}`). Panics if `i >= len()`.
    pub fn server(&mut self, i: usize) -> &mut NatsServer {
        &mut self.servers[i]
    }

    /// All servers.
    pub fn servers(&self) -> &[NatsServer] {
        &self.servers
    }

    /// All servers, mutably.
    pub fn servers_mut(&mut self) -> &mut [NatsServer] {
        &mut self.servers
    }

    /// The number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Always false: a cluster has at least one server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}

/// The meta group as seen by its leader.
#[derive(Debug)]
struct MetaState {
    leader: String,
    cluster_size: u64,
    current_followers: usize,
}

impl std::fmt::Display for MetaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "meta leader {} sees cluster_size {} with {} current followers",
            self.leader, self.cluster_size, self.current_followers
        )
    }
}

impl MetaState {
    fn all_current(&self, n: usize) -> bool {
        self.cluster_size == n as u64 && self.current_followers + 1 >= n
    }
}

/// `meta_cluster` of a server's `/jsz`.
async fn meta_cluster(http_port: u16) -> io::Result<serde_json::Value> {
    let (status, body) = http_get(http_port, "/jsz").await?;
    if status != 200 {
        return Err(io::Error::other(format!("{status} {body}")));
    }
    let mut jsz: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(jsz
        .get_mut("meta_cluster")
        .map(serde_json::Value::take)
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::{self, kv};
    use std::time::Instant as StdInstant;

    fn pid_alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    /// Polls the process state letter in `/proc/PID/stat` (signals are
    /// delivered asynchronously) until `ok` accepts it, for up to 5 s.
    async fn wait_for_state(pid: u32, ok: impl Fn(char) -> bool) {
        let deadline = StdInstant::now() + Duration::from_secs(5);
        loop {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
                .expect("state");
            if ok(state) {
                return;
            }
            assert!(
                StdInstant::now() < deadline,
                "pid {pid} stuck in state {state}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn kv_bucket(
        urls: impl async_nats::ToServerAddrs,
        bucket: &str,
        replicas: usize,
    ) -> kv::Store {
        let client = async_nats::connect(urls).await.expect("connect");
        jetstream::new(client)
            .create_key_value(kv::Config {
                bucket: bucket.to_string(),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .expect("create kv bucket")
    }

    #[tokio::test]
    async fn single_server_serves_jetstream_kv() {
        let t = StdInstant::now();
        let server = NatsServer::start(ServerOptions::default())
            .await
            .expect("start");
        eprintln!("single server ready in {:?}", t.elapsed());
        assert!(server.url().ends_with(&server.port().to_string()));
        let kv = kv_bucket(&server.url(), "single", 1).await;
        kv.put("k", "v".into()).await.expect("put");
        assert_eq!(kv.get("k").await.expect("get"), Some("v".into()));
    }

    #[tokio::test]
    async fn restart_keeps_port_and_data() {
        let mut server = NatsServer::start(ServerOptions::default())
            .await
            .expect("start");
        let (port, url, old_pid) = (server.port(), server.url(), server.pid());
        kv_bucket(&url, "durable", 1)
            .await
            .put("k", "kept".into())
            .await
            .expect("put");

        let t = StdInstant::now();
        server.restart().await.expect("restart");
        eprintln!("single server restart ready in {:?}", t.elapsed());
        assert_eq!(server.port(), port);
        assert_ne!(server.pid(), old_pid);
        assert!(!pid_alive(old_pid));

        let client = async_nats::connect(&url).await.expect("reconnect");
        let kv = jetstream::new(client)
            .get_key_value("durable")
            .await
            .expect("bucket survives restart");
        assert_eq!(kv.get("k").await.expect("get"), Some("kept".into()));
    }

    #[tokio::test]
    async fn drop_kills_and_cleans_up() {
        let server = NatsServer::start(ServerOptions::default())
            .await
            .expect("start");
        let (pid, dir) = (server.pid(), server.dir.path().to_path_buf());
        assert!(pid_alive(pid));
        drop(server);
        assert!(!pid_alive(pid), "pid {pid} still exists after drop");
        assert!(!dir.exists(), "{} not removed", dir.display());
    }

    #[tokio::test]
    async fn pause_resume_kill() {
        let mut server = NatsServer::start(ServerOptions {
            jetstream: false,
            ..Default::default()
        })
        .await
        .expect("start");
        server.pause().expect("pause");
        wait_for_state(server.pid(), |s| s == 'T').await;
        server.resume().expect("resume");
        wait_for_state(server.pid(), |s| s != 'T').await;
        server.pause().expect("pause again");
        server.kill();
        server.kill(); // idempotent
        assert!(!pid_alive(server.pid()));
        assert!(!server.is_running());
        assert!(matches!(
            server.pause(),
            Err(NatsServerError::NotRunning { .. })
        ));
    }

    #[tokio::test]
    async fn taken_port_is_a_clear_error() {
        let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = holder.local_addr().expect("addr").port();
        let err = NatsServer::start(ServerOptions {
            port: Some(port),
            jetstream: false,
            ..Default::default()
        })
        .await
        .expect_err("port is taken");
        let msg = err.to_string();
        assert!(matches!(err, NatsServerError::AddressInUse { .. }), "{msg}");
        assert!(msg.contains("address already in use"), "{msg}");
    }

    #[tokio::test]
    async fn cluster_survives_a_killed_server_and_it_rejoins() {
        let t = StdInstant::now();
        let mut cluster = NatsCluster::start(3).await.expect("start cluster");
        eprintln!("3-node cluster ready in {:?}", t.elapsed());
        assert_eq!(cluster.len(), 3);
        assert_eq!(cluster.urls().split(',').count(), 3);

        let t = StdInstant::now();
        let kv = kv_bucket(cluster.client_urls(), "replicated", 3).await;
        eprintln!("R3 bucket created in {:?}", t.elapsed());
        kv.put("before", "1".into()).await.expect("put before");

        // Kill the bucket's stream leader: the worst case, a new leader must
        // be elected before the next write.
        let client = async_nats::connect(cluster.client_urls())
            .await
            .expect("connect");
        let leader = jetstream::new(client)
            .get_stream("KV_replicated")
            .await
            .expect("stream")
            .info()
            .await
            .expect("stream info")
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("stream leader");
        let victim = cluster
            .servers()
            .iter()
            .position(|s| s.name() == Some(leader.as_str()))
            .expect("leader is ours");
        let survivor = (victim + 1) % 3;
        let writer = kv_store(cluster.client_urls(), "replicated")
            .await
            .expect("writer");
        let victim_pid = cluster.server(victim).pid();
        cluster.server(victim).kill();
        assert!(!pid_alive(victim_pid));

        let t = StdInstant::now();
        eventually("put with the stream leader down", || {
            writer.put("during", "2".into())
        })
        .await;
        eprintln!("put after killing the stream leader took {:?}", t.elapsed());
        let url = cluster.server(survivor).url();
        let reader = eventually("open bucket on a survivor", || kv_store(&url, "replicated")).await;
        let got = eventually("get from a survivor", || reader.get("during")).await;
        assert_eq!(got, Some("2".into()));

        let t = StdInstant::now();
        cluster.server(victim).restart().await.expect("restart");
        eprintln!("killed server rejoined in {:?}", t.elapsed());
        cluster.wait_ready().await.expect("cluster whole again");
        let url = cluster.server(victim).url();
        let rejoined = eventually("open bucket on the rejoined server", || {
            kv_store(&url, "replicated")
        })
        .await;
        let got = eventually("get from the rejoined server", || rejoined.get("during")).await;
        assert_eq!(got, Some("2".into()));

        let pids: Vec<u32> = cluster.servers().iter().map(NatsServer::pid).collect();
        drop(cluster);
        for pid in pids {
            assert!(!pid_alive(pid), "pid {pid} still exists after drop");
        }
    }

    /// Retries `op` until it succeeds or 60 s pass. A JetStream stream needs
    /// a leader election (several seconds in nats-server) after its leader
    /// dies or the whole cluster restarts; requests time out meanwhile.
    async fn eventually<T, E, F, Fut>(what: &str, mut op: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Debug,
    {
        let deadline = StdInstant::now() + Duration::from_secs(60);
        loop {
            match op().await {
                Ok(v) => return v,
                Err(e) if StdInstant::now() >= deadline => panic!("{what}: {e:?}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    #[tokio::test]
    async fn whole_cluster_restarts_with_its_data() {
        let mut cluster = NatsCluster::start(3).await.expect("start cluster");
        let bucket = kv_bucket(cluster.client_urls(), "cold", 3).await;
        // A just-created R3 stream may still be electing its leader: the
        // first put can answer "stream not found" for a moment.
        eventually("first put", || bucket.put("k", "v".into())).await;
        for server in cluster.servers_mut() {
            server.kill();
        }
        // No server can be ready alone (no quorum): respawn all, then wait.
        let t = StdInstant::now();
        for server in cluster.servers_mut() {
            server.respawn().expect("respawn");
        }
        cluster.wait_ready().await.expect("cluster back");
        eprintln!("3-node cold restart ready in {:?}", t.elapsed());
        let url = cluster.server(1).url();
        let kv = eventually("open bucket after cold restart", || kv_store(&url, "cold")).await;
        let got = eventually("get after cold restart", || kv.get("k")).await;
        eprintln!(
            "3-node cold restart: bucket readable after {:?}",
            t.elapsed()
        );
        assert_eq!(got, Some("v".into()));
    }

    #[tokio::test]
    async fn not_ready_error_names_the_last_check_and_log() {
        let err = NatsServer::start(ServerOptions {
            start_timeout: Duration::ZERO,
            ..Default::default()
        })
        .await
        .expect_err("cannot be ready in zero time");
        let msg = err.to_string();
        assert!(matches!(err, NatsServerError::NotReady { .. }), "{msg}");
        assert!(msg.contains("last check: GET /healthz"), "{msg}");
        assert!(msg.contains("nats-server.log"), "{msg}");
    }

    /// Opens `bucket` through `urls`. Short timeouts keep [`eventually`]
    /// retrying promptly while a stream has no leader.
    async fn kv_store(
        urls: impl async_nats::ToServerAddrs,
        bucket: &str,
    ) -> Result<kv::Store, Box<dyn std::error::Error>> {
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(1)))
            .connect(urls)
            .await?;
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_secs(1));
        Ok(js.get_key_value(bucket).await?)
    }

    #[tokio::test]
    async fn cluster_is_ready_for_r3_right_away() {
        // Readiness must mean "an R3 bucket can be created now", repeatedly.
        for round in 0..3 {
            let cluster = NatsCluster::start(3).await.expect("start cluster");
            kv_bucket(cluster.client_urls(), &format!("r{round}"), 3).await;
        }
    }

    #[test]
    fn bad_binary_env_is_named() {
        let err = NatsServerError::BadBinaryEnv {
            path: PathBuf::from("/nope"),
        };
        assert!(err.to_string().contains("NATS_SERVER_BIN=/nope"));
        assert!(NatsServerError::BinaryNotFound
            .to_string()
            .contains("NATS_SERVER_BIN"));
    }

    #[test]
    fn config_is_rendered_with_routes_and_store() {
        let opts = ServerOptions {
            server_name: Some("n1".into()),
            max_payload: Some(4096),
            ..Default::default()
        };
        let ports = Ports {
            client: 1,
            http: 2,
            route: Some(3),
        };
        let route = RouteConfig {
            cluster_name: "c".into(),
            port: 3,
            peers: vec![4, 5],
        };
        let c = render_config(&opts, ports, Some(Path::new("/s \"x\"")), Some(&route));
        assert!(c.contains("server_name: \"n1\""), "{c}");
        assert!(c.contains("max_payload: 4096"), "{c}");
        assert!(c.contains(r#"store_dir: "/s \"x\"""#), "{c}");
        assert!(
            c.contains(r#"routes: ["nats-route://127.0.0.1:4", "nats-route://127.0.0.1:5"]"#),
            "{c}"
        );
    }
}
