//! Payload codecs: JSON (the default, so `nats req` can call any handler) and
//! MessagePack (compact, for clients that ask for it).
//!
//! The codec is negotiated per request by the `Content-Type` header: absent
//! or `application/json` means JSON, `application/msgpack` means MessagePack.
//! The reply uses the request's codec, except error bodies, which are JSON.

use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A payload codec.
///
/// ```
/// use cluster_runtime::rpc::Codec;
/// let bytes = Codec::Json.encode(&(1, "a")).unwrap();
/// assert_eq!(&bytes[..], br#"[1,"a"]"#);
/// let back: (u32, String) = Codec::Json.decode(&bytes).unwrap();
/// assert_eq!(back, (1, "a".to_string()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Codec {
    /// JSON (`application/json`), the default.
    #[default]
    Json,
    /// MessagePack with named struct fields (`application/msgpack`).
    MsgPack,
}

/// A payload that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{codec}: {message}")]
pub struct CodecError {
    /// The codec that failed.
    pub codec: Codec,
    /// What went wrong (from serde).
    pub message: String,
}

/// A `Content-Type` this crate does not speak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported Content-Type `{0}` (supported: application/json, application/msgpack)")]
pub struct UnsupportedContentType(pub String);

impl Codec {
    /// The `Content-Type` value naming this codec.
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Json => "application/json",
            Codec::MsgPack => "application/msgpack",
        }
    }

    /// The codec named by a `Content-Type` header value (`None`: header
    /// absent, meaning JSON). Parameters (`; charset=utf-8`) and case are
    /// ignored; `application/x-msgpack` and `application/vnd.msgpack` are
    /// accepted as MessagePack.
    pub fn from_content_type(value: Option<&str>) -> Result<Codec, UnsupportedContentType> {
        let Some(value) = value else {
            return Ok(Codec::Json);
        };
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.is_empty() || essence.eq_ignore_ascii_case("application/json") {
            Ok(Codec::Json)
        } else if essence.eq_ignore_ascii_case("application/msgpack")
            || essence.eq_ignore_ascii_case("application/x-msgpack")
            || essence.eq_ignore_ascii_case("application/vnd.msgpack")
        {
            Ok(Codec::MsgPack)
        } else {
            Err(UnsupportedContentType(value.to_owned()))
        }
    }

    /// Encodes `value`.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, CodecError> {
        let result = match self {
            Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            Codec::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
        };
        result.map(Bytes::from).map_err(|message| CodecError {
            codec: self,
            message,
        })
    }

    /// Decodes a `T`. For JSON an empty payload reads as `null`, so handlers
    /// taking `()` or an `Option` can be called with `nats req SUBJECT ''`.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        let result = match self {
            Codec::Json if bytes.is_empty() => serde_json::from_slice(b"null"),
            Codec::Json => serde_json::from_slice(bytes),
            Codec::MsgPack => {
                return rmp_serde::from_slice(bytes).map_err(|e| CodecError {
                    codec: self,
                    message: e.to_string(),
                })
            }
        };
        result.map_err(|e| CodecError {
            codec: self,
            message: e.to_string(),
        })
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Json => "JSON",
            Codec::MsgPack => "MessagePack",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Get {
        key: String,
        n: u64,
    }

    #[test]
    fn both_codecs_round_trip() {
        let v = Get {
            key: "user:1".into(),
            n: 7,
        };
        for codec in [Codec::Json, Codec::MsgPack] {
            let bytes = codec.encode(&v).expect("encode");
            assert_eq!(codec.decode::<Get>(&bytes).expect("decode"), v);
        }
        let packed = Codec::MsgPack.encode(&v).expect("encode");
        let json = Codec::Json.encode(&v).expect("encode");
        assert!(packed.len() < json.len());
    }

    #[test]
    fn content_type_negotiation() {
        assert_eq!(Codec::from_content_type(None), Ok(Codec::Json));
        assert_eq!(
            Codec::from_content_type(Some("application/json; charset=utf-8")),
            Ok(Codec::Json)
        );
        assert_eq!(
            Codec::from_content_type(Some("Application/MsgPack")),
            Ok(Codec::MsgPack)
        );
        assert!(Codec::from_content_type(Some("text/plain")).is_err());
        for c in [Codec::Json, Codec::MsgPack] {
            assert_eq!(Codec::from_content_type(Some(c.content_type())), Ok(c));
        }
    }

    #[test]
    fn empty_json_is_null() {
        let unit: () = Codec::Json.decode(b"").expect("unit");
        assert_eq!(unit, ());
        let none: Option<u32> = Codec::Json.decode(b"").expect("option");
        assert_eq!(none, None);
        assert!(Codec::Json.decode::<u32>(b"").is_err());
        assert!(Codec::Json.decode::<Get>(b"{not json").is_err());
    }
}
