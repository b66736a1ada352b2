//! Test harness for `cluster` apps: real `nats-server` processes, node
//! processes under fault injection, and the invariant checker.
//!
//! Everything here talks to real parts: [`NatsServer`] / [`NatsCluster`]
//! start real `nats-server` binaries; node processes are real children that
//! can be SIGKILLed, SIGSTOPped and restarted.

#[cfg(target_os = "linux")]
pub mod hostwatch;
pub mod invariants;
pub mod jepsen;
pub mod litestream;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod node;
pub mod process;

pub use cluster_runtime::nats_server::{NatsCluster, NatsServer, ServerOptions};
