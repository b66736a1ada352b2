//! Node processes under test, and the events they report.

use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cluster_runtime::app::Role;
use cluster_runtime::clock::monotonic_ns;
use cluster_runtime::instance::RoleEvent;
use cluster_runtime::ring::OwnershipEvent;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::invariants::History;
use crate::process::ChildProcess;

/// One line a `cluster-test-node` process prints on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NodeEvent {
    /// The platform started.
    Ready {
        /// Node id.
        node: String,
        /// Bound health/status address.
        health_addr: Option<String>,
        /// NATS URLs in use.
        nats: String,
    },
    /// A role change.
    Role(RoleEvent),
    /// A change of ring partition ownership.
    Ownership(OwnershipEvent),
    /// A hook ran.
    Hook {
        /// Hook name.
        hook: String,
        /// App.
        app: String,
        /// When.
        t_ns: u64,
    },
    /// Work done while active (only emitted after `is_active()` said yes).
    Tick {
        /// App.
        app: String,
        /// Fencing token at the time.
        epoch: Option<u64>,
        /// When.
        t_ns: u64,
    },
    /// `on_member_join` fired.
    MemberJoin {
        /// The node that joined.
        node: String,
    },
    /// `on_member_leave` fired.
    MemberLeave {
        /// The node that left.
        node: String,
    },
    /// The database as found on becoming active (`--sqlite`).
    DbCheck {
        /// `PRAGMA integrity_check`'s answer (`ok`).
        integrity: String,
        /// Rows in the writer's table.
        rows: i64,
        /// Highest row id.
        max_id: i64,
        /// The epoch.
        epoch: Option<u64>,
    },
    /// A row the writer committed (`synced`: `commit_synced` returned).
    Committed {
        /// Row id.
        id: i64,
        /// Epoch it was written under.
        epoch: u64,
        /// Stored in JetStream before this event.
        synced: bool,
    },
    /// Start-up failed.
    Error {
        /// The message.
        message: String,
    },
    /// Clean exit after shutdown.
    Exited,
}

/// The reply of the test node's `whoami` handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whoami {
    /// The node that answered.
    pub node: String,
    /// Its fencing token (while active).
    pub epoch: Option<u64>,
    /// Whether it was active when it answered.
    pub active: bool,
}

/// How to start one `cluster-test-node` process.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The `cluster-test-node` binary (tests pass
    /// `env!("CARGO_BIN_EXE_cluster-test-node")`).
    pub binary: PathBuf,
    /// Node id.
    pub node: String,
    /// Platform name.
    pub platform: String,
    /// NATS URLs.
    pub nats: String,
    /// App name.
    pub app: String,
    /// App mode (`singleton`, `spread`, `replicas(2)` …).
    pub mode: String,
    /// Placement string.
    pub placement: String,
    /// Node labels.
    pub labels: String,
    /// Lease TTL (whole seconds) of the app and the node record.
    pub lease_ttl_secs: u64,
    /// Active tick period in ms (0 = no ticks).
    pub tick_ms: u64,
    /// Run the node inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// More arguments for `cluster-test-node` (`--vip`, `--backend`, ...).
    pub extra_args: Vec<String>,
    /// More environment variables for the node process.
    pub env: Vec<(String, String)>,
}

impl NodeSpec {
    /// A singleton `counter` node with a 1 s lease and 20 ms ticks.
    pub fn new(binary: impl Into<PathBuf>, node: &str, nats: &str) -> Self {
        NodeSpec {
            binary: binary.into(),
            node: node.to_owned(),
            platform: "test".into(),
            nats: nats.to_owned(),
            app: "counter".into(),
            mode: "singleton".into(),
            placement: String::new(),
            labels: String::new(),
            lease_ttl_secs: 1,
            tick_ms: 20,
            netns: None,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the binary: the pid stays the node's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        cmd.args([
            "--nats",
            &self.nats,
            "--platform",
            &self.platform,
            "--node",
            &self.node,
        ])
        .args([
            "--app",
            &self.app,
            "--mode",
            &self.mode,
            "--placement",
            &self.placement,
        ])
        .args([
            "--lease-ttl",
            &self.lease_ttl_secs.to_string(),
            "--tick-ms",
            &self.tick_ms.to_string(),
        ])
        .args(["--health-addr", "127.0.0.1:0"])
        .env_remove("NATS_URL")
        .env_remove("CLUSTER_LABELS");
        if !self.labels.is_empty() {
            cmd.args(["--label", &self.labels]);
        }
        cmd.args(&self.extra_args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// A node process whose events survive restarts.
#[derive(Debug)]
pub struct NodeProcess {
    spec: NodeSpec,
    child: ChildProcess,
    /// Events of earlier incarnations (before restarts).
    past: Vec<NodeEvent>,
    kills: Vec<u64>,
    down: bool,
}

fn parse(lines: &[String]) -> Vec<NodeEvent> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl NodeProcess {
    /// Starts the node (does not wait for readiness).
    pub fn spawn(spec: NodeSpec) -> io::Result<NodeProcess> {
        let child = ChildProcess::spawn(&mut spec.command())?;
        Ok(NodeProcess {
            spec,
            child,
            past: Vec::new(),
            kills: Vec::new(),
            down: false,
        })
    }

    /// Node id.
    pub fn id(&self) -> &str {
        &self.spec.node
    }

    /// The spec it runs with.
    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    /// OS pid of the current incarnation.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Every event of every incarnation, in order.
    pub fn events(&self) -> Vec<NodeEvent> {
        let mut all = self.past.clone();
        all.extend(parse(&self.child.lines_seen()));
        all
    }

    /// Events of the current incarnation.
    pub fn current_events(&self) -> Vec<NodeEvent> {
        parse(&self.child.lines_seen())
    }

    /// Waits for an event of the current incarnation matching `pred`.
    pub async fn wait_event(
        &self,
        pred: impl Fn(&NodeEvent) -> bool,
        timeout: Duration,
    ) -> Option<NodeEvent> {
        let line = self
            .child
            .wait_for_line(
                |l| serde_json::from_str::<NodeEvent>(l).is_ok_and(|e| pred(&e)),
                timeout,
            )
            .await?;
        serde_json::from_str(&line).ok()
    }

    /// Waits until the node reports `Ready`; returns its health address.
    /// On a start-up error, returns the node's message.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Option<String>, String> {
        match self
            .wait_event(
                |e| matches!(e, NodeEvent::Ready { .. } | NodeEvent::Error { .. }),
                timeout,
            )
            .await
        {
            Some(NodeEvent::Ready { health_addr, .. }) => Ok(health_addr),
            Some(NodeEvent::Error { message }) => Err(message),
            _ => Err(format!(
                "node {} not ready after {timeout:?}; stderr:\n{}",
                self.id(),
                self.child.stderr_text()
            )),
        }
    }

    /// The latest role this incarnation reported for `app` (`None` when
    /// killed, or before the first report).
    pub fn role(&self, app: &str) -> Option<Role> {
        if self.down {
            return None;
        }
        self.current_events().iter().rev().find_map(|e| match e {
            NodeEvent::Role(r) if r.app == app => Some(r.role),
            _ => None,
        })
    }

    /// SIGKILL; returns the monotonic instant after which the process was
    /// certainly dead (it is reaped before this returns).
    pub fn kill(&mut self) -> u64 {
        // Recorded *before* the signal: the process can do nothing after it,
        // and an earlier end is the conservative choice for the checker.
        let t = monotonic_ns();
        self.child.kill();
        self.kills.push(t);
        self.down = true;
        t
    }

    /// SIGTERM (graceful shutdown).
    pub fn terminate(&self) -> io::Result<()> {
        self.child.terminate()
    }

    /// SIGSTOP.
    pub fn pause(&self) -> io::Result<()> {
        self.child.pause()
    }

    /// SIGCONT.
    pub fn resume(&self) -> io::Result<()> {
        self.child.resume()
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = self.child.wait_exit(timeout).await;
        if status.is_some() {
            self.down = true;
        }
        status
    }

    /// Starts a new incarnation with the same spec (kills the old one first).
    pub fn restart(&mut self) -> io::Result<()> {
        if !self.down {
            self.kill();
        }
        self.past.extend(parse(&self.child.lines_seen()));
        self.child = ChildProcess::spawn(&mut self.spec.command())?;
        self.down = false;
        Ok(())
    }

    /// The current incarnation's stderr (for failure messages).
    pub fn stderr(&self) -> String {
        self.child.stderr_text()
    }
}

/// Several node processes of one platform, with the invariant history.
#[derive(Debug, Default)]
pub struct Nodes {
    /// The nodes.
    pub nodes: Vec<NodeProcess>,
}

impl Nodes {
    /// Spawns one node per spec and waits until each is ready.
    pub async fn start(specs: Vec<NodeSpec>) -> Result<Nodes, String> {
        let mut nodes = Vec::new();
        for spec in specs {
            nodes.push(NodeProcess::spawn(spec).map_err(|e| e.to_string())?);
        }
        for n in &nodes {
            n.wait_ready(Duration::from_secs(20)).await?;
        }
        Ok(Nodes { nodes })
    }

    /// The node with id `id`.
    pub fn get(&mut self, id: &str) -> Option<&mut NodeProcess> {
        self.nodes.iter_mut().find(|n| n.id() == id)
    }

    /// How many nodes currently report `Active` for `app`.
    pub fn active_count(&self, app: &str) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.role(app) == Some(Role::Active))
            .count()
    }

    /// Nodes reporting `role` for `app`.
    pub fn with_role(&self, app: &str, role: Role) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.role(app) == Some(role))
            .map(|n| n.id().to_owned())
            .collect()
    }

    /// Waits until exactly one node is active for `app` (and none of the
    /// others is), returning it.
    pub async fn wait_for_active(&self, app: &str, timeout: Duration) -> Result<String, String> {
        self.wait_until(timeout, || {
            let active = self.with_role(app, Role::Active);
            (active.len() == 1).then(|| active[0].clone())
        })
        .await
        .ok_or_else(|| {
            format!(
                "no single active node for `{app}` within {timeout:?}: {:?}",
                self.roles(app)
            )
        })
    }

    /// Waits until `f` returns `Some`, polling every 10 ms.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return Some(v);
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Current roles of `app` on every node.
    pub fn roles(&self, app: &str) -> Vec<(String, Option<Role>)> {
        self.nodes
            .iter()
            .map(|n| (n.id().to_owned(), n.role(app)))
            .collect()
    }

    /// Everything recorded so far, for the invariant checker.
    pub fn history(&self) -> History {
        let mut h = History::default();
        for n in &self.nodes {
            for e in n.events() {
                match e {
                    NodeEvent::Role(r) => h.roles.push(r),
                    NodeEvent::Ownership(o) => h.ownership.push(o),
                    NodeEvent::Tick { app, t_ns, .. } => {
                        h.ticks.push((n.id().to_owned(), app, t_ns))
                    }
                    _ => {}
                }
            }
            if !n.kills.is_empty() {
                h.kills
                    .entry(n.id().to_owned())
                    .or_default()
                    .extend(n.kills.iter().copied());
            }
        }
        h
    }
}
