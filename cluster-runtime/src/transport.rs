//! The NATS connection: URLs, credentials, TLS, nkeys, reconnects.
//!
//! One connection per node. Reconnects are handled by async-nats; this
//! module exposes a *connection generation* that grows on every
//! (re)connect, so watchers know when to re-read state they may have missed.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// How to reach NATS.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Server URLs (`nats://host:port`), tried in order.
    pub urls: Vec<String>,
    /// A `.creds` file (JWT + nkey seed).
    pub creds: Option<PathBuf>,
    /// An nkey seed (`SU...`).
    pub nkey: Option<String>,
    /// Require TLS.
    pub tls_required: bool,
    /// Extra root CA certificates (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// A name for the connection, shown in `nats server report connections`.
    pub name: Option<String>,
}

/// A live NATS connection with its JetStream context.
#[derive(Debug, Clone)]
pub struct Transport {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    generation: watch::Receiver<u64>,
    urls: String,
}

impl Transport {
    /// Connects, then checks that JetStream answers. Errors say which URL
    /// failed and why (unreachable, auth, JetStream off).
    pub async fn connect(opts: &NatsOptions) -> Result<Transport> {
        if opts.urls.is_empty() {
            return Err(Error::config("NATS URL is empty (set --nats or NATS_URL)"));
        }
        let urls = opts.urls.join(",");
        let mut connect = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .ping_interval(Duration::from_secs(2))
            // Reconnect forever with a short, capped delay: a node must come
            // back as soon as NATS does.
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((50u64 << attempts.min(5) as u64).min(1000))
            });
        if let Some(name) = &opts.name {
            connect = connect.name(name);
        }
        if let Some(creds) = &opts.creds {
            connect = connect.credentials_file(creds).await.map_err(|e| {
                Error::config(format!(
                    "NATS credentials file {} (--nats-creds): {e}",
                    creds.display()
                ))
            })?;
        }
        if let Some(seed) = &opts.nkey {
            connect = connect.nkey(seed.clone());
        }
        if opts.tls_required {
            connect = connect.require_tls(true);
        }
        if let Some(ca) = &opts.tls_ca {
            connect = connect.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &opts.tls_client {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
        let (gen_tx, generation) = watch::channel(0u64);
        connect = connect.event_callback(move |event| {
            let gen_tx = gen_tx.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        gen_tx.send_modify(|g| *g += 1);
                        tracing::info!("NATS connected");
                    }
                    async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        });
        let addrs: Vec<async_nats::ServerAddr> = opts
            .urls
            .iter()
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| Error::config(format!("NATS URL `{u}` is invalid: {e}")))
            })
            .collect::<Result<_>>()?;
        let client = connect.connect(addrs).await.map_err(|e| Error::Connect {
            url: urls.clone(),
            reason: e.to_string(),
        })?;
        let jetstream = jetstream::new(client.clone());
        match tokio::time::timeout(Duration::from_secs(5), jetstream.query_account()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Error::JetStreamDisabled {
                    url: urls,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(Error::JetStreamDisabled {
                    url: urls,
                    reason: "no answer to $JS.API.INFO within 5 s".into(),
                })
            }
        }
        Ok(Transport {
            client,
            jetstream,
            generation,
            urls,
        })
    }

    /// The core NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The URLs this transport connects to.
    pub fn urls(&self) -> &str {
        &self.urls
    }

    /// Grows by one on every (re)connect.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Round-trip time to the server, if connected.
    pub async fn rtt(&self) -> Option<Duration> {
        let start = std::time::Instant::now();
        round_trip(&self.client).await.ok()?;
        Some(start.elapsed())
    }
}

/// One request/reply exchange with the server itself: a request to a subject
/// nobody subscribes, answered by the server with "no responders". Because
/// the server handles a connection's protocol messages in order, its answer
/// proves every earlier SUB/UNSUB of this connection has been processed —
/// which `flush()` does not (it only empties the client's write buffer).
pub async fn round_trip(client: &async_nats::Client) -> Result<()> {
    let subject = format!("_cluster.rtt.{}", client.new_inbox().replace("_INBOX.", ""));
    match tokio::time::timeout(
        Duration::from_secs(2),
        client.request(subject, bytes::Bytes::new()),
    )
    .await
    {
        Err(_) => Err(Error::nats(
            "round trip",
            "no answer from the server within 2 s",
        )),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(e)) => Err(Error::nats("round trip", e)),
    }
}
