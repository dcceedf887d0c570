//! `order-server`: the gRPC order service. It commits orders with their outbox events, which
//! the relays in `daemon-worker` and `cron-worker` publish, and drives the sagas that
//! PlaceOrder starts.

use std::{sync::Arc, time::Duration};

use biz::{OrderUseCase, OutboxAdminUseCase};
use data::{SeaOrmOrderRepo, SeaOrmOutboxRepo};
use server::{cli::Args, grpc, shutdown, telemetry, wire};
use service::{OrderService, OutboxAdminService};
use tracing::info;

/// How long shutdown waits for running sagas to reach a point where they can stop.
const SAGA_GRACE: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    server::failpoints::setup();
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
    let sagas = wire::order_sagas(
        &config,
        db.clone(),
        wire::relay_id("order-server"),
        shutdown.clone(),
    )?;
    let services = grpc::Services {
        orders: OrderService::new(orders, Arc::clone(&sagas)),
        outbox_admin: OutboxAdminService::new(admin),
    };
    grpc::serve(config.server.grpc_addr, services, shutdown).await?;
    // Sagas still running stop at their next step and leave their lease for a worker.
    sagas.shut_down(SAGA_GRACE).await;

    db.close().await?;
    info!("order-server stopped");
    Ok(())
}
