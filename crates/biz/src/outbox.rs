//! The outbox event model: what a use case records next to its business change, what a
//! relay claims and publishes, and the retry policy for failed publishes.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::order::{Order, OrderStatus};

pub const AGGREGATE_ORDER: &str = "order";
pub const EVENT_ORDER_CREATED: &str = "OrderCreated";
pub const EVENT_ORDER_CONFIRMED: &str = "OrderConfirmed";
pub const EVENT_ORDER_PAID: &str = "OrderPaid";
pub const EVENT_ORDER_CANCELLED: &str = "OrderCancelled";

/// An event to insert into `outbox_events` in the same transaction as its business change.
#[derive(Clone, Debug, PartialEq)]
pub struct NewOutboxEvent {
    /// Unique id; published as the AMQP `message_id` so consumers can drop duplicates.
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Event name such as `OrderCreated`; published as the AMQP `type`.
    pub event_type: String,
    /// Routing key on the topic exchange, `<aggregate>.<event>` such as `order.created`.
    pub routing_key: String,
    pub payload: Value,
    pub occurred_at: DateTime<Utc>,
}

impl NewOutboxEvent {
    /// Builds the `OrderCreated` event of a freshly placed order.
    pub fn order_created(order: &Order) -> Self {
        let items: Vec<Value> = order
            .items
            .iter()
            .map(|item| {
                json!({
                    "sku": item.sku.as_str(),
                    "quantity": item.quantity,
                    "unit_price": item.unit_price,
                })
            })
            .collect();
        let event_id = Uuid::new_v4();
        Self {
            event_id,
            aggregate_type: AGGREGATE_ORDER.to_string(),
            aggregate_id: order.id.to_string(),
            event_type: EVENT_ORDER_CREATED.to_string(),
            routing_key: "order.created".to_string(),
            payload: json!({
                "event_id": event_id,
                "order_id": order.id.to_string(),
                "user_id": order.user_id.as_str(),
                "currency": order.currency.code(),
                "items": items,
                "total_amount": order.total_amount,
                "status": order.status.as_str(),
                "created_at": order.created_at,
            }),
            occurred_at: order.created_at,
        }
    }
}

impl NewOutboxEvent {
    /// Builds the event of an order that moved to `status`: `OrderConfirmed`, `OrderPaid` or
    /// `OrderCancelled`, with the cancel `reason` when there is one.
    pub fn order_status_changed(
        order: &Order,
        status: OrderStatus,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Self {
        let (event_type, routing_key) = match status {
            OrderStatus::Confirmed => (EVENT_ORDER_CONFIRMED, "order.confirmed"),
            OrderStatus::Paid => (EVENT_ORDER_PAID, "order.paid"),
            OrderStatus::Cancelled => (EVENT_ORDER_CANCELLED, "order.cancelled"),
            OrderStatus::Pending => (EVENT_ORDER_CREATED, "order.created"),
        };
        let event_id = Uuid::new_v4();
        let mut payload = json!({
            "event_id": event_id,
            "order_id": order.id.to_string(),
            "user_id": order.user_id.as_str(),
            "currency": order.currency.code(),
            "total_amount": order.total_amount,
            "status": status.as_str(),
            "occurred_at": now,
        });
        if let Some(reason) = reason {
            payload["reason"] = Value::from(reason);
        }
        Self {
            event_id,
            aggregate_type: AGGREGATE_ORDER.to_string(),
            aggregate_id: order.id.to_string(),
            event_type: event_type.to_string(),
            routing_key: routing_key.to_string(),
            payload,
            occurred_at: now,
        }
    }
}

/// A row claimed from `outbox_events` by a relay, ready to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEvent {
    /// Auto-increment row id; orders the events of one aggregate.
    pub id: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub routing_key: String,
    pub payload: Value,
    /// Publish attempts that failed so far.
    pub retry_count: u32,
    /// W3C trace context of the request that wrote the event, when it had one.
    pub traceparent: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// When a failed publish is tried again, and when it is given up as `DEAD`.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Returns the delay before the next attempt after `failed_attempts` failures, or `None`
    /// when the budget is spent. Delays double from `min_delay` up to `max_delay`, and jitter
    /// adds up to as much again, so one delay may reach twice `max_delay`.
    pub fn next_delay(&self, failed_attempts: u32) -> Option<Duration> {
        if failed_attempts >= self.max_attempts {
            return None;
        }
        let index = failed_attempts.saturating_sub(1) as usize;
        ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(4),
        }
    }

    #[test]
    fn delays_grow_within_cap() {
        let policy = policy();
        let bounds = [(1, 1, 2), (2, 2, 4), (3, 4, 8), (4, 4, 8)];
        for (failures, low, high) in bounds {
            let delay = policy.next_delay(failures).expect("budget left");
            assert!(delay >= Duration::from_secs(low), "{failures}: {delay:?}");
            assert!(delay <= Duration::from_secs(high), "{failures}: {delay:?}");
        }
    }

    #[test]
    fn budget_ends_at_max_attempts() {
        assert_eq!(policy().next_delay(5), None);
        assert_eq!(policy().next_delay(6), None);
    }
}
