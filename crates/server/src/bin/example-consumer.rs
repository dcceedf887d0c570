//! `example-consumer`: a downstream service that keeps per-user order totals from the
//! published `OrderCreated` events, deduplicating redeliveries with the inbox table.

use data::OrderTotalsConsumer;
use server::{cli::Args, shutdown, telemetry, wire};
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Args::load()?;
    telemetry::init(&config.telemetry);
    info!(
        database = %config.data.database_url,
        broker = %config.broker.amqp_url,
        exchange = %config.broker.exchange,
        queue = %config.consumer.queue,
        "starting example-consumer"
    );

    telemetry::init_metrics(config.telemetry.metrics_addr)?;
    let db = wire::open_database(&config).await?;
    let shutdown = shutdown::on_signal();
    let consumer =
        OrderTotalsConsumer::new(db.clone(), config.broker.clone(), config.consumer.clone());
    consumer.run(shutdown).await;

    db.close().await?;
    info!("example-consumer stopped");
    Ok(())
}
