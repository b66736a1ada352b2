//! A trace id started by a test client appears in the spans of two apps
//! called in a chain (client → front → back), carried by the W3C
//! `traceparent` header through NATS.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_runtime::app::{App, Mode};
use cluster_runtime::config::Config;
use cluster_runtime::naming::Names;
use cluster_runtime::platform::Platform;
use cluster_runtime::rpc::{RpcClient, TraceContext};
use cluster_testing::{NatsServer, ServerOptions};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// Closed spans: (name, fields).
type Spans = Arc<Mutex<Vec<(String, BTreeMap<String, String>)>>>;

struct Capture(Spans);

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let fields = span
                .extensions()
                .get::<Fields>()
                .map(|f| f.0.clone())
                .unwrap_or_default();
            if let Ok(mut spans) = self.0.lock() {
                spans.push((span.name().to_owned(), fields));
            }
        }
    }
}

fn config(url: &str, node: &str) -> Config {
    let mut c = Config::default();
    c.nats.urls = vec![url.to_owned()];
    c.node = node.to_owned();
    c.platform = "tr".into();
    c.health_addr = None;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_id_follows_a_chain_of_calls_across_apps() {
    let spans: Spans = Arc::default();
    tracing_subscriber::registry()
        .with(Capture(spans.clone()))
        .init();
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let front = App::builder("front")
        .mode(Mode::Spread)
        .handle("relay", |ctx, s: String| async move {
            let back: String = ctx.call("back").method("echo").send(&s).await?;
            Ok::<_, cluster_runtime::Error>(format!("front+{back}"))
        })
        .build()
        .expect("app");
    let back = App::builder("back")
        .mode(Mode::Spread)
        .handle("echo", |_ctx, s: String| async move {
            Ok::<_, cluster_runtime::Error>(format!("back+{s}"))
        })
        .build()
        .expect("app");
    let n1 = Platform::builder()
        .config(config(&server.url(), "n1"))
        .app(front)
        .start()
        .await
        .expect("n1");
    let n2 = Platform::builder()
        .config(config(&server.url(), "n2"))
        .app(back)
        .start()
        .await
        .expect("n2");

    let client = async_nats::connect(server.url()).await.expect("client");
    let rpc = RpcClient::new(client, Names::new("tr").expect("names"));
    let root = TraceContext::new_root().with_flags(1);
    let reply: String = rpc
        .app("front")
        .method("relay")
        .trace(root)
        .deadline(Duration::from_secs(10))
        .send(&"x".to_owned())
        .await
        .expect("chain");
    assert_eq!(reply, "front+back+x");

    let trace_id = root.trace_id();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<(String, String)> = spans
            .lock()
            .expect("spans")
            .iter()
            .filter(|(_, f)| f.get("trace_id") == Some(&trace_id))
            .map(|(name, f)| (name.clone(), f.get("app").cloned().unwrap_or_default()))
            .collect();
        let has = |name: &str, app: &str| found.iter().any(|(n, a)| n == name && a == app);
        if has("rpc.server", "front") && has("rpc.server", "back") && has("rpc.client", "back") {
            assert!(has("rpc.client", "front"), "{found:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "spans with trace id {trace_id}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n1.shutdown().await;
    n2.shutdown().await;
}
