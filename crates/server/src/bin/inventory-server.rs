//! `inventory-server`: the inventory participant of the order saga, over gRPC. It commits
//! stock changes with their outbox events in its own database; `daemon-worker` and
//! `cron-worker`, run with the same configuration, publish them.

use std::sync::Arc;

use biz::inventory::InventoryUseCase;
use data::SeaOrmInventoryRepo;
use server::{cli::Args, grpc, shutdown, telemetry, wire};
use service::InventoryService;
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    server::failpoints::setup();
    let config = Args::load()?;
    telemetry::init(&config.telemetry);
    info!(
        grpc_addr = %config.server.grpc_addr,
        database = %config.data.database_url,
        "starting inventory-server"
    );

    telemetry::init_metrics(config.telemetry.metrics_addr)?;
    let db = wire::open_database(&config).await?;
    let inventory = Arc::new(InventoryUseCase::new(Arc::new(SeaOrmInventoryRepo::new(
        db.clone(),
    ))));
    let shutdown = shutdown::on_signal();
    grpc::serve(
        config.server.grpc_addr,
        InventoryService::new(inventory),
        shutdown,
    )
    .await?;

    db.close().await?;
    info!("inventory-server stopped");
    Ok(())
}
