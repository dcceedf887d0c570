//! The gRPC transport of the order service: request validation and mapping to `biz` types,
//! and the one place that turns business errors into gRPC status codes.

mod convert;
mod error;
mod order;
mod outbox_admin;

pub use error::status_from;
pub use order::OrderService;
pub use outbox_admin::OutboxAdminService;
