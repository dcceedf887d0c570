//! Logging and metrics set-up: `tracing` to standard output, as text or JSON lines, and an
//! optional Prometheus endpoint.

use std::{io::IsTerminal, net::SocketAddr};

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing::info;

use conf::{LogFormat, TelemetryConfig};
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt,
};

/// Installs the global subscriber: log lines filtered by `telemetry.log_filter` (`RUST_LOG`,
/// when set, replaces it), and OpenTelemetry spans of this project's crates, which give every
/// request a W3C trace context whatever the log filter.
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only help a terminal; in a log file they are noise.
    let ansi = std::io::stdout().is_terminal();
    let logs = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed(),
    };
    // Spans get trace and span ids but go to no exporter yet, so only the propagated
    // `traceparent` values show them.
    let provider = SdkTracerProvider::builder().build();
    let tracer = provider.tracer("order-service");
    opentelemetry::global::set_tracer_provider(provider);
    let project_spans = Targets::new()
        .with_targets(["biz", "data", "service", "server"].map(|target| (target, Level::INFO)));
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(project_spans);
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
}

/// Upper bounds of the batch duration histogram, in seconds.
const BATCH_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Serves Prometheus metrics on `addr` at `/metrics`, or does nothing when `addr` is `None`.
/// Must run inside the Tokio runtime, which hosts the HTTP listener.
///
/// # Errors
///
/// Fails when the address cannot be bound or a recorder is installed already.
pub fn init_metrics(addr: Option<SocketAddr>) -> anyhow::Result<()> {
    let Some(addr) = addr else {
        return Ok(());
    };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full("outbox_batch_duration_seconds".into()),
            BATCH_DURATION_BUCKETS,
        )
        .context("invalid histogram buckets")?
        .install()
        .with_context(|| format!("failed to serve metrics on {addr}"))?;
    info!(addr = %addr, "metrics listening");
    Ok(())
}
