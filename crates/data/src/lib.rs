//! The data layer: SeaORM repositories and the lapin publisher that implement the `biz`
//! ports, plus database connection set-up.

mod barrier;
mod consumer;
mod db;
pub mod entity;
mod error;
mod inbox;
mod inventory_repo;
mod order_repo;
mod outbox_admin_repo;
mod outbox_repo;
mod participant_clients;
mod payment_repo;
mod publisher;
mod saga_repo;
mod sql;
pub mod trace_context;

pub use consumer::{
    CONSUMER_NAME, MalformedMessage, ORDER_CREATED_ROUTING_KEY, OrderCreated, OrderTotalsConsumer,
    ProjectionError, add_to_user_totals,
};
pub use db::{connect, migrate};
pub use error::is_transient;
pub use inbox::{Inbox, InboxError, InvalidInboxKey, MAX_INBOX_KEY_CHARS, Processed};
pub use inventory_repo::SeaOrmInventoryRepo;
pub use order_repo::SeaOrmOrderRepo;
pub use outbox_repo::{OutboxNotifications, SeaOrmOutboxRepo};
pub use participant_clients::{GrpcInventoryClient, GrpcPaymentClient, classify_status};
pub use payment_repo::SeaOrmPaymentRepo;
pub use publisher::AmqpEventPublisher;
pub use saga_repo::SeaOrmSagaRepo;
