//! The example consumer: keeps `user_order_totals` from `OrderCreated` events, processing each
//! event once through the [`Inbox`] although the broker may deliver it more than once.

use std::time::Duration;

use biz::{Currency, UserId};
use chrono::Utc;
use conf::{BrokerConfig, ConsumerConfig};
use futures::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
        BasicRejectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use sea_orm::{
    ActiveValue::Set,
    DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};
use serde::Deserialize;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    entity::user_order_totals,
    error::is_transient,
    inbox::{Inbox, InboxError, Processed},
};

/// Inbox key of this consumer. Renaming it makes every earlier message look new again.
pub const CONSUMER_NAME: &str = "user-order-totals";
/// Routing key that the consumer's queue is bound with.
pub const ORDER_CREATED_ROUTING_KEY: &str = "order.created";
/// AMQP `type` property of the events this consumer accepts.
const ORDER_CREATED_TYPE: &str = "OrderCreated";

/// First and last wait before a delivery that failed on a transient database error goes back
/// to the queue. The wait doubles with each consecutive failure.
const REQUEUE_DELAY_MIN: Duration = Duration::from_millis(100);
const REQUEUE_DELAY_MAX: Duration = Duration::from_secs(5);
/// First and last wait before connecting to the broker again.
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(200);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);
/// AMQP reply code of a normal connection close.
const REPLY_SUCCESS: u16 = 200;

/// An `OrderCreated` message, validated as the order service validates its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderCreated {
    /// The AMQP `message_id`, which the body repeats as `event_id`.
    pub event_id: String,
    pub order_id: String,
    pub user_id: String,
    /// Upper-case ISO 4217 code.
    pub currency: String,
    /// Order total in minor units of `currency`; never negative.
    pub total_amount: i64,
}

/// The body fields the consumer reads. Other fields are ignored, so that producers may add some.
#[derive(Deserialize)]
struct OrderCreatedBody {
    event_id: String,
    order_id: String,
    user_id: String,
    currency: String,
    total_amount: i64,
}

/// A message that no retry can process; the consumer rejects it without requeueing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed OrderCreated message: {0}")]
pub struct MalformedMessage(String);

impl OrderCreated {
    /// Parses the message from its AMQP `message_id` and `type` properties and its JSON body.
    ///
    /// # Errors
    ///
    /// [`MalformedMessage`] naming the first problem: a missing `message_id`, a `type` other
    /// than `OrderCreated`, a body that is not the expected JSON, an `event_id` that differs
    /// from the `message_id`, or an invalid `user_id`, `currency` or `total_amount`.
    pub fn parse(
        message_id: Option<&str>,
        kind: Option<&str>,
        body: &[u8],
    ) -> Result<Self, MalformedMessage> {
        let malformed = |message: String| MalformedMessage(message);
        let message_id = message_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| malformed("the message_id property is missing".into()))?;
        if let Some(kind) = kind
            && kind != ORDER_CREATED_TYPE
        {
            return Err(malformed(format!(
                "the type property is {kind:?}; expected {ORDER_CREATED_TYPE:?}"
            )));
        }
        let body: OrderCreatedBody = serde_json::from_slice(body)
            .map_err(|error| malformed(format!("invalid JSON body: {error}")))?;
        if body.event_id != message_id {
            return Err(malformed(format!(
                "event_id {:?} differs from message_id {message_id:?}",
                body.event_id
            )));
        }
        UserId::parse(body.user_id.as_str()).map_err(|error| malformed(error.to_string()))?;
        Currency::parse(&body.currency).map_err(|error| malformed(error.to_string()))?;
        if body.total_amount < 0 {
            return Err(malformed(format!(
                "total_amount: is {}; it must be at least 0 (minor units)",
                body.total_amount
            )));
        }
        Ok(Self {
            event_id: body.event_id,
            order_id: body.order_id,
            user_id: body.user_id,
            currency: body.currency,
            total_amount: body.total_amount,
        })
    }
}

/// Failure to add an order to `user_order_totals`.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("failed to update user_order_totals: {0}")]
    Database(#[from] DbErr),
    #[error("total_amount of user {user_id:?} in {currency} would exceed the signed 64-bit range")]
    TotalOverflow { user_id: String, currency: String },
}

/// Adds `order` to its user's row for its currency inside `txn`, creating the row for the
/// user's first order in that currency.
///
/// # Errors
///
/// [`ProjectionError::TotalOverflow`] when the sum would exceed `i64::MAX`; the row is then
/// left unchanged. [`ProjectionError::Database`] when the upsert fails.
pub async fn add_to_user_totals(
    txn: &DatabaseTransaction,
    order: &OrderCreated,
) -> Result<(), ProjectionError> {
    use user_order_totals::{Column, Entity};

    let now = Utc::now();
    let row = user_order_totals::ActiveModel {
        user_id: Set(order.user_id.clone()),
        currency: Set(order.currency.clone()),
        order_count: Set(1),
        total_amount: Set(order.total_amount),
        updated_at: Set(now),
    };
    // One statement on both backends, because PostgreSQL and SQLite both support
    // INSERT ... ON CONFLICT DO UPDATE ... WHERE. The WHERE clause skips the update instead of
    // overflowing, and a skipped update affects no row.
    let on_conflict = OnConflict::columns([Column::UserId, Column::Currency])
        .value(
            Column::OrderCount,
            Expr::col((Entity, Column::OrderCount)).add(1),
        )
        .value(
            Column::TotalAmount,
            Expr::col((Entity, Column::TotalAmount)).add(order.total_amount),
        )
        .value(Column::UpdatedAt, now)
        .action_and_where(
            Expr::col((Entity, Column::TotalAmount)).lte(i64::MAX - order.total_amount),
        )
        .to_owned();
    let affected = Entity::insert(row)
        .on_conflict(on_conflict)
        .exec_without_returning(txn)
        .await?;
    if affected == 0 {
        return Err(ProjectionError::TotalOverflow {
            user_id: order.user_id.clone(),
            currency: order.currency.clone(),
        });
    }
    Ok(())
}

/// The settlement that the consumer sends the broker for one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disposition {
    /// Processed now or before: acknowledge.
    Ack,
    /// A transient database failure: return the message to the queue for a later attempt.
    Requeue,
    /// No retry can help: drop the message, or dead-letter it if the queue has a dead-letter
    /// exchange.
    Reject,
}

struct Session {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
}

/// Consumes `OrderCreated` events from its own durable queue and adds each order to
/// `user_order_totals`, in one inbox transaction per message.
pub struct OrderTotalsConsumer {
    inbox: Inbox,
    broker: BrokerConfig,
    settings: ConsumerConfig,
}

impl OrderTotalsConsumer {
    pub fn new(db: DatabaseConnection, broker: BrokerConfig, settings: ConsumerConfig) -> Self {
        let inbox = Inbox::new(db, CONSUMER_NAME).expect("CONSUMER_NAME is a valid inbox key");
        Self {
            inbox,
            broker,
            settings,
        }
    }

    /// Consumes until `shutdown` is cancelled, connecting again with backoff whenever the
    /// broker is unreachable or the connection drops.
    ///
    /// A delivery in progress when shutdown starts is finished and settled first. Prefetched
    /// deliveries that were not settled go back to the queue when the channel closes.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let outcome = match timeout(self.broker.confirm_timeout(), self.open()).await {
                Ok(Ok(mut session)) => {
                    failures = 0;
                    let consumed = self.consume(&mut session, &shutdown).await;
                    // Best effort: after a failure the connection is broken in most cases.
                    let _ = session
                        .connection
                        .close(REPLY_SUCCESS, "consumer stopping".into())
                        .await;
                    consumed
                }
                Ok(Err(error)) => Err(error),
                Err(_) => Err(format!("timed out connecting to {}", self.broker.amqp_url)),
            };
            let Err(error) = outcome else {
                break;
            };
            failures = failures.saturating_add(1);
            let delay = doubling_delay(RECONNECT_DELAY_MIN, RECONNECT_DELAY_MAX, failures);
            if failures == 1 || failures.is_multiple_of(20) {
                warn!(
                    error = %error,
                    consecutive_failures = failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "consumer broker connection failed, retrying"
                );
            }
            if !wait(delay, &shutdown).await {
                break;
            }
        }
    }

    /// Connects, declares the exchange and the consumer's queue with its binding, and starts
    /// consuming. Closes the connection again when a later step fails.
    async fn open(&self) -> Result<Session, String> {
        let properties = ConnectionProperties::default().with_connection_name(LongString::from(
            format!("{}-{CONSUMER_NAME}", self.broker.app_id),
        ));
        let connection = Connection::connect(self.broker.amqp_url.expose(), properties)
            .await
            .map_err(|error| self.broker_error("connect", error))?;

        let (channel, consumer) = match self.start_consuming(&connection).await {
            Ok(started) => started,
            Err(error) => {
                // Best effort: the broker also drops the connection's channels when it closes.
                let _ = connection
                    .close(REPLY_SUCCESS, "consumer set-up failed".into())
                    .await;
                return Err(error);
            }
        };
        info!(
            broker = %self.broker.amqp_url,
            exchange = %self.broker.exchange,
            queue = %self.settings.queue,
            routing_key = ORDER_CREATED_ROUTING_KEY,
            prefetch = self.settings.prefetch,
            "consumer started"
        );
        Ok(Session {
            connection,
            channel,
            consumer,
        })
    }

    fn broker_error(&self, action: &str, error: lapin::Error) -> String {
        format!("{action} on {} failed: {error}", self.broker.amqp_url)
    }

    async fn start_consuming(
        &self,
        connection: &Connection,
    ) -> Result<(Channel, Consumer), String> {
        let queue = self.settings.queue.as_str();
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| self.broker_error("open channel", error))?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(|error| self.broker_error("basic.qos", error))?;

        // The same declaration as the publisher's, so either side may start first.
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.broker.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|error| self.broker_error("exchange.declare", error))?;

        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(self.broker.queue_type.as_str().into()),
        );
        channel
            .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
            .await
            .map_err(|error| self.broker_error("queue.declare", error))?;
        channel
            .queue_bind(
                queue.into(),
                self.broker.exchange.as_str().into(),
                ORDER_CREATED_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|error| self.broker_error("queue.bind", error))?;

        let consumer = channel
            .basic_consume(
                queue.into(),
                CONSUMER_NAME.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|error| self.broker_error("basic.consume", error))?;
        Ok((channel, consumer))
    }

    /// Handles deliveries one at a time until shutdown (`Ok`) or a broker failure (`Err`).
    async fn consume(
        &self,
        session: &mut Session,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let mut requeues = 0u32;
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                next = session.consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err(format!("consuming failed: {error}")),
                None => return Err("the broker cancelled the consumer".into()),
            };
            let settled = match self.handle(&delivery).await {
                Disposition::Ack => {
                    requeues = 0;
                    delivery.ack(BasicAckOptions::default()).await
                }
                Disposition::Reject => {
                    requeues = 0;
                    delivery.reject(BasicRejectOptions { requeue: false }).await
                }
                Disposition::Requeue => {
                    requeues = requeues.saturating_add(1);
                    // Holding the message during the delay keeps a database outage from
                    // becoming a tight redelivery loop. Shutdown cuts the delay short.
                    let delay = doubling_delay(REQUEUE_DELAY_MIN, REQUEUE_DELAY_MAX, requeues);
                    wait(delay, shutdown).await;
                    delivery
                        .nack(BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        })
                        .await
                }
            };
            // The message stays unacknowledged, so the broker delivers it again once the
            // channel is gone, and the inbox then drops it if it was processed.
            settled.map_err(|error| {
                format!(
                    "failed to settle delivery {} on channel {}: {error}",
                    delivery.delivery_tag,
                    session.channel.id()
                )
            })?;
        }
    }

    async fn handle(&self, delivery: &Delivery) -> Disposition {
        let properties = &delivery.properties;
        let message_id = properties.message_id().as_ref().map(|id| id.as_str());
        let kind = properties.kind().as_ref().map(|kind| kind.as_str());
        let order = match OrderCreated::parse(message_id, kind, &delivery.data) {
            Ok(order) => order,
            Err(error) => {
                error!(
                    error = %error,
                    message_id,
                    routing_key = %delivery.routing_key,
                    redelivered = delivery.redelivered,
                    "malformed message rejected"
                );
                return Disposition::Reject;
            }
        };

        let projected = order.clone();
        let outcome = self
            .inbox
            .process(&order.event_id, move |txn| {
                Box::pin(async move { add_to_user_totals(txn, &projected).await })
            })
            .await;
        let message_id = order.event_id.as_str();
        let order_id = order.order_id.as_str();
        match outcome {
            Ok(Processed::Handled(())) => {
                debug!(message_id, order_id, "order added to user totals");
                Disposition::Ack
            }
            Ok(Processed::Duplicate) => {
                info!(
                    message_id,
                    order_id,
                    redelivered = delivery.redelivered,
                    "duplicate message skipped"
                );
                Disposition::Ack
            }
            Err(error) if is_retryable(&error) => {
                warn!(error = %error, message_id, order_id, "message processing failed, requeueing");
                Disposition::Requeue
            }
            Err(error) => {
                // NOTE: without a dead-letter exchange on the queue, the broker drops the
                // message, so a persistent database fault (such as a missing table) loses it.
                error!(error = %error, message_id, order_id, "message processing failed, rejecting");
                Disposition::Reject
            }
        }
    }
}

/// Returns whether the same message may succeed later: the inbox or the projection update
/// failed on a transient database error.
fn is_retryable(error: &InboxError<ProjectionError>) -> bool {
    match error {
        InboxError::Handler(ProjectionError::Database(database)) => is_transient(database),
        other => other.is_transient(),
    }
}

/// Returns `min` doubled once per failure after the first, capped at `max`.
fn doubling_delay(min: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = std::cmp::min(failures.saturating_sub(1), 16);
    min.saturating_mul(1 << doublings).min(max)
}

/// Waits for `duration`; returns false when `shutdown` fired first.
async fn wait(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MESSAGE_ID: &str = "0190b1c2-7d4e-7a00-8000-000000000001";

    fn body() -> serde_json::Value {
        json!({
            "event_id": MESSAGE_ID,
            "order_id": "order-1",
            "user_id": "alice",
            "currency": "EUR",
            "items": [{"sku": "book", "quantity": 2, "unit_price": 1250}],
            "total_amount": 2500,
            "status": "PENDING",
            "created_at": "2026-12-04T16:00:00.123456Z",
        })
    }

    fn parse(
        message_id: Option<&str>,
        kind: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<OrderCreated, MalformedMessage> {
        OrderCreated::parse(message_id, kind, body.to_string().as_bytes())
    }

    #[test]
    fn parse_accepts_published_format() {
        let order = parse(Some(MESSAGE_ID), Some("OrderCreated"), &body()).unwrap();

        assert_eq!(order.event_id, MESSAGE_ID);
        assert_eq!(order.order_id, "order-1");
        assert_eq!(order.user_id, "alice");
        assert_eq!(order.currency, "EUR");
        assert_eq!(order.total_amount, 2500);
    }

    #[test]
    fn parse_rejects_malformed_messages() {
        let mut wrong_event_id = body();
        wrong_event_id["event_id"] = json!("other");
        let mut negative = body();
        negative["total_amount"] = json!(-1);
        let mut lower_currency = body();
        lower_currency["currency"] = json!("eur");
        let mut empty_user = body();
        empty_user["user_id"] = json!("");
        let mut missing_total = body();
        missing_total
            .as_object_mut()
            .unwrap()
            .remove("total_amount");
        let cases = [
            (
                "no message_id",
                None,
                Some("OrderCreated"),
                body(),
                "message_id",
            ),
            (
                "other type",
                Some(MESSAGE_ID),
                Some("OrderShipped"),
                body(),
                "OrderShipped",
            ),
            (
                "event_id mismatch",
                Some(MESSAGE_ID),
                None,
                wrong_event_id,
                "differs",
            ),
            (
                "negative total",
                Some(MESSAGE_ID),
                None,
                negative,
                "total_amount",
            ),
            (
                "lower-case currency",
                Some(MESSAGE_ID),
                None,
                lower_currency,
                "currency",
            ),
            ("empty user", Some(MESSAGE_ID), None, empty_user, "user_id"),
            (
                "missing total",
                Some(MESSAGE_ID),
                None,
                missing_total,
                "total_amount",
            ),
        ];

        for (case, message_id, kind, body, expected) in cases {
            let error = parse(message_id, kind, &body).unwrap_err();
            assert!(error.to_string().contains(expected), "{case}: {error}");
        }
    }

    #[test]
    fn parse_rejects_non_json_body() {
        let error = OrderCreated::parse(Some(MESSAGE_ID), None, b"not json").unwrap_err();

        assert!(error.to_string().contains("invalid JSON body"), "{error}");
    }

    #[test]
    fn delays_double_up_to_max() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);

        assert_eq!(doubling_delay(min, max, 1), min);
        assert_eq!(doubling_delay(min, max, 3), Duration::from_millis(400));
        assert_eq!(doubling_delay(min, max, 1000), max);
    }
}
