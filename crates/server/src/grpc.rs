//! The gRPC server: the order service with `grpc.health.v1` and server reflection (v1 and
//! v1alpha, which grpcurl 1.8 still uses), served until shutdown.

use std::net::SocketAddr;

use anyhow::Context;
use api::order::v1::{
    order_service_server::OrderServiceServer, outbox_admin_server::OutboxAdminServer,
};
use service::{OrderService, OutboxAdminService};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::info;

/// The gRPC services order-server hosts.
pub struct Services {
    pub orders: OrderService,
    pub outbox_admin: OutboxAdminService,
}

/// Binds `addr`, then serves until `shutdown` is cancelled and in-flight calls finish.
///
/// # Errors
///
/// Fails when the address cannot be bound or the server stops with a transport error.
pub async fn serve(
    addr: SocketAddr,
    services: Services,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<OrderServiceServer<OrderService>>()
        .await;
    health_reporter
        .set_serving::<OutboxAdminServer<OutboxAdminService>>()
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("failed to build the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("failed to build the reflection service")?;

    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind {addr}; is another server running there?"))?;
    let local_addr = listener.local_addr()?;
    info!(addr = %local_addr, "grpc server listening");

    let stopping = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            // Probes see the server leave before it stops accepting calls.
            health_reporter
                .set_not_serving::<OrderServiceServer<OrderService>>()
                .await;
            health_reporter
                .set_not_serving::<OutboxAdminServer<OutboxAdminService>>()
                .await;
        }
    };
    Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(OrderServiceServer::new(services.orders))
        .add_service(OutboxAdminServer::new(services.outbox_admin))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopping)
        .await
        .context("grpc server failed")?;
    info!("grpc server stopped");
    Ok(())
}
