//! Prometheus metrics of order-server and daemon-worker, read from their `/metrics` endpoints.

use std::time::Duration;

use testkit::{free_port, required_env};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::*;

/// Fetches `/metrics` from `addr` with a plain HTTP/1.0 request and returns the body. Returns
/// an empty string while nothing listens there yet.
async fn scrape(addr: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut response = String::new();
    if stream.read_to_string(&mut response).await.is_err() {
        return String::new();
    }
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// Polls `addr` every 100 ms, for 30 s at most, until its metrics contain every line of
/// `expected`. Returns whether they did, and the last body for the failure message.
pub(super) async fn wait_for_metrics(addr: &str, expected: &[&str]) -> (bool, String) {
    let mut body = String::new();
    for _ in 0..300 {
        body = scrape(addr).await;
        if expected
            .iter()
            .all(|line| body.lines().any(|have| have == *line))
        {
            return (true, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (false, body)
}

#[tokio::test]
async fn metrics_count_orders_and_events() {
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    let server_metrics = format!("127.0.0.1:{}", free_port());
    let worker_metrics = format!("127.0.0.1:{}", free_port());
    stack.set("APP__TELEMETRY__METRICS_ADDR", &server_metrics);
    let addr = stack.start_server().await;
    stack.set("APP__TELEMETRY__METRICS_ADDR", &worker_metrics);
    stack.set("APP__TELEMETRY__BACKLOG_SAMPLE_SECS", "1");
    stack.start_daemon().await;
    let mut client = client(&addr).await;

    create_order(&mut client, "metrics-1").await;
    create_order(&mut client, "metrics-2").await;
    // A replay creates nothing and must not count.
    create_order(&mut client, "metrics-2").await;

    let (found, body) = wait_for_metrics(&server_metrics, &["orders_created_total 2"]).await;
    assert!(found, "order-server metrics:\n{body}");
    let expected = [
        "outbox_events_published_total 2",
        "outbox_events{status=\"sent\"} 2",
        "outbox_events{status=\"pending\"} 0",
        "outbox_oldest_unsent_age_seconds 0",
    ];
    let (found, body) = wait_for_metrics(&worker_metrics, &expected).await;
    assert!(found, "daemon-worker metrics:\n{body}");
    assert!(
        body.contains("outbox_batch_duration_seconds_bucket"),
        "{body}"
    );

    stack.stop().await;
}
