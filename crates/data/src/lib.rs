//! The data layer: SeaORM repositories and the lapin publisher that implement the `biz`
//! ports, plus database connection set-up.

mod db;
pub mod entity;
mod error;
mod order_repo;
mod outbox_repo;
mod publisher;

pub use db::{connect, migrate};
pub use order_repo::SeaOrmOrderRepo;
pub use outbox_repo::{OutboxNotifications, SeaOrmOutboxRepo};
pub use publisher::AmqpEventPublisher;
