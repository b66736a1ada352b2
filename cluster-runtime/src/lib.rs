//! The runtime behind `cluster`.
//!
//! Layers call downward only: [`platform`] → app patterns ([`election`],
//! [`pool`], [`ring`]) → services ([`kv`], [`lock`], [`observe`], [`rpc`],
//! [`events`]) → primitives ([`lease`], [`membership`]) → [`transport`] /
//! [`naming`]. See `docs/` for the user guide and the NATS
//! design.

mod activation;
pub mod app;
pub mod backend;
pub mod clock;
pub mod config;
pub mod db;
mod dev;
pub mod election;
pub mod error;
pub mod events;
mod http;
pub mod inspect;
pub mod instance;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod membership;
pub mod naming;
pub mod nats_server;
pub mod observe;
pub mod placement;
pub mod platform;
pub mod pool;
pub mod ring;
pub mod rpc;
pub mod sd_notify;
pub mod transport;
#[cfg(target_os = "linux")]
pub mod vip;
pub mod wal;

pub use app::{App, AppContext, Mode, Role};
pub use config::{Config, ConfigArgs};
pub use error::{Error, Result};
pub use platform::Platform;
/// The Prometheus client the metrics registry uses: register your own
/// metrics with the same version (`ctx.metrics().register(...)`).
pub use prometheus;
