//! `cron-worker`: the scheduled outbox relay. Each tick of `outbox.cron_schedule` drains every
//! due event.

use server::{cli::Args, relay, shutdown, telemetry, wire};
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Args::load()?;
    telemetry::init(&config.telemetry);
    info!(
        database = %config.data.database_url,
        broker = %config.broker.amqp_url,
        schedule = %config.outbox.cron_schedule,
        "starting cron-worker"
    );

    let db = wire::open_database(&config).await?;
    let shutdown = shutdown::on_signal();
    let dispatcher =
        wire::outbox_dispatcher(&config, db.clone(), wire::relay_id("cron-worker")).await;
    relay::run_cron(&dispatcher, &config.outbox.cron_schedule, shutdown).await?;

    db.close().await?;
    info!("cron-worker stopped");
    Ok(())
}
