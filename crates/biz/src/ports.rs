//! Ports: what the use cases need from storage and the broker. `data` implements them; unit
//! tests implement them in memory.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    error::RepoError,
    order::{Order, OrderId, OrderItem, OrderPage, OrderStatus, PageQuery, RequestId, UserId},
    outbox::{NewOutboxEvent, OutboxEvent},
    saga::Saga,
    saga_id::SagaId,
};

/// A status change of one order and the event that announces it, written together.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderChange {
    pub order_id: OrderId,
    /// The change applies only while the order has this status.
    pub from: OrderStatus,
    pub to: OrderStatus,
    pub event: NewOutboxEvent,
}

impl OrderChange {
    /// Builds the change of `order` from `from` to `to`, with its `OrderConfirmed`,
    /// `OrderPaid` or `OrderCancelled` event and the cancel `reason` when there is one.
    pub fn new(order: &Order, from: OrderStatus, to: OrderStatus, reason: Option<&str>) -> Self {
        let now = chrono::Utc::now();
        Self {
            order_id: order.id,
            from,
            to,
            event: NewOutboxEvent::order_status_changed(order, to, reason, now),
        }
    }
}

#[async_trait]
pub trait OrderRepo: Send + Sync + 'static {
    /// Inserts `order`, its items and `event` in one transaction: all of them or none.
    ///
    /// # Errors
    ///
    /// [`RepoError::Duplicate`] when an order with the same `request_id` exists;
    /// [`RepoError::Unavailable`] or [`RepoError::Other`] on database failure. Nothing is
    /// written in either case.
    async fn create_with_event(
        &self,
        order: &Order,
        event: &NewOutboxEvent,
    ) -> Result<(), RepoError>;

    /// Returns the order with `id`, or `None` when there is none.
    async fn get(&self, id: OrderId) -> Result<Option<Order>, RepoError>;

    /// Returns the order created with the idempotency key `request_id`, or `None`.
    async fn find_by_request_id(&self, request_id: &RequestId) -> Result<Option<Order>, RepoError>;

    /// Returns one page of a user's orders, newest first.
    async fn list(&self, query: &PageQuery) -> Result<OrderPage, RepoError>;

    /// Applies `change` and inserts its event in one transaction, when the order still has
    /// status `change.from`; returns whether it did.
    async fn change_status(&self, change: &OrderChange) -> Result<bool, RepoError>;
}

#[async_trait]
pub trait SagaRepo: Send + Sync + 'static {
    /// Inserts `order`, its items, its `OrderCreated` event and `saga` in one transaction,
    /// with `saga` leased to `owner` for `lease` on the database clock.
    ///
    /// # Errors
    ///
    /// [`RepoError::Duplicate`] when an order with the same `request_id` exists; nothing is
    /// written then.
    async fn start(
        &self,
        order: &Order,
        event: &NewOutboxEvent,
        saga: &Saga,
        owner: &str,
        lease: Duration,
    ) -> Result<(), RepoError>;

    /// Writes `saga` over the stored row with version `saga.version`, as version + 1, when
    /// `owner` still holds its lease, and renews the lease. `change`, when given, is applied
    /// in the same transaction, and nothing is written unless it applies. Returns false when
    /// the row moved on or the lease passed to another owner.
    async fn save(
        &self,
        saga: &Saga,
        owner: &str,
        lease: Duration,
        change: Option<&OrderChange>,
    ) -> Result<bool, RepoError>;

    async fn get(&self, id: SagaId) -> Result<Option<Saga>, RepoError>;

    async fn find_by_order(&self, order_id: OrderId) -> Result<Option<Saga>, RepoError>;

    /// Asks the running saga `id` to compensate; returns false when it is not running.
    async fn request_cancel(&self, id: SagaId) -> Result<bool, RepoError>;

    /// Leases up to `limit` unfinished sagas whose lease has passed to `owner`, oldest first.
    async fn claim_stalled(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Saga>, RepoError>;

    /// Writes `saga`, reopened from `FAILED`, over the stored row with version
    /// `saga.version`, as version + 1, leased to `owner`. Returns false when the stored saga is
    /// no longer that `FAILED` version.
    async fn reopen(&self, saga: &Saga, owner: &str, lease: Duration) -> Result<bool, RepoError>;

    /// Ends `owner`'s lease on saga `id`, so that a worker may resume it at once.
    async fn release(&self, id: SagaId, owner: &str) -> Result<(), RepoError>;
}

/// How a participant call failed, which decides what the saga does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallErrorKind {
    /// A business rejection such as too little stock: compensate, never retry.
    Rejected,
    /// The participant could not serve the call and did nothing: retry with backoff.
    Transient,
    /// The call timed out or lost its connection, so it may or may not have taken effect:
    /// repeat the same call.
    Unknown,
    /// A request the participant can never accept: compensate at once.
    NonRetryable,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    pub kind: CallErrorKind,
    pub message: String,
}

/// Client of the inventory service, for the saga. Every call is idempotent per saga.
#[async_trait]
pub trait InventoryClient: Send + Sync + 'static {
    async fn reserve(
        &self,
        saga: SagaId,
        items: &[OrderItem],
        timeout: Duration,
    ) -> Result<(), CallError>;
    async fn confirm(
        &self,
        saga: SagaId,
        items: &[OrderItem],
        timeout: Duration,
    ) -> Result<(), CallError>;
    async fn release(
        &self,
        saga: SagaId,
        items: &[OrderItem],
        timeout: Duration,
    ) -> Result<(), CallError>;
}

/// Client of the payment service, for the saga. Every call is idempotent per saga.
#[async_trait]
pub trait PaymentClient: Send + Sync + 'static {
    async fn freeze(
        &self,
        saga: SagaId,
        user: &UserId,
        amount: i64,
        timeout: Duration,
    ) -> Result<(), CallError>;
    async fn confirm(
        &self,
        saga: SagaId,
        user: &UserId,
        amount: i64,
        timeout: Duration,
    ) -> Result<(), CallError>;
    async fn unfreeze(
        &self,
        saga: SagaId,
        user: &UserId,
        amount: i64,
        timeout: Duration,
    ) -> Result<(), CallError>;
}

#[async_trait]
pub trait OutboxRepo: Send + Sync + 'static {
    /// Claims up to `limit` due events for `relay_id` until the database clock passes
    /// `now + lease`, oldest first. An event is due when it is `PENDING` or `FAILED`, its
    /// retry time has come, no live lease covers it, and no earlier event of its aggregate is
    /// still unsent, so each aggregate's events go out in order. Concurrent callers never
    /// claim the same row while its lease lasts.
    async fn claim(
        &self,
        relay_id: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<OutboxEvent>, RepoError>;

    /// Marks events `SENT` after the broker confirmed them, when `relay_id` still holds their
    /// lease; returns how many rows changed.
    async fn mark_sent(&self, relay_id: &str, ids: &[i64]) -> Result<u64, RepoError>;

    /// Records a failed publish: `FAILED` with the next attempt after `retry_in`, or `DEAD`
    /// when `retry_in` is `None`. Either way the retry count grows by one and the lease ends.
    async fn mark_failed(
        &self,
        relay_id: &str,
        id: i64,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<(), RepoError>;

    /// Ends `relay_id`'s leases on `ids` without counting an attempt, so that any relay can
    /// claim them at once.
    async fn release(&self, relay_id: &str, ids: &[i64]) -> Result<u64, RepoError>;
}

/// Why one event was not published.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishFailure {
    pub message: String,
    /// True when retrying cannot help, for example a message the broker rejects as too large.
    pub permanent: bool,
}

/// A failure of the broker as a whole: no event of the batch counts as attempted.
#[derive(Debug, thiserror::Error)]
#[error("broker unavailable: {0}")]
pub struct PublishError(pub String);

#[async_trait]
pub trait EventPublisher: Send + Sync + 'static {
    /// Publishes `events` in order, pipelined, and waits for the broker's confirms. Returns
    /// one outcome per event, in the same order; `Ok` means the broker confirmed it.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when the broker cannot be reached at all; the caller keeps the events
    /// for later without counting an attempt.
    async fn publish(
        &self,
        events: &[OutboxEvent],
    ) -> Result<Vec<Result<(), PublishFailure>>, PublishError>;
}
