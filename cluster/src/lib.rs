//! Build highly available clustered applications on NATS, not infrastructure.
pub use cluster_runtime as runtime;
