//! Ports: what the use cases need from storage and the broker. `data` implements them; unit
//! tests implement them in memory.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    error::RepoError,
    order::{Order, OrderId, OrderPage, PageQuery, RequestId},
    outbox::{NewOutboxEvent, OutboxEvent},
};

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
