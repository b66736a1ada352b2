//! The runtime behind `cluster`.
//!
//! Layers call downward only: `platform` → app patterns (`election`, `pool`)
//! → services (`rpc`) → primitives (`lease`, `membership`) → `transport` /
//! `naming`. See `docs/` for the user guide and the NATS design.

pub mod events;
pub mod naming;
pub mod nats_server;
pub mod rpc;
