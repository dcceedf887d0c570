//! The ways of running the worker jobs. `run_daemon` loops continuously and sleeps only when
//! the outbox is idle, `run_cron` drains it on a cron schedule, `run_cleanup` deletes old
//! `SENT` rows on another, and the saga recovery jobs resume sagas whose owner is gone.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use std::sync::Arc;

use biz::{OrderSagaUseCase, OutboxAdminUseCase, OutboxDispatcher, dispatch::DispatchError};
use chrono::Utc;
use data::OutboxNotifications;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Upper bound of batches in one cron tick, so one tick cannot run forever when rows arrive
/// as fast as they are sent.
const MAX_BATCHES_PER_TICK: usize = 10_000;

/// Waits between attempts after database or broker failures.
fn failure_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Logs a failed dispatch: at warn for the first failure and every 20th after it, at debug
/// otherwise, so that a long outage does not flood the log.
fn log_failure(error: &DispatchError, consecutive: u64) {
    if consecutive == 1 || consecutive.is_multiple_of(20) {
        warn!(error = %error, consecutive_failures = consecutive, "outbox dispatch failed, retrying");
    } else {
        debug!(error = %error, consecutive_failures = consecutive, "outbox dispatch failed, retrying");
    }
}

/// Returns false when `shutdown` fired during the wait.
async fn wait(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}

/// Runs the relay until `shutdown`: drains the outbox, then sleeps for `poll_interval` or until
/// a PostgreSQL notification reports newly committed rows. A batch in flight when shutdown
/// starts is finished and marked before this returns.
pub async fn run_daemon(
    dispatcher: &OutboxDispatcher,
    mut notifications: Option<OutboxNotifications>,
    poll_interval: Duration,
    shutdown: CancellationToken,
) {
    info!(
        relay_id = %dispatcher.settings().relay_id,
        poll_interval_ms = poll_interval.as_millis() as u64,
        notifications = notifications.is_some(),
        "daemon relay started"
    );
    let mut backoff = failure_backoff();
    let mut consecutive_failures = 0u64;
    while !shutdown.is_cancelled() {
        match dispatcher
            .drain(usize::MAX, || shutdown.is_cancelled())
            .await
        {
            Ok(report) => {
                if consecutive_failures > 0 {
                    info!(failures = consecutive_failures, "outbox dispatch recovered");
                    consecutive_failures = 0;
                    backoff = failure_backoff();
                }
                if report.claimed > 0 {
                    continue;
                }
                let idle = tokio::time::sleep(poll_interval);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = idle => {}
                    _ = async {
                        match notifications.as_mut() {
                            Some(listener) => listener.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
            }
            Err(error) => {
                consecutive_failures += 1;
                log_failure(&error, consecutive_failures);
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                wait(delay, &shutdown).await;
            }
        }
    }
    info!("daemon relay stopped");
}

/// Resumes stalled sagas until `shutdown`: right away, then every `interval`, and again at
/// once while each look finds a full batch. Keeps at most `batch_size` sagas running.
pub async fn run_saga_recovery(
    sagas: &Arc<OrderSagaUseCase>,
    interval: Duration,
    batch_size: u32,
    shutdown: CancellationToken,
) {
    info!(
        interval_ms = interval.as_millis() as u64,
        batch_size, "saga recovery started"
    );
    let mut backoff = failure_backoff();
    let mut consecutive_failures = 0u64;
    while !shutdown.is_cancelled() {
        let delay = match sagas.resume_stalled(batch_size).await {
            Ok(resumed) => {
                consecutive_failures = 0;
                backoff = failure_backoff();
                if resumed > 0 {
                    debug!(resumed, "sagas resumed");
                }
                interval
            }
            Err(error) => {
                consecutive_failures += 1;
                if consecutive_failures == 1 || consecutive_failures.is_multiple_of(20) {
                    warn!(error = %error, consecutive_failures, "saga recovery failed, retrying");
                }
                backoff.next().unwrap_or(Duration::from_secs(5))
            }
        };
        wait(delay, &shutdown).await;
    }
    info!("saga recovery stopped");
}

/// Resumes stalled sagas once at start-up, then at every tick of `schedule`, until
/// `shutdown`.
pub async fn run_saga_recovery_on_schedule(
    sagas: &Arc<OrderSagaUseCase>,
    schedule: &cron::Schedule,
    batch_size: u32,
    shutdown: CancellationToken,
) {
    info!(schedule = %schedule, "scheduled saga recovery started");
    let job = || async {
        sagas
            .resume_stalled(batch_size)
            .await
            .map(drop)
            .map_err(|error| error.to_string())
    };
    if let Err(error) = job().await {
        warn!(error = %error, "saga recovery at start-up failed; the schedule tries again");
    }
    run_on_schedule("saga recovery", schedule, &shutdown, job).await;
}

/// Parses a cron expression with seconds, naming the configuration key on failure.
///
/// # Errors
///
/// Fails when `expression` is not a valid cron expression.
pub fn parse_schedule(key: &str, expression: &str) -> anyhow::Result<cron::Schedule> {
    cron::Schedule::from_str(expression).with_context(|| {
        format!(
            "{key} {expression:?} is not a cron expression with seconds, such as \"*/10 * * * * *\""
        )
    })
}

/// Runs `job` at every tick of `schedule` until `shutdown`. A tick that comes while the job
/// still runs is skipped, so runs never overlap.
async fn run_on_schedule<F, Fut>(
    name: &str,
    schedule: &cron::Schedule,
    shutdown: &CancellationToken,
    mut job: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut consecutive_failures = 0u64;
    while let Some(next) = schedule.upcoming(Utc).next() {
        let delay = (next - Utc::now()).to_std().unwrap_or_default();
        if !wait(delay, shutdown).await {
            break;
        }
        match job().await {
            Ok(()) => consecutive_failures = 0,
            Err(error) => {
                consecutive_failures += 1;
                if consecutive_failures == 1 || consecutive_failures.is_multiple_of(20) {
                    warn!(job = name, error = %error, consecutive_failures, "scheduled job failed");
                } else {
                    debug!(job = name, error = %error, consecutive_failures, "scheduled job failed");
                }
            }
        }
    }
}

/// Runs the relay on `schedule` until `shutdown`. Each tick drains the whole backlog, batch
/// after batch.
pub async fn run_cron(
    dispatcher: &OutboxDispatcher,
    schedule: &cron::Schedule,
    shutdown: CancellationToken,
) {
    info!(
        relay_id = %dispatcher.settings().relay_id,
        schedule = %schedule,
        "cron relay started"
    );
    run_on_schedule("dispatch", schedule, &shutdown, || async {
        let report = dispatcher
            .drain(MAX_BATCHES_PER_TICK, || shutdown.is_cancelled())
            .await
            .map_err(|error| error.to_string())?;
        debug!(
            claimed = report.claimed,
            sent = report.sent,
            "cron tick done"
        );
        Ok(())
    })
    .await;
    info!("cron relay stopped");
}

/// Deletes `SENT` rows older than `retention` on `schedule` until `shutdown`.
pub async fn run_cleanup(
    admin: &OutboxAdminUseCase,
    schedule: &cron::Schedule,
    retention: Duration,
    batch_size: u32,
    shutdown: CancellationToken,
) {
    info!(
        schedule = %schedule,
        retention_secs = retention.as_secs(),
        "outbox cleanup started"
    );
    run_on_schedule("cleanup", schedule, &shutdown, || async {
        admin
            .delete_sent(retention, batch_size, MAX_BATCHES_PER_TICK)
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
    })
    .await;
    info!("outbox cleanup stopped");
}

/// Publishes the outbox backlog as gauges every `interval` until `shutdown`: rows per status,
/// and the age of the oldest unsent row (0 when there is none).
pub async fn run_backlog_sampler(
    admin: &OutboxAdminUseCase,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut consecutive_failures = 0u64;
    loop {
        match admin.stats().await {
            Ok(stats) => {
                consecutive_failures = 0;
                let by_status = [
                    ("pending", stats.pending),
                    ("failed", stats.failed),
                    ("dead", stats.dead),
                    ("sent", stats.sent),
                ];
                for (status, count) in by_status {
                    metrics::gauge!("outbox_events", "status" => status).set(count as f64);
                }
                let age = stats
                    .oldest_unsent_at
                    .map(|created_at| (Utc::now() - created_at).as_seconds_f64().max(0.0))
                    .unwrap_or(0.0);
                metrics::gauge!("outbox_oldest_unsent_age_seconds").set(age);
            }
            Err(error) => {
                consecutive_failures += 1;
                if consecutive_failures == 1 || consecutive_failures.is_multiple_of(20) {
                    warn!(error = %error, consecutive_failures, "outbox backlog sampling failed");
                }
            }
        }
        if !wait(interval, &shutdown).await {
            break;
        }
    }
}
