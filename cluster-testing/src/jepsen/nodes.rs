//! The node processes of a chaos run, whatever binary they are.
//!
//! Guarantees: each [`ChaosNode`] is a real child process started from a
//! fixed command line (so a restart is the same node with the same health
//! port), whose role is read from its own `GET /status` — no cooperation
//! from the binary beyond the framework's standard endpoint. A paused or
//! killed node is never asked (it could not answer) and never reported
//! active.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cluster_runtime::clock::monotonic_ns;
use cluster_runtime::nats_server::http_get;

use crate::process::ChildProcess;

/// How long a `/status` probe may take before the node counts as silent.
const PROBE: Duration = Duration::from_millis(500);

/// How to start one node.
#[derive(Debug, Clone)]
pub struct NodeCommand {
    /// Node id (`--node`).
    pub id: String,
    /// The binary.
    pub binary: PathBuf,
    /// Every argument (including `--node` and `--health-addr`).
    pub args: Vec<String>,
    /// The health port given in `--health-addr`.
    pub health_port: u16,
}

/// Where a node process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Running.
    Up,
    /// SIGSTOPped.
    Paused,
    /// Killed or exited.
    Down,
}

/// One node process that survives restarts.
#[derive(Debug)]
pub struct ChaosNode {
    command: NodeCommand,
    child: Option<ChildProcess>,
    state: NodeState,
    /// Stderr of earlier incarnations' last lines (for failure reports).
    starts: u32,
}

impl ChaosNode {
    /// Starts the node.
    pub fn spawn(command: NodeCommand) -> std::io::Result<ChaosNode> {
        let mut node = ChaosNode::stopped(command);
        node.start()?;
        Ok(node)
    }

    /// A node that is not started yet (a spare that joins later: start it
    /// with [`restart`](Self::restart)).
    pub fn stopped(command: NodeCommand) -> ChaosNode {
        ChaosNode {
            command,
            child: None,
            state: NodeState::Down,
            starts: 0,
        }
    }

    fn start(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new(&self.command.binary);
        cmd.args(&self.command.args)
            .env_remove("NATS_URL")
            .env_remove("CLUSTER_LABELS")
            .env_remove("NODE_ID");
        self.child = Some(ChildProcess::spawn(&mut cmd)?);
        self.state = NodeState::Up;
        self.starts += 1;
        Ok(())
    }

    /// Node id.
    pub fn id(&self) -> &str {
        &self.command.id
    }

    /// Up, paused or down.
    pub fn state(&self) -> NodeState {
        self.state
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// SIGKILL (a paused process too); returns the monotonic time just
    /// before the signal.
    pub fn kill(&mut self) -> u64 {
        let t = monotonic_ns();
        if let Some(c) = self.child.as_mut() {
            c.kill();
        }
        self.state = NodeState::Down;
        t
    }

    /// SIGSTOP.
    pub fn pause(&mut self) -> std::io::Result<()> {
        match self.child.as_ref() {
            Some(c) if self.state == NodeState::Up => {
                c.pause()?;
                self.state = NodeState::Paused;
                Ok(())
            }
            _ => Err(std::io::Error::other(format!(
                "{} is not running",
                self.id()
            ))),
        }
    }

    /// SIGCONT (no-op unless paused).
    pub fn resume(&mut self) -> std::io::Result<()> {
        if self.state != NodeState::Paused {
            return Ok(());
        }
        if let Some(c) = self.child.as_ref() {
            c.resume()?;
        }
        self.state = NodeState::Up;
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` for the exit; SIGKILL after that.
    /// Returns whether it exited on its own.
    pub async fn terminate(&mut self, grace: Duration) -> bool {
        let Some(c) = self.child.as_mut() else {
            return true;
        };
        if self.state == NodeState::Paused {
            let _ = c.resume();
        }
        let clean = c.terminate().is_ok() && c.wait_exit(grace).await.is_some();
        if !clean {
            c.kill();
        }
        self.state = NodeState::Down;
        clean
    }

    /// Starts a new incarnation (killing the current one if it runs).
    pub fn restart(&mut self) -> std::io::Result<()> {
        if self.state != NodeState::Down {
            self.kill();
        }
        self.start()
    }

    /// The role of `app` from `/status` (`None`: not running, silent or
    /// not reporting the app).
    pub async fn role(&self, app: &str) -> Option<String> {
        self.app_status(app)
            .await?
            .get("role")?
            .as_str()
            .map(str::to_owned)
    }

    /// The ring partitions of `app` this node reports owning in `/status`
    /// (`None`: not running, silent or not reporting the app).
    pub async fn partitions(&self, app: &str) -> Option<Vec<u32>> {
        let status = self.app_status(app).await?;
        let list = status.get("partitions")?.as_array()?;
        Some(
            list.iter()
                .filter_map(|p| p.as_u64().and_then(|p| u32::try_from(p).ok()))
                .collect(),
        )
    }

    /// `apps.<app>` of the node's `/status`.
    async fn app_status(&self, app: &str) -> Option<serde_json::Value> {
        if self.state != NodeState::Up {
            return None;
        }
        let (code, body) =
            tokio::time::timeout(PROBE, http_get(self.command.health_port, "/status"))
                .await
                .ok()?
                .ok()?;
        if code != 200 {
            return None;
        }
        let mut doc: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(doc.get_mut("apps")?.get_mut(app)?.take())
    }

    /// The current incarnation's stderr.
    pub fn stderr(&self) -> String {
        self.child
            .as_ref()
            .map(|c| c.stderr_text())
            .unwrap_or_default()
    }
}

/// All nodes of a run.
#[derive(Debug, Default)]
pub struct NodeSet {
    /// The nodes.
    pub nodes: Vec<ChaosNode>,
}

impl NodeSet {
    /// Indices of running nodes reporting `active` for `app`.
    pub async fn active(&self, app: &str) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.role(app).await.as_deref() == Some("active") {
                out.push(i);
            }
        }
        out
    }

    /// Waits up to `timeout` for exactly one running node to report active
    /// (`except` excluded from the candidates but still counted).
    pub async fn wait_single_active(
        &self,
        app: &str,
        except: Option<usize>,
        timeout: Duration,
    ) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let active = self.active(app).await;
            if let [one] = active.as_slice() {
                if Some(*one) != except {
                    return Some(*one);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The ring partitions of `app` each running node reports owning
    /// (silent nodes are left out).
    pub async fn owners(&self, app: &str) -> Vec<(usize, Vec<u32>)> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(parts) = n.partitions(app).await {
                out.push((i, parts));
            }
        }
        out
    }

    /// The node reporting ownership of `partition` of `app`, if exactly one
    /// running node does (`except` excluded from the candidates but still
    /// counted).
    pub async fn owner_of(
        &self,
        app: &str,
        partition: u32,
        except: Option<usize>,
    ) -> Option<usize> {
        let owners: Vec<usize> = self
            .owners(app)
            .await
            .into_iter()
            .filter(|(_, parts)| parts.contains(&partition))
            .map(|(i, _)| i)
            .collect();
        match owners.as_slice() {
            [one] if Some(*one) != except => Some(*one),
            _ => None,
        }
    }

    /// Waits up to `timeout` for `partition` of `app` to have exactly one
    /// owner among the running nodes, other than `except`.
    pub async fn wait_owner(
        &self,
        app: &str,
        partition: u32,
        except: Option<usize>,
        timeout: Duration,
    ) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.owner_of(app, partition, except).await {
                return Some(i);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `timeout` until every one of the `partitions` of `app`
    /// is reported owned by exactly one running node.
    pub async fn wait_ring_complete(&self, app: &str, partitions: u32, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let owners = self.owners(app).await;
            let mut count = vec![0u32; partitions as usize];
            for (_, parts) in &owners {
                for p in parts {
                    if let Some(c) = count.get_mut(*p as usize) {
                        *c += 1;
                    }
                }
            }
            if count.iter().all(|c| *c == 1) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resumes every paused node and restarts every one that is down
    /// (a spare that was never started stays down).
    pub fn heal(&mut self) -> std::io::Result<()> {
        for n in &mut self.nodes {
            match n.state() {
                NodeState::Paused => n.resume()?,
                NodeState::Down if n.starts() > 0 => n.restart()?,
                NodeState::Down | NodeState::Up => {}
            }
        }
        Ok(())
    }
}

/// A free loopback TCP port (bound and released: another process may take
/// it in between, which a start-up failure would show).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
