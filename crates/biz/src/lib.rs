//! The business layer: the order aggregate, the outbox event model, the use cases, and the
//! ports they need. Storage and transport live in `data` and `service`, which depend on this
//! crate and never the other way round.

pub mod dispatch;
pub mod error;
pub mod inventory;
pub mod order;
pub mod order_usecase;
pub mod outbox;
pub mod outbox_admin;
pub mod participant;
pub mod payment;
pub mod ports;
pub mod saga;
pub mod saga_id;
pub mod saga_usecase;

pub use dispatch::{DispatchError, DispatchReport, DispatchSettings, OutboxDispatcher};
pub use error::{OrderError, RepoError, ValidationError};
pub use order::{
    CreateOrder, Currency, Order, OrderId, OrderItem, OrderPage, OrderStatus, PageQuery, RequestId,
    Sku, UserId,
};
pub use order_usecase::OrderUseCase;
pub use outbox::{NewOutboxEvent, OutboxEvent, RetryPolicy};
pub use outbox_admin::{
    DeadEventPage, OutboxAdminError, OutboxAdminRepo, OutboxAdminUseCase, OutboxRecord,
    OutboxStats, OutboxStatus,
};
pub use ports::{
    CallError, CallErrorKind, EventPublisher, InventoryClient, OrderChange, OrderRepo, OutboxRepo,
    PaymentClient, PublishError, PublishFailure, SagaRepo,
};
pub use saga::{Saga, SagaState, SagaStep, StepName, StepOutcome};
pub use saga_id::SagaId;
pub use saga_usecase::{OrderSagaUseCase, PlaceOrder, SagaSettings};
