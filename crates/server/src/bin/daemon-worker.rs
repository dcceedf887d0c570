//! `daemon-worker`: the low-latency outbox relay. It publishes new events as soon as they
//! commit, waking on PostgreSQL notifications or polling SQLite, and resumes sagas whose
//! owner is gone.

use std::{sync::Arc, time::Duration};

use biz::OutboxAdminUseCase;
use data::{OutboxNotifications, SeaOrmOutboxRepo};
use server::{cli::Args, relay, shutdown, telemetry, wire};
use tracing::{info, warn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    server::failpoints::setup();
    let config = Args::load()?;
    telemetry::init(&config.telemetry);
    info!(
        database = %config.data.database_url,
        broker = %config.broker.amqp_url,
        exchange = %config.broker.exchange,
        batch_size = config.outbox.batch_size,
        "starting daemon-worker"
    );

    telemetry::init_metrics(config.telemetry.metrics_addr)?;
    let db = wire::open_database(&config).await?;
    let shutdown = shutdown::on_signal();
    let dispatcher =
        wire::outbox_dispatcher(&config, db.clone(), wire::relay_id("daemon-worker")).await;
    let notifications = match OutboxNotifications::listen(&db).await {
        Ok(listener) => listener,
        Err(error) => {
            warn!(error = %error, "failed to listen for outbox notifications; polling only");
            None
        }
    };
    let admin = OutboxAdminUseCase::new(Arc::new(SeaOrmOutboxRepo::new(db.clone())));
    let sagas = wire::order_sagas(
        &config,
        db.clone(),
        wire::relay_id("daemon-worker"),
        shutdown.clone(),
    )?;
    tokio::join!(
        relay::run_saga_recovery(
            &sagas,
            config.saga.recovery_interval(),
            config.saga.recovery_batch_size,
            shutdown.clone(),
        ),
        relay::run_daemon(
            &dispatcher,
            notifications,
            config.outbox.poll_interval(),
            shutdown.clone(),
        ),
        relay::run_backlog_sampler(&admin, config.telemetry.backlog_sample_interval(), shutdown),
    );

    sagas.shut_down(Duration::from_secs(5)).await;
    db.close().await?;
    info!("daemon-worker stopped");
    Ok(())
}
