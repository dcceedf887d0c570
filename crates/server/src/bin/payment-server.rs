//! `payment-server`: the payment participant of the order saga, over gRPC. It commits balance
//! changes with their outbox events in its own database; `daemon-worker` and `cron-worker`,
//! run with the same configuration, publish them.

use std::sync::Arc;

use biz::payment::PaymentUseCase;
use data::SeaOrmPaymentRepo;
use server::{cli::Args, grpc, shutdown, telemetry, wire};
use service::PaymentService;
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    server::failpoints::setup();
    let config = Args::load()?;
    telemetry::init(&config.telemetry);
    info!(
        grpc_addr = %config.server.grpc_addr,
        database = %config.data.database_url,
        "starting payment-server"
    );

    telemetry::init_metrics(config.telemetry.metrics_addr)?;
    let db = wire::open_database(&config).await?;
    let payments = Arc::new(PaymentUseCase::new(Arc::new(SeaOrmPaymentRepo::new(
        db.clone(),
    ))));
    let shutdown = shutdown::on_signal();
    grpc::serve(
        config.server.grpc_addr,
        PaymentService::new(payments),
        shutdown,
    )
    .await?;

    db.close().await?;
    info!("payment-server stopped");
    Ok(())
}
