//! Repository, migration and publisher tests against real SQLite, PostgreSQL and RabbitMQ.
//! Every database test runs once per backend, on a database of its own.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use biz::{
    CreateOrder, Currency, EventPublisher, NewOutboxEvent, Order, OrderItem, OrderRepo,
    OutboxAdminRepo, OutboxEvent, OutboxRepo, OutboxStatus, PageQuery, RepoError, RequestId,
    UserId,
};
use chrono::Utc;
use data::{
    AmqpEventPublisher, Inbox, InboxError, MAX_INBOX_KEY_CHARS, OrderCreated, Processed,
    ProjectionError, SeaOrmOrderRepo, SeaOrmOutboxRepo, add_to_user_totals,
    entity::{inbox_messages, order_items, orders, outbox_events, user_order_totals},
};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    PaginatorTrait, QueryFilter, Statement,
};
use serde_json::json;
use testkit::{QueueReader, required_env, unique_name};
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(30);

struct TestDb {
    db: DatabaseConnection,
    // Keeps the SQLite file until the test ends.
    _folder: Option<tempfile::TempDir>,
}

async fn sqlite() -> TestDb {
    let folder = tempfile::tempdir().expect("temporary folder");
    let db = connect(testkit::sqlite_url(folder.path())).await;
    TestDb {
        db,
        _folder: Some(folder),
    }
}

async fn postgres() -> TestDb {
    let db = connect(testkit::fresh_postgres_database().await).await;
    TestDb { db, _folder: None }
}

async fn connect(url: String) -> DatabaseConnection {
    let config = conf::DataConfig {
        database_url: conf::SecretUrl::new(url),
        max_connections: 8,
        auto_migrate: true,
    };
    let db = data::connect(&config).await.expect("database connects");
    data::migrate(&db).await.expect("migrations apply");
    db
}

/// Runs `$case(db)` once on SQLite and once on PostgreSQL, as two tests in module `$case`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn sqlite() {
                    super::$case(super::sqlite().await.db).await;
                }

                #[tokio::test]
                async fn postgres() {
                    super::$case(super::postgres().await.db).await;
                }
            }
        )*
    };
}

mod participants;
mod sagas;

on_both_backends!(
    migrations_roll_back_and_reapply,
    order_roundtrip_with_event,
    failed_transaction_writes_nothing,
    duplicate_request_id_is_reported,
    orders_list_newest_first_in_pages,
    claims_are_exclusive,
    expired_lease_is_reclaimed,
    aggregate_order_is_kept,
    failures_count_and_go_dead,
    release_makes_events_due,
    concurrent_relays_claim_each_event_once,
    dead_events_list_and_redrive,
    stats_count_by_status,
    old_sent_rows_are_deleted,
    inbox_first_delivery_is_processed,
    inbox_repeat_is_skipped,
    inbox_handler_error_rolls_back,
    inbox_concurrent_same_id_once,
    inbox_waiting_delivery_sees_outcome,
    inbox_waiting_duplicate_is_skipped,
    inbox_rejects_invalid_keys,
    user_totals_add_per_currency,
    user_totals_overflow_is_rejected,
);

fn create_request(request_id: &str, user_id: &str) -> CreateOrder {
    CreateOrder::new(
        RequestId::parse(request_id).unwrap(),
        UserId::parse(user_id).unwrap(),
        Currency::parse("EUR").unwrap(),
        vec![
            OrderItem::parse(0, "book", 2, 1250).unwrap(),
            OrderItem::parse(1, "pen", 1, 199).unwrap(),
        ],
    )
    .unwrap()
}

async fn create_order(repo: &SeaOrmOrderRepo, request_id: &str, user_id: &str) -> Order {
    let order = Order::place(create_request(request_id, user_id), Utc::now());
    let event = NewOutboxEvent::order_created(&order);
    repo.create_with_event(&order, &event)
        .await
        .expect("order is created");
    order
}

/// Returns a bare `OrderCreated` event of aggregate `aggregate_id`.
fn bare_event(aggregate_id: &str) -> NewOutboxEvent {
    NewOutboxEvent {
        event_id: Uuid::new_v4(),
        aggregate_type: "order".into(),
        aggregate_id: aggregate_id.into(),
        event_type: "OrderCreated".into(),
        routing_key: "order.created".into(),
        payload: json!({ "aggregate_id": aggregate_id }),
        occurred_at: Utc::now(),
    }
}

/// Inserts a bare outbox event for `aggregate_id` and returns its row id.
async fn insert_event(db: &DatabaseConnection, aggregate_id: &str) -> i64 {
    let row = outbox_events::ActiveModel::pending(&bare_event(aggregate_id));
    outbox_events::Entity::insert(row)
        .exec(db)
        .await
        .expect("event is inserted")
        .last_insert_id
}

async fn event_row(db: &DatabaseConnection, id: i64) -> outbox_events::Model {
    outbox_events::Entity::find_by_id(id)
        .one(db)
        .await
        .expect("query succeeds")
        .expect("event exists")
}

fn ids(events: &[OutboxEvent]) -> Vec<i64> {
    events.iter().map(|event| event.id).collect()
}

async fn migrations_roll_back_and_reapply(db: DatabaseConnection) {
    Migrator::down(&db, None)
        .await
        .expect("migrations roll back");
    let pending = Migrator::get_pending_migrations(&db).await.unwrap();
    assert_eq!(pending.len(), Migrator::migrations().len());

    Migrator::up(&db, None)
        .await
        .expect("migrations apply again");
    assert!(
        Migrator::get_pending_migrations(&db)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(orders::Entity::find().count(&db).await.unwrap(), 0);
}

async fn order_roundtrip_with_event(db: DatabaseConnection) {
    let repo = SeaOrmOrderRepo::new(db.clone());

    let order = create_order(&repo, "req-1", "alice").await;

    let loaded = repo
        .get(order.id)
        .await
        .unwrap()
        .expect("order is found by id");
    assert_eq!(loaded.id, order.id);
    assert_eq!(loaded.items, order.items);
    assert_eq!(loaded.total_amount, 2 * 1250 + 199);
    assert_eq!(
        loaded.created_at.timestamp_micros(),
        order.created_at.timestamp_micros()
    );
    let by_key = repo.find_by_request_id(&order.request_id).await.unwrap();
    assert_eq!(by_key.map(|found| found.id), Some(order.id));

    let events = outbox_events::Entity::find().all(&db).await.unwrap();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.status, "PENDING");
    assert_eq!(event.aggregate_id, order.id.to_string());
    assert_eq!(event.event_type, "OrderCreated");
    assert_eq!(event.headers["routing_key"], "order.created");
    assert_eq!(event.payload["order_id"], order.id.to_string());
    assert_eq!(event.payload["total_amount"], 2699);
    assert_eq!(event.payload["currency"], "EUR");
    assert_eq!(event.payload["items"][0]["sku"], "book");

    let missing = repo.get(biz::OrderId::new()).await.unwrap();
    assert!(missing.is_none());
}

async fn failed_transaction_writes_nothing(db: DatabaseConnection) {
    let repo = SeaOrmOrderRepo::new(db.clone());
    let first = Order::place(create_request("req-1", "alice"), Utc::now());
    let event = NewOutboxEvent::order_created(&first);
    repo.create_with_event(&first, &event).await.unwrap();

    // The second order reuses the event id, so its outbox insert fails after the order and
    // item inserts succeeded inside the same transaction.
    let second = Order::place(create_request("req-2", "alice"), Utc::now());
    let mut clashing = NewOutboxEvent::order_created(&second);
    clashing.event_id = event.event_id;
    let error = repo
        .create_with_event(&second, &clashing)
        .await
        .unwrap_err();

    assert!(matches!(error, RepoError::Duplicate(_)), "{error}");
    assert!(repo.get(second.id).await.unwrap().is_none());
    let items = order_items::Entity::find()
        .filter(order_items::Column::OrderId.eq(second.id.as_uuid()))
        .count(&db)
        .await
        .unwrap();
    assert_eq!(items, 0);
    assert_eq!(outbox_events::Entity::find().count(&db).await.unwrap(), 1);
}

async fn duplicate_request_id_is_reported(db: DatabaseConnection) {
    let repo = SeaOrmOrderRepo::new(db.clone());
    create_order(&repo, "req-1", "alice").await;

    let again = Order::place(create_request("req-1", "alice"), Utc::now());
    let error = repo
        .create_with_event(&again, &NewOutboxEvent::order_created(&again))
        .await
        .unwrap_err();

    assert!(matches!(error, RepoError::Duplicate(_)), "{error}");
    assert_eq!(orders::Entity::find().count(&db).await.unwrap(), 1);
    assert_eq!(outbox_events::Entity::find().count(&db).await.unwrap(), 1);
}

async fn orders_list_newest_first_in_pages(db: DatabaseConnection) {
    let repo = SeaOrmOrderRepo::new(db);
    let mut created = Vec::new();
    for index in 0..5 {
        created.push(
            create_order(&repo, &format!("alice-{index}"), "alice")
                .await
                .id,
        );
    }
    create_order(&repo, "bob-0", "bob").await;

    let mut listed = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let query = PageQuery {
            user_id: UserId::parse("alice").unwrap(),
            after,
            limit: 2,
        };
        let page = repo.list(&query).await.unwrap();
        pages += 1;
        assert!(page.orders.len() <= 2);
        listed.extend(page.orders.iter().map(|order| order.id));
        assert!(
            page.orders
                .iter()
                .all(|order| order.user_id.as_str() == "alice")
        );
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }

    created.reverse();
    assert_eq!(listed, created);
    assert_eq!(pages, 3);
}

async fn claims_are_exclusive(db: DatabaseConnection) {
    let outbox = SeaOrmOutboxRepo::new(db.clone());
    for index in 0..3 {
        insert_event(&db, &format!("order-{index}")).await;
    }

    let first = outbox.claim("relay-a", 2, LEASE).await.unwrap();
    let second = outbox.claim("relay-b", 10, LEASE).await.unwrap();
    let third = outbox.claim("relay-a", 10, LEASE).await.unwrap();

    assert_eq!(first.len(), 2);
    assert_eq!(second.len(), 1);
    assert!(third.is_empty());
    assert!(ids(&first).iter().all(|id| !ids(&second).contains(id)));
    assert_eq!(first[0].routing_key, "order.created");
    assert!(first[0].id < first[1].id);

    let row = event_row(&db, first[0].id).await;
    assert_eq!(row.locked_by.as_deref(), Some("relay-a"));
    assert!(row.locked_until.expect("lease is set") > Utc::now());

    // Only the lease holder can complete its events.
    assert_eq!(outbox.mark_sent("relay-b", &ids(&first)).await.unwrap(), 0);
    assert_eq!(outbox.mark_sent("relay-a", &ids(&first)).await.unwrap(), 2);
    let sent = event_row(&db, first[0].id).await;
    assert_eq!(sent.status, "SENT");
    assert!(sent.published_at.is_some());
    assert!(sent.locked_by.is_none());
}

async fn expired_lease_is_reclaimed(db: DatabaseConnection) {
    let outbox = SeaOrmOutboxRepo::new(db.clone());
    let id = insert_event(&db, "order-1").await;

    // A zero lease ends at once, as a crashed relay's lease does after its length.
    let crashed = outbox
        .claim("relay-crashed", 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(ids(&crashed), vec![id]);
    let taken_over = outbox.claim("relay-b", 10, LEASE).await.unwrap();
    assert_eq!(ids(&taken_over), vec![id]);

    // The first relay comes back and confirms late: the new holder keeps the row.
    assert_eq!(outbox.mark_sent("relay-crashed", &[id]).await.unwrap(), 0);
    assert_eq!(
        event_row(&db, id).await.locked_by.as_deref(),
        Some("relay-b")
    );
    assert_eq!(outbox.mark_sent("relay-b", &[id]).await.unwrap(), 1);
}

async fn aggregate_order_is_kept(db: DatabaseConnection) {
    let outbox = SeaOrmOutboxRepo::new(db.clone());
    let a1 = insert_event(&db, "order-a").await;
    let a2 = insert_event(&db, "order-a").await;
    let b1 = insert_event(&db, "order-b").await;

    let batch = outbox.claim("relay", 10, LEASE).await.unwrap();
    assert_eq!(
        ids(&batch),
        vec![a1, b1],
        "only the first event of each aggregate is due"
    );

    // a1 fails and waits an hour: a2 waits behind it, other aggregates do not.
    outbox
        .mark_failed(
            "relay",
            a1,
            "broker said no",
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    outbox.mark_sent("relay", &[b1]).await.unwrap();
    let b2 = insert_event(&db, "order-b").await;
    let batch = outbox.claim("relay", 10, LEASE).await.unwrap();
    assert_eq!(ids(&batch), vec![b2]);

    // Once a1 is sent, a2 becomes due.
    outbox.mark_sent("relay", &[b2]).await.unwrap();
    let row = event_row(&db, a1).await;
    assert_eq!(row.status, "FAILED");
    outbox_events::Entity::update(outbox_events::ActiveModel {
        id: Set(a1),
        status: Set("SENT".into()),
        ..Default::default()
    })
    .exec(&db)
    .await
    .unwrap();
    let batch = outbox.claim("relay", 10, LEASE).await.unwrap();
    assert_eq!(ids(&batch), vec![a2]);
}

async fn failures_count_and_go_dead(db: DatabaseConnection) {
    let outbox = SeaOrmOutboxRepo::new(db.clone());
    let first = insert_event(&db, "order-a").await;
    let second = insert_event(&db, "order-a").await;

    outbox.claim("relay", 10, LEASE).await.unwrap();
    outbox
        .mark_failed("relay", first, "returned unroutable", Some(Duration::ZERO))
        .await
        .unwrap();
    let row = event_row(&db, first).await;
    assert_eq!(row.status, "FAILED");
    assert_eq!(row.retry_count, 1);
    assert_eq!(row.last_error.as_deref(), Some("returned unroutable"));
    assert!(row.locked_by.is_none());

    // Due again at once because the delay was zero; now it fails for good.
    let batch = outbox.claim("relay", 10, LEASE).await.unwrap();
    assert_eq!(ids(&batch), vec![first]);
    assert_eq!(batch[0].retry_count, 1);
    outbox
        .mark_failed("relay", first, "message too large", None)
        .await
        .unwrap();
    let row = event_row(&db, first).await;
    assert_eq!(row.status, "DEAD");
    assert_eq!(row.retry_count, 2);
    assert!(row.next_retry_at.is_none());

    // A dead event holds back nothing.
    let batch = outbox.claim("relay", 10, LEASE).await.unwrap();
    assert_eq!(ids(&batch), vec![second]);
}

async fn release_makes_events_due(db: DatabaseConnection) {
    let outbox = SeaOrmOutboxRepo::new(db.clone());
    let id = insert_event(&db, "order-a").await;

    outbox.claim("relay-a", 10, LEASE).await.unwrap();
    assert_eq!(outbox.release("relay-b", &[id]).await.unwrap(), 0);
    assert_eq!(outbox.release("relay-a", &[id]).await.unwrap(), 1);

    let batch = outbox.claim("relay-b", 10, LEASE).await.unwrap();
    assert_eq!(ids(&batch), vec![id]);
    assert_eq!(batch[0].retry_count, 0);
}

async fn concurrent_relays_claim_each_event_once(db: DatabaseConnection) {
    const EVENTS: usize = 300;
    for index in 0..EVENTS {
        insert_event(&db, &format!("order-{index}")).await;
    }
    let outbox = Arc::new(SeaOrmOutboxRepo::new(db.clone()));

    let relays: Vec<_> = (0..4)
        .map(|relay| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let relay_id = format!("relay-{relay}");
                let mut claimed = Vec::new();
                // Bounded: 300 events in batches of 7 need far fewer rounds.
                for _ in 0..200 {
                    let batch = outbox
                        .claim(&relay_id, 7, LEASE)
                        .await
                        .expect("claim succeeds");
                    if batch.is_empty() {
                        break;
                    }
                    let batch_ids = ids(&batch);
                    let marked = outbox
                        .mark_sent(&relay_id, &batch_ids)
                        .await
                        .expect("mark succeeds");
                    assert_eq!(marked, batch_ids.len() as u64);
                    claimed.extend(batch_ids);
                }
                claimed
            })
        })
        .collect();

    let mut all = Vec::new();
    for relay in relays {
        all.extend(relay.await.expect("relay task finishes"));
    }
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), EVENTS, "every event claimed exactly once");
    assert_eq!(distinct.len(), EVENTS);
    let unsent = outbox_events::Entity::find()
        .filter(outbox_events::Column::Status.ne("SENT"))
        .count(&db)
        .await
        .unwrap();
    assert_eq!(unsent, 0);
}

fn broker_config(exchange: &str, queue: &str) -> conf::BrokerConfig {
    conf::BrokerConfig {
        amqp_url: conf::SecretUrl::new(required_env("TEST_AMQP_URL")),
        exchange: exchange.into(),
        queue: queue.into(),
        queue_type: "classic".into(),
        app_id: "order-service-test".into(),
        confirm_timeout_ms: 10_000,
        max_message_bytes: 128 * 1024 * 1024,
    }
}

fn outbox_event(id: i64, routing_key: &str) -> OutboxEvent {
    OutboxEvent {
        id,
        event_id: Uuid::new_v4(),
        aggregate_type: "order".into(),
        aggregate_id: format!("order-{id}"),
        event_type: "OrderCreated".into(),
        routing_key: routing_key.into(),
        payload: json!({ "order_id": format!("order-{id}"), "total_amount": id * 100 }),
        retry_count: 0,
        traceparent: None,
        created_at: Utc::now(),
    }
}

#[tokio::test]
async fn publisher_sets_message_properties() {
    let exchange = unique_name("exchange");
    let queue = unique_name("queue");
    let mut reader = QueueReader::bind(&required_env("TEST_AMQP_URL"), &exchange, "order.*").await;
    let publisher = AmqpEventPublisher::new(broker_config(&exchange, &queue));
    let events: Vec<_> = (1..=3)
        .map(|id| outbox_event(id, "order.created"))
        .collect();

    let outcomes = publisher
        .publish(&events)
        .await
        .expect("broker is reachable");

    assert_eq!(outcomes, vec![Ok(()), Ok(()), Ok(())]);
    let received = reader.receive(3, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 3);
    for (event, delivery) in events.iter().zip(&received) {
        let properties = &delivery.properties;
        assert_eq!(delivery.routing_key.as_str(), "order.created");
        assert_eq!(
            properties.message_id().as_ref().unwrap().as_str(),
            event.event_id.to_string()
        );
        assert_eq!(properties.kind().as_ref().unwrap().as_str(), "OrderCreated");
        assert_eq!(
            properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(
            properties.app_id().as_ref().unwrap().as_str(),
            "order-service-test"
        );
        assert!(properties.timestamp().is_some());
        let headers = properties.headers().as_ref().expect("headers are set");
        let aggregate_id = headers
            .inner()
            .get("aggregate_id")
            .expect("aggregate_id header");
        assert_eq!(
            aggregate_id.as_long_string().map(|value| value.to_string()),
            Some(event.aggregate_id.clone())
        );
        let payload: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(payload, event.payload);
    }

    // The configured queue was declared, bound with `#`, and kept its own copies.
    let kept = reader
        .channel()
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("the configured queue exists");
    assert_eq!(kept.message_count(), 3);
}

#[tokio::test]
async fn unroutable_event_fails_for_retry() {
    // No queue: nothing is bound to the exchange, so a mandatory publish comes back.
    let publisher = AmqpEventPublisher::new(broker_config(&unique_name("exchange"), ""));

    let outcomes = publisher
        .publish(&[outbox_event(1, "order.created")])
        .await
        .expect("broker is reachable");

    let failure = outcomes[0].clone().unwrap_err();
    assert!(!failure.permanent);
    assert!(
        failure.message.contains("unroutable"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn oversized_event_fails_for_good() {
    let exchange = unique_name("exchange");
    let mut reader = QueueReader::bind(&required_env("TEST_AMQP_URL"), &exchange, "#").await;
    let mut config = broker_config(&exchange, "");
    config.max_message_bytes = 200;
    let publisher = AmqpEventPublisher::new(config);
    let mut large = outbox_event(2, "order.created");
    large.payload = json!({ "padding": "x".repeat(500) });

    let outcomes = publisher
        .publish(&[
            outbox_event(1, "order.created"),
            large,
            outbox_event(3, "order.created"),
        ])
        .await
        .expect("broker is reachable");

    assert_eq!(outcomes[0], Ok(()));
    let failure = outcomes[1].clone().unwrap_err();
    assert!(failure.permanent);
    assert!(
        failure.message.contains("max_message_bytes"),
        "{}",
        failure.message
    );
    assert_eq!(outcomes[2], Ok(()));
    let received = reader.receive(2, Duration::from_secs(10)).await;
    assert_eq!(
        received.len(),
        2,
        "the events around the oversized one are published"
    );
}

#[tokio::test]
async fn unreachable_broker_is_batch_error() {
    let mut config = broker_config("order.events", "");
    config.amqp_url = conf::SecretUrl::new(format!(
        "amqp://guest:secret-password@127.0.0.1:{}/%2f",
        testkit::free_port()
    ));
    let publisher = AmqpEventPublisher::new(config);

    let error = publisher
        .publish(&[outbox_event(1, "order.created")])
        .await
        .unwrap_err();

    assert!(!error.to_string().contains("secret-password"), "{error}");
}

/// Claims `id` and marks it `DEAD`, as after a permanent publish failure.
async fn kill_event(outbox: &SeaOrmOutboxRepo, id: i64) {
    let claimed = outbox.claim("relay", 100, LEASE).await.unwrap();
    assert!(ids(&claimed).contains(&id), "event {id} is due");
    outbox
        .mark_failed("relay", id, "message too large", None)
        .await
        .unwrap();
    let others: Vec<i64> = ids(&claimed)
        .into_iter()
        .filter(|other| *other != id)
        .collect();
    outbox.release("relay", &others).await.unwrap();
}

async fn dead_events_list_and_redrive(db: DatabaseConnection) {
    let outbox = SeaOrmOutboxRepo::new(db.clone());
    let mut dead = Vec::new();
    for index in 0..3 {
        let id = insert_event(&db, &format!("order-{index}")).await;
        kill_event(&outbox, id).await;
        dead.push(id);
    }
    let alive = insert_event(&db, "order-alive").await;

    let first = outbox.list_dead(None, 2).await.unwrap();
    let rest = outbox.list_dead(Some(first[1].id), 2).await.unwrap();
    let listed: Vec<i64> = first.iter().chain(&rest).map(|record| record.id).collect();
    assert_eq!(listed, dead);
    assert_eq!(first[0].status, OutboxStatus::Dead);
    assert_eq!(first[0].last_error.as_deref(), Some("message too large"));
    assert_eq!(first[0].retry_count, 1);

    let event_id = first[0].event_id;
    assert!(outbox.redrive(event_id).await.unwrap());
    assert!(
        !outbox.redrive(event_id).await.unwrap(),
        "a PENDING event is not re-driven"
    );
    let record = outbox.find(event_id).await.unwrap().expect("event exists");
    assert_eq!(record.status, OutboxStatus::Pending);
    assert_eq!(record.retry_count, 0);
    let alive_id = event_row(&db, alive).await.event_id;
    assert!(!outbox.redrive(alive_id).await.unwrap());

    assert_eq!(outbox.redrive_all_dead().await.unwrap(), 2);
    assert!(outbox.list_dead(None, 10).await.unwrap().is_empty());
    let due = outbox.claim("relay", 100, LEASE).await.unwrap();
    assert_eq!(due.len(), 4, "re-driven events are due again");
    assert!(outbox.find(Uuid::new_v4()).await.unwrap().is_none());
}

async fn stats_count_by_status(db: DatabaseConnection) {
    let outbox = SeaOrmOutboxRepo::new(db.clone());
    let empty = outbox.stats().await.unwrap();
    assert_eq!(empty, biz::OutboxStats::default());

    let sent = insert_event(&db, "order-sent").await;
    let dead = insert_event(&db, "order-dead").await;
    let failed = insert_event(&db, "order-failed").await;
    let pending = insert_event(&db, "order-pending").await;
    outbox.claim("relay", 100, LEASE).await.unwrap();
    outbox.mark_sent("relay", &[sent]).await.unwrap();
    outbox
        .mark_failed("relay", dead, "too large", None)
        .await
        .unwrap();
    outbox
        .mark_failed("relay", failed, "nacked", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    outbox.release("relay", &[pending]).await.unwrap();

    let stats = outbox.stats().await.unwrap();
    assert_eq!(stats.sent, 1);
    assert_eq!(stats.dead, 1);
    assert_eq!(stats.failed, 1);
    assert_eq!(stats.pending, 1);
    let oldest = stats.oldest_unsent_at.expect("unsent rows exist");
    assert_eq!(oldest, event_row(&db, failed).await.created_at);
}

async fn old_sent_rows_are_deleted(db: DatabaseConnection) {
    let outbox = SeaOrmOutboxRepo::new(db.clone());
    let mut sent = Vec::new();
    for index in 0..5 {
        sent.push(insert_event(&db, &format!("order-{index}")).await);
    }
    let unsent = insert_event(&db, "order-unsent").await;
    let claimed = outbox.claim("relay", 100, LEASE).await.unwrap();
    outbox.mark_sent("relay", &sent).await.unwrap();
    outbox.release("relay", &[unsent]).await.unwrap();
    assert_eq!(claimed.len(), 6);

    // Rows published a moment ago are younger than an hour.
    assert_eq!(
        outbox
            .delete_sent(Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        0
    );
    // With no retention every SENT row is old enough, in batches of at most `limit`.
    assert_eq!(outbox.delete_sent(Duration::ZERO, 3).await.unwrap(), 3);
    assert_eq!(outbox.delete_sent(Duration::ZERO, 3).await.unwrap(), 2);
    assert_eq!(outbox.delete_sent(Duration::ZERO, 3).await.unwrap(), 0);

    let left = outbox_events::Entity::find().all(&db).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, unsent);
}

const CONSUMER: &str = "user-order-totals";

fn order_created(event_id: &str, user_id: &str, currency: &str, total_amount: i64) -> OrderCreated {
    let body = json!({
        "event_id": event_id,
        "order_id": format!("order-{event_id}"),
        "user_id": user_id,
        "currency": currency,
        "total_amount": total_amount,
    });
    OrderCreated::parse(
        Some(event_id),
        Some("OrderCreated"),
        body.to_string().as_bytes(),
    )
    .expect("test message is valid")
}

/// Processes `order` through `inbox` with the example consumer's projection update, counting
/// the handler's calls in `calls`.
async fn add_order(
    inbox: &Inbox,
    order: &OrderCreated,
    calls: &Arc<AtomicUsize>,
) -> Result<Processed<()>, InboxError<ProjectionError>> {
    let order = order.clone();
    let calls = calls.clone();
    inbox
        .process(&order.event_id.clone(), move |txn| {
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                add_to_user_totals(txn, &order).await
            })
        })
        .await
}

async fn user_totals(
    db: &DatabaseConnection,
    user_id: &str,
    currency: &str,
) -> Option<user_order_totals::Model> {
    user_order_totals::Entity::find_by_id((user_id.to_string(), currency.to_string()))
        .one(db)
        .await
        .expect("query succeeds")
}

async fn inbox_rows(db: &DatabaseConnection) -> u64 {
    inbox_messages::Entity::find()
        .count(db)
        .await
        .expect("count succeeds")
}

async fn inbox_first_delivery_is_processed(db: DatabaseConnection) {
    let inbox = Inbox::new(db.clone(), CONSUMER).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));

    let outcome = add_order(
        &inbox,
        &order_created("event-1", "alice", "EUR", 2500),
        &calls,
    )
    .await
    .expect("processing succeeds");

    assert_eq!(outcome, Processed::Handled(()));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let rows = inbox_messages::Entity::find().all(&db).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].consumer, CONSUMER);
    assert_eq!(rows[0].message_id, "event-1");
    let totals = user_totals(&db, "alice", "EUR").await.expect("totals row");
    assert_eq!(totals.order_count, 1);
    assert_eq!(totals.total_amount, 2500);
}

async fn inbox_repeat_is_skipped(db: DatabaseConnection) {
    let inbox = Inbox::new(db.clone(), CONSUMER).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let first = order_created("event-1", "alice", "EUR", 2500);
    add_order(&inbox, &first, &calls).await.unwrap();

    let repeat = add_order(&inbox, &first, &calls).await.unwrap();

    assert_eq!(repeat, Processed::Duplicate);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(inbox_rows(&db).await, 1);
    let totals = user_totals(&db, "alice", "EUR").await.unwrap();
    assert_eq!(totals.order_count, 1);
    assert_eq!(totals.total_amount, 2500);

    // A new id counts, and another consumer processes the same id on its own.
    let second = order_created("event-2", "alice", "EUR", 100);
    assert_eq!(
        add_order(&inbox, &second, &calls).await.unwrap(),
        Processed::Handled(())
    );
    let other_consumer = Inbox::new(db.clone(), "audit-log").unwrap();
    let outcome = other_consumer
        .process("event-1", |_txn| {
            Box::pin(async { Ok::<_, ProjectionError>(7) })
        })
        .await
        .unwrap();
    assert_eq!(outcome, Processed::Handled(7));
    assert_eq!(inbox_rows(&db).await, 3);
    let totals = user_totals(&db, "alice", "EUR").await.unwrap();
    assert_eq!(totals.order_count, 2);
    assert_eq!(totals.total_amount, 2600);
}

async fn inbox_handler_error_rolls_back(db: DatabaseConnection) {
    let inbox = Inbox::new(db.clone(), CONSUMER).unwrap();
    let order = order_created("event-1", "alice", "EUR", 2500);

    // The handler writes, then fails: its write must go with the inbox row.
    let failing = order.clone();
    let error = inbox
        .process("event-1", move |txn| {
            Box::pin(async move {
                add_to_user_totals(txn, &failing).await.unwrap();
                Err::<(), _>("downstream check failed".to_string())
            })
        })
        .await
        .unwrap_err();

    assert!(
        matches!(&error, InboxError::Handler(message) if message == "downstream check failed"),
        "{error}"
    );
    assert!(!error.is_transient());
    assert_eq!(inbox_rows(&db).await, 0);
    assert!(user_totals(&db, "alice", "EUR").await.is_none());

    // Nothing was recorded, so the next delivery is processed afresh.
    let calls = Arc::new(AtomicUsize::new(0));
    let retry = add_order(&inbox, &order, &calls).await.unwrap();
    assert_eq!(retry, Processed::Handled(()));
    assert_eq!(
        user_totals(&db, "alice", "EUR").await.unwrap().order_count,
        1
    );
}

async fn inbox_concurrent_same_id_once(db: DatabaseConnection) {
    const DELIVERIES: usize = 8;
    let inbox = Inbox::new(db.clone(), CONSUMER).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let order = order_created("event-1", "alice", "EUR", 2500);
    let start = Arc::new(tokio::sync::Barrier::new(DELIVERIES));

    let deliveries: Vec<_> = (0..DELIVERIES)
        .map(|_| {
            let (inbox, order, calls, start) =
                (inbox.clone(), order.clone(), calls.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                add_order(&inbox, &order, &calls).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for delivery in deliveries {
        outcomes.push(
            delivery
                .await
                .expect("task finishes")
                .expect("processing succeeds"),
        );
    }

    let handled = outcomes
        .iter()
        .filter(|outcome| **outcome == Processed::Handled(()))
        .count();
    assert_eq!(handled, 1, "{outcomes:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(inbox_rows(&db).await, 1);
    let totals = user_totals(&db, "alice", "EUR").await.unwrap();
    assert_eq!(totals.order_count, 1);
    assert_eq!(totals.total_amount, 2500);
}

/// Waits until some session waits for a lock, on PostgreSQL; SQLite shows no such state, so
/// there the second delivery may also start after the first one ended.
async fn wait_for_lock_waiter(db: &DatabaseConnection) {
    if db.get_database_backend() != DbBackend::Postgres {
        return;
    }
    let waiting = testkit::wait_until(Duration::from_secs(10), || async {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS waiting FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            ))
            .await
            .expect("pg_stat_activity query succeeds")
            .expect("count returns a row");
        row.try_get::<i64>("", "waiting")
            .expect("count is an integer")
            > 0
    })
    .await;
    assert!(
        waiting,
        "the second delivery waits for the first one's inbox row"
    );
}

/// A delivery of `event-1` whose handler keeps the transaction open until `release` sends
/// whether the handler succeeds. `handler_running` fires when the handler starts.
struct HeldDelivery {
    release: tokio::sync::oneshot::Sender<bool>,
    handler_running: tokio::sync::oneshot::Receiver<()>,
    task: tokio::task::JoinHandle<Result<Processed<()>, InboxError<String>>>,
}

fn held_delivery(inbox: &Inbox, calls: &Arc<AtomicUsize>) -> HeldDelivery {
    let (release, released) = tokio::sync::oneshot::channel::<bool>();
    let (entered, handler_running) = tokio::sync::oneshot::channel::<()>();
    let (inbox, calls) = (inbox.clone(), calls.clone());
    let task = tokio::spawn(async move {
        inbox
            .process("event-1", move |_txn| {
                Box::pin(async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    entered.send(()).expect("test waits for the handler");
                    match released.await {
                        Ok(true) => Ok(()),
                        _ => Err("released with failure".to_string()),
                    }
                })
            })
            .await
    });
    HeldDelivery {
        release,
        handler_running,
        task,
    }
}

async fn inbox_waiting_delivery_sees_outcome(db: DatabaseConnection) {
    let inbox = Inbox::new(db.clone(), CONSUMER).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));

    // The first delivery fails while a second one waits: the second one processes.
    let HeldDelivery {
        release,
        handler_running,
        task: first,
    } = held_delivery(&inbox, &calls);
    handler_running.await.expect("first handler runs");
    let HeldDelivery {
        release: release_second,
        handler_running: second_running,
        task: second,
    } = held_delivery(&inbox, &calls);
    wait_for_lock_waiter(&db).await;
    release.send(false).expect("first delivery waits");
    let first = first.await.unwrap();
    assert!(matches!(first, Err(InboxError::Handler(_))), "{first:?}");
    second_running
        .await
        .expect("second handler runs after the rollback");
    release_second.send(true).expect("second delivery waits");
    assert_eq!(second.await.unwrap().unwrap(), Processed::Handled(()));

    // The id is now recorded, so a third delivery is a duplicate. Its channels are dropped at
    // once, so a handler that ran by mistake fails instead of waiting forever.
    let third = held_delivery(&inbox, &calls).task;
    assert_eq!(third.await.unwrap().unwrap(), Processed::Duplicate);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(inbox_rows(&db).await, 1);
}

async fn inbox_waiting_duplicate_is_skipped(db: DatabaseConnection) {
    let inbox = Inbox::new(db.clone(), CONSUMER).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));

    let HeldDelivery {
        release,
        handler_running,
        task: first,
    } = held_delivery(&inbox, &calls);
    handler_running.await.expect("first handler runs");
    // The second delivery's channels are dropped at once, so its handler fails if it runs.
    let second = held_delivery(&inbox, &calls).task;
    wait_for_lock_waiter(&db).await;
    release.send(true).expect("first delivery waits");

    assert_eq!(first.await.unwrap().unwrap(), Processed::Handled(()));
    assert_eq!(second.await.unwrap().unwrap(), Processed::Duplicate);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

async fn inbox_rejects_invalid_keys(db: DatabaseConnection) {
    let empty = Inbox::new(db.clone(), "").unwrap_err();
    assert_eq!(empty.field, "consumer");
    let inbox = Inbox::new(db.clone(), CONSUMER).unwrap();

    let long_id = "x".repeat(MAX_INBOX_KEY_CHARS + 1);
    let error = inbox
        .process(&long_id, |_txn| Box::pin(async { Ok::<_, String>(()) }))
        .await
        .unwrap_err();

    assert!(matches!(error, InboxError::InvalidMessageId(_)), "{error}");
    assert!(error.to_string().contains("message_id"), "{error}");
    assert_eq!(inbox_rows(&db).await, 0);
}

async fn user_totals_add_per_currency(db: DatabaseConnection) {
    let inbox = Inbox::new(db.clone(), CONSUMER).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let orders = [
        order_created("event-1", "alice", "EUR", 2500),
        order_created("event-2", "alice", "EUR", 199),
        order_created("event-3", "alice", "USD", 1000),
        order_created("event-4", "bob", "EUR", 0),
    ];

    for order in &orders {
        add_order(&inbox, order, &calls).await.unwrap();
    }

    let alice_eur = user_totals(&db, "alice", "EUR").await.unwrap();
    assert_eq!(alice_eur.order_count, 2);
    assert_eq!(alice_eur.total_amount, 2699);
    let alice_usd = user_totals(&db, "alice", "USD").await.unwrap();
    assert_eq!(alice_usd.order_count, 1);
    assert_eq!(alice_usd.total_amount, 1000);
    let bob_eur = user_totals(&db, "bob", "EUR").await.unwrap();
    assert_eq!(bob_eur.order_count, 1);
    assert_eq!(bob_eur.total_amount, 0);
}

async fn user_totals_overflow_is_rejected(db: DatabaseConnection) {
    let inbox = Inbox::new(db.clone(), CONSUMER).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    add_order(
        &inbox,
        &order_created("event-1", "alice", "EUR", i64::MAX - 10),
        &calls,
    )
    .await
    .unwrap();

    let error = add_order(
        &inbox,
        &order_created("event-2", "alice", "EUR", 11),
        &calls,
    )
    .await
    .unwrap_err();

    assert!(
        matches!(
            error,
            InboxError::Handler(ProjectionError::TotalOverflow { .. })
        ),
        "{error}"
    );
    assert_eq!(
        inbox_rows(&db).await,
        1,
        "the overflowing message is not recorded"
    );
    let totals = user_totals(&db, "alice", "EUR").await.unwrap();
    assert_eq!(totals.order_count, 1);
    assert_eq!(totals.total_amount, i64::MAX - 10);
    let fits = add_order(
        &inbox,
        &order_created("event-3", "alice", "EUR", 10),
        &calls,
    )
    .await;
    assert_eq!(fits.unwrap(), Processed::Handled(()));
    assert_eq!(
        user_totals(&db, "alice", "EUR").await.unwrap().total_amount,
        i64::MAX
    );
}

/// A transaction that took its row id early but commits after newer rows were sent must still
/// be delivered: claims look at row status, not at a high-water mark of sent ids. PostgreSQL
/// only, because SQLite never lets two write transactions overlap.
#[tokio::test]
async fn late_commit_is_still_claimed_postgres() {
    use sea_orm::TransactionTrait;

    let db = postgres().await.db;
    let outbox = SeaOrmOutboxRepo::new(db.clone());
    let late = db.begin().await.unwrap();
    let early_id = outbox_events::Entity::insert(outbox_events::ActiveModel::pending(&bare_event(
        "order-late",
    )))
    .exec(&late)
    .await
    .unwrap()
    .last_insert_id;

    let newer = insert_event(&db, "order-newer").await;
    assert!(newer > early_id, "the open transaction took the lower id");
    let batch = outbox.claim("relay", 10, LEASE).await.unwrap();
    assert_eq!(ids(&batch), vec![newer], "the uncommitted row is invisible");
    outbox.mark_sent("relay", &[newer]).await.unwrap();

    late.commit().await.unwrap();
    let batch = outbox.claim("relay", 10, LEASE).await.unwrap();
    assert_eq!(ids(&batch), vec![early_id]);
}
