//! `make bench`: throughput of the outbox relay, of CreateOrder and of PlaceOrder's saga, each
//! beside its raw ceiling measured in the same run on the same broker and database.
//!
//! - relay: N outbox rows drained by `OutboxDispatcher` (claim, pipelined publish with
//!   publisher confirms, mark sent). Beside it, plain lapin publishes N messages of the same
//!   size in batches of the same size with confirms: what the relay could reach if its
//!   database work were free.
//! - create: `OrderUseCase::create_order` (validation, idempotency look-up, one transaction for
//!   order, items and event) from concurrent tasks, against the same three inserts issued as
//!   raw SQL in one transaction.
//! - saga: PlaceOrder's saga against real inventory-server and payment-server processes, beside
//!   plain gRPC calls and CreateOrder (see the `saga` module).
//!
//! Needs `TEST_AMQP_URL` and `TEST_POSTGRES_URL`, which scripts/bench.sh sets.

mod saga;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use biz::{
    CreateOrder, Currency, DispatchSettings, NewOutboxEvent, Order, OrderItem, OrderUseCase,
    OutboxDispatcher, RequestId, RetryPolicy, UserId,
};
use chrono::Utc;
use data::{AmqpEventPublisher, SeaOrmOrderRepo, SeaOrmOutboxRepo, entity::outbox_events};
use futures::future::join_all;
use lapin::{
    BasicProperties, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, TransactionTrait};
use testkit::{required_env, unique_name};

const BATCH: u32 = 200;

fn count_from_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Peak resident memory of this process in KiB, from /proc/self/status.
fn peak_rss_kib() -> u64 {
    peak_rss_kib_of("/proc/self/status")
}

/// Peak resident memory in KiB from the `VmHWM` line of a /proc/PID/status file, or 0 when the
/// file cannot be read.
fn peak_rss_kib_of(status_path: &str) -> u64 {
    let status = std::fs::read_to_string(status_path).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn sample_order(index: usize) -> CreateOrder {
    CreateOrder::new(
        RequestId::parse(format!("bench-{index}-{}", unique_name("r"))).unwrap(),
        UserId::parse(format!("user-{}", index % 50)).unwrap(),
        Currency::parse("EUR").unwrap(),
        vec![
            OrderItem::parse(0, "book", 2, 1250).unwrap(),
            OrderItem::parse(1, "pen", 3, 99).unwrap(),
        ],
    )
    .unwrap()
}

async fn database(backend: &str) -> (DatabaseConnection, Option<tempfile::TempDir>) {
    let (url, folder) = match backend {
        "sqlite" => {
            let folder = tempfile::tempdir().unwrap();
            (testkit::sqlite_url(folder.path()), Some(folder))
        }
        _ => (testkit::fresh_postgres_database().await, None),
    };
    let config = conf::DataConfig {
        database_url: conf::SecretUrl::new(url),
        max_connections: 16,
        auto_migrate: true,
    };
    let db = data::connect(&config).await.unwrap();
    data::migrate(&db).await.unwrap();
    (db, folder)
}

fn broker_config(exchange: &str, queue: &str) -> conf::BrokerConfig {
    conf::BrokerConfig {
        amqp_url: conf::SecretUrl::new(required_env("TEST_AMQP_URL")),
        exchange: exchange.into(),
        queue: queue.into(),
        queue_type: "classic".into(),
        app_id: "bench".into(),
        confirm_timeout_ms: 30_000,
        max_message_bytes: 128 * 1024 * 1024,
    }
}

async fn seed_outbox(db: &DatabaseConnection, count: usize) -> usize {
    let sample = Order::place(sample_order(0), Utc::now());
    let mut payload_size = 0;
    let txn = db.begin().await.unwrap();
    for chunk_start in (0..count).step_by(500) {
        let rows = (chunk_start..(chunk_start + 500).min(count)).map(|index| {
            let mut event = NewOutboxEvent::order_created(&sample);
            event.aggregate_id = format!("order-{index}");
            payload_size = serde_json::to_vec(&event.payload).unwrap().len();
            outbox_events::ActiveModel::pending(&event)
        });
        outbox_events::Entity::insert_many(rows)
            .exec_without_returning(&txn)
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();
    payload_size
}

/// Drains `count` seeded events through the relay and returns the elapsed time.
async fn relay_run(backend: &str, count: usize) -> (Duration, usize) {
    let (db, _folder) = database(backend).await;
    let payload_size = seed_outbox(&db, count).await;
    let publisher =
        AmqpEventPublisher::new(broker_config(&unique_name("bench"), &unique_name("bench")));
    publisher.connect().await.unwrap();
    let dispatcher = OutboxDispatcher::new(
        Arc::new(SeaOrmOutboxRepo::new(db.clone())),
        Arc::new(publisher),
        DispatchSettings {
            relay_id: "bench".into(),
            batch_size: BATCH,
            lease: Duration::from_secs(30),
            retry: RetryPolicy {
                max_attempts: 3,
                min_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(10),
            },
        },
    );

    let start = Instant::now();
    let report = dispatcher.drain(usize::MAX, || false).await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(report.sent, count, "every seeded event is sent");
    db.close().await.unwrap();
    (elapsed, payload_size)
}

/// Publishes `count` messages of `size` bytes like the relay does, with nothing else to do.
async fn raw_publish(count: usize, size: usize) -> Duration {
    let connection = Connection::connect(
        &required_env("TEST_AMQP_URL"),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let exchange = unique_name("raw");
    let queue = unique_name("raw");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let body = vec![b'x'; size];
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };

    let start = Instant::now();
    for batch_start in (0..count).step_by(BATCH as usize) {
        let mut confirms = Vec::new();
        for _ in batch_start..(batch_start + BATCH as usize).min(count) {
            let properties = BasicProperties::default().with_delivery_mode(2);
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    "order.created".into(),
                    mandatory,
                    &body,
                    properties,
                )
                .await
                .unwrap();
            confirms.push(confirm);
        }
        for confirmation in join_all(confirms).await {
            assert!(confirmation.unwrap().is_ack());
        }
    }
    let elapsed = start.elapsed();
    connection.close(0, "done".into()).await.unwrap();
    elapsed
}

/// Creates `count` orders from `concurrency` tasks through the use case.
async fn create_run(db: &DatabaseConnection, count: usize, concurrency: usize) -> Duration {
    let usecase = Arc::new(OrderUseCase::new(Arc::new(SeaOrmOrderRepo::new(
        db.clone(),
    ))));
    let requests: Vec<CreateOrder> = (0..count).map(sample_order).collect();
    let chunks: Vec<Vec<CreateOrder>> = requests
        .chunks(count.div_ceil(concurrency))
        .map(<[CreateOrder]>::to_vec)
        .collect();
    let start = Instant::now();
    let tasks = chunks.into_iter().map(|chunk| {
        let usecase = usecase.clone();
        tokio::spawn(async move {
            for request in chunk {
                usecase.create_order(request).await.unwrap();
            }
        })
    });
    for task in join_all(tasks).await {
        task.unwrap();
    }
    start.elapsed()
}

/// Inserts the same rows as a create as raw SQL, in one transaction per order.
async fn raw_insert_run(db: &DatabaseConnection, count: usize, concurrency: usize) -> Duration {
    let postgres = db.get_database_backend() == sea_orm::DbBackend::Postgres;
    let start = Instant::now();
    let tasks = (0..concurrency).map(|task| {
        let db = db.clone();
        let per_task = count.div_ceil(concurrency);
        tokio::spawn(async move {
            for index in 0..per_task {
                let order_id = uuid::Uuid::now_v7();
                let event_id = uuid::Uuid::new_v4();
                let now = Utc::now().to_rfc3339();
                let (id, eid) = if postgres {
                    (format!("'{order_id}'"), format!("'{event_id}'"))
                } else {
                    (format!("x'{}'", order_id.simple()), format!("x'{}'", event_id.simple()))
                };
                let txn = db.begin().await.unwrap();
                txn.execute_unprepared(&format!(
                    "INSERT INTO orders (id, request_id, user_id, status, currency, total_amount, version, created_at, updated_at) \
                     VALUES ({id}, 'raw-{task}-{index}-{order_id}', 'user', 'PENDING', 'EUR', 2797, 1, '{now}', '{now}')"
                ))
                .await
                .unwrap();
                txn.execute_unprepared(&format!(
                    "INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price) \
                     VALUES ({id}, 0, 'book', 2, 1250), ({id}, 1, 'pen', 3, 99)"
                ))
                .await
                .unwrap();
                txn.execute_unprepared(&format!(
                    "INSERT INTO outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload, headers, status, retry_count, created_at, updated_at) \
                     VALUES ({eid}, 'order', '{order_id}', 'OrderCreated', '{{}}', '{{\"routing_key\":\"order.created\"}}', 'PENDING', 0, '{now}', '{now}')"
                ))
                .await
                .unwrap();
                txn.commit().await.unwrap();
            }
        })
    });
    for task in join_all(tasks).await {
        task.unwrap();
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let events = count_from_env("BENCH_EVENTS", 10_000);
    let orders = count_from_env("BENCH_ORDERS", 2_000);
    let concurrency = count_from_env("BENCH_CONCURRENCY", 8);
    let sagas = count_from_env("BENCH_SAGAS", 500);
    let saga_concurrency = count_from_env("BENCH_SAGA_CONCURRENCY", 8);
    println!("| benchmark | backend | count | elapsed (s) | per second |");
    println!("|---|---|---|---|---|");

    for backend in ["sqlite", "postgres"] {
        let (elapsed, size) = relay_run(backend, events).await;
        println!(
            "| relay: dispatcher drain, batch {BATCH} | {backend} | {events} | {:.2} | {:.0} |",
            elapsed.as_secs_f64(),
            rate(events, elapsed)
        );
        let raw = raw_publish(events, size).await;
        println!(
            "| ceiling: lapin publish, {size} B, batch {BATCH}, confirms | rabbitmq | {events} | {:.2} | {:.0} |",
            raw.as_secs_f64(),
            rate(events, raw)
        );
    }
    for backend in ["sqlite", "postgres"] {
        let (db, _folder) = database(backend).await;
        let elapsed = create_run(&db, orders, concurrency).await;
        println!(
            "| create: OrderUseCase, {concurrency} tasks | {backend} | {orders} | {:.2} | {:.0} |",
            elapsed.as_secs_f64(),
            rate(orders, elapsed)
        );
        let raw = raw_insert_run(&db, orders, concurrency).await;
        println!(
            "| baseline: raw SQL inserts, {concurrency} tasks | {backend} | {orders} | {:.2} | {:.0} |",
            raw.as_secs_f64(),
            rate(orders, raw)
        );
        db.close().await.unwrap();
    }
    let mut participant_memory = Vec::new();
    for backend in ["sqlite", "postgres"] {
        participant_memory.extend(saga::saga_rows(backend, sagas, saga_concurrency).await);
    }
    println!();
    println!(
        "peak resident memory of the benchmark process: {} MiB",
        peak_rss_kib() / 1024
    );
    for line in participant_memory {
        println!("peak resident memory of {line}");
    }
}
