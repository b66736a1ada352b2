//! OpenTelemetry export (cargo feature `otel`, off by default).
//!
//! [`layer`] builds a `tracing-subscriber` layer that sends the runtime's
//! spans (and yours) to an OTLP/HTTP collector. Server spans (`rpc.server`)
//! are parented on the caller's W3C `traceparent`, so a chain of calls
//! across apps and nodes shows as one trace in the collector.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tracing_subscriber::prelude::*;
//! let (otel, provider) =
//!     cluster_runtime::observe::otel::layer("my-service", "http://127.0.0.1:4318/v1/traces")?;
//! tracing_subscriber::registry().with(otel).init();
//! // ... run the platform; at exit:
//! provider.shutdown()?;
//! # Ok(()) }
//! ```

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::rpc::TraceContext;

/// A layer exporting spans over OTLP/HTTP (protobuf) to `endpoint`, with
/// `service` as `service.name`. Keep the provider and call its `shutdown`
/// before exiting so buffered spans are sent.
pub fn layer<S>(
    service: &str,
    endpoint: &str,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        SdkTracerProvider,
    ),
    opentelemetry_otlp::ExporterBuildError,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("cluster");
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
}

/// Makes `span` a child of the remote span `trace` names (the caller's
/// `traceparent`).
pub(crate) fn set_remote_parent(span: &tracing::Span, trace: &TraceContext) {
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(&trace.trace_id()),
        SpanId::from_hex(&trace.parent_id()),
    ) else {
        return;
    };
    let remote = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(trace.flags()),
        true,
        TraceState::default(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(remote);
    let _ = span.set_parent(cx);
}
