//! Node processes under test, and the events they report.

use cluster_runtime::instance::RoleEvent;
use serde::{Deserialize, Serialize};

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
    /// Start-up failed.
    Error {
        /// The message.
        message: String,
    },
    /// Clean exit after shutdown.
    Exited,
}
