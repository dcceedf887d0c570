//! `AmqpEventPublisher`: publishes outbox events to a RabbitMQ topic exchange with publisher
//! confirms and `mandatory`, reconnecting after the broker or the connection goes away.

use async_trait::async_trait;
use biz::{EventPublisher, OutboxEvent, PublishError, PublishFailure};
use conf::BrokerConfig;
use futures::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio::{sync::Mutex, time::timeout};
use tracing::{info, instrument, warn};

use crate::trace_context::TRACEPARENT;

/// AMQP delivery mode of messages that survive a broker restart.
const PERSISTENT: u8 = 2;

struct Session {
    connection: Connection,
    channel: Channel,
}

impl Session {
    fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

pub struct AmqpEventPublisher {
    config: BrokerConfig,
    /// One connection and confirm-mode channel, opened on first use and again after a failure.
    /// The lock also keeps batches from interleaving on the channel.
    session: Mutex<Option<Session>>,
}

impl AmqpEventPublisher {
    pub fn new(config: BrokerConfig) -> Self {
        Self {
            config,
            session: Mutex::new(None),
        }
    }

    /// Connects and declares the topology now instead of at the first publish, so that a
    /// misconfigured broker shows up at start-up.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when the broker cannot be reached or rejects a declaration.
    pub async fn connect(&self) -> Result<(), PublishError> {
        let mut session = self.session.lock().await;
        self.open_session(&mut session).await.map(|_| ())
    }

    async fn open_session<'a>(
        &self,
        slot: &'a mut Option<Session>,
    ) -> Result<&'a Session, PublishError> {
        if slot.as_ref().is_some_and(Session::is_open) {
            return Ok(slot.as_ref().expect("checked just above"));
        }
        if let Some(stale) = slot.take() {
            // Best effort: the connection is already broken in most cases.
            let _ = stale.connection.close(0, "reconnecting".into()).await;
        }
        let session = timeout(self.config.confirm_timeout(), self.declare_topology())
            .await
            .map_err(|_| {
                PublishError(format!("timed out connecting to {}", self.config.amqp_url))
            })??;
        info!(
            broker = %self.config.amqp_url,
            exchange = %self.config.exchange,
            queue = %self.config.queue,
            "connected to broker"
        );
        Ok(slot.insert(session))
    }

    async fn declare_topology(&self) -> Result<Session, PublishError> {
        let broker_error = |action: &str, error: lapin::Error| {
            PublishError(format!(
                "{action} on {} failed: {error}",
                self.config.amqp_url
            ))
        };
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(self.config.app_id.as_str()));
        let connection = Connection::connect(self.config.amqp_url.expose(), properties)
            .await
            .map_err(|error| broker_error("connect", error))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| broker_error("open channel", error))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|error| broker_error("confirm.select", error))?;

        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.config.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|error| broker_error("exchange.declare", error))?;
        if !self.config.queue.is_empty() {
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(self.config.queue_type.as_str().into()),
            );
            channel
                .queue_declare(
                    self.config.queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    arguments,
                )
                .await
                .map_err(|error| broker_error("queue.declare", error))?;
            channel
                .queue_bind(
                    self.config.queue.as_str().into(),
                    self.config.exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|error| broker_error("queue.bind", error))?;
        }
        Ok(Session {
            connection,
            channel,
        })
    }

    /// Serializes the payload, rejecting for good what the broker would refuse.
    fn encode(&self, event: &OutboxEvent) -> Result<Vec<u8>, PublishFailure> {
        let body = serde_json::to_vec(&event.payload).map_err(|error| PublishFailure {
            message: format!("failed to encode payload: {error}"),
            permanent: true,
        })?;
        if body.len() > self.config.max_message_bytes {
            return Err(PublishFailure {
                message: format!(
                    "message is {} bytes, more than the broker accepts ({} bytes, broker.max_message_bytes)",
                    body.len(),
                    self.config.max_message_bytes
                ),
                permanent: true,
            });
        }
        Ok(body)
    }

    fn properties(&self, event: &OutboxEvent) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            "aggregate_type".into(),
            AMQPValue::LongString(event.aggregate_type.as_str().into()),
        );
        headers.insert(
            "aggregate_id".into(),
            AMQPValue::LongString(event.aggregate_id.as_str().into()),
        );
        if let Some(traceparent) = &event.traceparent {
            headers.insert(
                TRACEPARENT.into(),
                AMQPValue::LongString(traceparent.as_str().into()),
            );
        }
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(ShortString::from(event.event_id.to_string()))
            .with_type(event.event_type.as_str().into())
            .with_timestamp(u64::try_from(event.created_at.timestamp()).unwrap_or_default())
            .with_app_id(self.config.app_id.as_str().into())
            .with_headers(headers)
    }
}

/// One event of a batch between sending and its outcome.
enum InFlight {
    Sent(PublisherConfirm),
    /// Not sent, because no retry could help it.
    Rejected(PublishFailure),
}

impl InFlight {
    /// Waits for the confirm; the flag is true when the channel failed rather than the event.
    async fn outcome(self) -> (Result<(), PublishFailure>, bool) {
        match self {
            Self::Rejected(failure) => (Err(failure), false),
            Self::Sent(confirm) => match confirm.await {
                Ok(confirmation) => (confirmation_outcome(confirmation), false),
                Err(error) => {
                    let failure = PublishFailure {
                        message: format!("confirm failed: {error}"),
                        permanent: false,
                    };
                    (Err(failure), true)
                }
            },
        }
    }
}

fn confirmation_outcome(confirmation: Confirmation) -> Result<(), PublishFailure> {
    let retryable = |message: String| PublishFailure {
        message,
        permanent: false,
    };
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        // With `mandatory`, a message that no queue accepts comes back before its ack.
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(retryable(format!(
                "returned unroutable: {} {}",
                returned.reply_code, returned.reply_text
            )))
        }
        Confirmation::Nack(None) => Err(retryable("negatively acknowledged by the broker".into())),
        Confirmation::NotRequested => Err(retryable("publisher confirms are off".into())),
    }
}

#[async_trait]
impl EventPublisher for AmqpEventPublisher {
    #[instrument(skip_all, fields(count = events.len()))]
    async fn publish(
        &self,
        events: &[OutboxEvent],
    ) -> Result<Vec<Result<(), PublishFailure>>, PublishError> {
        let mut slot = self.session.lock().await;
        let session = self.open_session(&mut slot).await?;
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };

        // Send the whole batch first and collect the confirms afterwards: one round trip per
        // batch instead of one per event.
        let mut in_flight = Vec::with_capacity(events.len());
        for event in events {
            let body = match self.encode(event) {
                Ok(body) => body,
                Err(failure) => {
                    in_flight.push(InFlight::Rejected(failure));
                    continue;
                }
            };
            let sent = session
                .channel
                .basic_publish(
                    self.config.exchange.as_str().into(),
                    event.routing_key.as_str().into(),
                    mandatory,
                    &body,
                    self.properties(event),
                )
                .await;
            match sent {
                Ok(confirm) => in_flight.push(InFlight::Sent(confirm)),
                Err(error) => {
                    slot.take();
                    return Err(PublishError(format!("basic.publish failed: {error}")));
                }
            }
        }

        let confirmed = join_all(in_flight.into_iter().map(InFlight::outcome));
        let Ok(results) = timeout(self.config.confirm_timeout(), confirmed).await else {
            warn!(
                timeout_ms = self.config.confirm_timeout_ms,
                "publisher confirms timed out"
            );
            slot.take();
            return Err(PublishError(
                "timed out waiting for publisher confirms".into(),
            ));
        };
        let channel_failed = results.iter().any(|(_, channel_failed)| *channel_failed);
        let outcomes = results.into_iter().map(|(outcome, _)| outcome).collect();
        if channel_failed {
            slot.take();
        }
        Ok(outcomes)
    }
}
