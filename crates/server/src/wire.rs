//! Wiring of the layers: the database, the repositories, the publisher and the use cases
//! built from one configuration.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use biz::{DispatchSettings, OrderSagaUseCase, OutboxDispatcher, RetryPolicy, SagaSettings};
use conf::Config;
use data::{
    AmqpEventPublisher, GrpcInventoryClient, GrpcPaymentClient, SeaOrmOrderRepo, SeaOrmOutboxRepo,
    SeaOrmSagaRepo,
};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Attempts after the first to apply migrations. Their waits add up to about 11 s, or up to
/// twice that with jitter.
const MIGRATION_RETRIES: usize = 8;

/// Connects to the database and applies migrations when `data.auto_migrate` is on.
///
/// # Errors
///
/// Fails when the database cannot be reached or a migration fails.
pub async fn open_database(config: &Config) -> anyhow::Result<DatabaseConnection> {
    let data = &config.data;
    let db = data::connect(data)
        .await
        .with_context(|| format!("failed to connect to {}", data.database_url))?;
    if data.auto_migrate {
        // Processes that start together on a new database race to apply the migrations, and
        // the losers fail on tables the winner just created. A retry finds them applied.
        let retries = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .with_max_times(MIGRATION_RETRIES);
        (|| data::migrate(&db))
            .retry(retries)
            .sleep(tokio::time::sleep)
            .notify(|error, delay| {
                warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "failed to apply database migrations; retrying in case another process is applying them");
            })
            .await
            .context("failed to apply database migrations")?;
    }
    Ok(db)
}

/// Returns an id for `locked_by` that is unique to this process.
pub fn relay_id(binary: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{binary}-{}-{}", std::process::id(), &suffix[..8])
}

/// Builds the outbox relay and tries the broker once, so a wrong address shows up at
/// start-up. An unreachable broker is not fatal: events wait in the outbox until it is back.
pub async fn outbox_dispatcher(
    config: &Config,
    db: DatabaseConnection,
    relay_id: String,
) -> OutboxDispatcher {
    let publisher = AmqpEventPublisher::new(config.broker.clone());
    if let Err(error) = publisher.connect().await {
        warn!(error = %error, "broker unavailable at start-up; events wait in the outbox");
    }
    let outbox = &config.outbox;
    OutboxDispatcher::new(
        Arc::new(SeaOrmOutboxRepo::new(db)),
        Arc::new(publisher),
        DispatchSettings {
            relay_id,
            batch_size: outbox.batch_size,
            lease: outbox.lease(),
            retry: RetryPolicy {
                max_attempts: outbox.max_attempts,
                min_delay: Duration::from_millis(outbox.backoff_min_ms),
                max_delay: Duration::from_millis(outbox.backoff_max_ms),
            },
        },
    )
}

/// Builds the order saga with gRPC clients of its participants. The clients connect on first
/// use, so the participants may start later. `shutdown` stops the saga drivers, which release
/// their leases for another process to resume.
///
/// # Errors
///
/// Fails when a participant address is not a valid URL.
pub fn order_sagas(
    config: &Config,
    db: DatabaseConnection,
    owner: String,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<OrderSagaUseCase>> {
    let saga = &config.saga;
    let inventory = GrpcInventoryClient::new(&saga.inventory_url)
        .map_err(|error| anyhow::anyhow!("saga.inventory_url: {error}"))?;
    let payment = GrpcPaymentClient::new(&saga.payment_url)
        .map_err(|error| anyhow::anyhow!("saga.payment_url: {error}"))?;
    Ok(OrderSagaUseCase::new(
        Arc::new(SeaOrmOrderRepo::new(db.clone())),
        Arc::new(SeaOrmSagaRepo::new(db)),
        Arc::new(inventory),
        Arc::new(payment),
        SagaSettings {
            owner,
            call_timeout: saga.call_timeout(),
            step_deadline: saga.step_deadline(),
            max_attempts: saga.max_attempts,
            backoff_min: Duration::from_millis(saga.backoff_min_ms),
            backoff_max: Duration::from_millis(saga.backoff_max_ms),
            lease: saga.lease(),
            max_wait: saga.max_wait(),
        },
        shutdown,
    ))
}
