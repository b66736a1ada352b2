//! The serving side: subscriptions that follow the instance's roles, and
//! dispatch of each request to its handler.
//!
//! Guarantees:
//! - **Serving is proven before it is announced.** `serve_*` and `start`
//!   return only after a request/reply round trip on the same connection
//!   following the SUB, so the server has the subscription.
//! - **Stopping loses no request.** `stop_*` unsubscribes first — a counted
//!   `UNSUB sid max` followed by closing messages, so server and client drop
//!   the subscription after the same delivery and every request the server
//!   routed here is received (this needs no patched async-nats; see
//!   `run_route`) — serves what was received, and waits for in-flight calls
//!   up to [`ServerOptions::drain_timeout`]; calls still running then are
//!   aborted (they never reply). When `stop_*` returns, no handler of that
//!   route runs any more.
//! - **Bounded work.** At most [`ServerOptions::max_in_flight`] calls run at
//!   once per server; beyond that the server stops reading its subscriptions
//!   and NATS buffers (and eventually drops, as for any slow consumer).
//! - **A request never takes the node down.** Undecodable payloads,
//!   unknown methods, bad headers and handler panics become error replies.
//! - **Deadlines hold.** A request whose budget is used up before its handler
//!   starts is refused with `timeout`; a handler still running at the
//!   deadline is dropped and `timeout` is replied.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::header::HeaderName;
use async_nats::{Client, HeaderMap, Message, Subscriber};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::codec::Codec;
use super::error::HandlerError;
use super::handler::{is_method_name, ErasedHandler, Handlers, RawRequest};
use super::micro::{self, Description, EndpointDescription, ServiceStats};
use super::request::{RequestInfo, RequestParts, Route, TraceContext};
use super::wire::{self, ErrorBody, ErrorCode};
use crate::naming::{self, NameError, Names};
use crate::observe::RpcMetrics;
use prometheus::Histogram;
use std::collections::HashMap;
use tracing::Instrument;

/// How long a demotion after a lost lease waits for a route to stop (the
/// gates already refuse its calls; a cut-off node must not wait on NATS):
/// the rest of the stop goes on in the background.
pub(crate) const STOP_WAIT_WHEN_LOST: Duration = Duration::from_millis(20);

/// How long `start`/`serve_*` wait for the round trip that proves a
/// subscription.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest error message put in a reply header.
const MAX_HEADER_MESSAGE: usize = 256;
/// Longest error message put in a reply body.
const MAX_BODY_MESSAGE: usize = 4096;

/// Tuning of an [`RpcServer`].
///
/// ```
/// use cluster_runtime::rpc::ServerOptions;
/// use std::time::Duration;
/// let opts = ServerOptions::default()
///     .max_in_flight(512)
///     .drain_timeout(Duration::from_secs(2));
/// assert_eq!(opts.get_max_in_flight(), 512);
/// ```
#[derive(Debug, Clone)]
pub struct ServerOptions {
    max_in_flight: usize,
    drain_timeout: Duration,
    default_timeout: Duration,
    version: String,
    description: String,
    metrics: Option<RpcMetrics>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_in_flight: 256,
            drain_timeout: Duration::from_secs(5),
            default_timeout: wire::DEFAULT_DEADLINE,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: String::new(),
            metrics: None,
        }
    }
}

impl ServerOptions {
    /// Most calls running at once on this server (default 256, minimum 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// How long stopping a route waits for in-flight calls (default 5 s).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// Budget of a request that carries no `Cluster-Timeout-Ms` header, such
    /// as one sent by `nats req` (default 5 s).
    pub fn default_timeout(mut self, d: Duration) -> Self {
        self.default_timeout = d;
        self
    }

    /// The version shown by `nats micro` (semver; default: this crate's).
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = v.into();
        self
    }

    /// The description shown by `nats micro info`.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }

    /// Records every served call's latency and errors
    /// (`gc_rpc_duration_seconds`, `gc_rpc_errors_total`, side `server`).
    pub fn metrics(mut self, metrics: RpcMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The configured in-flight bound.
    pub fn get_max_in_flight(&self) -> usize {
        self.max_in_flight
    }
}

/// How the app API subject `P._.api.A.*` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiMode {
    /// The single active instance of a singleton (in the queue group `A`
    /// too, so an instance still stopping never sees the same request as
    /// its successor).
    Exclusive,
    /// The queue group `A`: every pool instance, NATS spreads calls.
    Pool,
}

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// An app or node name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Subscribing failed.
    #[error("could not subscribe to `{subject}`: {message}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The client error.
        message: String,
    },
    /// The round trip proving the subscription failed (connection lost or
    /// too slow).
    #[error("could not confirm the subscriptions with the NATS server: {0}")]
    Sync(String),
    /// The server was shut down.
    #[error("the RPC server was shut down")]
    Shutdown,
}

/// Serves one app's handlers on one node.
///
/// Cheap to clone; clones share the subscriptions. Subscriptions live until
/// stopped, [`RpcServer::shutdown`], or until the last clone is dropped
/// (which stops every route in the background, like `shutdown` without
/// waiting).
///
/// ```no_run
/// # async fn demo(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use cluster_runtime::naming::Names;
/// use cluster_runtime::rpc::{ApiMode, Handlers, HandlerError, RpcServer};
///
/// let handlers = Handlers::<()>::new()
///     .handle("echo", |_ctx: (), s: String| async move { Ok::<_, HandlerError>(s) });
/// let server = RpcServer::new(client, Names::new("prod")?, "echo", "node-1", handlers, ())?;
/// server.start().await?;                       // P.echo.node.node-1.*, P.echo.all.*, $SRV
/// server.serve_api(ApiMode::Pool).await?;      // P._.api.echo.* in queue group `echo`
/// // ... later
/// server.shutdown().await;
/// # Ok(()) }
/// ```
pub struct RpcServer<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for RpcServer<C> {
    fn clone(&self) -> Self {
        RpcServer {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C> fmt::Debug for RpcServer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer")
            .field("app", &self.inner.shared.app)
            .field("node", &self.inner.shared.node)
            .field("platform", &self.inner.shared.names.platform())
            .finish_non_exhaustive()
    }
}

struct Inner<C> {
    shared: Arc<Shared<C>>,
    routes: tokio::sync::Mutex<Routes>,
}

/// Everything a route task and a call need.
struct Shared<C> {
    client: Client,
    names: Names,
    app: String,
    node: String,
    app_arc: Arc<str>,
    node_arc: Arc<str>,
    handlers: Handlers<C>,
    ctx: C,
    opts: ServerOptions,
    permits: Arc<Semaphore>,
    stats: ServiceStats,
    micro_id: String,
    /// Server-side latency histograms per registered method (resolved once,
    /// so serving does no label lookup).
    histograms: HashMap<String, Histogram>,
    /// What `$SRV.INFO` reports about the routes served now.
    state: Mutex<ServingState>,
    /// Whether this node may still run calls of a ring partition.
    partition_gate: OnceLock<PartitionGate>,
    /// Whether this node may still run calls of the API subject (a
    /// singleton's active instance, while its lease is valid).
    api_gate: OnceLock<ApiGate>,
}

/// Says whether calls of the API subject may run here (see
/// [`RpcServer::gate_api`]).
type ApiGate = Arc<dyn Fn() -> bool + Send + Sync>;

/// Says whether calls of a ring partition may run here (see
/// [`RpcServer::gate_partitions`]).
type PartitionGate = Arc<dyn Fn(u32) -> bool + Send + Sync>;

#[derive(Debug, Default, Clone)]
struct ServingState {
    api: Option<ApiMode>,
    partitions: BTreeSet<u32>,
}

#[derive(Default)]
struct Routes {
    shut_down: bool,
    api: Option<(ApiMode, RouteHandle)>,
    partitions: BTreeMap<u32, RouteHandle>,
    instance: Option<RouteHandle>,
    broadcast: Option<RouteHandle>,
    micro: Option<AbortOnDrop>,
}

/// The micro responder task, stopped when its owner goes.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct RouteHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RouteHandle {
    /// Signals the route to stop; await the returned handle for the drain.
    fn signal(self) -> JoinHandle<()> {
        // The task may have ended already (connection closed); nothing to
        // signal then.
        let _ = self.stop.send(true);
        self.task
    }
}

impl<C: Clone + Send + Sync + 'static> RpcServer<C> {
    /// A server for app `app` on node `node` with default options. Nothing is
    /// subscribed until [`start`](Self::start) / `serve_*`.
    pub fn new(
        client: Client,
        names: Names,
        app: &str,
        node: &str,
        handlers: Handlers<C>,
        ctx: C,
    ) -> Result<Self, ServeError> {
        Self::with_options(
            client,
            names,
            app,
            node,
            handlers,
            ctx,
            ServerOptions::default(),
        )
    }

    /// A server with explicit [`ServerOptions`].
    pub fn with_options(
        client: Client,
        names: Names,
        app: &str,
        node: &str,
        handlers: Handlers<C>,
        ctx: C,
        opts: ServerOptions,
    ) -> Result<Self, ServeError> {
        naming::validate_app(app)?;
        naming::validate_node(node)?;
        let stats = ServiceStats::new(handlers.methods());
        let histograms = opts
            .metrics
            .as_ref()
            .map(|m| m.server_histograms(app, handlers.methods()))
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            client,
            names,
            app: app.to_owned(),
            node: node.to_owned(),
            app_arc: app.into(),
            node_arc: node.into(),
            handlers,
            ctx,
            permits: Arc::new(Semaphore::new(opts.max_in_flight)),
            opts,
            stats,
            micro_id: nuid::next().to_string(),
            histograms,
            state: Mutex::new(ServingState::default()),
            partition_gate: OnceLock::new(),
            api_gate: OnceLock::new(),
        });
        Ok(RpcServer {
            inner: Arc::new(Inner {
                shared,
                routes: tokio::sync::Mutex::new(Routes::default()),
            }),
        })
    }

    /// The app served.
    pub fn app(&self) -> &str {
        &self.inner.shared.app
    }

    /// The node this server runs on.
    pub fn node(&self) -> &str {
        &self.inner.shared.node
    }

    /// This instance's id in the NATS micro protocol.
    pub fn micro_id(&self) -> &str {
        &self.inner.shared.micro_id
    }

    /// Starts the always-on routes: the instance subject `P.A.node.NODE.*`,
    /// the broadcast subject `P.A.all.*`, and the `$SRV` micro responder.
    /// Idempotent.
    pub async fn start(&self) -> Result<(), ServeError> {
        let shared = &self.inner.shared;
        let mut routes = self.inner.routes.lock().await;
        if routes.shut_down {
            return Err(ServeError::Shutdown);
        }
        let mut new_subs = Vec::new();
        if routes.instance.is_none() {
            let subject = shared.names.instance_wildcard(&shared.app, &shared.node);
            new_subs.push((Route::Instance, shared.subscribe(&subject, None).await?));
        }
        if routes.broadcast.is_none() {
            let subject = shared.names.broadcast_wildcard(&shared.app);
            new_subs.push((Route::Broadcast, shared.subscribe(&subject, None).await?));
        }
        let mut micro_subs = Vec::new();
        if routes.micro.is_none() {
            for subject in shared.names.micro_subjects(&shared.app, &shared.micro_id) {
                micro_subs.push(shared.subscribe(&subject, None).await?);
            }
        }
        shared.sync().await?;
        for (route, sub) in new_subs {
            let handle = spawn_route(Arc::clone(shared), route, sub);
            match route {
                Route::Instance => routes.instance = Some(handle),
                _ => routes.broadcast = Some(handle),
            }
        }
        if !micro_subs.is_empty() {
            routes.micro = Some(AbortOnDrop(tokio::spawn(run_micro(
                Arc::clone(shared),
                futures::stream::select_all(micro_subs),
            ))));
        }
        Ok(())
    }

    /// Serves the app API subject `P._.api.A.*` (exclusively or in the pool's
    /// queue group). Serving it already in the same mode is a no-op; in the
    /// other mode, the old subscription is stopped first.
    pub async fn serve_api(&self, mode: ApiMode) -> Result<(), ServeError> {
        let shared = &self.inner.shared;
        let mut routes = self.inner.routes.lock().await;
        if routes.shut_down {
            return Err(ServeError::Shutdown);
        }
        if let Some((current, _)) = &routes.api {
            if *current == mode {
                return Ok(());
            }
        }
        if let Some((_, old)) = routes.api.take() {
            shared.set_api(None);
            let _ = old.signal().await;
        }
        let subject = shared.names.api_wildcard(&shared.app);
        // A queue group in both modes. For a singleton it matters during a
        // hand-over: a stopping (or paused and resumed) instance may still
        // be subscribed next to its successor, and with plain
        // subscriptions both would receive a request — one running it, the
        // other answering `not_executed`, and a caller believing the first
        // reply would run it again. In a queue group each request reaches
        // one of them, so `not_executed` is always true.
        let queue = Some(shared.names.queue_group(&shared.app));
        let sub = shared.subscribe(&subject, queue).await?;
        shared.sync().await?;
        routes.api = Some((mode, spawn_route(Arc::clone(shared), Route::Api, sub)));
        shared.set_api(Some(mode));
        Ok(())
    }

    /// Stops serving the app API subject (unsubscribe, then drain). No-op if
    /// not serving it.
    pub async fn stop_api(&self) {
        let stopping = {
            let mut routes = self.inner.routes.lock().await;
            self.inner.shared.set_api(None);
            routes.api.take().map(|(_, handle)| handle.signal())
        };
        if let Some(task) = stopping {
            let _ = task.await;
        }
    }

    /// Runs calls that arrive on a partition subject only while `owns`
    /// says this node owns the partition; others are answered
    /// `unavailable` without running the handler. This covers requests a
    /// node received before it stopped owning but handles only after, such
    /// as those buffered while it was paused. Set once; later calls are
    /// ignored.
    pub fn gate_partitions(&self, owns: impl Fn(u32) -> bool + Send + Sync + 'static) {
        let _ = self.inner.shared.partition_gate.set(Arc::new(owns));
    }

    /// Runs calls that arrive on the API subject only while `may_run`
    /// says so (a singleton: while this instance is active and its lease
    /// valid); others are answered `not_executed` without running the
    /// handler, and callers retry them elsewhere. This covers requests
    /// buffered while the node was paused or cut off, and those reaching a
    /// stepped-down instance before its unsubscribe took effect. Set once;
    /// later calls are ignored.
    pub fn gate_api(&self, may_run: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.inner.shared.api_gate.set(Arc::new(may_run));
    }

    /// Starts serving ring partitions `partitions` (`P._.api.A.p.PART.>`);
    /// partitions already served are left alone. One round trip proves all
    /// the new subscriptions.
    pub async fn serve_partitions(
        &self,
        partitions: impl IntoIterator<Item = u32>,
    ) -> Result<(), ServeError> {
        let shared = &self.inner.shared;
        let mut routes = self.inner.routes.lock().await;
        if routes.shut_down {
            return Err(ServeError::Shutdown);
        }
        let mut new_subs = Vec::new();
        for p in partitions.into_iter().collect::<BTreeSet<_>>() {
            if routes.partitions.contains_key(&p) {
                continue;
            }
            let subject = shared.names.partition_wildcard(&shared.app, p);
            // A queue group, as for a singleton's API (see `serve_api`): an
            // old owner still subscribed next to the new one must not see
            // the same request.
            let queue = Some(shared.names.queue_group(&shared.app));
            match shared.subscribe(&subject, queue).await {
                Ok(sub) => new_subs.push((p, sub)),
                Err(e) => {
                    // Dropping the subscribers unsubscribes them.
                    return Err(e);
                }
            }
        }
        if new_subs.is_empty() {
            return Ok(());
        }
        shared.sync().await?;
        for (p, sub) in new_subs {
            routes
                .partitions
                .insert(p, spawn_route(Arc::clone(shared), Route::Partition(p), sub));
        }
        shared.set_partitions(routes.partitions.keys().copied().collect());
        Ok(())
    }

    /// Stops serving `partitions` (those not served are ignored): all are
    /// unsubscribed and drained concurrently; returns when every one is done.
    pub async fn stop_partitions(&self, partitions: impl IntoIterator<Item = u32>) {
        let shared = &self.inner.shared;
        let stopping = {
            let mut routes = self.inner.routes.lock().await;
            let mut stopping = Vec::new();
            for p in partitions {
                if let Some(handle) = routes.partitions.remove(&p) {
                    stopping.push(handle.signal());
                }
            }
            shared.set_partitions(routes.partitions.keys().copied().collect());
            stopping
        };
        // Drained without holding the lock: serving other partitions need
        // not wait for these calls.
        futures::future::join_all(stopping).await;
    }

    /// The partitions served now, ascending.
    pub async fn partitions(&self) -> Vec<u32> {
        let routes = self.inner.routes.lock().await;
        routes.partitions.keys().copied().collect()
    }

    /// How the API subject is served now, if at all.
    pub async fn api_mode(&self) -> Option<ApiMode> {
        let routes = self.inner.routes.lock().await;
        routes.api.as_ref().map(|(mode, _)| *mode)
    }

    /// Stops everything (API, partitions, instance, broadcast, micro),
    /// draining in-flight calls. Later `start`/`serve_*` calls fail.
    pub async fn shutdown(&self) {
        // The lock is held throughout so nothing starts meanwhile.
        let mut routes = self.inner.routes.lock().await;
        routes.shut_down = true;
        let mut stopping = Vec::new();
        if let Some((_, h)) = routes.api.take() {
            stopping.push(h.signal());
        }
        stopping.extend(
            std::mem::take(&mut routes.partitions)
                .into_values()
                .map(RouteHandle::signal),
        );
        stopping.extend(routes.instance.take().map(RouteHandle::signal));
        stopping.extend(routes.broadcast.take().map(RouteHandle::signal));
        self.inner.shared.set_api(None);
        self.inner.shared.set_partitions(BTreeSet::new());
        futures::future::join_all(stopping).await;
        drop(routes.micro.take());
    }
}

impl<C> Shared<C> {
    async fn subscribe(
        &self,
        subject: &str,
        queue: Option<String>,
    ) -> Result<Subscriber, ServeError> {
        let result = match queue {
            Some(q) => self.client.queue_subscribe(subject.to_owned(), q).await,
            None => self.client.subscribe(subject.to_owned()).await,
        };
        result.map_err(|e| ServeError::Subscribe {
            subject: subject.to_owned(),
            message: e.to_string(),
        })
    }

    /// A request/reply round trip on our connection. The server handles a
    /// connection's messages in order, so its answer (no responders: nobody
    /// subscribes to the sync subject) proves every SUB sent before it is in
    /// effect on that server.
    async fn sync(&self) -> Result<(), ServeError> {
        let subject = self.names.sync_subject(&self.app, &self.node);
        let request = async_nats::Request::new()
            .payload(Bytes::new())
            .timeout(Some(SYNC_TIMEOUT));
        match self.client.send_request(subject, request).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(ServeError::Sync(e.to_string())),
        }
    }

    fn set_api(&self, mode: Option<ApiMode>) {
        if let Ok(mut s) = self.state.lock() {
            s.api = mode;
        }
    }

    fn set_partitions(&self, partitions: BTreeSet<u32>) {
        if let Ok(mut s) = self.state.lock() {
            s.partitions = partitions;
        }
    }

    fn describe(&self) -> Description {
        let state = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        let queue_group = match state.api {
            Some(ApiMode::Pool) => self.names.queue_group(&self.app),
            _ => String::new(),
        };
        let mut metadata = BTreeMap::new();
        metadata.insert("platform".to_owned(), self.names.platform().to_owned());
        metadata.insert("node".to_owned(), self.node.clone());
        metadata.insert(
            "api".to_owned(),
            match state.api {
                None => "off",
                Some(ApiMode::Exclusive) => "exclusive",
                Some(ApiMode::Pool) => "pool",
            }
            .to_owned(),
        );
        metadata.insert(
            "partitions".to_owned(),
            state
                .partitions
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        let endpoints = self
            .handlers
            .methods()
            .map(|method| {
                let mut meta = BTreeMap::new();
                meta.insert(
                    "instance_subject".to_owned(),
                    self.names.instance_subject(&self.app, &self.node, method),
                );
                meta.insert(
                    "broadcast_subject".to_owned(),
                    self.names.broadcast_subject(&self.app, method),
                );
                EndpointDescription {
                    name: method.to_owned(),
                    subject: self.names.api_subject(&self.app, method),
                    queue_group: queue_group.clone(),
                    metadata: meta,
                }
            })
            .collect();
        Description {
            name: self.app.clone(),
            id: self.micro_id.clone(),
            version: self.opts.version.clone(),
            description: self.opts.description.clone(),
            metadata,
            endpoints,
        }
    }

    /// The subject prefix before the method token of `route`.
    fn prefix(&self, route: Route) -> String {
        let wildcard = match route {
            Route::Api => self.names.api_wildcard(&self.app),
            Route::Partition(p) => self.names.partition_wildcard(&self.app, p),
            Route::Instance => self.names.instance_wildcard(&self.app, &self.node),
            Route::Broadcast => self.names.broadcast_wildcard(&self.app),
        };
        wildcard
            .strip_suffix(['*', '>'])
            .unwrap_or(&wildcard)
            .to_owned()
    }
}

fn spawn_route<C: Clone + Send + Sync + 'static>(
    shared: Arc<Shared<C>>,
    route: Route,
    sub: Subscriber,
) -> RouteHandle {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_route(shared, route, sub, stop_rx));
    RouteHandle { stop, task }
}

/// How many closing messages a stopping route publishes after its
/// count-limited unsubscribe (see [`run_route`]): more than can be in flight
/// to it while the unsubscribe travels to the server.
const CLOSING_MESSAGES: u64 = 1024;

/// Closing messages are published in batches of this many, one batch per
/// millisecond, at most this many batches per stop.
const CLOSING_BATCH: u64 = 256;
const CLOSING_BATCHES_MAX: u64 = 64;

/// The last subject token of closing messages (`_close_<id>`); never a
/// method name, so no node serves one.
const CLOSING_TOKEN: &str = "_close_";

/// Whether `subject` is a closing message of some route (skipped by every
/// route: nobody replies to them).
fn is_closing(subject: &str) -> bool {
    subject
        .rsplit('.')
        .next()
        .is_some_and(|t| t.starts_with(CLOSING_TOKEN))
}

/// One subscription's loop: read, take a permit, spawn the call; on stop,
/// close the subscription without losing a request, serve what was
/// received, and wait for the calls in flight.
///
/// Closing without loss, on any async-nats: a plain UNSUB lets the client
/// forget the subscription before the messages the server routed to it
/// ahead of the UNSUB have arrived, and those requests would vanish (their
/// callers wait out their deadline). Instead the route sends `UNSUB sid
/// max` with `max = received + CLOSING_MESSAGES` and then publishes
/// `CLOSING_MESSAGES` closing messages on a subject the subscription
/// matches. Server and client count the same deliveries on the sid, and
/// both drop it once `max` were delivered: every request the server routed
/// here is received (and served, or refused with `not_executed` by the
/// gates), and later ones go elsewhere. The closing messages make the count
/// reach `max` promptly. If none of ours arrived, more than
/// `CLOSING_MESSAGES` were in flight at the unsubscribe and some could have
/// been lost: that is logged.
async fn run_route<C: Clone + Send + Sync + 'static>(
    shared: Arc<Shared<C>>,
    route: Route,
    mut sub: Subscriber,
    mut stop: watch::Receiver<bool>,
) {
    let prefix: Arc<str> = shared.prefix(route).into();
    let mut calls = JoinSet::new();
    let mut waiting: Option<(Message, Instant)> = None;
    let mut closed = false;
    // Messages taken from the subscription (the client's delivery count of
    // the sid is at least this).
    let mut received = 0u64;
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = calls.join_next(), if !calls.is_empty() => continue,
            msg = sub.next() => msg,
        };
        let Some(msg) = msg else {
            // The client closed the subscription (connection gone).
            closed = true;
            break;
        };
        received += 1;
        if is_closing(&msg.subject) {
            continue;
        }
        let arrived = Instant::now();
        let permit = tokio::select! {
            biased;
            permit = Arc::clone(&shared.permits).acquire_owned() => permit,
            _ = stop.wait_for(|s| *s) => {
                waiting = Some((msg, arrived));
                break;
            }
        };
        let Ok(permit) = permit else { break };
        let mut call = Box::pin(serve(
            Arc::clone(&shared),
            route,
            Arc::clone(&prefix),
            msg,
            arrived,
            permit,
        ));
        // A call that completes on its first poll (a handler that does not
        // wait) is served right here, saving a task hop; others get a task.
        if futures::poll!(call.as_mut()).is_pending() {
            calls.spawn(call);
        }
    }

    // Stop. Take what the client already holds for us, then the counted
    // unsubscribe and the closing messages (see above).
    let drain_until = tokio::time::Instant::now() + shared.opts.drain_timeout;
    let mut buffered: std::collections::VecDeque<(Message, Instant)> =
        waiting.into_iter().collect();
    let closing_subject = format!("{prefix}{CLOSING_TOKEN}{}", nuid::next());
    if !closed {
        while let Some(next) = sub.next().now_or_never() {
            match next {
                Some(msg) => {
                    received += 1;
                    if !is_closing(&msg.subject) {
                        buffered.push_back((msg, Instant::now()));
                    }
                }
                None => {
                    closed = true;
                    break;
                }
            }
        }
    }
    // Cut off from the server, nothing more can arrive on this connection:
    // drop the subscription; there is nothing to count.
    let connected = shared.client.connection_state() == async_nats::connection::State::Connected;
    if !closed && !connected {
        let _ = tokio::time::timeout_at(drain_until, sub.unsubscribe()).await;
        closed = true;
    }
    if !closed {
        let unsubscribed = tokio::time::timeout_at(
            drain_until,
            sub.unsubscribe_after(received + CLOSING_MESSAGES),
        )
        .await;
        if !matches!(unsubscribed, Ok(Ok(()))) {
            tracing::warn!(app = %shared.app, ?route, "could not unsubscribe");
            closed = true;
        }
    }
    // In a queue group only a share of the closing messages reaches this
    // member: keep publishing (in batches, capped) until the subscription
    // has closed.
    let closer = (!closed).then(|| {
        let client = shared.client.clone();
        let subject = closing_subject.clone();
        tokio::spawn(async move {
            // The first round carries the whole margin at once: on a
            // subscription without a queue group it closes the route, so a
            // hand-over waits for no more than one flush.
            for round in 0..CLOSING_BATCHES_MAX {
                let batch = if round == 0 {
                    CLOSING_MESSAGES
                } else {
                    CLOSING_BATCH
                };
                for _ in 0..batch {
                    if client.publish(subject.clone(), Bytes::new()).await.is_err() {
                        return;
                    }
                }
                if client.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    });
    let mut ours_seen = 0u64;
    let finished = tokio::time::timeout_at(drain_until, async {
        loop {
            // Serve requests received before the unsubscribe took effect.
            let next = match buffered.pop_front() {
                Some(m) => Some(m),
                None if closed => None,
                None => tokio::select! {
                    biased;
                    Some(_) = calls.join_next(), if !calls.is_empty() => continue,
                    msg = sub.next() => msg.map(|m| (m, Instant::now())),
                },
            };
            let Some((msg, arrived)) = next else { break };
            if is_closing(&msg.subject) {
                if msg.subject.as_str() == closing_subject {
                    ours_seen += 1;
                }
                continue;
            }
            let Ok(permit) = Arc::clone(&shared.permits).acquire_owned().await else {
                break;
            };
            calls.spawn(serve(
                Arc::clone(&shared),
                route,
                Arc::clone(&prefix),
                msg,
                arrived,
                permit,
            ));
        }
        while calls.join_next().await.is_some() {}
    })
    .await;
    if let Some(closer) = closer {
        closer.abort();
    }
    if !closed && finished.is_ok() && ours_seen == 0 {
        tracing::warn!(
            app = %shared.app,
            ?route,
            margin = CLOSING_MESSAGES,
            "more requests were in flight than the closing margin when this route stopped; some may have been lost"
        );
    }
    if finished.is_err() {
        tracing::warn!(
            app = %shared.app,
            ?route,
            in_flight = calls.len(),
            "drain timeout: aborting calls still running"
        );
        calls.shutdown().await;
        // Requests still queued get a clear refusal instead of a timeout.
        while let Some(Some(msg)) = sub.next().now_or_never() {
            if is_closing(&msg.subject) {
                continue;
            }
            reply_error(
                &shared,
                &msg,
                &HandlerError::with_code(
                    ErrorCode::NotExecuted,
                    "the instance stopped serving before the call started",
                ),
            )
            .await;
        }
    }
}

/// Serves one request and replies.
async fn serve<C: Clone + Send + Sync + 'static>(
    shared: Arc<Shared<C>>,
    route: Route,
    prefix: Arc<str>,
    msg: Message,
    arrived: Instant,
    _permit: OwnedSemaphorePermit,
) {
    let method = msg
        .subject
        .strip_prefix(&*prefix)
        .filter(|m| is_method_name(m));
    let outcome = match method {
        Some(method) => call(&shared, route, method, &msg, arrived).await,
        None => Err(HandlerError::with_code(
            ErrorCode::NotFound,
            format!(
                "`{}` does not name a method of app `{}`",
                msg.subject, shared.app
            ),
        )),
    };
    if let Some(stats) = method.and_then(|m| shared.stats.method(m)) {
        let error = outcome.as_ref().err().map(ToString::to_string);
        stats.record(arrived.elapsed(), error.as_deref());
    }
    // Only registered methods are labelled, so callers cannot grow the
    // metric's label set with made-up names.
    if let Some((method, histogram)) = method.and_then(|m| shared.histograms.get_key_value(m)) {
        histogram.observe(arrived.elapsed().as_secs_f64());
        if let (Err(e), Some(metrics)) = (&outcome, &shared.opts.metrics) {
            metrics.server_error(&shared.app, method, e.code().as_str());
        }
    }
    match outcome {
        Ok((payload, codec)) => reply_ok(&shared, route, &msg, payload, codec).await,
        Err(e) => reply_error(&shared, &msg, &e).await,
    }
}

/// Decodes the headers, finds the handler and runs it within the deadline.
async fn call<C: Clone + Send + Sync + 'static>(
    shared: &Shared<C>,
    route: Route,
    method: &str,
    msg: &Message,
    arrived: Instant,
) -> Result<(Bytes, Codec), HandlerError> {
    let header = |name: HeaderName| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    };
    let bad = |what: &str, value: &str| {
        HandlerError::bad_request(format!("invalid {what} header `{value}`"))
    };
    let codec = Codec::from_content_type(header(wire::name::CONTENT_TYPE))
        .map_err(HandlerError::bad_request)?;
    let budget = match header(wire::name::TIMEOUT_MS) {
        None => shared.opts.default_timeout,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| bad(wire::TIMEOUT_MS, v))?,
    };
    let deadline = arrived + budget;
    if budget.is_zero() || Instant::now() >= deadline {
        return Err(HandlerError::with_code(
            ErrorCode::Timeout,
            format!("the call's deadline ({budget:?}) passed before `{method}` started"),
        ));
    }
    let fencing_token = header(wire::name::FENCING_TOKEN)
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| bad(wire::FENCING_TOKEN, v))
        })
        .transpose()?;
    let Some(handler) = shared.handlers.get(method) else {
        return Err(HandlerError::with_code(
            ErrorCode::NotFound,
            format!(
                "app `{}` has no method `{method}` (methods: {})",
                shared.app,
                shared.handlers.methods().collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let trace = header(wire::name::TRACEPARENT)
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::new_root);
    let info = RequestInfo::new(RequestParts {
        app: Arc::clone(&shared.app_arc),
        node: Arc::clone(&shared.node_arc),
        method: method.to_owned(),
        subject: msg.subject.clone(),
        route,
        caller_app: header(wire::name::CALLER_APP).map(str::to_owned),
        caller_node: header(wire::name::CALLER_NODE).map(str::to_owned),
        caller_platform: header(wire::name::CALLER_PLATFORM).map(str::to_owned),
        fencing_token,
        trace,
        deadline,
        codec,
    });
    let raw = RawRequest {
        info: info.clone(),
        payload: msg.payload.clone(),
    };
    // The gates are checked last, right before the handler starts: a call
    // runs only while this node is the active instance / partition owner
    // (DESIGN §8 invariant 1: no handler runs once validity has ended).
    // What is refused here had no effect, and says so.
    match route {
        Route::Partition(p) if shared.partition_gate.get().is_some_and(|owns| !owns(p)) => {
            return Err(HandlerError::with_code(
                ErrorCode::NotExecuted,
                format!("node {} does not own partition {p}", shared.node),
            ));
        }
        Route::Api if shared.api_gate.get().is_some_and(|may_run| !may_run()) => {
            return Err(HandlerError::with_code(
                ErrorCode::NotExecuted,
                format!(
                    "node {} is not the active instance of `{}`",
                    shared.node, shared.app
                ),
            ));
        }
        _ => {}
    }
    let handler: Arc<dyn ErasedHandler<C>> = Arc::clone(handler);
    let ctx = shared.ctx.clone();
    // The handler is invoked inside the future, so a panic in its synchronous
    // part is caught too.
    let span = tracing::info_span!(
        "rpc.server",
        app = %shared.app,
        method,
        node = %shared.node,
        trace_id = tracing::field::Empty,
    );
    if !span.is_disabled() {
        span.record("trace_id", trace.trace_id());
        #[cfg(feature = "otel")]
        crate::observe::otel::set_remote_parent(&span, &trace);
    }
    let run = info
        .scope(async move { handler.call(ctx, raw).await })
        .instrument(span);
    let mut guarded = std::pin::pin!(AssertUnwindSafe(run).catch_unwind());
    // Most handlers finish on their first poll: arm the deadline timer only
    // for those that do not (a timer costs a lock on the timer wheel).
    let outcome = match futures::poll!(guarded.as_mut()) {
        std::task::Poll::Ready(outcome) => Ok(outcome),
        std::task::Poll::Pending => {
            tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), guarded).await
        }
    };
    match outcome {
        Err(_) => Err(HandlerError::with_code(
            ErrorCode::Timeout,
            format!("`{method}` did not finish within the call's deadline of {budget:?}"),
        )),
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            tracing::error!(app = %shared.app, method, panic = %what, "handler panicked");
            Err(HandlerError::with_code(
                ErrorCode::Internal,
                format!("handler `{method}` panicked: {what}"),
            ))
        }
        Ok(Ok(result)) => result.map(|payload| (payload, codec)),
    }
}

async fn reply_ok<C>(
    shared: &Shared<C>,
    route: Route,
    msg: &Message,
    payload: Bytes,
    codec: Codec,
) {
    let Some(reply) = msg.reply.clone() else {
        return;
    };
    let size = payload.len();
    // Headers cost several microseconds per message on both ends: a JSON
    // success reply carries none unless the caller needs to tell
    // responders apart (broadcast).
    let sent = if codec == Codec::Json && route != Route::Broadcast {
        shared.client.publish(reply, payload).await
    } else {
        let mut headers = HeaderMap::new();
        headers.insert(wire::name::NODE, shared.node.as_str());
        if codec != Codec::Json {
            headers.insert(wire::name::CONTENT_TYPE, codec.content_type());
        }
        shared
            .client
            .publish_with_headers(reply, headers, payload)
            .await
    };
    match sent {
        Ok(()) => {}
        Err(e) if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
            let err = HandlerError::with_code(
                ErrorCode::Internal,
                format!(
                    "the reply ({size} bytes) exceeds the server's max_payload ({} bytes)",
                    shared.client.max_payload()
                ),
            );
            reply_error(shared, msg, &err).await;
        }
        Err(e) => {
            tracing::debug!(app = %shared.app, error = %e, "could not send reply");
        }
    }
}

async fn reply_error<C>(shared: &Shared<C>, msg: &Message, err: &HandlerError) {
    let Some(reply) = msg.reply.clone() else {
        return;
    };
    let body = ErrorBody {
        code: err.code(),
        message: truncate(err.message(), MAX_BODY_MESSAGE),
    };
    let mut headers = HeaderMap::new();
    headers.insert(wire::name::NODE, shared.node.as_str());
    headers.insert(wire::name::ERROR, err.code().as_str());
    headers.insert(
        wire::name::SERVICE_ERROR,
        header_safe(&truncate(err.message(), MAX_HEADER_MESSAGE)).as_str(),
    );
    headers.insert(
        wire::name::SERVICE_ERROR_CODE,
        err.code().status().to_string(),
    );
    if let Err(e) = shared
        .client
        .publish_with_headers(reply, headers, body.to_json())
        .await
    {
        tracing::debug!(app = %shared.app, error = %e, "could not send error reply");
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Header values may not contain CR or LF.
fn header_safe(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Answers `$SRV` PING/INFO/STATS requests until aborted.
async fn run_micro<C>(shared: Arc<Shared<C>>, mut subs: futures::stream::SelectAll<Subscriber>) {
    while let Some(msg) = subs.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let verb = msg.subject.split('.').nth(1).unwrap_or("");
        let desc = shared.describe();
        match micro::answer(verb, &desc, &shared.stats) {
            Some(Ok(json)) => {
                if let Err(e) = shared.client.publish(reply, json.into()).await {
                    tracing::debug!(app = %shared.app, error = %e, "could not answer $SRV request");
                }
            }
            Some(Err(e)) => {
                tracing::warn!(app = %shared.app, error = %e, "could not encode $SRV answer");
            }
            None => {}
        }
    }
}
