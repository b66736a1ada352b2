//! App events and platform events.
//!
//! # Model
//!
//! - **App events** live on `P.A.events.TYPE`. [`Events::publish`] is a core
//!   NATS publish (fire-and-forget, as fast as NATS); [`Events::subscribe`]
//!   sees every event published after it returns (it proves its
//!   subscription with a round trip to the server).
//! - **Durable app events**: the stream `P_A_events` (subjects
//!   `P.A.events.>`, file storage, 7 days) is created on demand by
//!   [`Events::subscribe_durable`] or [`Events::ensure_stream`]. Once it
//!   exists it stores every event published on the app's subjects (core
//!   publishes included); a durable subscription is a JetStream durable pull
//!   consumer with explicit acks, so it sees events published while it was
//!   stopped.
//! - **Platform events** live on `P._.events.TYPE` (durable stream
//!   `P_events`), **notifications** on another app's `P.B.events.TYPE`.
//!
//! Every event carries its source app and node in headers
//! (`Cluster-Source-App`, `Cluster-Source-Node`) and, when published from a
//! handler, the call's `traceparent`. Payloads are JSON.
//!
//! # Delivery semantics of durable subscriptions
//!
//! A [`DurableEventStream`] acknowledges an event when you ask for the next
//! one (or call [`DurableEventStream::close`]): taking event *n + 1* means
//! you are done with event *n*. The acknowledgement is confirmed by the
//! server (double ack) before event *n + 1* is yielded, and by default the
//! consumer allows one unacknowledged event at a time. Hence:
//!
//! - **In order**: events are yielded in stream order, redeliveries included.
//! - **At least once**: an event is acknowledged only after it was yielded
//!   and you asked for the next; if the process dies (or the stream is
//!   dropped without `close`) while you hold event *n*, *n* is delivered
//!   again — after the consumer's `ack_wait` (30 s by default).
//! - **Exactly once while running**: as long as the subscriber keeps
//!   consuming and is stopped with `close().await`, no event is yielded
//!   twice and none is skipped.
//! - An event that does not decode is yielded as an error item and counts as
//!   taken (it is acknowledged like any other, so it cannot block the
//!   stream).
//!
//! [`DurableOptions::max_ack_pending`] above 1 trades the ordering of
//! redeliveries for throughput.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, HeaderMap, Message, Subscriber};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::naming::{self, NameError, Names};
use crate::rpc::wire;
use crate::rpc::{Codec, CodecError, RequestInfo, TraceContext};

/// Why an event operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// An app or node name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// An event type, pattern or durable name is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The payload could not be encoded.
    #[error("could not encode the event: {0}")]
    Encode(CodecError),
    /// An event's payload did not decode into the subscription's type.
    #[error("event on `{subject}` did not decode: {source}")]
    Decode {
        /// The event's subject.
        subject: String,
        /// The codec error.
        source: CodecError,
    },
    /// Publishing failed.
    #[error("could not publish to `{subject}`: {message}")]
    Publish {
        /// The subject.
        subject: String,
        /// The client error.
        message: String,
    },
    /// Subscribing failed.
    #[error("could not subscribe to `{subject}`: {message}")]
    Subscribe {
        /// The subject or pattern.
        subject: String,
        /// The client error.
        message: String,
    },
    /// A JetStream stream or consumer operation failed.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// An acknowledgement was not confirmed; the event will be redelivered.
    #[error("could not acknowledge event {sequence}: {message}")]
    Ack {
        /// The stream sequence of the event.
        sequence: u64,
        /// The client error.
        message: String,
    },
}

/// One event.
#[derive(Debug, Clone)]
pub struct Event<T> {
    /// The type: the subject after `P.A.events.` (or `P._.events.`).
    pub event_type: String,
    /// The full subject.
    pub subject: String,
    /// The decoded payload.
    pub payload: T,
    /// The app that published it, if it said.
    pub source_app: Option<String>,
    /// The node that published it, if it said.
    pub source_node: Option<String>,
    /// The trace of the call it was published from, if any.
    pub trace: Option<TraceContext>,
    /// The stream sequence (durable subscriptions only).
    pub sequence: Option<u64>,
}

/// Options of a durable subscription.
#[derive(Debug, Clone)]
pub struct DurableOptions {
    /// How long the server waits for an acknowledgement before redelivering
    /// (default 30 s). Must exceed the time you hold one event.
    pub ack_wait: Duration,
    /// Events delivered but not yet acknowledged at once (default 1: strict
    /// order even across redeliveries).
    pub max_ack_pending: i64,
}

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions {
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1,
        }
    }
}

/// How long durable event streams keep events.
const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The events handle of one app on one node. Cheap to clone.
///
/// ```no_run
/// # async fn demo(nats: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use cluster_runtime::{events::Events, naming::Names};
/// use futures::StreamExt;
///
/// let events = Events::new(nats, Names::new("prod")?, "orders", "node-1")?;
/// let mut placed = events.subscribe::<u64>("placed.*").await?;
/// events.publish("placed.eu", &42u64).await?;
/// let e = placed.next().await.unwrap()?;
/// assert_eq!((e.event_type.as_str(), e.payload), ("placed.eu", 42));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Events {
    client: Client,
    js: jetstream::Context,
    names: Names,
    app: String,
    node: String,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("platform", &self.names.platform())
            .field("app", &self.app)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Events {
    /// The events of app `app`, published from node `node`.
    pub fn new(client: Client, names: Names, app: &str, node: &str) -> Result<Self, EventError> {
        naming::validate_app(app)?;
        naming::validate_node(node)?;
        Ok(Events {
            js: jetstream::new(client.clone()),
            client,
            names,
            app: app.to_owned(),
            node: node.to_owned(),
        })
    }

    /// Publishes an app event on `P.A.events.TYPE` (core NATS).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        event_type: &str,
        payload: &T,
    ) -> Result<(), EventError> {
        check_type(event_type)?;
        let subject = self.names.app_event_subject(&self.app, event_type);
        self.send(subject, payload).await
    }

    /// Publishes an event of type `event_type` to app `app`
    /// (`P.B.events.TYPE`): a notification the other app may subscribe to.
    pub async fn notify<T: Serialize + ?Sized>(
        &self,
        app: &str,
        event_type: &str,
        payload: &T,
    ) -> Result<(), EventError> {
        naming::validate_app(app)?;
        check_type(event_type)?;
        let subject = self.names.app_event_subject(app, event_type);
        self.send(subject, payload).await
    }

    /// Publishes a platform-wide event on `P._.events.TYPE`.
    pub async fn publish_platform<T: Serialize + ?Sized>(
        &self,
        event_type: &str,
        payload: &T,
    ) -> Result<(), EventError> {
        check_type(event_type)?;
        let subject = self.names.platform_event_subject(event_type);
        self.send(subject, payload).await
    }

    /// Subscribes to the app's events matching `pattern` (NATS wildcards:
    /// `*` one token, `>` the rest), e.g. `"order.*"`, `">"`.
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        pattern: &str,
    ) -> Result<EventStream<T>, EventError> {
        check_pattern(pattern)?;
        let subject = self.names.app_event_subject(&self.app, pattern);
        let prefix = strip_wildcard(self.names.app_events_wildcard(&self.app));
        self.core_subscribe(subject, prefix).await
    }

    /// Subscribes to platform events matching `pattern`.
    pub async fn subscribe_platform<T: DeserializeOwned>(
        &self,
        pattern: &str,
    ) -> Result<EventStream<T>, EventError> {
        check_pattern(pattern)?;
        let subject = self.names.platform_event_subject(pattern);
        let prefix = strip_wildcard(self.names.platform_events_wildcard());
        self.core_subscribe(subject, prefix).await
    }

    /// Creates the app's durable events stream `P_A_events` if missing, so
    /// events published from now on are kept even before any durable
    /// subscription exists.
    pub async fn ensure_stream(&self) -> Result<(), EventError> {
        self.app_stream().await.map(drop)
    }

    /// A durable subscription named `name` to the app's events matching
    /// `pattern`, with default [`DurableOptions`]. Resumes where the
    /// subscription with that name left off; a new one starts at the oldest
    /// event the stream holds. See the module docs for the semantics.
    pub async fn subscribe_durable<T: DeserializeOwned>(
        &self,
        pattern: &str,
        name: &str,
    ) -> Result<DurableEventStream<T>, EventError> {
        self.subscribe_durable_with(pattern, name, DurableOptions::default())
            .await
    }

    /// [`subscribe_durable`](Self::subscribe_durable) with options.
    pub async fn subscribe_durable_with<T: DeserializeOwned>(
        &self,
        pattern: &str,
        name: &str,
        options: DurableOptions,
    ) -> Result<DurableEventStream<T>, EventError> {
        check_pattern(pattern)?;
        check_durable_name(name)?;
        let stream = self.app_stream().await?;
        let filter = self.names.app_event_subject(&self.app, pattern);
        let prefix = strip_wildcard(self.names.app_events_wildcard(&self.app));
        durable(stream, filter, name.to_owned(), prefix, options).await
    }

    /// A durable subscription to platform events matching `pattern`, on the
    /// stream `P_events`. The consumer is named after this app and `name`.
    pub async fn subscribe_platform_durable<T: DeserializeOwned>(
        &self,
        pattern: &str,
        name: &str,
    ) -> Result<DurableEventStream<T>, EventError> {
        check_pattern(pattern)?;
        check_durable_name(name)?;
        let stream = self
            .get_or_create_stream(
                self.names.platform_events_stream(),
                self.names.platform_events_wildcard(),
            )
            .await?;
        let filter = self.names.platform_event_subject(pattern);
        let prefix = strip_wildcard(self.names.platform_events_wildcard());
        let consumer = self.names.platform_events_consumer(&self.app, name);
        durable(stream, filter, consumer, prefix, DurableOptions::default()).await
    }

    async fn send<T: Serialize + ?Sized>(
        &self,
        subject: String,
        payload: &T,
    ) -> Result<(), EventError> {
        let bytes = Codec::Json.encode(payload).map_err(EventError::Encode)?;
        let mut headers = HeaderMap::new();
        headers.insert(wire::name::SOURCE_APP, self.app.as_str());
        headers.insert(wire::name::SOURCE_NODE, self.node.as_str());
        if let Some(info) = RequestInfo::current() {
            headers.insert(
                wire::name::TRACEPARENT,
                info.trace().child().to_header().as_str(),
            );
        }
        self.client
            .publish_with_headers(subject.clone(), headers, bytes)
            .await
            .map_err(|e| EventError::Publish {
                subject,
                message: e.to_string(),
            })
    }

    async fn core_subscribe<T: DeserializeOwned>(
        &self,
        subject: String,
        prefix: String,
    ) -> Result<EventStream<T>, EventError> {
        let sub =
            self.client
                .subscribe(subject.clone())
                .await
                .map_err(|e| EventError::Subscribe {
                    subject: subject.clone(),
                    message: e.to_string(),
                })?;
        // Prove the subscription with a round trip (the server answers "no
        // responders" on the sync subject only after handling our SUB), so
        // events published by anyone after this returns are seen.
        let request = async_nats::Request::new()
            .payload(bytes::Bytes::new())
            .timeout(Some(Duration::from_secs(5)));
        match self
            .client
            .send_request(self.names.sync_subject(&self.app, &self.node), request)
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
            Err(e) => {
                return Err(EventError::Subscribe {
                    subject,
                    message: format!("could not confirm the subscription: {e}"),
                })
            }
        }
        Ok(EventStream {
            sub,
            prefix,
            _type: PhantomData,
        })
    }

    async fn app_stream(&self) -> Result<stream::Stream, EventError> {
        self.get_or_create_stream(
            self.names.app_events_stream(&self.app),
            self.names.app_events_wildcard(&self.app),
        )
        .await
    }

    async fn get_or_create_stream(
        &self,
        name: String,
        subjects: String,
    ) -> Result<stream::Stream, EventError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subjects],
                max_age: STREAM_MAX_AGE,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| EventError::JetStream(format!("stream `{name}`: {e}")))
    }
}

async fn durable<T: DeserializeOwned>(
    stream: stream::Stream,
    filter: String,
    name: String,
    prefix: String,
    options: DurableOptions,
) -> Result<DurableEventStream<T>, EventError> {
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: filter.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        ack_wait: options.ack_wait,
        max_ack_pending: options.max_ack_pending.max(1),
        ..Default::default()
    };
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(&name, config)
        .await
        .map_err(|e| EventError::JetStream(format!("consumer `{name}`: {e}")))?;
    let existing = &consumer.cached_info().config.filter_subject;
    if *existing != filter {
        return Err(EventError::Invalid(format!(
            "durable subscription `{name}` already exists with pattern `{existing}`, not `{filter}`; use another name"
        )));
    }
    let messages = consumer
        .messages()
        .await
        .map_err(|e| EventError::JetStream(format!("consumer `{name}`: {e}")))?;
    Ok(DurableEventStream {
        messages,
        prefix,
        pending_ack: None,
        acking: None,
        _type: PhantomData,
    })
}

/// Events of a core subscription.
pub struct EventStream<T> {
    sub: Subscriber,
    prefix: String,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl<T> EventStream<T> {
    /// Unsubscribes; the stream then yields what was already received and
    /// ends.
    pub async fn unsubscribe(&mut self) -> Result<(), EventError> {
        self.sub
            .unsubscribe()
            .await
            .map_err(|e| EventError::Subscribe {
                subject: self.prefix.clone(),
                message: e.to_string(),
            })
    }
}

impl<T: DeserializeOwned> Stream for EventStream<T> {
    type Item = Result<Event<T>, EventError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.sub.poll_next_unpin(cx) {
            Poll::Ready(Some(msg)) => Poll::Ready(Some(decode(&self.prefix, &msg, None))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Events of a durable subscription. See the module docs for when events
/// are acknowledged.
pub struct DurableEventStream<T> {
    messages: consumer::pull::Stream,
    prefix: String,
    /// The event last yielded, acknowledged when the next is asked for.
    pending_ack: Option<(u64, jetstream::message::Acker)>,
    acking: Option<(u64, BoxFuture<'static, Result<(), async_nats::Error>>)>,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for DurableEventStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableEventStream")
            .field("prefix", &self.prefix)
            .field("pending_ack", &self.pending_ack.as_ref().map(|(s, _)| s))
            .finish_non_exhaustive()
    }
}

impl<T> DurableEventStream<T> {
    /// Acknowledges the event last yielded (you are done with it) and stops.
    pub async fn close(mut self) -> Result<(), EventError> {
        if let Some((sequence, fut)) = self.acking.take() {
            fut.await.map_err(|e| EventError::Ack {
                sequence,
                message: e.to_string(),
            })?;
        }
        if let Some((sequence, acker)) = self.pending_ack.take() {
            acker.double_ack().await.map_err(|e| EventError::Ack {
                sequence,
                message: e.to_string(),
            })?;
        }
        Ok(())
    }
}

impl<T: DeserializeOwned> Stream for DurableEventStream<T> {
    type Item = Result<Event<T>, EventError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Asking for the next event acknowledges the previous one, and the
        // acknowledgement is confirmed before anything else is yielded.
        if let Some((sequence, acker)) = self.pending_ack.take() {
            let fut = async move { acker.double_ack().await }.boxed();
            self.acking = Some((sequence, fut));
        }
        if let Some((sequence, fut)) = self.acking.as_mut() {
            let sequence = *sequence;
            match fut.poll_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => {
                    self.acking = None;
                    if let Err(e) = result {
                        return Poll::Ready(Some(Err(EventError::Ack {
                            sequence,
                            message: e.to_string(),
                        })));
                    }
                }
            }
        }
        match self.messages.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(EventError::JetStream(e.to_string()))))
            }
            Poll::Ready(Some(Ok(msg))) => {
                let sequence = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                let (msg, acker) = msg.split();
                self.pending_ack = Some((sequence, acker));
                Poll::Ready(Some(decode(&self.prefix, &msg, Some(sequence))))
            }
        }
    }
}

fn decode<T: DeserializeOwned>(
    prefix: &str,
    msg: &Message,
    sequence: Option<u64>,
) -> Result<Event<T>, EventError> {
    let subject = msg.subject.to_string();
    let payload = Codec::Json
        .decode(&msg.payload)
        .map_err(|source| EventError::Decode {
            subject: subject.clone(),
            source,
        })?;
    let header = |name: async_nats::header::HeaderName| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    Ok(Event {
        event_type: subject.strip_prefix(prefix).unwrap_or(&subject).to_owned(),
        payload,
        source_app: header(wire::name::SOURCE_APP),
        source_node: header(wire::name::SOURCE_NODE),
        trace: header(wire::name::TRACEPARENT).and_then(|t| TraceContext::parse(&t)),
        sequence,
        subject,
    })
}

/// `a.b.>` → `a.b.`
fn strip_wildcard(wildcard: String) -> String {
    wildcard
        .strip_suffix('>')
        .map(str::to_owned)
        .unwrap_or(wildcard)
}

fn check_tokens(s: &str, what: &str, wildcards: bool) -> Result<(), EventError> {
    let invalid = |why: &str| {
        Err(EventError::Invalid(format!(
            "{what} `{s}` is invalid: {why}"
        )))
    };
    if s.is_empty() {
        return invalid("it is empty");
    }
    if s.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return invalid("it contains whitespace");
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return invalid("it has an empty token");
        }
        let wild = *t == "*" || *t == ">";
        if !wildcards && (t.contains('*') || t.contains('>')) {
            return invalid("wildcards are not allowed here");
        }
        if wildcards && !wild && (t.contains('*') || t.contains('>')) {
            return invalid("`*` and `>` must be whole tokens");
        }
        if *t == ">" && i + 1 != tokens.len() {
            return invalid("`>` must be the last token");
        }
    }
    Ok(())
}

fn check_type(event_type: &str) -> Result<(), EventError> {
    check_tokens(event_type, "event type", false)
}

fn check_pattern(pattern: &str) -> Result<(), EventError> {
    check_tokens(pattern, "event pattern", true)
}

fn check_durable_name(name: &str) -> Result<(), EventError> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(EventError::Invalid(format!(
            "durable name `{name}` is invalid: use letters, digits, `-` and `_`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_patterns() {
        assert!(check_type("order.placed").is_ok());
        assert!(check_type("order.*").is_err());
        assert!(check_type("order..x").is_err());
        assert!(check_type("order placed").is_err());
        assert!(check_pattern("order.*").is_ok());
        assert!(check_pattern(">").is_ok());
        assert!(check_pattern("a.>.b").is_err());
        assert!(check_pattern("a*").is_err());
        assert!(check_durable_name("billing_v2").is_ok());
        assert!(check_durable_name("a.b").is_err());
    }
}
