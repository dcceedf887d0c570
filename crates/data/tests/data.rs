//! Repository, migration and publisher tests against real SQLite, PostgreSQL and RabbitMQ.
//! Every database test runs once per backend, on a database of its own.

use std::{collections::HashSet, sync::Arc, time::Duration};

use biz::{
    CreateOrder, Currency, EventPublisher, NewOutboxEvent, Order, OrderItem, OrderRepo,
    OutboxEvent, OutboxRepo, PageQuery, RepoError, RequestId, UserId,
};
use chrono::Utc;
use data::{
    AmqpEventPublisher, SeaOrmOrderRepo, SeaOrmOutboxRepo,
    entity::{order_items, orders, outbox_events},
};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
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

/// Inserts a bare outbox event for `aggregate_id` and returns its row id.
async fn insert_event(db: &DatabaseConnection, aggregate_id: &str) -> i64 {
    let now = Utc::now();
    let row = outbox_events::ActiveModel {
        id: NotSet,
        event_id: Set(Uuid::new_v4()),
        aggregate_type: Set("order".into()),
        aggregate_id: Set(aggregate_id.into()),
        event_type: Set("OrderCreated".into()),
        payload: Set(json!({ "aggregate_id": aggregate_id })),
        headers: Set(json!({ "routing_key": "order.created" })),
        status: Set("PENDING".into()),
        retry_count: Set(0),
        next_retry_at: Set(None),
        last_error: Set(None),
        locked_by: Set(None),
        locked_until: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        published_at: Set(None),
    };
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
