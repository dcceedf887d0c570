//! `order-server`: the gRPC order service. It commits orders with their outbox events; the
//! relays in `daemon-worker` and `cron-worker` publish them.

use std::sync::Arc;

use biz::{OrderUseCase, OutboxAdminUseCase};
use data::{SeaOrmOrderRepo, SeaOrmOutboxRepo};
use server::{cli::Args, grpc, shutdown, telemetry, wire};
use service::{OrderService, OutboxAdminService};
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Args::load()?;
    telemetry::init(&config.telemetry);
    info!(
        grpc_addr = %config.server.grpc_addr,
        database = %config.data.database_url,
        "starting order-server"
    );

    telemetry::init_metrics(config.telemetry.metrics_addr)?;
    let db = wire::open_database(&config).await?;
    let orders = Arc::new(OrderUseCase::new(Arc::new(SeaOrmOrderRepo::new(
        db.clone(),
    ))));
    let admin = Arc::new(OutboxAdminUseCase::new(Arc::new(SeaOrmOutboxRepo::new(
        db.clone(),
    ))));
    let shutdown = shutdown::on_signal();
    let services = grpc::Services {
        orders: OrderService::new(orders),
        outbox_admin: OutboxAdminService::new(admin),
    };
    grpc::serve(config.server.grpc_addr, services, shutdown).await?;

    db.close().await?;
    info!("order-server stopped");
    Ok(())
}
