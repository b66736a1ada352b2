//! The wire contract of a call: header names, error codes and the error body.
//!
//! Everything another-language client needs to know is here and in
//! `docs/rpc.md`; nothing else in the crate spells a header name.
//!
//! - A request is a NATS request (a message with a reply subject) on one of
//!   the app's subjects (see [`crate::naming::Names`]). Its payload is the
//!   handler's argument encoded with the codec named by [`CONTENT_TYPE`]
//!   (absent = JSON).
//! - The budget is relative: [`TIMEOUT_MS`] holds the milliseconds the caller
//!   still waits when it sends. The server starts its own clock when the
//!   request arrives, so clocks of different nodes never need to agree.
//! - A success reply carries the encoded result; an error reply carries
//!   [`ERROR`] (the [`ErrorCode`]) and a JSON [`ErrorBody`], whatever codec the
//!   request used.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Request header: the caller's remaining budget in whole milliseconds when
/// it sent the request (decimal, `0` = already expired). Absent: the server
/// applies its default (5 s).
pub const TIMEOUT_MS: &str = "Cluster-Timeout-Ms";
/// The deadline of a call whose request has no `Cluster-Timeout-Ms` header
/// (the client's default, and the server's when the header is absent).
pub const DEFAULT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);
/// Request header: W3C trace context (`00-<trace-id>-<parent-id>-<flags>`).
pub const TRACEPARENT: &str = "traceparent";
/// Request header: the calling app, if the caller is one.
pub const CALLER_APP: &str = "Cluster-Caller-App";
/// Request header: the calling node.
pub const CALLER_NODE: &str = "Cluster-Caller-Node";
/// Request header: the platform the caller belongs to (differs from the
/// callee's for calls across a leaf connection).
pub const CALLER_PLATFORM: &str = "Cluster-Caller-Platform";
/// Request header: the caller's fencing token (epoch), a decimal `u64`.
pub const FENCING_TOKEN: &str = "Cluster-Fencing-Token";
/// Request and reply header: the codec of the payload. Absent = JSON.
pub const CONTENT_TYPE: &str = "Content-Type";
/// Reply header: the node that answered. Present on error replies, broadcast
/// replies and non-JSON replies; a plain JSON success reply to the API,
/// partition or instance subject carries no headers at all (cheaper).
pub const NODE: &str = "Cluster-Node";
/// Reply header present on error replies only: the [`ErrorCode`].
pub const ERROR: &str = "Cluster-Error";
/// Reply header on error replies, for NATS micro tooling: the message.
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
/// Reply header on error replies, for NATS micro tooling: an HTTP-like code.
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
/// Event header: the app that published the event.
pub const SOURCE_APP: &str = "Cluster-Source-App";
/// Event header: the node that published the event.
pub const SOURCE_NODE: &str = "Cluster-Source-Node";

/// The header names as [`async_nats::header::HeaderName`]s, built without
/// allocating (lookups with a `&str` allocate and validate every time).
pub(crate) mod name {
    use async_nats::header::HeaderName;

    pub const TIMEOUT_MS: HeaderName = HeaderName::from_static(super::TIMEOUT_MS);
    pub const TRACEPARENT: HeaderName = HeaderName::from_static(super::TRACEPARENT);
    pub const CALLER_APP: HeaderName = HeaderName::from_static(super::CALLER_APP);
    pub const CALLER_NODE: HeaderName = HeaderName::from_static(super::CALLER_NODE);
    pub const CALLER_PLATFORM: HeaderName = HeaderName::from_static(super::CALLER_PLATFORM);
    pub const FENCING_TOKEN: HeaderName = HeaderName::from_static(super::FENCING_TOKEN);
    pub const CONTENT_TYPE: HeaderName = HeaderName::from_static(super::CONTENT_TYPE);
    pub const NODE: HeaderName = HeaderName::from_static(super::NODE);
    pub const ERROR: HeaderName = HeaderName::from_static(super::ERROR);
    pub const SERVICE_ERROR: HeaderName = HeaderName::from_static(super::SERVICE_ERROR);
    pub const SERVICE_ERROR_CODE: HeaderName = HeaderName::from_static(super::SERVICE_ERROR_CODE);
    pub const SOURCE_APP: HeaderName = HeaderName::from_static(super::SOURCE_APP);
    pub const SOURCE_NODE: HeaderName = HeaderName::from_static(super::SOURCE_NODE);
}

/// The stable error codes of the wire contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be decoded (payload, headers or content type).
    BadRequest,
    /// The app has no such method.
    NotFound,
    /// No instance (active, owner) answered within the deadline.
    Unavailable,
    /// The instance that received the call refused it *before its handler
    /// started* — it is no longer the active instance or owner (lease
    /// lost, stepping down, partition handed off). The call had no effect:
    /// it is safe to send again, and this crate's clients do so within the
    /// deadline.
    NotExecuted,
    /// The deadline passed before a reply.
    Timeout,
    /// The handler returned an error; the message is the handler's.
    Handler,
    /// Something broke that is not the caller's fault (e.g. a handler panic).
    Internal,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::Unavailable,
        ErrorCode::NotExecuted,
        ErrorCode::Timeout,
        ErrorCode::Handler,
        ErrorCode::Internal,
    ];

    /// The code as it travels on the wire (`bad_request`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotExecuted => "not_executed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Handler => "handler",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP-like number sent in [`SERVICE_ERROR_CODE`].
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Unavailable => 503,
            ErrorCode::NotExecuted => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Handler => 500,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown error code string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code `{0}`")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownErrorCode(s.to_owned()))
    }
}

/// The JSON body of an error reply: `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error code (same as the [`ERROR`] header).
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl ErrorBody {
    /// Encodes the body as JSON.
    pub fn to_json(&self) -> bytes::Bytes {
        // Serializing a struct of an enum and a string cannot fail; fall back
        // to a fixed body rather than panic if it ever did.
        serde_json::to_vec(self)
            .map(bytes::Bytes::from)
            .unwrap_or_else(|_| {
                bytes::Bytes::from_static(b"{\"code\":\"internal\",\"message\":\"\"}")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_serialize_snake_case() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        assert!("nope".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn error_body_is_small_json() {
        let body = ErrorBody {
            code: ErrorCode::NotFound,
            message: "no method `x`".into(),
        };
        assert_eq!(
            &body.to_json()[..],
            br#"{"code":"not_found","message":"no method `x`"}"#
        );
    }
}
