//! Apps: their spec (mode, placement, hooks), roles and the context handed
//! to user code.
//!
//! An [`App`] is built with [`App::builder`] — the same calls the
//! `#[cluster::app]` macro generates. The platform runs each app with the
//! pattern its [`Mode`] implies: singleton election, a pool, or a ring.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::error::{BoxError, Error, Result};
use crate::kv::{Kv, KvOptions};
use crate::lease::{LeaseTiming, Validity};
use crate::lock::{Lock, LockError, Locks};
use crate::membership::NodeRecord;
use crate::naming::{self, Names};
use crate::observe::{AppAudit, AppHealth, HealthChange, Metrics, Observe};
use crate::placement::Placement;
use crate::ring::{Partitions, Ring};
use crate::rpc::{AppRef, Handlers, RpcClient};

/// How many instances of an app run: `singleton`, `spread`, `replicas(N)`,
/// `ring(P)` (the grammar is `cluster-spec`'s, shared with the macros).
///
/// ```
/// use cluster_runtime::app::Mode;
/// assert_eq!(Mode::parse("replicas(2)"), Ok(Mode::Replicas(2)));
/// assert!(Mode::parse("ring(100)").is_err());
/// ```
pub use cluster_spec::Mode;

/// What an app instance is doing on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the singleton lease and serves.
    Active,
    /// Eligible singleton instance waiting to take over.
    Standby,
    /// Pool instance running here.
    Running,
    /// Not running here (ineligible, not chosen, or shut down).
    Stopped,
    /// Starting up: role not decided yet.
    Pending,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Active => "active",
            Role::Standby => "standby",
            Role::Running => "running",
            Role::Stopped => "stopped",
            Role::Pending => "pending",
        })
    }
}

/// A hook's result: user errors of any type.
pub type HookResult = std::result::Result<(), BoxError>;

type Hook = Arc<dyn Fn(AppContext) -> BoxFuture<'static, HookResult> + Send + Sync>;
type LeaderHook =
    Arc<dyn Fn(AppContext, Option<String>) -> BoxFuture<'static, HookResult> + Send + Sync>;
type MemberHook =
    Arc<dyn Fn(AppContext, NodeRecord) -> BoxFuture<'static, HookResult> + Send + Sync>;
type PartitionsHook =
    Arc<dyn Fn(AppContext, Partitions) -> BoxFuture<'static, HookResult> + Send + Sync>;
type HealthHook =
    Arc<dyn Fn(AppContext, HealthChange) -> BoxFuture<'static, HookResult> + Send + Sync>;

/// The lifecycle hooks of an app. Each is optional.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) on_active: Option<Hook>,
    pub(crate) on_standby: Option<Hook>,
    pub(crate) on_start: Option<Hook>,
    pub(crate) on_stop: Option<Hook>,
    pub(crate) on_leader_change: Option<LeaderHook>,
    pub(crate) on_member_join: Option<MemberHook>,
    pub(crate) on_member_leave: Option<MemberHook>,
    pub(crate) on_own: Option<PartitionsHook>,
    pub(crate) on_release: Option<PartitionsHook>,
    pub(crate) on_health_change: Option<HealthHook>,
}

/// A validated app spec, ready to be run by a [`Platform`](crate::platform::Platform).
#[derive(Clone)]
pub struct App {
    pub(crate) name: String,
    pub(crate) mode: Mode,
    pub(crate) placement: Placement,
    pub(crate) lease: LeaseTiming,
    pub(crate) hook_timeout: Duration,
    pub(crate) handoff_timeout: Duration,
    pub(crate) hooks: Hooks,
    pub(crate) handlers: Handlers<AppContext>,
    pub(crate) kv: KvOptions,
    pub(crate) step_down_on_critical: bool,
    pub(crate) max_in_flight: usize,
    pub(crate) ops: Ops,
}

/// The data and ops options of a singleton, parsed: what its activation
/// steps manage (DESIGN §4.7).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ops {
    /// The replicated database (relative paths resolve against the node's
    /// data directory).
    pub(crate) sqlite: Option<std::path::PathBuf>,
    /// The virtual IP.
    pub(crate) vip: Option<cluster_spec::ops::Vip>,
    /// The managed backend.
    pub(crate) backend: Option<crate::backend::BackendConfig>,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("placement", &self.placement)
            .field("lease", &self.lease)
            .field("handlers", &self.handlers)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Starts building an app named `name` (`[a-z0-9-]+`).
    ///
    /// ```
    /// use cluster_runtime::app::{App, Mode};
    /// let app = App::builder("counter")
    ///     .mode(Mode::Singleton)
    ///     .placement("label=zone=a")
    ///     .on_active(|ctx| async move {
    ///         println!("{} is active with epoch {:?}", ctx.node(), ctx.epoch());
    ///         Ok(())
    ///     })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(app.name(), "counter");
    /// ```
    pub fn builder(name: impl Into<String>) -> AppBuilder {
        AppBuilder {
            name: name.into(),
            mode: Mode::Singleton,
            placement: String::new(),
            lease_ttl: None,
            lease_timing: None,
            hook_timeout: Duration::from_secs(30),
            max_in_flight: crate::rpc::ServerOptions::default().get_max_in_flight(),
            handoff_timeout: Duration::from_secs(10),
            hooks: Hooks::default(),
            ops: OpsOptions::default(),
            handlers: Handlers::new(),
            handler_errors: Vec::new(),
            kv: KvOptions::default(),
            step_down_on_critical: false,
        }
    }

    /// The app's wire name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The app's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The names of the methods the app serves, sorted.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.handlers.methods()
    }

    /// The lease timings of a singleton.
    pub fn lease_timing(&self) -> LeaseTiming {
        self.lease
    }
}

/// Builds an [`App`]; errors are reported by [`build`](AppBuilder::build).
#[must_use]
pub struct AppBuilder {
    name: String,
    mode: Mode,
    placement: String,
    lease_ttl: Option<Duration>,
    lease_timing: Option<LeaseTiming>,
    hook_timeout: Duration,
    handoff_timeout: Duration,
    hooks: Hooks,
    ops: OpsOptions,
    handlers: Handlers<AppContext>,
    handler_errors: Vec<String>,
    kv: KvOptions,
    step_down_on_critical: bool,
    max_in_flight: usize,
}

/// Data and ops options as given, parsed by [`AppBuilder::build`].
#[derive(Debug, Clone, Default)]
struct OpsOptions {
    sqlite: Option<String>,
    vip: Option<String>,
    backend: Option<String>,
    backend_config: Option<crate::backend::BackendConfig>,
}

impl fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppBuilder")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn hook<F, Fut>(f: F) -> Hook
where
    F: Fn(AppContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HookResult> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)))
}

impl AppBuilder {
    /// Sets the mode (default singleton).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets placement constraints (grammar in [`crate::placement`]).
    pub fn placement(mut self, placement: impl Into<String>) -> Self {
        self.placement = placement.into();
        self
    }

    /// Sets the lease TTL; renew and deadline follow the default proportions.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }

    /// Sets all three lease timings explicitly.
    pub fn lease_timing(mut self, timing: LeaseTiming) -> Self {
        self.lease_timing = Some(timing);
        self
    }

    /// Serves `method` (`[A-Za-z0-9_-]+`) on the app's API: a singleton's
    /// active instance, any pool instance, a ring partition's owner, and
    /// each instance directly. The request is decoded with the caller's
    /// codec (JSON by default); a payload that does not decode is answered
    /// with `bad_request`.
    ///
    /// ```
    /// use cluster_runtime::app::App;
    /// let app = App::builder("counter")
    ///     .handle("incr", |ctx, by: u64| async move {
    ///         Ok::<_, cluster_runtime::Error>(by + ctx.epoch().unwrap_or(0))
    ///     })
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn handle<Req, Resp, E, F, Fut>(mut self, method: &str, f: F) -> Self
    where
        F: Fn(AppContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Resp, E>> + Send + 'static,
        Req: serde::de::DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        E: Into<crate::rpc::HandlerError> + 'static,
    {
        if !crate::rpc::handler::is_method_name(method) {
            self.handler_errors.push(format!(
                "method name `{method}` is invalid: use letters, digits, `_` and `-` only"
            ));
        } else if self.handlers.contains(method) {
            self.handler_errors
                .push(format!("method `{method}` is registered twice"));
        } else {
            self.handlers = self.handlers.handle(method, f);
        }
        self
    }

    /// Adds a whole registry of handlers (what `#[cluster::app]` generates
    /// for the `#[handle]` methods of an impl block).
    pub fn handlers(mut self, handlers: Handlers<AppContext>) -> Self {
        for duplicate in self.handlers.merge(handlers) {
            self.handler_errors
                .push(format!("method `{duplicate}` is registered twice"));
        }
        self
    }

    /// A replicated SQLite database at `path` (singletons only): the active
    /// instance writes it through [`AppContext::db`] and ships every commit
    /// to the app's replica bucket; standbys follow it in `PATH-replica`
    /// and the new active promotes that file on failover. A relative path
    /// resolves against the node's data directory (`--data-dir`).
    pub fn sqlite(mut self, path: impl Into<String>) -> Self {
        self.ops.sqlite = Some(path.into());
        self
    }

    /// A virtual IP, `"CIDR dev IFACE"` (singletons only), held by the
    /// active instance while its lease is valid, announced with gratuitous
    /// ARP. Needs `CAP_NET_ADMIN` and `CAP_NET_RAW`.
    pub fn vip(mut self, spec: impl Into<String>) -> Self {
        self.ops.vip = Some(spec.into());
        self
    }

    /// A managed backend, `systemd:UNIT`, `process:CMD ...` or
    /// `docker:IMAGE`: a singleton's runs on the active instance (started
    /// before it serves, stopped before the VIP is released); a pool's runs
    /// on every running instance.
    pub fn backend(mut self, spec: impl Into<String>) -> Self {
        self.ops.backend = Some(spec.into());
        self
    }

    /// A managed backend with every setting: health probe, environment,
    /// working directory, restart policy, grace periods, Docker options.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cluster_runtime::app::App;
    /// use cluster_runtime::backend::{BackendConfig, HealthProbe};
    ///
    /// let backend = BackendConfig::parse("process:/usr/local/bin/api --port 3210")?
    ///     .probe(HealthProbe::new("http://127.0.0.1:3210/health"))
    ///     .start_timeout(Duration::from_secs(30));
    /// let app = App::builder("api").backend_config(backend).build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn backend_config(mut self, config: crate::backend::BackendConfig) -> Self {
        self.ops.backend_config = Some(config);
        self
    }

    /// How many calls this instance runs at once (default 256); further
    /// requests wait for a slot (back-pressure) within their deadline.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// How long a hook may run before it counts as failed (default 30 s).
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.hook_timeout = timeout;
        self
    }

    /// Runs when this node becomes the active instance of a singleton. If it
    /// fails or times out, the node gives up the lease and backs off.
    pub fn on_active<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AppContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HookResult> + Send + 'static,
    {
        self.hooks.on_active = Some(hook(f));
        self
    }

    /// Runs when this node becomes (or stays, at start) a standby.
    pub fn on_standby<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AppContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HookResult> + Send + 'static,
    {
        self.hooks.on_standby = Some(hook(f));
        self
    }

    /// Runs when a pool instance starts on this node.
    pub fn on_start<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AppContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HookResult> + Send + 'static,
    {
        self.hooks.on_start = Some(hook(f));
        self
    }

    /// Runs when a pool instance stops on this node.
    pub fn on_stop<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AppContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HookResult> + Send + 'static,
    {
        self.hooks.on_stop = Some(hook(f));
        self
    }

    /// Runs on every node when the singleton's active instance changes
    /// (`None` while there is none).
    pub fn on_leader_change<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AppContext, Option<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HookResult> + Send + 'static,
    {
        self.hooks.on_leader_change = Some(Arc::new(move |ctx, leader| Box::pin(f(ctx, leader))));
        self
    }

    /// How long a ring node's `on_release` may take before the partitions
    /// are given up anyway (default 10 s). Calls in flight are drained
    /// before it runs, bounded by the RPC drain timeout (5 s).
    pub fn handoff_timeout(mut self, timeout: Duration) -> Self {
        self.handoff_timeout = timeout;
        self
    }

    /// Runs on a ring node when it starts owning a batch of partitions,
    /// before their calls are routed to it: load their state here. If it
    /// fails or times out, the partitions are handed back (`on_release`
    /// runs) and the node holds off claiming with the flap backoff.
    pub fn on_own<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AppContext, Partitions) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HookResult> + Send + 'static,
    {
        self.hooks.on_own = Some(Arc::new(move |ctx, parts| Box::pin(f(ctx, parts))));
        self
    }

    /// Runs on a ring node when it gives up a batch of partitions, after
    /// their calls stopped reaching it and in-flight calls finished, before
    /// the next owner can claim them: hand their state over here. Bounded
    /// by the hand-off timeout. When the node lost its lease (paused, cut
    /// off) it runs after the fact: others may already own the partitions.
    pub fn on_release<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AppContext, Partitions) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HookResult> + Send + 'static,
    {
        self.hooks.on_release = Some(Arc::new(move |ctx, parts| Box::pin(f(ctx, parts))));
        self
    }

    /// Runs when a node joins the platform.
    pub fn on_member_join<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AppContext, NodeRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HookResult> + Send + 'static,
    {
        self.hooks.on_member_join = Some(Arc::new(move |ctx, node| Box::pin(f(ctx, node))));
        self
    }

    /// Runs when a node leaves the platform (gracefully or by expiry).
    pub fn on_member_leave<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AppContext, NodeRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HookResult> + Send + 'static,
    {
        self.hooks.on_member_leave = Some(Arc::new(move |ctx, node| Box::pin(f(ctx, node))));
        self
    }

    /// How the app's KV bucket `P_A` is created (replicas, storage,
    /// history); see [`KvOptions`].
    pub fn kv(mut self, options: KvOptions) -> Self {
        self.kv = options;
        self
    }

    /// When a critical health check fails on this node, the active instance
    /// of this singleton steps down so a healthy node takes over (default
    /// off).
    pub fn step_down_on_critical(mut self, yes: bool) -> Self {
        self.step_down_on_critical = yes;
        self
    }

    /// Runs when a health check of this node starts passing or failing.
    pub fn on_health_change<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AppContext, HealthChange) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HookResult> + Send + 'static,
    {
        self.hooks.on_health_change = Some(Arc::new(move |ctx, change| Box::pin(f(ctx, change))));
        self
    }

    /// Validates and builds the app. Every problem names the setting.
    pub fn build(self) -> Result<App> {
        naming::validate_app(&self.name)?;
        if let Some(e) = self.handler_errors.first() {
            return Err(Error::config(format!("app `{}`: {e}", self.name)));
        }
        let placement = Placement::parse(&self.placement)
            .map_err(|e| Error::config(format!("app `{}` placement: {e}", self.name)))?;
        let unsupported = placement.unsupported_terms();
        if !unsupported.is_empty() {
            return Err(Error::config(format!(
                "app `{}` placement: {unsupported:?} are not supported by this runtime yet (only label=, avoid-label= and node= are); see docs/placement.md",
                self.name
            )));
        }
        for (option, set) in [
            ("sqlite", self.ops.sqlite.is_some()),
            ("vip", self.ops.vip.is_some()),
            (
                "backend",
                self.ops.backend.is_some() || self.ops.backend_config.is_some(),
            ),
        ] {
            if set {
                cluster_spec::fit::option_fits(option, self.mode)
                    .map_err(|e| Error::config(format!("app `{}`: {e}", self.name)))?;
            }
        }
        let ops = self
            .ops
            .parse()
            .map_err(|e| Error::config(format!("app `{}`: {e}", self.name)))?;
        let is_ring = matches!(self.mode, Mode::Ring(_));
        for (hook, set) in [
            ("on_own", self.hooks.on_own.is_some()),
            ("on_release", self.hooks.on_release.is_some()),
        ] {
            if set && !is_ring {
                return Err(Error::config(format!(
                    "app `{}`: {hook} needs mode ring(P) (this app is {})",
                    self.name, self.mode
                )));
            }
        }
        if self.handoff_timeout.is_zero() {
            return Err(Error::config(format!(
                "app `{}`: handoff_timeout must be > 0",
                self.name
            )));
        }
        let lease = match (self.lease_timing, self.lease_ttl) {
            (Some(t), _) => LeaseTiming::new(t.ttl, t.renew, t.deadline),
            (None, Some(ttl)) => LeaseTiming::from_ttl(ttl),
            (None, None) => Ok(LeaseTiming::default()),
        }
        .map_err(|e| Error::config(format!("app `{}`: {e}", self.name)))?;
        self.kv
            .validate()
            .map_err(|e| Error::config(format!("app `{}`: {e}", self.name)))?;
        if self.step_down_on_critical && self.mode != Mode::Singleton {
            return Err(Error::config(format!(
                "app `{}`: step_down_on_critical needs mode singleton (this app is {})",
                self.name, self.mode
            )));
        }
        if self.max_in_flight == 0 {
            return Err(Error::config(format!(
                "app `{}`: max_in_flight must be ≥ 1",
                self.name
            )));
        }
        if self.hook_timeout.is_zero() {
            return Err(Error::config(format!(
                "app `{}`: hook_timeout must be > 0",
                self.name
            )));
        }
        Ok(App {
            name: self.name,
            mode: self.mode,
            placement,
            lease,
            hook_timeout: self.hook_timeout,
            max_in_flight: self.max_in_flight,
            handoff_timeout: self.handoff_timeout,
            hooks: self.hooks,
            handlers: self.handlers,
            kv: self.kv,
            step_down_on_critical: self.step_down_on_critical,
            ops,
        })
    }
}

impl OpsOptions {
    fn parse(&self) -> std::result::Result<Ops, String> {
        let sqlite = match &self.sqlite {
            Some(path) => {
                cluster_spec::ops::check_sqlite_path(path)?;
                Some(std::path::PathBuf::from(path))
            }
            None => None,
        };
        let vip = self
            .vip
            .as_deref()
            .map(cluster_spec::ops::Vip::parse)
            .transpose()?;
        let backend = match (&self.backend_config, &self.backend) {
            (Some(config), _) => Some(config.clone()),
            (None, Some(spec)) => {
                Some(crate::backend::BackendConfig::parse(spec).map_err(|e| e.to_string())?)
            }
            (None, None) => None,
        };
        Ok(Ops {
            sqlite,
            vip,
            backend,
        })
    }
}

/// A snapshot of an app's state on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// This node's role.
    pub role: Role,
    /// The node holding the singleton lease, if known.
    pub leader: Option<String>,
    /// The epoch (fencing token) of the current leader, if known.
    pub epoch: Option<u64>,
    /// Why the app cannot take part right now (e.g. its election key
    /// cannot be read), while that lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The data and observability parts of a context, made by the platform.
#[derive(Debug, Clone)]
pub(crate) struct ContextData {
    pub(crate) observe: Observe,
    pub(crate) kv: KvOptions,
    /// Replicas of buckets that set none (3 on a ≥ 3-server NATS cluster).
    pub(crate) replicas: usize,
    /// The replicated database, for apps with `sqlite`.
    pub(crate) replicated: Option<std::sync::Arc<crate::db::Replicated>>,
}

/// Requests from user code to the app's pattern task.
#[derive(Debug)]
pub(crate) enum AppCommand {
    /// Give up the lease so another node takes over.
    StepDown,
}

/// What user code gets in every hook and handler: who and where it is, its
/// role, and the fencing token while active.
#[derive(Clone)]
pub struct AppContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    names: Names,
    node: String,
    app: String,
    mode: Mode,
    transport: crate::transport::Transport,
    state: watch::Receiver<AppState>,
    validity: Arc<Mutex<Option<Validity>>>,
    commands: mpsc::Sender<AppCommand>,
    labels: BTreeMap<String, String>,
    rpc: RpcClient,
    events: crate::events::Events,
    ring: Ring,
    kv: Kv,
    locks: Locks,
    audit: AppAudit,
    health: AppHealth,
    observe: Observe,
    replicated: Option<Arc<crate::db::Replicated>>,
}

/// The fencing token while `validity` holds: read at every outgoing call.
fn current_token(validity: &Mutex<Option<Validity>>) -> Option<u64> {
    validity
        .lock()
        .ok()?
        .as_ref()
        .and_then(Validity::valid_epoch)
}

impl fmt::Debug for AppContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppContext")
            .field("platform", &self.platform())
            .field("node", &self.inner.node)
            .field("app", &self.inner.app)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

impl AppContext {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        names: Names,
        node: String,
        app: String,
        mode: Mode,
        transport: crate::transport::Transport,
        state: watch::Receiver<AppState>,
        commands: mpsc::Sender<AppCommand>,
        labels: BTreeMap<String, String>,
        data: ContextData,
    ) -> Result<Self> {
        let validity: Arc<Mutex<Option<Validity>>> = Arc::new(Mutex::new(None));
        let token_validity = validity.clone();
        let rpc = RpcClient::builder(transport.client().clone(), names.clone())
            .caller(&app, &node)
            .fencing_token_source(move || current_token(&token_validity))
            .metrics(data.observe.metrics.rpc())
            .build()?;
        let kv = Kv::new(
            transport.jetstream().clone(),
            names.app_kv_bucket(&app),
            data.kv,
            data.replicas,
        );
        // A singleton's data is owned by its active instance: writes are
        // fenced by the epoch record the instance writes on activation.
        let kv = match mode {
            Mode::Singleton => kv.fenced_by(Arc::new(crate::kv::FenceSlot::default())),
            // A ring partition's data is owned by the partition's owner.
            Mode::Ring(_) => {
                kv.fenced_by_partitions(Arc::new(crate::kv::PartitionFences::default()))
            }
            Mode::Spread | Mode::Replicas(_) => kv,
        };
        let audit = data.observe.audit.scoped(Some(&app));
        let locks = Locks::with_observe(
            transport.jetstream().clone(),
            names.clone(),
            names.app_coord_bucket(&app),
            data.replicas,
            Some(&app),
            &node,
            Some(audit.clone()),
            Some(data.observe.metrics.clone()),
        );
        let health = data.observe.health.for_app(&app);
        let events =
            crate::events::Events::new(transport.client().clone(), names.clone(), &app, &node)
                .map_err(|e| Error::config(e.to_string()))?;
        Ok(AppContext {
            inner: Arc::new(ContextInner {
                names,
                node,
                app,
                mode,
                transport,
                state,
                validity,
                commands,
                labels,
                rpc,
                events,
                ring: Ring::new(match mode {
                    Mode::Ring(p) => p,
                    _ => 0,
                }),
                kv,
                locks,
                audit,
                health,
                observe: data.observe,
                replicated: data.replicated,
            }),
        })
    }

    /// A connection to the app's replicated SQLite database (`sqlite =
    /// "PATH"`), on the active instance only: WAL mode, every commit
    /// shipped to the replica bucket; [`Db::commit_synced`](crate::db::Db::commit_synced)
    /// waits until it is stored (RPO 0). Each call opens a connection.
    pub fn db(&self) -> Result<crate::db::Db> {
        let replicated = self.inner.replicated.as_ref().ok_or_else(|| {
            Error::config(format!("app `{}` has no `sqlite` database", self.inner.app))
        })?;
        crate::db::Db::open(replicated)
    }

    /// Replication position, lag and sync of the app's database.
    pub fn wal(&self) -> crate::db::Wal {
        crate::db::Wal::new(self.inner.replicated.clone())
    }

    /// Manual snapshots of the app's database (`P_A_snapshots`).
    pub fn snapshots(&self) -> crate::db::AppSnapshots {
        crate::db::AppSnapshots::new(self.inner.replicated.clone())
    }

    pub(crate) fn observe(&self) -> &Observe {
        &self.inner.observe
    }

    pub(crate) fn set_validity(&self, validity: Option<Validity>) {
        if let Ok(mut v) = self.inner.validity.lock() {
            *v = validity;
        }
    }

    /// The platform name.
    pub fn platform(&self) -> &str {
        self.inner.names.platform()
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// This node's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.inner.labels
    }

    /// The app's name.
    pub fn app(&self) -> &str {
        &self.inner.app
    }

    /// The app's mode.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// This node's current role.
    pub fn role(&self) -> Role {
        self.inner.state.borrow().role
    }

    /// The node currently active for this singleton, if known.
    pub fn leader(&self) -> Option<String> {
        self.inner.state.borrow().leader.clone()
    }

    /// The current leader's epoch, if known.
    pub fn epoch(&self) -> Option<u64> {
        self.inner.state.borrow().epoch
    }

    /// This node's fencing token while it is active and its lease valid;
    /// attach it to side effects so stale writers can be rejected.
    pub fn fencing_token(&self) -> Option<u64> {
        // Read from the lease's own validity handle: the check and the
        // token are one read, never the observed leader's epoch.
        current_token(&self.inner.validity)
    }

    /// True while this node is the active instance *and* its lease deadline
    /// has not passed. Checked against the clock, so it turns false on time
    /// even when the node was paused or cut off from NATS.
    pub fn is_active(&self) -> bool {
        match self.inner.validity.lock() {
            Ok(v) => v.as_ref().is_some_and(Validity::is_valid),
            Err(_) => false,
        }
    }

    /// Watches role, leader and epoch changes.
    pub fn watch_state(&self) -> watch::Receiver<AppState> {
        self.inner.state.clone()
    }

    /// Asks this node to give up the active role; another eligible node
    /// takes over. Returns once the request is queued.
    pub async fn stepdown(&self) -> Result<()> {
        self.inner
            .commands
            .send(AppCommand::StepDown)
            .await
            .map_err(|_| Error::Shutdown)
    }

    /// The RPC client, calling as this app and node. Calls made while
    /// active carry this node's fencing token; calls made inside a handler
    /// carry its trace id and are bounded by its deadline.
    pub fn rpc(&self) -> &RpcClient {
        &self.inner.rpc
    }

    /// Calls another app by name (untyped):
    /// `ctx.call("counter").method("incr").send::<u64, u64>(&5).await`.
    pub fn call(&self, app: &str) -> AppRef {
        self.inner.rpc.app(app)
    }

    /// The ring of a `ring(P)` app: the partition function, this node's
    /// partitions and the ownership table. Empty for other modes.
    ///
    /// ```no_run
    /// # fn demo(ctx: cluster_runtime::AppContext) {
    /// let p = ctx.ring().partition_of("user:1");
    /// println!("owner of user:1: {:?}; mine: {}", ctx.ring().owner_of("user:1"), ctx.ring().owns(p));
    /// # }
    /// ```
    pub fn ring(&self) -> &Ring {
        &self.inner.ring
    }

    /// The app's events: publish, subscribe, durable subscriptions.
    pub fn events(&self) -> &crate::events::Events {
        &self.inner.events
    }

    /// The app's own KV bucket (`P_A`). No method reaches another app's
    /// bucket.
    pub fn kv(&self) -> &Kv {
        &self.inner.kv
    }

    /// The app's lock `name` (in `P_A_coord`). Fails only for an invalid
    /// name, before any I/O.
    pub fn lock(&self, name: &str) -> std::result::Result<Lock, LockError> {
        self.inner.locks.lock(name)
    }

    /// The audit log, writing as this app and node.
    pub fn audit(&self) -> &AppAudit {
        &self.inner.audit
    }

    /// This app's health checks (and the node's).
    pub fn health(&self) -> &AppHealth {
        &self.inner.health
    }

    /// The node's metrics: register your own on
    /// [`Metrics::registry`] to have them served at `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.observe.metrics
    }

    /// The platform's NATS names.
    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// The raw NATS client, for what the framework does not cover.
    pub fn nats(&self) -> &async_nats::Client {
        self.inner.transport.client()
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        self.inner.transport.jetstream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_validates() {
        assert!(App::builder("Bad").build().is_err());
        assert!(App::builder("nodes").build().is_err());
        assert!(App::builder("a").placement("zone=a").build().is_err());
        assert!(App::builder("a")
            .placement("prefer-label=ssd")
            .build()
            .is_err());
        assert!(App::builder("a")
            .lease_ttl(Duration::from_millis(500))
            .build()
            .is_err());
        let app = App::builder("a")
            .lease_ttl(Duration::from_secs(1))
            .build()
            .expect("valid");
        assert_eq!(app.lease_timing().deadline, Duration::from_millis(800));
        let ring = App::builder("cache")
            .mode(Mode::Ring(64))
            .on_own(|_, _| async { Ok(()) })
            .on_release(|_, _| async { Ok(()) })
            .build()
            .expect("ring app");
        assert_eq!(ring.mode(), Mode::Ring(64));
        let err = App::builder("counter")
            .on_own(|_, _| async { Ok(()) })
            .build()
            .expect_err("on_own on a singleton");
        assert!(
            err.to_string().contains("on_own needs mode ring(P)"),
            "{err}"
        );
    }
}
