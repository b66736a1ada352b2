//! `process:CMD ARGS`: a child process in its own process group.
//!
//! Stopping signals the whole group (SIGTERM, then SIGKILL after the grace
//! period, then SIGKILL again for anything left in the group), so helpers the
//! program spawned die with it. Output lines go to `tracing` (target
//! `cluster::backend`) and, if configured, to a log file. A monitor task owns
//! the child: it reports exits and applies the restart policy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use super::{Backend, BackendConfig, BackendError, Health, RestartPolicy};

/// Where a process backend is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessState {
    /// Never started.
    Idle,
    /// The child runs.
    Running {
        /// Its pid (also its process group id).
        pid: u32,
        /// Restarts so far in this run.
        restarts: u32,
    },
    /// The child exited with a failure and will be started again.
    Restarting {
        /// Restarts so far (this one included).
        restarts: u32,
        /// How the previous child ended.
        last: ExitStatus,
    },
    /// The child exited by itself and stays down.
    Exited {
        /// How it ended.
        status: ExitStatus,
        /// Restarts done before it stayed down.
        restarts: u32,
    },
    /// A restart could not spawn the program.
    Failed(String),
    /// Stopped by [`Backend::stop`].
    Stopped {
        /// How the child ended when it was stopped.
        status: Option<ExitStatus>,
    },
}

/// A managed child process; see the module docs.
#[derive(Debug)]
pub struct ProcessBackend {
    launch: Arc<Launch>,
    restart: RestartPolicy,
    stop_grace: Duration,
    state: watch::Sender<ProcessState>,
    run: Mutex<Option<Run>>,
}

/// What is needed to spawn the child again (shared with the monitor task).
#[derive(Debug)]
struct Launch {
    program: String,
    args: Vec<String>,
    dir: Option<PathBuf>,
    env: BTreeMap<String, String>,
    log_file: Option<Arc<Mutex<tokio::fs::File>>>,
    log_path: Option<PathBuf>,
}

#[derive(Debug)]
struct Run {
    stop: watch::Sender<bool>,
    monitor: JoinHandle<()>,
    /// Process group of the current child, for the kill on drop.
    pgid: watch::Receiver<Option<u32>>,
}

impl ProcessBackend {
    /// A process backend for a `process:` spec.
    pub fn new(config: &BackendConfig) -> Result<ProcessBackend, BackendError> {
        let cluster_spec::ops::Backend::Process { program, args } = &config.spec else {
            return Err(BackendError::Config(format!(
                "{:?} is not a process backend",
                config.spec
            )));
        };
        Ok(ProcessBackend {
            launch: Arc::new(Launch {
                program: program.clone(),
                args: args.clone(),
                dir: config.dir.clone(),
                env: config.env.clone(),
                log_file: None,
                log_path: config.log_file.clone(),
            }),
            restart: config.restart,
            stop_grace: config.stop_grace,
            state: watch::Sender::new(ProcessState::Idle),
            run: Mutex::new(None),
        })
    }

    /// The current state (exit status and restart count included).
    pub fn state(&self) -> ProcessState {
        self.state.borrow().clone()
    }

    /// Follows state changes (e.g. to wait for an exit).
    pub fn watch_state(&self) -> watch::Receiver<ProcessState> {
        self.state.subscribe()
    }

    /// The pid of the running child, if any.
    pub fn pid(&self) -> Option<u32> {
        match *self.state.borrow() {
            ProcessState::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    async fn start_inner(&self) -> Result<(), BackendError> {
        let mut run = self.run.lock().await;
        if let Some(r) = run.as_ref() {
            if !r.monitor.is_finished() {
                return Ok(());
            }
        }
        let launch = Arc::new(self.launch.open_log().await?);
        let child = launch.spawn()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (pgid_tx, pgid_rx) = watch::channel(child.0.id());
        let monitor = tokio::spawn(monitor(
            launch,
            child,
            self.restart,
            self.stop_grace,
            self.state.clone(),
            stop_rx,
            pgid_tx,
        ));
        *run = Some(Run {
            stop: stop_tx,
            monitor,
            pgid: pgid_rx,
        });
        Ok(())
    }

    async fn stop_inner(&self) -> Result<(), BackendError> {
        let mut run = self.run.lock().await;
        let Some(r) = run.take() else {
            return Ok(());
        };
        r.stop.send_replace(true);
        r.monitor.await.map_err(|e| BackendError::Stop {
            kind: "process",
            reason: format!("monitor task of `{}` failed: {e}", self.launch.program),
        })
    }
}

impl ProcessBackend {
    /// SIGKILL to the group now, then wait for the monitor to see it go.
    async fn kill_inner(&self) -> Result<(), BackendError> {
        let mut run = self.run.lock().await;
        let Some(r) = run.take() else {
            return Ok(());
        };
        if let Some(pgid) = *r.pgid.borrow() {
            kill_group(pgid, Signal::SIGKILL);
        }
        r.stop.send_replace(true);
        r.monitor.await.map_err(|e| BackendError::Stop {
            kind: "process",
            reason: format!("monitor task of `{}` failed: {e}", self.launch.program),
        })
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        // Never leave a child behind: kill its group outright.
        if let Ok(run) = self.run.try_lock() {
            if let Some(r) = run.as_ref() {
                r.monitor.abort();
                if let Some(pgid) = *r.pgid.borrow() {
                    kill_group(pgid, Signal::SIGKILL);
                }
            }
        }
    }
}

impl Backend for ProcessBackend {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.start_inner())
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.stop_inner())
    }

    fn kill(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.kill_inner())
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        let health = match &*self.state.borrow() {
            ProcessState::Running { .. } => Health::Healthy,
            ProcessState::Restarting { .. } => Health::Starting,
            ProcessState::Idle | ProcessState::Stopped { .. } => Health::Stopped,
            ProcessState::Exited { status, restarts } => Health::Unhealthy(format!(
                "`{}` exited ({status}) after {restarts} restart(s)",
                self.launch.program
            )),
            ProcessState::Failed(why) => Health::Unhealthy(why.clone()),
        };
        Box::pin(async move { health })
    }
}

impl Launch {
    /// A copy with the log file opened for appending.
    async fn open_log(&self) -> Result<Launch, BackendError> {
        let log_file = match &self.log_path {
            None => None,
            Some(path) => {
                let file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|e| {
                        BackendError::Config(format!(
                            "cannot open backend log file {}: {e}",
                            path.display()
                        ))
                    })?;
                Some(Arc::new(Mutex::new(file)))
            }
        };
        Ok(Launch {
            program: self.program.clone(),
            args: self.args.clone(),
            dir: self.dir.clone(),
            env: self.env.clone(),
            log_file,
            log_path: self.log_path.clone(),
        })
    }

    /// Spawns the child and the tasks that forward its output (they end
    /// when its pipes close).
    fn spawn(&self) -> Result<(Child, Vec<JoinHandle<()>>), BackendError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: stop signals reach the grandchildren too.
            .process_group(0);
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                BackendError::ProgramNotFound {
                    program: self.program.clone(),
                }
            } else {
                BackendError::Spawn {
                    program: self.program.clone(),
                    source,
                }
            }
        })?;
        tracing::info!(target: "cluster::backend", program = %self.program, pid = child.id(), "backend process started");
        let mut forwarders = Vec::new();
        if let Some(out) = child.stdout.take() {
            forwarders.push(tokio::spawn(forward(
                out,
                "stdout",
                self.program.clone(),
                self.log_file.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            forwarders.push(tokio::spawn(forward(
                err,
                "stderr",
                self.program.clone(),
                self.log_file.clone(),
            )));
        }
        Ok((child, forwarders))
    }
}

/// Copies output lines into `tracing` and the log file.
async fn forward(
    stream: impl AsyncRead + Unpin,
    name: &'static str,
    program: String,
    log: Option<Arc<Mutex<tokio::fs::File>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "cluster::backend", program = %program, stream = name, "{line}");
        if let Some(log) = &log {
            let mut file = log.lock().await;
            if let Err(e) = file.write_all(format!("{name}: {line}\n").as_bytes()).await {
                tracing::warn!(program = %program, error = %e, "cannot append to backend log file");
            }
            let _ = file.flush().await;
        }
    }
}

/// Owns the child: waits for it, restarts it by the policy, stops it when
/// told. Every transition is published on `state`.
async fn monitor(
    launch: Arc<Launch>,
    (mut child, mut forwarders): (Child, Vec<JoinHandle<()>>),
    policy: RestartPolicy,
    grace: Duration,
    state: watch::Sender<ProcessState>,
    mut stop: watch::Receiver<bool>,
    pgid: watch::Sender<Option<u32>>,
) {
    let mut restarts = 0u32;
    loop {
        let pid = child.id();
        pgid.send_replace(pid);
        if let Some(pid) = pid {
            state.send_replace(ProcessState::Running { pid, restarts });
        }
        let exited = tokio::select! {
            status = child.wait() => status,
            () = stopped(&mut stop) => {
                let status = terminate(&mut child, pid, grace, &launch.program).await;
                drain(forwarders).await;
                state.send_replace(ProcessState::Stopped { status });
                return;
            }
        };
        // The leader is gone; make sure no helper of it outlives it.
        if let Some(pid) = pid {
            kill_group(pid, Signal::SIGKILL);
        }
        drain(std::mem::take(&mut forwarders)).await;
        let status = match exited {
            Ok(status) => status,
            Err(e) => {
                state.send_replace(ProcessState::Failed(format!(
                    "cannot wait for `{}`: {e}",
                    launch.program
                )));
                return;
            }
        };
        tracing::warn!(target: "cluster::backend", program = %launch.program, %status, "backend process exited");
        let may_restart = match policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure { max_restarts } => {
                !status.success() && restarts < max_restarts
            }
        };
        if !may_restart {
            state.send_replace(ProcessState::Exited { status, restarts });
            return;
        }
        restarts += 1;
        state.send_replace(ProcessState::Restarting {
            restarts,
            last: status,
        });
        // Back off a little more each time (100 ms, 200 ms, … up to 2 s).
        let backoff = Duration::from_millis(100 * u64::from(restarts.min(20)));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            () = stopped(&mut stop) => {
                state.send_replace(ProcessState::Stopped { status: Some(status) });
                return;
            }
        }
        (child, forwarders) = match launch.spawn() {
            Ok(spawned) => spawned,
            Err(e) => {
                state.send_replace(ProcessState::Failed(e.to_string()));
                return;
            }
        };
    }
}

/// SIGTERM to the group, SIGKILL after `grace`, then SIGKILL to whatever is
/// left in the group. Returns the child's exit status.
async fn terminate(
    child: &mut Child,
    pid: Option<u32>,
    grace: Duration,
    program: &str,
) -> Option<ExitStatus> {
    let Some(pid) = pid else {
        return child.wait().await.ok();
    };
    kill_group(pid, Signal::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            tracing::warn!(target: "cluster::backend", program, ?grace, "backend ignored SIGTERM; sending SIGKILL");
            kill_group(pid, Signal::SIGKILL);
            child.wait().await.ok()
        }
    };
    kill_group(pid, Signal::SIGKILL);
    tracing::info!(target: "cluster::backend", program, ?status, "backend process stopped");
    status
}

/// Waits (briefly) until the child's output has been forwarded, so a
/// reported exit comes after the child's last log line.
async fn drain(forwarders: Vec<JoinHandle<()>>) {
    let all = futures::future::join_all(forwarders);
    if tokio::time::timeout(Duration::from_secs(2), all)
        .await
        .is_err()
    {
        tracing::debug!(target: "cluster::backend", "backend output still open 2s after exit");
    }
}

/// Resolves once a stop is requested (or the backend is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

fn kill_group(pgid: u32, signal: Signal) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    // ESRCH (group already empty) is the normal case after an exit.
    let _ = killpg(Pid::from_raw(pgid), signal);
}
