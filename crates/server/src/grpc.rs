//! The gRPC server: the order services or one saga participant, with `grpc.health.v1` and
//! server reflection (v1 and v1alpha, which grpcurl 1.8 still uses), served until shutdown.

use std::net::SocketAddr;

use anyhow::Context;
use api::{
    inventory::v1::inventory_service_server::InventoryServiceServer,
    order::v1::{order_service_server::OrderServiceServer, outbox_admin_server::OutboxAdminServer},
    payment::v1::payment_service_server::PaymentServiceServer,
};
use service::{InventoryService, OrderService, OutboxAdminService, PaymentService};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::Routes, transport::Server};
use tonic_health::ServingStatus;
use tracing::{info, info_span};

/// The gRPC services order-server hosts.
pub struct Services {
    pub orders: OrderService,
    pub outbox_admin: OutboxAdminService,
}

/// The services of one server process: the order services, or one saga participant.
pub enum Hosted {
    Order(Services),
    Inventory(InventoryService),
    Payment(PaymentService),
}

impl From<Services> for Hosted {
    fn from(services: Services) -> Self {
        Self::Order(services)
    }
}

impl From<InventoryService> for Hosted {
    fn from(service: InventoryService) -> Self {
        Self::Inventory(service)
    }
}

impl From<PaymentService> for Hosted {
    fn from(service: PaymentService) -> Self {
        Self::Payment(service)
    }
}

impl Hosted {
    /// Returns the routes of the hosted services and their names for health checks.
    fn into_routes(self) -> (Routes, Vec<&'static str>) {
        match self {
            Self::Order(services) => (
                Routes::new(OrderServiceServer::new(services.orders))
                    .add_service(OutboxAdminServer::new(services.outbox_admin)),
                vec![
                    <OrderServiceServer<OrderService> as NamedService>::NAME,
                    <OutboxAdminServer<OutboxAdminService> as NamedService>::NAME,
                ],
            ),
            Self::Inventory(service) => (
                Routes::new(InventoryServiceServer::new(service)),
                vec![<InventoryServiceServer<InventoryService> as NamedService>::NAME],
            ),
            Self::Payment(service) => (
                Routes::new(PaymentServiceServer::new(service)),
                vec![<PaymentServiceServer<PaymentService> as NamedService>::NAME],
            ),
        }
    }
}

/// Binds `addr`, then serves until `shutdown` is cancelled and in-flight calls finish.
///
/// # Errors
///
/// Fails when the address cannot be bound or the server stops with a transport error.
pub async fn serve(
    addr: SocketAddr,
    services: impl Into<Hosted>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (routes, names) = services.into().into_routes();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in &names {
        health_reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }

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
            for name in names {
                health_reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        }
    };
    Server::builder()
        .trace_fn(request_span)
        .add_routes(routes)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopping)
        .await
        .context("grpc server failed")?;
    info!("grpc server stopped");
    Ok(())
}

/// Opens the span of one gRPC request, continuing the caller's trace when the request carries
/// a `traceparent` header.
fn request_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let span = info_span!("grpc_request", path = %request.uri().path());
    let traceparent = request
        .headers()
        .get(data::trace_context::TRACEPARENT)
        .and_then(|value| value.to_str().ok());
    data::trace_context::continue_trace(&span, traceparent);
    span
}
