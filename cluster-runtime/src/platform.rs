//! The platform: ties config, transport, membership and apps together.
//!
//! [`Platform::builder`] validates everything before anything starts;
//! [`Platform::run`] runs until SIGTERM/SIGINT and then shuts down
//! gracefully — active singletons hand over (demote, delete their lease),
//! pools stop, ring members hand their partitions off and leave, and the
//! node record is deleted so others see the leave at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::app::{App, AppCommand, AppContext, AppState, ContextData, Mode, Role};
use crate::config::Config;
use crate::election::Election;
use crate::error::{Error, Result};
use crate::instance::{Instance, RoleEvent, RoleObserver};
use crate::lease::{self, LeaseKey, LeaseTiming};
use crate::lock::{Lock, LockError, Locks};
use crate::membership::{MemberEvent, Membership, NodeRecord};
use crate::naming::Names;
use crate::observe::{AppAudit, Audit, AuditOptions, Check, Health, Metrics, Observe};
use crate::transport::Transport;

/// Builds a [`Platform`].
#[must_use]
#[derive(Default)]
pub struct PlatformBuilder {
    config: Option<Config>,
    apps: Vec<App>,
    observer: Option<RoleObserver>,
    ownership_observer: Option<crate::ring::OwnershipObserver>,
    node_lease: Option<LeaseTiming>,
    audit: AuditOptions,
}

impl std::fmt::Debug for PlatformBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformBuilder")
            .field("config", &self.config)
            .field("apps", &self.apps)
            .finish()
    }
}

impl PlatformBuilder {
    /// The node's configuration (see [`Config::from_args`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Adds an app.
    pub fn app(mut self, app: App) -> Self {
        self.apps.push(app);
        self
    }

    /// Calls `f` on every role change of every app on this node (used by the
    /// test harness's invariant recorder and by audit later).
    pub fn on_role_change(mut self, f: impl Fn(&RoleEvent) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(f));
        self
    }

    /// Calls `f` on every change of ring partition ownership on this node
    /// (own, serve, release), e.g. for the invariant checker.
    pub fn on_ownership_change(
        mut self,
        f: impl Fn(&crate::ring::OwnershipEvent) + Send + Sync + 'static,
    ) -> Self {
        self.ownership_observer = Some(Arc::new(f));
        self
    }

    /// Lease timings of this node's membership record (default 3 s / 1 s / 2.4 s).
    pub fn node_lease(mut self, timing: LeaseTiming) -> Self {
        self.node_lease = Some(timing);
        self
    }

    /// Retention and replicas of the audit stream `P_audit` (default 30
    /// days, 1 GiB).
    pub fn audit(mut self, options: AuditOptions) -> Self {
        self.audit = options;
        self
    }

    /// Validates, connects and starts everything. Nothing is started when
    /// validation fails.
    pub async fn start(self) -> Result<Platform> {
        let config = self.config.unwrap_or_default();
        let names = Names::new(&config.platform)?;
        crate::naming::validate_node(&config.node)?;
        let mut seen = std::collections::HashSet::new();
        for app in &self.apps {
            if !seen.insert(app.name.clone()) {
                return Err(Error::config(format!(
                    "app `{}` is registered twice",
                    app.name
                )));
            }
        }
        let node_lease = self.node_lease.unwrap_or_default();
        if self.audit.max_age.is_zero() {
            return Err(Error::config("audit retention (max_age) must be > 0"));
        }

        // Listeners first: a port in use fails the start before anything
        // runs (nothing to undo).
        let health_listener = match config.health_addr {
            Some(addr) => Some(crate::http::bind(addr, "--health-addr/CLUSTER_HEALTH_ADDR").await?),
            None => None,
        };
        let metrics_listener = match config.metrics_addr {
            Some(addr) => {
                Some(crate::http::bind(addr, "--metrics-addr/CLUSTER_METRICS_ADDR").await?)
            }
            None => None,
        };

        let mut config = config;
        let dev_server = if config.dev {
            Some(crate::dev::start(&mut config).await?)
        } else {
            None
        };
        let transport = Transport::connect(&config.nats).await?;
        let replicas = if transport.client().server_info().connect_urls.len() >= 3 {
            3
        } else {
            1
        };
        let metrics = Metrics::new(names.platform())?;
        let health = Health::new(&config.node, metrics.clone());
        let audit = Audit::start(
            transport.client(),
            transport.jetstream(),
            &names,
            &config.node,
            metrics.clone(),
            &self.audit,
            replicas,
        )
        .await?;
        let observe = Observe {
            audit,
            metrics,
            health,
        };
        register_nats_check(&observe.health, &transport);

        // Ring apps: every node must split keys the same way. Checked (and
        // recorded by the first node) before anything starts.
        let mut ring_buckets = BTreeMap::new();
        for app in &self.apps {
            if let Mode::Ring(partitions) = app.mode {
                let bucket = names.app_coord_bucket(&app.name);
                let kv = lease::open_bucket(transport.jetstream(), &bucket, replicas).await?;
                crate::ring::claims::ClaimWriter::new(
                    transport.jetstream().clone(),
                    &bucket,
                    app.lease.ttl,
                )
                .ensure_config(&kv, partitions)
                .await
                .map_err(|e| match e {
                    Error::Config(m) => Error::config(format!("app `{}`: {m}", app.name)),
                    other => other,
                })?;
                ring_buckets.insert(app.name.clone(), kv);
            }
        }

        let record = NodeRecord {
            node: config.node.clone(),
            platform: config.platform.clone(),
            labels: config.labels.clone(),
            health_addr: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            pid: std::process::id(),
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            apps: self
                .apps
                .iter()
                .map(|a| {
                    (
                        a.name.clone(),
                        crate::membership::AppRecord {
                            mode: a.mode,
                            role: Role::Pending,
                            epoch: None,
                        },
                    )
                })
                .collect(),
            cordoned: false,
        };
        let membership = Membership::start(
            &transport,
            &names.nodes_bucket(),
            replicas,
            node_lease,
            record,
        )
        .await?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // From here on, a failure stops what was started: the guard signals
        // shutdown (apps step down, bounded by their leases) and leaves the
        // membership, unless the start completes.
        let mut started = StartGuard {
            shutdown: Some(shutdown_tx.clone()),
            membership: membership.clone(),
        };

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(observe_members(
            membership.clone(),
            observe.clone(),
            shutdown_rx.clone(),
        )));
        let mut apps = BTreeMap::new();
        for app in self.apps {
            let (state_tx, state_rx) = watch::channel(AppState {
                role: Role::Pending,
                leader: None,
                epoch: None,
                problem: None,
            });
            let (cmd_tx, cmd_rx) = mpsc::channel(8);
            let replicated = match &app.ops.sqlite {
                Some(path) => {
                    // Relative paths live in the node's data directory.
                    let path = match &config.data_dir {
                        Some(dir) if path.is_relative() => dir.join(path),
                        _ => path.clone(),
                    };
                    let coord = lease::open_bucket(
                        transport.jetstream(),
                        &names.app_coord_bucket(&app.name),
                        replicas,
                    )
                    .await?;
                    let replicated = crate::db::Replicated::new(
                        &app.name,
                        &config.node,
                        path,
                        transport.jetstream().clone(),
                        &names,
                        replicas,
                        coord,
                        observe.metrics.clone(),
                    );
                    tasks.push(tokio::spawn(
                        replicated.clone().report_metrics(shutdown_rx.clone()),
                    ));
                    Some(replicated)
                }
                None => None,
            };
            let ctx = AppContext::new(
                names.clone(),
                config.node.clone(),
                app.name.clone(),
                app.mode,
                transport.clone(),
                state_rx.clone(),
                cmd_tx.clone(),
                config.labels.clone(),
                ContextData {
                    observe: observe.clone(),
                    kv: app.kv.clone(),
                    replicas,
                    replicated: replicated.clone(),
                },
            )?;
            // Instance and broadcast subjects (and `$SRV` visibility) are
            // served from start-up; the API subject follows the role.
            let rpc = crate::rpc::RpcServer::with_options(
                transport.client().clone(),
                names.clone(),
                &app.name,
                &config.node,
                app.handlers.clone(),
                ctx.clone(),
                crate::rpc::ServerOptions::default()
                    .metrics(observe.metrics.rpc())
                    .max_in_flight(app.max_in_flight),
            )
            .map_err(|e| Error::nats(format!("RPC server of app `{}`", app.name), e))?;
            rpc.start()
                .await
                .map_err(|e| Error::nats(format!("serve app `{}`", app.name), e))?;
            let inst = Arc::new(Instance {
                app: app.clone(),
                ctx: ctx.clone(),
                state: state_tx,
                membership: membership.clone(),
                observer: self.observer.clone(),
                ownership_observer: self.ownership_observer.clone(),
                rpc: rpc.clone(),
                seen_leader: std::sync::Mutex::new(None),
                hooks: crate::instance::HookRunner::spawn(&app.name, app.hook_timeout),
                activation: crate::activation::Activation::new(
                    &app.name,
                    &config.node,
                    crate::activation::steps_for(&app, &cmd_tx, ctx.audit(), replicated.as_ref())?,
                    ctx.audit().clone(),
                    observe.metrics.clone(),
                ),
            });
            tasks.push(tokio::spawn(app_check(
                observe.health.clone(),
                app.name.clone(),
                state_rx.clone(),
                shutdown_rx.clone(),
            )));
            if app.hooks.on_health_change.is_some() || app.step_down_on_critical {
                tasks.push(tokio::spawn(health_hooks(
                    inst.clone(),
                    cmd_tx.clone(),
                    shutdown_rx.clone(),
                )));
            }
            tasks.push(tokio::spawn(member_hooks(
                inst.clone(),
                shutdown_rx.clone(),
            )));
            match app.mode {
                Mode::Singleton => {
                    // API calls run only while this instance is active and
                    // its lease valid, on the lease clock.
                    let gate_ctx = ctx.clone();
                    rpc.gate_api(move || gate_ctx.is_active());
                    let kv = lease::open_bucket(
                        transport.jetstream(),
                        &names.app_coord_bucket(&app.name),
                        replicas,
                    )
                    .await?;
                    let key = LeaseKey::new(
                        transport.jetstream().clone(),
                        kv,
                        names.election_key(),
                        app.lease,
                    );
                    let election = Election {
                        eligible: app.placement.allows(&config.node, &config.labels),
                        inst,
                        key,
                        transport: transport.clone(),
                        commands: cmd_rx,
                        shutdown: shutdown_rx.clone(),
                    };
                    tasks.push(tokio::spawn(election.run()));
                }
                Mode::Spread | Mode::Replicas(_) => {
                    tasks.push(tokio::spawn(crate::pool::run(inst, shutdown_rx.clone())));
                }
                Mode::Ring(partitions) => {
                    // Partition calls run only while this node owns the
                    // partition, on the lease clock (`Ring::owns`).
                    let ring = ctx.ring().clone();
                    rpc.gate_partitions(move |p| ring.owns(p));
                    let Some(kv) = ring_buckets.remove(&app.name) else {
                        return Err(Error::config(format!(
                            "app `{}`: ring bucket not opened",
                            app.name
                        )));
                    };
                    let bucket = names.app_coord_bucket(&app.name);
                    let member = LeaseKey::new(
                        transport.jetstream().clone(),
                        kv.clone(),
                        &crate::ring::claims::member_key(&config.node),
                        app.lease,
                    );
                    let task = crate::ring::task::RingTask {
                        eligible: app.placement.allows(&config.node, &config.labels),
                        writer: crate::ring::claims::ClaimWriter::new(
                            transport.jetstream().clone(),
                            &bucket,
                            app.lease.ttl,
                        ),
                        inst,
                        kv,
                        member,
                        transport: transport.clone(),
                        shutdown: shutdown_rx.clone(),
                        partitions,
                        handoff_timeout: app.handoff_timeout,
                    };
                    tasks.push(tokio::spawn(task.run()));
                }
            }
            apps.insert(
                app.name.clone(),
                AppHandle {
                    app,
                    ctx,
                    state: state_rx,
                    commands: cmd_tx,
                    rpc,
                },
            );
        }

        let platform_locks = Locks::with_observe(
            transport.jetstream().clone(),
            names.clone(),
            names.platform_bucket(),
            replicas,
            None,
            &config.node,
            Some(observe.audit.scoped(None)),
            Some(observe.metrics.clone()),
        );
        let shared = Arc::new(Shared {
            config,
            names,
            transport,
            membership,
            apps,
            shutdown: shutdown_tx,
            observe,
            platform_locks,
        });
        tasks.push(tokio::spawn(control_loop(shared.clone())));
        let http = health_listener.map(|listener| {
            let (bound, task) = crate::http::serve(listener, shared.clone());
            shared
                .membership
                .update(|r| r.health_addr = Some(bound.to_string()));
            (bound, task)
        });
        let metrics_http = metrics_listener
            .map(|listener| crate::http::serve_metrics(listener, shared.observe.metrics.clone()));
        started.shutdown = None;
        Ok(Platform {
            shared,
            tasks,
            http,
            metrics_http,
            _dev_server: dev_server,
            stopped: false,
        })
    }
}

/// Undoes a start that failed half-way (see [`PlatformBuilder::start`]).
struct StartGuard {
    /// `None` once the start succeeded.
    shutdown: Option<watch::Sender<bool>>,
    membership: Membership,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            shutdown.send_replace(true);
            stop_in_background(self.membership.clone(), Vec::new());
        }
    }
}

/// Leaves the membership and stops `rpc` servers on the current runtime,
/// if there is one (used from `Drop`, which cannot wait).
fn stop_in_background(membership: Membership, rpc: Vec<crate::rpc::RpcServer<AppContext>>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            for server in rpc {
                server.shutdown().await;
            }
            membership.leave().await;
        });
    }
}

pub(crate) struct AppHandle {
    pub(crate) app: App,
    pub(crate) ctx: AppContext,
    pub(crate) state: watch::Receiver<AppState>,
    pub(crate) commands: mpsc::Sender<AppCommand>,
    pub(crate) rpc: crate::rpc::RpcServer<AppContext>,
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) names: Names,
    pub(crate) transport: Transport,
    pub(crate) membership: Membership,
    pub(crate) apps: BTreeMap<String, AppHandle>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) observe: Observe,
    pub(crate) platform_locks: Locks,
}

/// A running node.
pub struct Platform {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    http: Option<(SocketAddr, JoinHandle<()>)>,
    metrics_http: Option<(SocketAddr, JoinHandle<()>)>,
    _dev_server: Option<crate::nats_server::NatsServer>,
    /// Set by `shutdown`, so `Drop` has nothing left to do.
    stopped: bool,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("platform", &self.shared.names.platform())
            .field("node", &self.shared.config.node)
            .finish()
    }
}

/// The `/status` document (DESIGN §5).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Status {
    /// Node id.
    pub node: String,
    /// Platform name.
    pub platform: String,
    /// NATS connection.
    pub nats: NatsStatus,
    /// Apps on this node.
    pub apps: BTreeMap<String, AppStatus>,
    /// Health checks.
    pub checks: BTreeMap<String, CheckStatus>,
}

/// NATS part of [`Status`].
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct NatsStatus {
    /// Connected right now.
    pub connected: bool,
    /// Round trip to the server.
    pub rtt_ms: Option<f64>,
}

/// One app in [`Status`].
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AppStatus {
    /// Mode.
    pub mode: String,
    /// This node's role.
    pub role: Role,
    /// The active node (singletons).
    pub leader: Option<String>,
    /// The leader's epoch.
    pub epoch: Option<u64>,
    /// Lease TTL in ms.
    pub lease_ttl_ms: u64,
    /// Ring partitions owned here (ring apps).
    pub partitions: Vec<u32>,
    /// Why the app cannot take part right now, while that lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

pub use crate::observe::CheckStatus;

impl Platform {
    /// Starts building a platform node.
    ///
    /// ```no_run
    /// use cluster_runtime::{app::App, config::Config, platform::Platform};
    /// # async fn run() -> cluster_runtime::error::Result<()> {
    /// let app = App::builder("counter").build()?;
    /// Platform::builder().config(Config::default()).app(app).start().await?.run().await
    /// # }
    /// ```
    pub fn builder() -> PlatformBuilder {
        PlatformBuilder::default()
    }

    /// The node id.
    pub fn node(&self) -> &str {
        &self.shared.config.node
    }

    /// The bound health/status address, if enabled.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(a, _)| *a)
    }

    /// The bound Prometheus `/metrics` address, if `metrics_addr` is set
    /// (`/metrics` is also served on the health address).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_http.as_ref().map(|(a, _)| *a)
    }

    /// The platform-wide lock `name` (in `P_platform`).
    pub fn lock(&self, name: &str) -> std::result::Result<Lock, LockError> {
        self.shared.platform_locks.lock(name)
    }

    /// The audit log, writing platform-wide entries as this node.
    pub fn audit(&self) -> AppAudit {
        self.shared.observe.audit.scoped(None)
    }

    /// The node's metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.observe.metrics
    }

    /// The node's health checks.
    pub fn health(&self) -> &Health {
        &self.shared.observe.health
    }

    /// The NATS URLs this node uses (the local server's in dev mode).
    pub fn nats_urls(&self) -> &str {
        self.shared.transport.urls()
    }

    /// The context of one app on this node.
    pub fn app(&self, name: &str) -> Option<AppContext> {
        self.shared.apps.get(name).map(|h| h.ctx.clone())
    }

    /// The membership view.
    pub fn membership(&self) -> &Membership {
        &self.shared.membership
    }

    /// This node's status document.
    pub async fn status(&self) -> Status {
        status(&self.shared).await
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run(self) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| Error::io("install SIGTERM handler", e))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| Error::io("install SIGINT handler", e))?;
        let notifier = crate::sd_notify::Notifier::from_env();
        let service_manager = async {
            let Some(n) = &notifier else {
                return std::future::pending().await;
            };
            // READY=1 once the node passes the same test as `GET /ready`.
            while readiness(&self.shared).is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n.notify(&format!("READY=1\nSTATUS=node {} ready", self.node()));
            match n.watchdog_interval() {
                Some(every) => loop {
                    n.notify("WATCHDOG=1");
                    tokio::time::sleep(every).await;
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            () = service_manager => {}
        }
        if let Some(n) = &notifier {
            n.notify("STOPPING=1");
        }
        self.shutdown().await;
        Ok(())
    }

    /// Hands over active roles, stops pools, deletes the node record.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        let apps = futures::future::join_all(std::mem::take(&mut self.tasks));
        if tokio::time::timeout(Duration::from_secs(35), apps)
            .await
            .is_err()
        {
            tracing::warn!("apps did not stop within 35 s");
        }
        for handle in self.shared.apps.values() {
            handle.rpc.shutdown().await;
        }
        self.shared.membership.leave().await;
        self.shared.observe.health.stop();
        if let Some((_, http)) = self.http.take() {
            http.abort();
        }
        if let Some((_, http)) = self.metrics_http.take() {
            http.abort();
        }
        self.stopped = true;
    }
}

/// Dropping a platform without [`Platform::shutdown`] stops it in the
/// background: every app steps down (bounded by its lease), the API
/// servers stop, the node leaves. Use `shutdown` to wait for it.
impl Drop for Platform {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.shared.shutdown.send_replace(true);
        for (_, http) in [self.http.take(), self.metrics_http.take()]
            .into_iter()
            .flatten()
        {
            http.abort();
        }
        let rpc = self.shared.apps.values().map(|a| a.rpc.clone()).collect();
        stop_in_background(self.shared.membership.clone(), rpc);
    }
}

pub(crate) async fn status(shared: &Shared) -> Status {
    let rtt = shared.transport.rtt().await;
    let connected = shared.transport.is_connected();
    let registered = *shared.membership.registered().borrow();
    let mut checks = shared.observe.health.statuses();
    checks.insert(
        "membership".to_owned(),
        CheckStatus {
            ok: registered,
            message: if registered {
                "node record held".into()
            } else {
                "node record not held".into()
            },
            critical: true,
        },
    );
    let apps = shared
        .apps
        .iter()
        .map(|(name, h)| {
            let s = h.state.borrow().clone();
            (
                name.clone(),
                AppStatus {
                    mode: h.app.mode.to_string(),
                    role: s.role,
                    leader: s.leader,
                    epoch: s.epoch,
                    problem: s.problem.clone(),
                    lease_ttl_ms: h.app.lease.ttl.as_millis() as u64,
                    partitions: h.ctx.ring().owned().as_slice().to_vec(),
                },
            )
        })
        .collect();
    Status {
        node: shared.config.node.clone(),
        platform: shared.names.platform().to_owned(),
        nats: NatsStatus {
            connected,
            rtt_ms: rtt.map(|r| r.as_secs_f64() * 1e3),
        },
        apps,
        checks,
    }
}

/// Readiness: NATS connected, node registered, every app past `pending`.
pub(crate) fn readiness(shared: &Shared) -> std::result::Result<(), String> {
    if !shared.transport.is_connected() {
        return Err("NATS not connected".into());
    }
    if !*shared.membership.registered().borrow() {
        return Err("node record not registered".into());
    }
    if let Some((name, _)) = shared
        .apps
        .iter()
        .find(|(_, h)| h.state.borrow().role == Role::Pending)
    {
        return Err(format!("app `{name}` has not started"));
    }
    if let Some((name, problem)) = shared
        .apps
        .iter()
        .find_map(|(name, h)| h.state.borrow().problem.clone().map(|p| (name, p)))
    {
        return Err(format!("app `{name}`: {problem}"));
    }
    if let Some((check, message)) = shared.observe.health.critical_failure() {
        return Err(format!("critical check `{check}` failing: {message}"));
    }
    Ok(())
}

/// A request on `P._.control.stepdown`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StepDownRequest {
    /// The app whose active instance should hand over.
    pub app: String,
}

/// The active node's answer to a [`StepDownRequest`].
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StepDownReply {
    /// The node that stepped down.
    pub node: String,
    /// The epoch it gave up.
    pub epoch: Option<u64>,
}

/// Answers operator commands. Only the node where the app is active
/// replies, so a request gets exactly one answer or none.
async fn control_loop(shared: Arc<Shared>) {
    let subject = shared.names.control_subject("stepdown");
    let mut shutdown = shared.shutdown.subscribe();
    let mut sub = match shared.transport.client().subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to control subjects");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m { Some(m) => m, None => return },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok(req) = serde_json::from_slice::<StepDownRequest>(&msg.payload) else {
            continue;
        };
        let Some(handle) = shared.apps.get(&req.app) else {
            continue;
        };
        if handle.state.borrow().role != Role::Active {
            continue;
        }
        let epoch = handle.state.borrow().epoch;
        if handle.commands.send(AppCommand::StepDown).await.is_err() {
            continue;
        }
        if let Some(reply) = msg.reply {
            let body = serde_json::to_vec(&StepDownReply {
                node: shared.config.node.clone(),
                epoch,
            })
            .unwrap_or_default();
            let _ = shared.transport.client().publish(reply, body.into()).await;
        }
    }
}

/// Fires `on_member_join` / `on_member_leave` for one app.
async fn member_hooks(inst: Arc<Instance>, mut shutdown: watch::Receiver<bool>) {
    if inst.app.hooks.on_member_join.is_none() && inst.app.hooks.on_member_leave.is_none() {
        return;
    }
    let mut events = inst.membership.events();
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (name, hook, node) = match event {
            Ok(MemberEvent::Joined(n)) => {
                ("on_member_join", inst.app.hooks.on_member_join.clone(), n)
            }
            Ok(MemberEvent::Left(n)) => {
                ("on_member_leave", inst.app.hooks.on_member_leave.clone(), n)
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "member hooks lagged behind");
                continue;
            }
            Err(_) => return,
        };
        if let Some(hook) = hook {
            let _ = inst.run_hook(name, hook(inst.ctx.clone(), node)).await;
        }
    }
}

/// The built-in `nats` check: connected, with the round-trip time.
fn register_nats_check(health: &Health, transport: &Transport) {
    let transport = transport.clone();
    health.register(
        "nats",
        Check::with_detail(move || {
            let transport = transport.clone();
            async move {
                match transport.rtt().await {
                    Some(rtt) => Ok(format!(
                        "connected to {}, rtt {:.2} ms",
                        transport.urls(),
                        rtt.as_secs_f64() * 1e3
                    )),
                    None => Err(format!("not connected to {}", transport.urls())),
                }
            }
        })
        .interval(Duration::from_secs(5))
        .timeout(Duration::from_secs(3))
        .critical(),
    );
}

/// The built-in check of one app (named after it): passes once the app has
/// a role on this node; updated on every role change.
async fn app_check(
    health: Health,
    app: String,
    mut state: watch::Receiver<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (role, epoch) = {
            let s = state.borrow_and_update();
            (s.role, s.epoch)
        };
        match (role, epoch) {
            (Role::Pending, _) => {
                health.report(&app, false, "starting: role not decided yet", false)
            }
            (Role::Active, Some(epoch)) => {
                health.report(&app, true, format!("active, epoch {epoch}"), false)
            }
            (role, _) => health.report(&app, true, role.to_string(), false),
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            _ = until_set(&mut shutdown) => return,
        }
    }
}

/// Keeps `gc_members_total` current and audits joins and leaves. Every
/// node reports each change under the same message id (the node and its
/// incarnation), so the audit stream keeps one entry per change.
async fn observe_members(
    membership: Membership,
    observe: Observe,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = membership.events();
    let mut members = membership.members();
    let audit = observe.audit.scoped(None);
    observe
        .metrics
        .set_members(members.borrow_and_update().len());
    loop {
        tokio::select! {
            event = events.recv() => {
                let (action, rec) = match event {
                    Ok(MemberEvent::Joined(rec)) => ("member.joined", rec),
                    Ok(MemberEvent::Left(rec)) => ("member.left", rec),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                let id = format!("{action}.{}.{}.{}", rec.node, rec.started_at_ms, rec.pid);
                audit.record(
                    action,
                    serde_json::json!({"member": rec.node, "labels": rec.labels, "version": rec.version}),
                    Some(id),
                );
            }
            changed = members.changed() => {
                if changed.is_err() { return; }
                observe.metrics.set_members(members.borrow_and_update().len());
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Fires `on_health_change` for one app, and steps its active instance
/// down while a critical check fails (when the app asks for it).
async fn health_hooks(
    inst: Arc<Instance>,
    commands: mpsc::Sender<AppCommand>,
    mut shutdown: watch::Receiver<bool>,
) {
    let health = inst.ctx.observe().health.clone();
    let mut changes = health.changes();
    let mut state = inst.ctx.watch_state();
    // The epoch we already asked to step down from (one request per term).
    let mut stepped_down_from: Option<u64> = None;
    loop {
        if inst.app.step_down_on_critical {
            let (role, epoch) = {
                let s = state.borrow_and_update();
                (s.role, s.epoch)
            };
            if role == Role::Active && stepped_down_from != epoch {
                if let Some((check, message)) = health.critical_failure() {
                    tracing::warn!(app = %inst.app.name, %check, %message, "critical check failing: stepping down");
                    stepped_down_from = epoch;
                    if commands.send(AppCommand::StepDown).await.is_err() {
                        return;
                    }
                }
            }
        }
        let change = tokio::select! {
            change = changes.recv() => change,
            changed = state.changed() => {
                if changed.is_err() { return }
                continue;
            }
            _ = until_set(&mut shutdown) => return,
        };
        match change {
            Ok(change) => {
                if let Some(hook) = &inst.app.hooks.on_health_change {
                    let _ = inst
                        .run_hook("on_health_change", hook(inst.ctx.clone(), change))
                        .await;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    }
}

/// Resolves once the flag is true (without holding the watch guard).
async fn until_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}
