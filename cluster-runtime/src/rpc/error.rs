//! Errors: [`HandlerError`] (what a handler returns) and [`RpcError`] (what a
//! caller gets). Both map onto the wire's [`ErrorCode`]s.

use std::fmt;
use std::time::Duration;

use super::codec::{Codec, CodecError};
use super::wire::ErrorCode;

/// The error a handler returns. Travels to the caller as code `handler`
/// (unless built with another code) and this message.
///
/// ```
/// use cluster_runtime::rpc::{ErrorCode, HandlerError};
/// let e = HandlerError::new("counter is frozen");
/// assert_eq!(e.code(), ErrorCode::Handler);
/// let e: HandlerError = "also works".into();
/// assert_eq!(e.message(), "also works");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    code: ErrorCode,
    message: String,
}

impl HandlerError {
    /// A handler error (code `handler`).
    pub fn new(message: impl fmt::Display) -> Self {
        Self::with_code(ErrorCode::Handler, message)
    }

    /// An error with an explicit wire code (e.g. `bad_request` when the
    /// handler itself finds the argument invalid).
    pub fn with_code(code: ErrorCode, message: impl fmt::Display) -> Self {
        HandlerError {
            code,
            message: message.to_string(),
        }
    }

    /// The argument is invalid (code `bad_request`).
    pub fn bad_request(message: impl fmt::Display) -> Self {
        Self::with_code(ErrorCode::BadRequest, message)
    }

    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for HandlerError {}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError::new(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError::new(message)
    }
}

/// A failed nested call keeps its code (a downstream `timeout` is the
/// caller's `timeout` too, since deadlines propagate).
impl From<RpcError> for HandlerError {
    fn from(err: RpcError) -> Self {
        let code = match err.code() {
            // A downstream caller mistake or missing method is this
            // handler's failure, not its caller's.
            ErrorCode::BadRequest | ErrorCode::NotFound => ErrorCode::Handler,
            other => other,
        };
        HandlerError::with_code(code, err)
    }
}

/// Why a call failed, as seen by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The serving node answered with an error reply.
    #[error("`{subject}` failed on node {}: {code}: {message}", node.as_deref().unwrap_or("?"))]
    Remote {
        /// The subject called.
        subject: String,
        /// The wire code.
        code: ErrorCode,
        /// The server's message.
        message: String,
        /// The node that answered, if it said.
        node: Option<String>,
    },
    /// Nobody served the subject for the whole deadline (no responders on
    /// every attempt).
    #[error("no instance serves `{subject}`: no responders for {waited:?} ({attempts} attempts)")]
    Unavailable {
        /// The subject called.
        subject: String,
        /// How long the call kept retrying.
        waited: Duration,
        /// How many times it was sent.
        attempts: u32,
    },
    /// No reply within the deadline.
    #[error("`{subject}` did not answer within the deadline of {deadline:?}")]
    Timeout {
        /// The subject called.
        subject: String,
        /// The call's deadline (budget).
        deadline: Duration,
    },
    /// The request is larger than the server accepts; it was not sent.
    #[error("request to `{subject}` is {size} bytes (payload and headers) but the server's max_payload is {max} bytes; nothing was sent")]
    PayloadTooLarge {
        /// The subject called.
        subject: String,
        /// The request's size on the wire.
        size: usize,
        /// The connection's `max_payload`.
        max: usize,
    },
    /// The request could not be encoded; it was not sent.
    #[error("could not encode the request for `{subject}`: {source}")]
    Encode {
        /// The subject called.
        subject: String,
        /// The codec error.
        source: CodecError,
    },
    /// The reply could not be decoded into the expected type.
    #[error("could not decode the reply from `{subject}`: {source}")]
    Decode {
        /// The subject called.
        subject: String,
        /// The codec error.
        source: CodecError,
    },
    /// The call was built wrong (bad app/method/node/platform name, key
    /// routing without a partition count, ...); nothing was sent.
    #[error("invalid call: {0}")]
    InvalidCall(String),
    /// NATS failed (connection closed, ...).
    #[error("NATS error calling `{subject}`: {message}")]
    Transport {
        /// The subject called.
        subject: String,
        /// The client error.
        message: String,
    },
}

impl RpcError {
    /// The wire code this error corresponds to.
    pub fn code(&self) -> ErrorCode {
        match self {
            RpcError::Remote { code, .. } => *code,
            RpcError::Unavailable { .. } | RpcError::Transport { .. } => ErrorCode::Unavailable,
            RpcError::Timeout { .. } => ErrorCode::Timeout,
            RpcError::PayloadTooLarge { .. }
            | RpcError::Encode { .. }
            | RpcError::InvalidCall(_) => ErrorCode::BadRequest,
            RpcError::Decode { .. } => ErrorCode::Internal,
        }
    }

    pub(crate) fn encode(subject: &str, source: CodecError) -> Self {
        RpcError::Encode {
            subject: subject.to_owned(),
            source,
        }
    }

    pub(crate) fn decode(subject: &str, codec: Codec, message: impl fmt::Display) -> Self {
        RpcError::Decode {
            subject: subject.to_owned(),
            source: CodecError {
                codec,
                message: message.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let e = RpcError::PayloadTooLarge {
            subject: "p._.api.a.m".into(),
            size: 2_000_000,
            max: 1_048_576,
        };
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert!(e.to_string().contains("max_payload is 1048576"));
        let h: HandlerError = RpcError::Timeout {
            subject: "s".into(),
            deadline: Duration::from_secs(1),
        }
        .into();
        assert_eq!(h.code(), ErrorCode::Timeout);
    }
}
