//! `cron-worker`: the scheduled jobs. Each tick of `outbox.cron_schedule` drains every due
//! event, and each tick of `outbox.cleanup_schedule` deletes `SENT` rows past the retention.
//! Each tick of `saga.recovery_schedule` resumes sagas whose owner is gone.

use std::{sync::Arc, time::Duration};

use biz::OutboxAdminUseCase;
use data::SeaOrmOutboxRepo;
use server::{cli::Args, relay, shutdown, telemetry, wire};
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    server::failpoints::setup();
    let config = Args::load()?;
    telemetry::init(&config.telemetry);
    info!(
        database = %config.data.database_url,
        broker = %config.broker.amqp_url,
        schedule = %config.outbox.cron_schedule,
        "starting cron-worker"
    );

    let outbox = &config.outbox;
    let dispatch_schedule = relay::parse_schedule("outbox.cron_schedule", &outbox.cron_schedule)?;
    let cleanup_schedule =
        relay::parse_schedule("outbox.cleanup_schedule", &outbox.cleanup_schedule)?;
    let recovery_schedule =
        relay::parse_schedule("saga.recovery_schedule", &config.saga.recovery_schedule)?;

    telemetry::init_metrics(config.telemetry.metrics_addr)?;
    let db = wire::open_database(&config).await?;
    let shutdown = shutdown::on_signal();
    let dispatcher =
        wire::outbox_dispatcher(&config, db.clone(), wire::relay_id("cron-worker")).await;
    let admin = OutboxAdminUseCase::new(Arc::new(SeaOrmOutboxRepo::new(db.clone())));
    let sagas = wire::order_sagas(
        &config,
        db.clone(),
        wire::relay_id("cron-worker"),
        shutdown.clone(),
    )?;
    tokio::join!(
        relay::run_saga_recovery_on_schedule(
            &sagas,
            &recovery_schedule,
            config.saga.recovery_batch_size,
            shutdown.clone(),
        ),
        relay::run_cron(&dispatcher, &dispatch_schedule, shutdown.clone()),
        relay::run_cleanup(
            &admin,
            &cleanup_schedule,
            outbox.retention(),
            outbox.cleanup_batch_size,
            shutdown.clone(),
        ),
        relay::run_backlog_sampler(&admin, config.telemetry.backlog_sample_interval(), shutdown),
    );

    sagas.shut_down(Duration::from_secs(5)).await;
    db.close().await?;
    info!("cron-worker stopped");
    Ok(())
}
