//! The example consumer: per-user order totals from the published events, duplicates dropped
//! by its inbox, and malformed messages rejected.

use data::entity::{inbox_messages, outbox_events, user_order_totals};
use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait, QueryOrder, TransactionTrait};
use serde_json::json;
use testkit::{QueueReader, ServiceProcess, required_env, unique_name};

use super::*;

/// Total of one order from [`create_request`], in cents.
const ORDER_TOTAL: i64 = 2 * 1250 + 3 * 99;

/// Starts example-consumer on a queue of its own and waits until it consumes. The caller
/// hands the process to [`Stack::stop`] at the end.
async fn start_consumer(stack: &mut Stack) -> ServiceProcess {
    stack.set(
        "APP__CONSUMER__QUEUE",
        &unique_name("order.events.user-order-totals"),
    );
    let mut consumer = stack.start(env!("CARGO_BIN_EXE_example-consumer"));
    consumer
        .wait_for_log("consumer started", Duration::from_secs(60))
        .await;
    consumer
}

/// Publishes a message straight to the stack's exchange with the routing key `order.created`,
/// and waits for the broker's confirm.
async fn publish(stack: &Stack, message_id: &str, body: &[u8]) {
    let connection = Connection::connect(&stack.amqp_url, ConnectionProperties::default())
        .await
        .expect("test broker is reachable");
    let channel = connection.create_channel().await.expect("channel opens");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode is on");
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from(message_id))
        .with_type("OrderCreated".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirmation = channel
        .basic_publish(
            stack.exchange.as_str().into(),
            "order.created".into(),
            mandatory,
            body,
            properties,
        )
        .await
        .expect("publish is sent")
        .await
        .expect("publish is confirmed");
    assert!(
        matches!(confirmation, Confirmation::Ack(None)),
        "the message is routed to the consumer's queue: {confirmation:?}"
    );
    connection
        .close(200, "published".into())
        .await
        .expect("connection closes");
}

/// Returns the JSON body of an `OrderCreated` event in EUR, as the relays publish it.
fn order_created_body(message_id: &str, user_id: &str, total_amount: i64) -> Vec<u8> {
    let body = json!({
        "event_id": message_id,
        "order_id": format!("order-{message_id}"),
        "user_id": user_id,
        "currency": "EUR",
        "total_amount": total_amount,
    });
    body.to_string().into_bytes()
}

async fn inbox_rows(db: &DatabaseConnection) -> u64 {
    inbox_messages::Entity::find()
        .count(db)
        .await
        .expect("count inbox rows")
}

/// Returns `(order_count, total_amount)` of a user in a currency; `(0, 0)` without a row.
async fn totals(db: &DatabaseConnection, user_id: &str, currency: &str) -> (i64, i64) {
    let row = user_order_totals::Entity::find_by_id((user_id.to_string(), currency.to_string()))
        .one(db)
        .await
        .expect("query user_order_totals");
    row.map_or((0, 0), |row| (row.order_count, row.total_amount))
}

fn occurrences(process: &ServiceProcess, message: &str) -> usize {
    process
        .log_dump()
        .lines()
        .filter(|line| line.contains(&format!("\"message\":\"{message}\"")))
        .count()
}

async fn totals_skip_duplicates(backend: Backend) {
    let mut stack = Stack::new(backend, required_env("TEST_AMQP_URL")).await;
    let mut consumer = start_consumer(&mut stack).await;
    let addr = stack.start_server().await;
    stack.start_daemon().await;
    let mut client = client(&addr).await;

    create_order(&mut client, "alice-1").await;
    create_order(&mut client, "alice-2").await;
    let mut in_dollars = create_request("alice-usd", "alice");
    in_dollars.currency = "USD".into();
    client
        .create_order(in_dollars)
        .await
        .expect("CreateOrder succeeds");
    client
        .create_order(create_request("bob-1", "bob"))
        .await
        .expect("CreateOrder succeeds");

    let db = stack.db().await;
    assert!(
        testkit::wait_until(DELIVERY_DEADLINE, || async { inbox_rows(&db).await == 4 }).await,
        "the consumer processes every event"
    );
    assert_eq!(totals(&db, "alice", "EUR").await, (2, 2 * ORDER_TOTAL));
    assert_eq!(totals(&db, "alice", "USD").await, (1, ORDER_TOTAL));
    assert_eq!(totals(&db, "bob", "EUR").await, (1, ORDER_TOTAL));

    // The consumer's queue is its own: the service's queue still receives every event.
    let mut service_queue = QueueReader::consume(&stack.amqp_url, &stack.queue).await;
    let received = service_queue.receive(4, DELIVERY_DEADLINE).await;
    assert_eq!(received.len(), 4);

    // A second copy of a processed event, as a relay sends after a lost confirm.
    let event = outbox_events::Entity::find()
        .order_by_asc(outbox_events::Column::Id)
        .one(&db)
        .await
        .expect("query outbox_events")
        .expect("an event row exists");
    let message_id = event.event_id.to_string();
    let body = serde_json::to_vec(&event.payload).expect("payload encodes");
    publish(&stack, &message_id, &body).await;

    let skipped = consumer
        .wait_for_log("duplicate message skipped", DELIVERY_DEADLINE)
        .await;
    assert_eq!(skipped["message_id"], message_id.as_str());
    assert_eq!(inbox_rows(&db).await, 4);
    assert_eq!(totals(&db, "alice", "EUR").await, (2, 2 * ORDER_TOTAL));
    assert_eq!(totals(&db, "alice", "USD").await, (1, ORDER_TOTAL));
    assert_eq!(totals(&db, "bob", "EUR").await, (1, ORDER_TOTAL));

    db.close().await.expect("close");
    stack.processes.push(consumer);
    stack.stop().await;
}

#[tokio::test]
async fn consumer_totals_skip_duplicates_sqlite() {
    totals_skip_duplicates(Backend::Sqlite).await;
}

#[tokio::test]
async fn consumer_totals_skip_duplicates_postgres() {
    totals_skip_duplicates(Backend::Postgres).await;
}

#[tokio::test]
async fn consumer_rejects_malformed_message() {
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    let mut consumer = start_consumer(&mut stack).await;

    publish(&stack, "not-json", b"{").await;
    let rejected = consumer
        .wait_for_log("malformed message rejected", DELIVERY_DEADLINE)
        .await;
    assert_eq!(rejected["message_id"], "not-json");

    // A requeued message would come back ahead of the next one and be rejected again.
    let message_id = uuid::Uuid::new_v4().to_string();
    publish(
        &stack,
        &message_id,
        &order_created_body(&message_id, "carol", 500),
    )
    .await;
    let db = stack.db().await;
    assert!(
        testkit::wait_until(DELIVERY_DEADLINE, || async { inbox_rows(&db).await == 1 }).await,
        "the consumer processes the valid message after the malformed one"
    );
    assert_eq!(totals(&db, "carol", "EUR").await, (1, 500));
    assert_eq!(occurrences(&consumer, "malformed message rejected"), 1);

    db.close().await.expect("close");
    stack.processes.push(consumer);
    stack.stop().await;
}

#[tokio::test]
async fn consumer_requeues_while_database_locked() {
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    let mut consumer = start_consumer(&mut stack).await;
    let db = stack.db().await;

    // An open write transaction keeps SQLite's write lock, so the consumer's inbox insert
    // fails with "database is locked" once its busy timeout (5 s) passes.
    let lock = db.begin().await.expect("transaction begins");
    lock.execute_unprepared(
        "INSERT INTO user_order_totals (user_id, currency, order_count, total_amount, updated_at) \
         VALUES ('lock-holder', 'EUR', 0, 0, '2026-12-04T16:00:00+00:00')",
    )
    .await
    .expect("the test takes the write lock");
    let message_id = uuid::Uuid::new_v4().to_string();
    publish(
        &stack,
        &message_id,
        &order_created_body(&message_id, "dave", 700),
    )
    .await;
    let requeued = consumer
        .wait_for_log("message processing failed, requeueing", DELIVERY_DEADLINE)
        .await;
    assert_eq!(requeued["message_id"], message_id.as_str());
    lock.rollback().await.expect("rollback releases the lock");

    assert!(
        testkit::wait_until(DELIVERY_DEADLINE, || async { inbox_rows(&db).await == 1 }).await,
        "the requeued message is processed once the database is free"
    );
    assert_eq!(totals(&db, "dave", "EUR").await, (1, 700));
    assert_eq!(occurrences(&consumer, "malformed message rejected"), 0);
    assert_eq!(
        occurrences(&consumer, "message processing failed, rejecting"),
        0
    );

    db.close().await.expect("close");
    stack.processes.push(consumer);
    stack.stop().await;
}
