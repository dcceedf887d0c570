//! Logging and metrics set-up: `tracing` to standard output, as text or JSON lines, and an
//! optional Prometheus endpoint.

use std::{io::IsTerminal, net::SocketAddr};

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing::info;

use conf::{LogFormat, TelemetryConfig};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, replaces the configured filter.
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only help a terminal; in a log file they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
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
