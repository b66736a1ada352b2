//! The runtime behind `cluster`.
//!
//! Layers call downward only: [`platform`] → app patterns ([`election`],
//! [`pool`], [`ring`]) → services → primitives ([`lease`], [`membership`]) →
//! [`transport`] / [`naming`]. See `docs/` for the user guide and the NATS
//! design.

pub mod app;
pub mod clock;
pub mod config;
mod dev;
pub mod election;
pub mod error;
pub mod events;
mod http;
pub mod inspect;
pub mod instance;
pub mod lease;
pub mod membership;
pub mod naming;
pub mod nats_server;
pub mod placement;
pub mod platform;
pub mod pool;
pub mod ring;
pub mod rpc;
pub mod transport;
pub mod wal;

pub use app::{App, AppContext, Mode, Role};
pub use config::{Config, ConfigArgs};
pub use error::{Error, Result};
pub use platform::Platform;
