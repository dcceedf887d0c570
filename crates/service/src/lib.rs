//! The gRPC transport of the order service and the saga participants: request validation and mapping to `biz` types,
//! and the one place that turns business errors into gRPC status codes.

mod convert;
mod error;
mod inventory;
mod order;
mod outbox_admin;
mod participant_error;
mod payment;

pub use error::status_from;
pub use inventory::InventoryService;
pub use order::OrderService;
pub use outbox_admin::OutboxAdminService;
pub use participant_error::participant_status;
pub use payment::PaymentService;
