//! The handler registry: method name → async function of the app's context.
//!
//! Typed handlers take a decoded argument and return a serializable result;
//! the codec is the request's. Raw handlers see the payload bytes and
//! [`RequestInfo`] and return reply bytes as they are.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::Codec;
use super::error::HandlerError;
use super::request::RequestInfo;
use super::wire::ErrorCode;

/// A request as a raw handler sees it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Facts about the call.
    pub info: RequestInfo,
    /// The payload, as sent.
    pub payload: Bytes,
}

impl RawRequest {
    /// The codec the caller used (and expects the reply in).
    pub fn codec(&self) -> Codec {
        self.info.codec()
    }
}

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Bytes, HandlerError>> + Send>>;

pub(crate) trait ErasedHandler<C>: Send + Sync {
    fn call(&self, ctx: C, req: RawRequest) -> HandlerFuture;
}

struct Typed<F, Req, Resp, E> {
    f: F,
    _types: std::marker::PhantomData<fn(Req) -> (Resp, E)>,
}

impl<C, F, Fut, Req, Resp, E> ErasedHandler<C> for Typed<F, Req, Resp, E>
where
    C: Send + 'static,
    F: Fn(C, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, E>> + Send + 'static,
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    E: Into<HandlerError> + 'static,
{
    fn call(&self, ctx: C, req: RawRequest) -> HandlerFuture {
        let codec = req.codec();
        let arg = match codec.decode::<Req>(&req.payload) {
            Ok(arg) => arg,
            Err(e) => {
                let err = HandlerError::with_code(
                    ErrorCode::BadRequest,
                    format!(
                        "could not decode the argument of `{}`: {e}",
                        req.info.method()
                    ),
                );
                return Box::pin(std::future::ready(Err(err)));
            }
        };
        let fut = (self.f)(ctx, arg);
        Box::pin(async move {
            let resp = fut.await.map_err(Into::into)?;
            codec.encode(&resp).map_err(|e| {
                HandlerError::with_code(
                    ErrorCode::Internal,
                    format!("could not encode the result: {e}"),
                )
            })
        })
    }
}

struct Raw<F> {
    f: F,
}

impl<C, F, Fut> ErasedHandler<C> for Raw<F>
where
    F: Fn(C, RawRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
{
    fn call(&self, ctx: C, req: RawRequest) -> HandlerFuture {
        Box::pin((self.f)(ctx, req))
    }
}

/// The methods of one app, generic over the context each handler receives
/// (the platform passes its `AppContext`).
///
/// ```
/// use cluster_runtime::rpc::{Handlers, HandlerError};
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
///
/// let handlers = Handlers::<Arc<AtomicU64>>::new()
///     .handle("incr", |ctx: Arc<AtomicU64>, by: u64| async move {
///         Ok::<_, HandlerError>(ctx.fetch_add(by, Ordering::SeqCst) + by)
///     })
///     .handle("get", |ctx: Arc<AtomicU64>, (): ()| async move {
///         Ok::<_, HandlerError>(ctx.load(Ordering::SeqCst))
///     });
/// assert_eq!(handlers.methods().collect::<Vec<_>>(), ["get", "incr"]);
/// ```
pub struct Handlers<C> {
    map: BTreeMap<String, Arc<dyn ErasedHandler<C>>>,
}

impl<C> Default for Handlers<C> {
    fn default() -> Self {
        Handlers {
            map: BTreeMap::new(),
        }
    }
}

impl<C> Clone for Handlers<C> {
    fn clone(&self) -> Self {
        Handlers {
            map: self.map.clone(),
        }
    }
}

impl<C> fmt::Debug for Handlers<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handlers")
            .field("methods", &self.map.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Panics with a clear message if `method` cannot be a subject token. Method
/// names come from code (attributes, builder calls), so a bad one is a
/// programming error caught at start-up.
fn check_method(method: &str) {
    assert!(
        is_method_name(method),
        "method name `{method}` is invalid: use letters, digits, `_` and `-` only"
    );
}

/// Whether `method` can be a method name (one subject token of
/// `[A-Za-z0-9_-]`).
pub(crate) fn is_method_name(method: &str) -> bool {
    cluster_spec::naming::validate_method(method).is_ok()
}

impl<C: Clone + Send + Sync + 'static> Handlers<C> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a typed handler: the argument is decoded with the request's
    /// codec (failure → `bad_request`), the result encoded with it.
    ///
    /// Registering a name twice replaces the first handler.
    ///
    /// # Panics
    /// If `method` is not `[A-Za-z0-9_-]+`.
    pub fn handle<Req, Resp, E, F, Fut>(mut self, method: &str, f: F) -> Self
    where
        F: Fn(C, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        check_method(method);
        self.map.insert(
            method.to_owned(),
            Arc::new(Typed {
                f,
                _types: std::marker::PhantomData,
            }),
        );
        self
    }

    /// Registers a raw handler: it gets the payload bytes and the
    /// [`RequestInfo`], and its bytes are the reply payload as they are
    /// (the reply is labelled with the request's codec).
    ///
    /// # Panics
    /// If `method` is not `[A-Za-z0-9_-]+`.
    pub fn handle_raw<F, Fut>(mut self, method: &str, f: F) -> Self
    where
        F: Fn(C, RawRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
    {
        check_method(method);
        self.map.insert(method.to_owned(), Arc::new(Raw { f }));
        self
    }
}

impl<C> Handlers<C> {
    /// Adds every handler of `other`; returns the names both had (those
    /// keep this registry's handler).
    pub fn merge(&mut self, other: Handlers<C>) -> Vec<String> {
        let mut duplicates = Vec::new();
        for (name, handler) in other.map {
            match self.map.entry(name) {
                std::collections::btree_map::Entry::Occupied(e) => duplicates.push(e.key().clone()),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(handler);
                }
            }
        }
        duplicates
    }

    /// The registered method names, sorted.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// Whether `method` is registered.
    pub fn contains(&self, method: &str) -> bool {
        self.map.contains_key(method)
    }

    pub(crate) fn get(&self, method: &str) -> Option<&Arc<dyn ErasedHandler<C>>> {
        self.map.get(method)
    }
}
