//! Typed calls between apps over NATS request/reply.
//!
//! # Model
//!
//! An app registers its methods in [`Handlers`]; an [`RpcServer`] serves them
//! on the subjects its roles call for, and an [`RpcClient`] calls any app by
//! subject, so callers never need to know which node serves:
//!
//! | Route | Subject | Served by |
//! |---|---|---|
//! | app API | `P._.api.A.METHOD` | the active of a singleton (plain subscription) or every pool instance (queue group `A`) |
//! | partition | `P._.api.A.p.PART.METHOD` | the owner of ring partition `PART` |
//! | instance | `P.A.node.NODE.METHOD` | the instance on `NODE` |
//! | broadcast | `P.A.all.METHOD` | every instance; the caller gathers replies |
//!
//! The wire contract (headers, error codes, codecs, deadlines) is in
//! [`wire`] and `docs/rpc.md`; it is plain NATS, so `nats req
//! P._.api.A.METHOD '<json>'` calls any handler.
//!
//! # Guarantees
//!
//! - A call is retried only when it provably reached no handler (no
//!   responders), within its deadline (default 5 s). See [`client`].
//! - A server proves a subscription with a round trip before `serve_*`
//!   returns, unsubscribes before draining when stopping, bounds in-flight
//!   calls, and turns every bad request or handler panic into an error
//!   reply. See [`server`].
//! - Inside a handler, [`RequestInfo::current`] describes the call, and calls
//!   made from it carry the same trace id and never outlive its deadline.
//! - Every server is visible to `nats micro ls|info|stats`: it answers the
//!   `$SRV` requests itself (one service per app, one endpoint per method).
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cluster_runtime::naming::Names;
//! use cluster_runtime::rpc::{ApiMode, Handlers, HandlerError, RpcClient, RpcServer};
//! use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
//!
//! let nats = async_nats::connect("127.0.0.1:4222").await?;
//! let names = Names::new("prod")?;
//! let counter = Arc::new(AtomicU64::new(0));
//! let handlers = Handlers::new().handle("incr", |c: Arc<AtomicU64>, by: u64| async move {
//!     Ok::<_, HandlerError>(c.fetch_add(by, Ordering::SeqCst) + by)
//! });
//! let server = RpcServer::new(nats.clone(), names.clone(), "counter", "n1", handlers, counter)?;
//! server.start().await?;
//! server.serve_api(ApiMode::Exclusive).await?;   // this instance is the active
//!
//! let rpc = RpcClient::new(nats, names);
//! let n: u64 = rpc.app("counter").method("incr").send(&5u64).await?;
//! assert_eq!(n, 5);
//! # Ok(()) }
//! ```

pub mod client;
pub mod codec;
pub mod error;
pub mod handler;
mod micro;
pub mod request;
pub mod server;
pub mod wire;

pub use client::{
    xxh3_partition, AppRef, Broadcast, Call, NodeReply, PartitionFn, RemoteApp, Reply, RpcClient,
    RpcClientBuilder, TypedClient,
};
pub use codec::{Codec, CodecError};
pub use error::{HandlerError, RpcError};
pub use handler::{Handlers, RawRequest};
pub use request::{RequestInfo, Route, TraceContext};
pub(crate) use server::STOP_WAIT_WHEN_LOST;
pub use server::{ApiMode, RpcServer, ServeError, ServerOptions};
pub use wire::{ErrorBody, ErrorCode};
