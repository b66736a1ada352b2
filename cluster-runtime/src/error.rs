//! The runtime's error type.
//!
//! Errors are small and say what to do: a configuration error names the
//! setting, a NATS error says which operation failed against which resource.

use std::fmt;

/// Shorthand for results of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from user code (hooks and handlers).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration, refused at start-up. The message names the setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A name (platform, app, node) is not valid.
    #[error(transparent)]
    Name(#[from] crate::naming::NameError),
    /// NATS could not be reached or refused the connection.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URLs tried.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The NATS server has no JetStream (start it with `-js`).
    #[error("JetStream is not enabled on the NATS server at {url} (start nats-server with -js): {reason}")]
    JetStreamDisabled {
        /// The URLs tried.
        url: String,
        /// What the server answered.
        reason: String,
    },
    /// A NATS operation failed.
    #[error("NATS {op} failed: {reason}")]
    Nats {
        /// The operation, with the resource it touched.
        op: String,
        /// What went wrong.
        reason: String,
    },
    /// An operation needs the app to be active, and it is not.
    #[error("app `{app}` is not active on this node")]
    NotActive {
        /// The app.
        app: String,
    },
    /// A user hook or handler failed.
    #[error("{context}: {source}")]
    User {
        /// Which hook or handler.
        context: String,
        /// The user's error.
        #[source]
        source: BoxError,
    },
    /// A hook did not finish in time.
    #[error("{context} timed out after {after:?}")]
    Timeout {
        /// Which hook.
        context: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// A call to another app failed.
    #[error(transparent)]
    Rpc(#[from] crate::rpc::RpcError),
    /// A KV operation failed (see [`KvError::kind`](crate::kv::KvError::kind)).
    #[error(transparent)]
    Kv(#[from] crate::kv::KvError),
    /// A lock operation failed.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// Writing or reading the audit log failed.
    #[error(transparent)]
    Audit(#[from] crate::observe::AuditError),
    /// Replication or restore of the app's database failed.
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    /// The platform is shutting down.
    #[error("the platform is shutting down")]
    Shutdown,
    /// An I/O error (HTTP listener, files).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A NATS failure of operation `op`.
    pub fn nats(op: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::Nats {
            op: op.into(),
            reason: reason.to_string(),
        }
    }

    /// A configuration error naming the setting.
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    /// Wraps a user error with the hook or handler it came from.
    pub fn user(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::User {
            context: context.into(),
            source: source.into(),
        }
    }

    /// An I/O error while doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<Error> for crate::rpc::HandlerError {
    /// A handler's `cluster::Error` becomes a `handler` error reply; a failed
    /// downstream call keeps its code.
    fn from(err: Error) -> Self {
        match err {
            Error::Rpc(e) => e.into(),
            other => crate::rpc::HandlerError::new(other),
        }
    }
}
