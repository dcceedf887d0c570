//! Fault drills for the delivery guarantees: relays killed, stopped or run three at once, a
//! poison event, and broker and database outages under load. They assert counts, never timings.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use biz::NewOutboxEvent;
use data::entity::outbox_events::{self, STATUS_DEAD, STATUS_SENT};
use lapin::{
    Connection, ConnectionProperties, message::Delivery, options::QueueDeclareOptions,
    types::FieldTable,
};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect,
    TransactionTrait,
};
use serde_json::json;
use testkit::{PostgresNode, QueueReader, RabbitNode, ServiceProcess, required_env, wait_until};
use tokio::task::JoinHandle;
use tonic::{Code, Status};
use uuid::Uuid;

use super::*;

const DAEMON: &str = env!("CARGO_BIN_EXE_daemon-worker");
const DAEMON_READY: &str = "daemon relay started";
const CRON: &str = env!("CARGO_BIN_EXE_cron-worker");
const CRON_READY: &str = "cron relay started";

/// Upper bound for a backlog of a few thousand events to drain. Generous because the drills
/// share two cores with the other end-to-end tests; no assertion depends on it otherwise.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);
/// Upper bound for reading a whole queue back.
const READ_DEADLINE: Duration = Duration::from_secs(120);
/// Rows per INSERT statement: 16 columns each stay far below PostgreSQL's 65,535 parameters.
const INSERT_CHUNK: usize = 500;

// ---------------------------------------------------------------------------------------------
// Seeding and inspecting the outbox

/// A seeded outbox row: the aggregate it belongs to and its position among that aggregate's
/// events, from 0.
#[derive(Clone, Debug)]
struct SeededEvent {
    event_id: Uuid,
    aggregate_id: String,
    sequence: usize,
}

/// Opens the stack's database the way the service does (WAL on SQLite) and applies the
/// migrations, so that rows can be seeded before any process starts.
async fn open_migrated(stack: &Stack) -> DatabaseConnection {
    let config = conf::DataConfig {
        database_url: conf::SecretUrl::new(stack.database_url.clone()),
        max_connections: 4,
        auto_migrate: true,
    };
    let db = data::connect(&config)
        .await
        .expect("test database is reachable");
    data::migrate(&db).await.expect("migrations apply");
    db
}

fn outbox_row(event_id: Uuid, aggregate_id: &str, payload: Value) -> outbox_events::ActiveModel {
    outbox_events::ActiveModel::pending(&NewOutboxEvent {
        event_id,
        aggregate_type: "order".into(),
        aggregate_id: aggregate_id.into(),
        event_type: "OrderCreated".into(),
        routing_key: "order.created".into(),
        payload,
        occurred_at: chrono::Utc::now(),
    })
}

/// Inserts `rows` in one transaction, in order, so that their ids follow that order.
async fn insert_rows(db: &DatabaseConnection, rows: Vec<outbox_events::ActiveModel>) {
    let txn = db.begin().await.expect("transaction begins");
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(INSERT_CHUNK).collect();
        outbox_events::Entity::insert_many(chunk)
            .exec_without_returning(&txn)
            .await
            .expect("seeded rows insert");
    }
    txn.commit().await.expect("seeded rows commit");
}

/// Builds `aggregates × per_aggregate` pending events, sequence by sequence, so that the
/// aggregates interleave as in real traffic and each aggregate's ids follow its sequence.
fn seed_plan(prefix: &str, aggregates: usize, per_aggregate: usize) -> Vec<SeededEvent> {
    let mut plan = Vec::with_capacity(aggregates * per_aggregate);
    for sequence in 0..per_aggregate {
        for aggregate in 0..aggregates {
            plan.push(SeededEvent {
                event_id: Uuid::new_v4(),
                aggregate_id: format!("{prefix}-{aggregate}"),
                sequence,
            });
        }
    }
    plan
}

fn seeded_payload(event: &SeededEvent) -> Value {
    json!({
        "event_id": event.event_id,
        "order_id": event.aggregate_id,
        "sequence": event.sequence,
        "status": "PENDING",
    })
}

/// Seeds the events of [`seed_plan`] straight into the outbox and returns them in id order.
async fn seed_events(
    db: &DatabaseConnection,
    prefix: &str,
    aggregates: usize,
    per_aggregate: usize,
) -> Vec<SeededEvent> {
    let plan = seed_plan(prefix, aggregates, per_aggregate);
    let rows = plan
        .iter()
        .map(|event| outbox_row(event.event_id, &event.aggregate_id, seeded_payload(event)))
        .collect();
    insert_rows(db, rows).await;
    plan
}

async fn count_unsent(db: &DatabaseConnection) -> u64 {
    outbox_events::Entity::find()
        .filter(outbox_events::Column::Status.ne(STATUS_SENT))
        .count(db)
        .await
        .expect("count unsent outbox rows")
}

async fn count_status(db: &DatabaseConnection, status: &str) -> u64 {
    outbox_events::Entity::find()
        .filter(outbox_events::Column::Status.eq(status))
        .count(db)
        .await
        .expect("count outbox rows by status")
}

/// Counts the unsent rows that `relay_id` still holds a lease on.
async fn count_leased_by(db: &DatabaseConnection, relay_id: &str) -> u64 {
    outbox_events::Entity::find()
        .filter(outbox_events::Column::LockedBy.eq(relay_id))
        .filter(outbox_events::Column::Status.ne(STATUS_SENT))
        .count(db)
        .await
        .expect("count leased outbox rows")
}

/// Waits until `expected` rows are SENT and returns whether they were before `deadline`.
async fn wait_all_sent(db: &DatabaseConnection, expected: u64, deadline: Duration) -> bool {
    wait_until(deadline, || async {
        count_status(db, STATUS_SENT).await == expected
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Relays

/// Starts a relay binary on the stack's settings, outside `Stack::processes` so the drill can
/// kill or stop it, and returns it with its relay id (the `locked_by` of its leases).
async fn start_relay(stack: &Stack, binary: &str, ready_message: &str) -> (ServiceProcess, String) {
    let mut relay = stack.start(binary);
    let line = relay
        .wait_for_log(ready_message, Duration::from_secs(60))
        .await;
    let relay_id = line["relay_id"]
        .as_str()
        .expect("the ready line carries the relay_id")
        .to_string();
    (relay, relay_id)
}

/// Sums the `sent` counts of a relay's `outbox drained` log lines.
fn events_sent_by(relay: &ServiceProcess) -> u64 {
    relay
        .log_dump()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "outbox drained")
        .filter_map(|line| line["sent"].as_u64())
        .sum()
}

async fn terminate_ok(relay: ServiceProcess) {
    let status = relay.terminate().await;
    assert!(status.success(), "relay exited with {status} after SIGTERM");
}

// ---------------------------------------------------------------------------------------------
// Reading the queue back

/// Returns the number of ready messages in `queue`, through a passive declare.
async fn queue_depth(amqp_url: &str, queue: &str) -> usize {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .expect("test broker is reachable");
    let channel = connection.create_channel().await.expect("channel opens");
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the service queue exists");
    let _ = connection.close(0, "done".into()).await;
    declared.message_count() as usize
}

/// Reads back every message in the service queue. Call it only once every relay has stopped,
/// so that the queue depth is final.
async fn read_whole_queue(amqp_url: &str, queue: &str) -> Vec<Delivery> {
    let depth = queue_depth(amqp_url, queue).await;
    let mut reader = QueueReader::consume(amqp_url, queue).await;
    let received = reader.receive(depth, READ_DEADLINE).await;
    assert_eq!(received.len(), depth, "every queued message was read");
    received
}

/// Returns the event ids of `deliveries` in arrival order, checking that each message_id is
/// the event_id in its payload, for repeats as much as for first deliveries.
fn delivered_event_ids(deliveries: &[Delivery]) -> Vec<Uuid> {
    deliveries
        .iter()
        .map(|delivery| {
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .expect("message_id is set")
                .to_string();
            let body = payload(delivery);
            assert_eq!(
                body["event_id"], message_id,
                "message_id is the payload's event_id"
            );
            Uuid::parse_str(&message_id).expect("message_id is a UUID")
        })
        .collect()
}

/// Counts the deliveries beyond the first of each event.
fn duplicate_count(ids: &[Uuid]) -> usize {
    ids.len() - ids.iter().collect::<HashSet<_>>().len()
}

/// Asserts that the delivered ids are exactly the `expected` events, each at least once.
fn assert_each_delivered(delivered: &[Uuid], expected: impl IntoIterator<Item = Uuid>) {
    let expected: HashSet<Uuid> = expected.into_iter().collect();
    let distinct: HashSet<Uuid> = delivered.iter().copied().collect();
    let missing: Vec<&Uuid> = expected.difference(&distinct).collect();
    assert!(
        missing.is_empty(),
        "{} of {} events never arrived, for example {:?}",
        missing.len(),
        expected.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    let unknown: Vec<&Uuid> = distinct.difference(&expected).collect();
    assert!(
        unknown.is_empty(),
        "{} messages carry unknown event ids, for example {:?}",
        unknown.len(),
        unknown.iter().take(5).collect::<Vec<_>>()
    );
}

/// Returns the aggregates whose first deliveries left sequence order, with the sequence
/// expected and the one that arrived.
fn order_violations(seeded: &[SeededEvent], delivered: &[Uuid]) -> Vec<(String, usize, usize)> {
    let by_id: HashMap<Uuid, &SeededEvent> =
        seeded.iter().map(|event| (event.event_id, event)).collect();
    let mut next_sequence: HashMap<&str, usize> = HashMap::new();
    let mut seen = HashSet::new();
    let mut violations = Vec::new();
    for id in delivered {
        if !seen.insert(*id) {
            continue;
        }
        let event = by_id[id];
        let next = next_sequence.entry(&event.aggregate_id).or_insert(0);
        if event.sequence != *next {
            violations.push((event.aggregate_id.clone(), *next, event.sequence));
        }
        *next = event.sequence + 1;
    }
    violations
}

// ---------------------------------------------------------------------------------------------
// Client load

/// Clients that create orders continuously, each call with a new request id, until
/// [`OrderLoad::finish`]. They record the created order ids and every failed status.
struct OrderLoad {
    stop: Arc<AtomicBool>,
    created: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<Status>>>,
    calls: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

/// Bound on the calls of one load task, so that a load whose stop never comes still ends.
const MAX_CALLS_PER_TASK: usize = 200_000;
/// A call that takes longer counts as failed with `DEADLINE_EXCEEDED`.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

impl OrderLoad {
    fn start(client: &OrderServiceClient<Channel>, prefix: &str, tasks: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let created = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks = (0..tasks)
            .map(|task| {
                let (stop, created, failures, calls) = (
                    stop.clone(),
                    created.clone(),
                    failures.clone(),
                    calls.clone(),
                );
                let mut client = client.clone();
                let prefix = format!("{prefix}-{task}");
                tokio::spawn(async move {
                    for call in 0..MAX_CALLS_PER_TASK {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let request = create_request(&format!("{prefix}-{call}"), "load-user");
                        let outcome =
                            tokio::time::timeout(CALL_TIMEOUT, client.create_order(request)).await;
                        calls.fetch_add(1, Ordering::Relaxed);
                        match outcome {
                            Ok(Ok(response)) => {
                                let order = response.into_inner().order.expect("order returned");
                                created.lock().expect("load lock").push(order.id);
                            }
                            Ok(Err(status)) => {
                                failures.lock().expect("load lock").push(status);
                                // A client backs off after a failure, because the loop would
                                // otherwise spin on an unavailable server. Nothing waits on it.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(_) => failures
                                .lock()
                                .expect("load lock")
                                .push(Status::deadline_exceeded("client-side call timeout")),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            created,
            failures,
            calls,
            tasks,
        }
    }

    fn created(&self) -> usize {
        self.created.lock().expect("load lock").len()
    }

    fn failed(&self) -> usize {
        self.failures.lock().expect("load lock").len()
    }

    /// Waits until `count` more orders than `since` were created; returns whether they were.
    async fn wait_created(&self, since: usize, count: usize, deadline: Duration) -> bool {
        wait_until(deadline, || async { self.created() >= since + count }).await
    }

    /// Stops the clients after their call in flight and returns the created order ids and
    /// the failed statuses.
    async fn finish(self) -> (Vec<String>, Vec<Status>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load task finishes");
        }
        eprintln!(
            "load: {} calls, {} orders created",
            self.calls.load(Ordering::Relaxed),
            self.created.lock().expect("load lock").len()
        );
        let created = std::mem::take(&mut *self.created.lock().expect("load lock"));
        let failures = std::mem::take(&mut *self.failures.lock().expect("load lock"));
        (created, failures)
    }
}

fn delivered_order_ids(deliveries: &[Delivery]) -> HashSet<String> {
    deliveries
        .iter()
        .map(|delivery| {
            payload(delivery)["order_id"]
                .as_str()
                .expect("payload carries order_id")
                .to_string()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Drills

#[tokio::test]
async fn killed_relay_loses_no_event() {
    const AGGREGATES: usize = 300;
    const PER_AGGREGATE: usize = 10;
    let events = (AGGREGATES * PER_AGGREGATE) as u64;
    let mut stack = Stack::new(Backend::Postgres, required_env("TEST_AMQP_URL")).await;
    // A short lease, so the killed relay's claims expire soon, and small batches, so the kill
    // lands with many batches still to go.
    stack.set("APP__OUTBOX__LEASE_SECS", "2");
    stack.set("APP__OUTBOX__BATCH_SIZE", "20");
    let db = open_migrated(&stack).await;
    let seeded = seed_events(&db, "kill", AGGREGATES, PER_AGGREGATE).await;

    let (first, first_id) = start_relay(&stack, DAEMON, DAEMON_READY).await;
    let some_sent = wait_until(DRAIN_DEADLINE, || async {
        count_status(&db, STATUS_SENT).await >= events / 10
    })
    .await;
    assert!(some_sent, "the first relay sent a tenth of the events");
    first.kill().await;
    let sent_at_kill = count_status(&db, STATUS_SENT).await;
    let leased_at_kill = count_leased_by(&db, &first_id).await;
    assert!(
        sent_at_kill < events,
        "the relay was killed with events left ({sent_at_kill} of {events} sent)"
    );

    let restarted = Instant::now();
    let (second, _) = start_relay(&stack, DAEMON, DAEMON_READY).await;
    assert!(
        wait_all_sent(&db, events, DRAIN_DEADLINE).await,
        "every event is SENT after the second relay took over"
    );
    let recovery = restarted.elapsed();
    terminate_ok(second).await;

    let delivered = delivered_event_ids(&read_whole_queue(&stack.amqp_url, &stack.queue).await);
    assert_each_delivered(&delivered, seeded.iter().map(|event| event.event_id));
    let violations = order_violations(&seeded, &delivered);
    assert!(
        violations.is_empty(),
        "first deliveries out of sequence (aggregate, expected, arrived): {:?}",
        &violations[..violations.len().min(5)]
    );
    eprintln!(
        "kill -9 drill (PostgreSQL, lease 2 s, batch 20): {events} events; killed at \
         {sent_at_kill} SENT with {leased_at_kill} rows leased by the dead relay; second relay \
         finished in {:.1} s; {} deliveries, {} duplicates",
        recovery.as_secs_f64(),
        delivered.len(),
        duplicate_count(&delivered)
    );
    db.close().await.expect("close");
    stack.stop().await;
}

#[tokio::test]
async fn terminated_relay_leaves_no_lease() {
    const EVENTS: usize = 3000;
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    // The default 30 s lease: a lease left behind would hold its rows past this drill.
    stack.set("APP__OUTBOX__BATCH_SIZE", "50");
    let db = open_migrated(&stack).await;
    let seeded = seed_events(&db, "term", EVENTS, 1).await;

    let (relay, relay_id) = start_relay(&stack, DAEMON, DAEMON_READY).await;
    let some_sent = wait_until(DRAIN_DEADLINE, || async {
        count_status(&db, STATUS_SENT).await >= EVENTS as u64 / 10
    })
    .await;
    assert!(some_sent, "the relay sent a tenth of the events");
    let status = relay.terminate().await;
    assert!(status.success(), "relay exited with {status} after SIGTERM");
    let sent_at_stop = count_status(&db, STATUS_SENT).await;
    assert!(
        sent_at_stop < EVENTS as u64,
        "SIGTERM arrived with events left ({sent_at_stop} of {EVENTS} sent)"
    );
    assert_eq!(
        count_leased_by(&db, &relay_id).await,
        0,
        "no unsent row is still leased by the stopped relay"
    );

    let (second, _) = start_relay(&stack, DAEMON, DAEMON_READY).await;
    assert!(
        wait_all_sent(&db, EVENTS as u64, DRAIN_DEADLINE).await,
        "every event is SENT after a second relay started"
    );
    terminate_ok(second).await;

    let delivered = delivered_event_ids(&read_whole_queue(&stack.amqp_url, &stack.queue).await);
    assert_each_delivered(&delivered, seeded.iter().map(|event| event.event_id));
    eprintln!(
        "SIGTERM drill (SQLite, batch 50): {EVENTS} events; stopped at {sent_at_stop} SENT; \
         {} deliveries, {} duplicates",
        delivered.len(),
        duplicate_count(&delivered)
    );
    assert_eq!(
        duplicate_count(&delivered),
        0,
        "a relay that finishes its batch on SIGTERM publishes nothing twice"
    );
    db.close().await.expect("close");
    stack.stop().await;
}

#[tokio::test]
async fn broker_outage_under_load_keeps_events() {
    let node = RabbitNode::start().await;
    let mut stack = Stack::new(Backend::Postgres, node.amqp_url()).await;
    // Short retry delays for the batch that was in flight when the broker went away.
    stack.set("APP__OUTBOX__BACKOFF_MIN_MS", "200");
    stack.set("APP__OUTBOX__BACKOFF_MAX_MS", "2000");
    let addr = stack.start_server().await;
    stack.start_daemon().await;
    let client = client(&addr).await;
    let db = stack.db().await;

    let load = OrderLoad::start(&client, "broker-load", 4);
    assert!(
        load.wait_created(0, 100, DRAIN_DEADLINE).await,
        "orders are created before the outage"
    );
    node.stop_app().await;
    let created_at_stop = load.created();
    assert!(
        load.wait_created(created_at_stop, 300, DRAIN_DEADLINE)
            .await,
        "orders are accepted while the broker is down"
    );
    let created_in_outage = load.created() - created_at_stop;
    let unsent_at_outage_end = count_unsent(&db).await;
    node.start_app().await;
    let broker_back = Instant::now();
    let created_at_start = load.created();
    assert!(
        load.wait_created(created_at_start, 100, DRAIN_DEADLINE)
            .await,
        "orders are created after the outage"
    );
    let (created, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "CreateOrder does not depend on the broker, yet {} calls failed, first: {:?}",
        failures.len(),
        failures.first()
    );

    assert!(
        wait_all_sent(&db, created.len() as u64, DRAIN_DEADLINE).await,
        "every event is SENT after the broker is back"
    );
    let drained_after = broker_back.elapsed();
    assert_eq!(count_status(&db, STATUS_DEAD).await, 0, "no event is DEAD");
    db.close().await.expect("close");
    let queue = stack.queue.clone();
    stack.stop().await;

    let deliveries = read_whole_queue(&node.amqp_url(), &queue).await;
    let delivered = delivered_event_ids(&deliveries);
    let created: HashSet<String> = created.into_iter().collect();
    assert_eq!(
        delivered_order_ids(&deliveries),
        created,
        "the queue holds an event for every created order and no other"
    );
    eprintln!(
        "broker outage drill (PostgreSQL, 4 clients): {} orders, {created_in_outage} created \
         while the broker was down, {unsent_at_outage_end} events unsent when it came back; all \
         SENT {:.1} s after start_app returned; {} deliveries, {} duplicates",
        created.len(),
        drained_after.as_secs_f64(),
        delivered.len(),
        duplicate_count(&delivered)
    );
    node.stop().await;
}

#[tokio::test]
async fn database_restart_under_load_keeps_orders() {
    let mut cluster = PostgresNode::start().await;
    // The SQLite stack only provides the harness; every process runs on the private cluster.
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    stack.database_url = cluster.url();
    stack.set("APP__DATA__DATABASE_URL", &cluster.url());
    // A batch published just before the stop cannot be marked SENT; a short lease lets the
    // relay publish it again soon after the restart instead of after the default 30 s.
    stack.set("APP__OUTBOX__LEASE_SECS", "3");
    let addr = stack.start_server().await;
    stack.start_daemon().await;
    let client = client(&addr).await;

    let load = OrderLoad::start(&client, "db-load", 4);
    assert!(
        load.wait_created(0, 100, DRAIN_DEADLINE).await,
        "orders are created before the restart"
    );
    cluster.stop().await;
    let failed_at_stop = load.failed();
    assert!(
        wait_until(DRAIN_DEADLINE, || async {
            load.failed() >= failed_at_stop + 20
        })
        .await,
        "calls fail while the database is down"
    );
    cluster.start_again().await;
    let database_back = Instant::now();
    let created_at_start = load.created();
    assert!(
        load.wait_created(created_at_start, 1, DRAIN_DEADLINE).await,
        "calls succeed again after the restart"
    );
    let first_success_after = database_back.elapsed();
    assert!(
        load.wait_created(created_at_start, 100, DRAIN_DEADLINE)
            .await,
        "calls keep succeeding after the restart"
    );
    let (created, failures) = load.finish().await;
    let other_codes: Vec<&Status> = failures
        .iter()
        .filter(|status| status.code() != Code::Unavailable)
        .collect();
    assert!(
        other_codes.is_empty(),
        "{} of {} failures are not UNAVAILABLE, first: {:?}",
        other_codes.len(),
        failures.len(),
        other_codes.first()
    );

    let db = stack.db().await;
    let stored_orders: HashSet<String> = orders::Entity::find()
        .select_only()
        .column(orders::Column::Id)
        .into_tuple::<Uuid>()
        .all(&db)
        .await
        .expect("list order ids")
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    let lost: Vec<&String> = created
        .iter()
        .filter(|id| !stored_orders.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged orders are missing, for example {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let event_aggregates: HashSet<String> = outbox_events::Entity::find()
        .select_only()
        .column(outbox_events::Column::AggregateId)
        .into_tuple::<String>()
        .all(&db)
        .await
        .expect("list event aggregates")
        .into_iter()
        .collect();
    let (order_rows, event_rows) = stack.counts().await;
    assert_eq!(order_rows, event_rows, "one outbox row per order");
    assert_eq!(
        event_aggregates, stored_orders,
        "every order has its event and every event its order"
    );
    assert!(
        wait_all_sent(&db, event_rows, DRAIN_DEADLINE).await,
        "every event is SENT after the restart"
    );
    db.close().await.expect("close");
    let (amqp_url, queue) = (stack.amqp_url.clone(), stack.queue.clone());
    stack.stop().await;

    let deliveries = read_whole_queue(&amqp_url, &queue).await;
    let delivered = delivered_event_ids(&deliveries);
    assert_eq!(
        delivered_order_ids(&deliveries),
        stored_orders,
        "every stored order's event was published"
    );
    eprintln!(
        "database restart drill (private PostgreSQL, 4 clients): {} orders acknowledged, \
         {order_rows} stored; {} calls failed, all UNAVAILABLE; first success {:.1} s after \
         the cluster was back; {} deliveries, {} duplicates",
        created.len(),
        failures.len(),
        first_success_after.as_secs_f64(),
        delivered.len(),
        duplicate_count(&delivered)
    );
    cluster.stop().await;
}

#[tokio::test]
async fn three_relays_keep_aggregate_order() {
    const AGGREGATES: usize = 2000;
    const PER_AGGREGATE: usize = 10;
    let events = (AGGREGATES * PER_AGGREGATE) as u64;
    let mut stack = Stack::new(Backend::Postgres, required_env("TEST_AMQP_URL")).await;
    stack.set("APP__OUTBOX__CRON_SCHEDULE", "* * * * * *");
    let db = open_migrated(&stack).await;
    let seeded = seed_events(&db, "three", AGGREGATES, PER_AGGREGATE).await;

    // Spawn all three before waiting for any, so that they compete from the start.
    let started = Instant::now();
    let mut relays = vec![stack.start(DAEMON), stack.start(DAEMON), stack.start(CRON)];
    for (relay, ready) in relays
        .iter_mut()
        .zip([DAEMON_READY, DAEMON_READY, CRON_READY])
    {
        relay.wait_for_log(ready, Duration::from_secs(60)).await;
    }
    assert!(
        wait_all_sent(&db, events, Duration::from_secs(240)).await,
        "three relays send every event"
    );
    let drained_in = started.elapsed();
    let shares: Vec<u64> = relays.iter().map(events_sent_by).collect();
    for relay in relays {
        terminate_ok(relay).await;
    }

    let delivered = delivered_event_ids(&read_whole_queue(&stack.amqp_url, &stack.queue).await);
    assert_each_delivered(&delivered, seeded.iter().map(|event| event.event_id));
    let violations = order_violations(&seeded, &delivered);
    assert!(
        violations.is_empty(),
        "first deliveries out of sequence (aggregate, expected, arrived): {:?}",
        &violations[..violations.len().min(5)]
    );
    eprintln!(
        "three relays drill (PostgreSQL, batch 200): {events} events over {AGGREGATES} \
         aggregates drained in {:.1} s; sent by daemon, daemon, cron: {shares:?}; \
         {} deliveries, {} duplicates",
        drained_in.as_secs_f64(),
        delivered.len(),
        duplicate_count(&delivered)
    );
    db.close().await.expect("close");
    stack.stop().await;
}

#[tokio::test]
async fn oversized_event_goes_dead_alone() {
    const EVENTS_EACH_SIDE: usize = 1500;
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    stack.set("APP__BROKER__MAX_MESSAGE_BYTES", "4096");
    let db = open_migrated(&stack).await;
    let before = seed_events(&db, "before-poison", EVENTS_EACH_SIDE, 1).await;
    let poison_id = Uuid::new_v4();
    let poison = json!({ "event_id": poison_id, "padding": "x".repeat(64 * 1024) });
    insert_rows(&db, vec![outbox_row(poison_id, "poison", poison)]).await;
    let after = seed_events(&db, "after-poison", EVENTS_EACH_SIDE, 1).await;
    let normal = (2 * EVENTS_EACH_SIDE) as u64;

    let (relay, _) = start_relay(&stack, DAEMON, DAEMON_READY).await;
    assert!(
        wait_until(DRAIN_DEADLINE, || async {
            count_status(&db, STATUS_SENT).await == normal
                && count_status(&db, STATUS_DEAD).await == 1
        })
        .await,
        "every normal event is SENT and one is DEAD"
    );
    terminate_ok(relay).await;

    let row = outbox_events::Entity::find()
        .filter(outbox_events::Column::EventId.eq(poison_id))
        .one(&db)
        .await
        .expect("read the poison row")
        .expect("the poison row exists");
    assert_eq!(row.status, STATUS_DEAD);
    assert_eq!(row.retry_count, 1, "the poison event was tried once");
    let last_error = row.last_error.unwrap_or_default();
    assert!(
        last_error.contains("max_message_bytes"),
        "last_error names the setting: {last_error}"
    );
    assert_eq!(
        count_status(&db, STATUS_DEAD).await,
        1,
        "only the poison event is DEAD"
    );

    let delivered = delivered_event_ids(&read_whole_queue(&stack.amqp_url, &stack.queue).await);
    assert_each_delivered(
        &delivered,
        before.iter().chain(&after).map(|event| event.event_id),
    );
    eprintln!(
        "poison drill (SQLite, max_message_bytes 4096): {normal} normal events delivered with \
         {} duplicates; poison event DEAD after {} attempt: {last_error}",
        duplicate_count(&delivered),
        row.retry_count
    );
    db.close().await.expect("close");
    stack.stop().await;
}

async fn concurrent_creates_with_one_key(backend: Backend, label: &str) {
    const CALLS: usize = 20;
    let mut stack = Stack::new(backend, required_env("TEST_AMQP_URL")).await;
    let addr = stack.start_server().await;
    let client = client(&addr).await;

    let calls = (0..CALLS).map(|_| {
        let mut client = client.clone();
        async move {
            client
                .create_order(create_request("one-key", "alice"))
                .await
        }
    });
    let outcomes = futures::future::join_all(calls).await;
    let mut order_ids = HashSet::new();
    for outcome in outcomes {
        let response = outcome.unwrap_or_else(|status| panic!("{label}: call failed: {status:?}"));
        order_ids.insert(response.into_inner().order.expect("order returned").id);
    }
    assert_eq!(
        order_ids.len(),
        1,
        "{label}: every call returns the same order"
    );
    assert_eq!(
        stack.counts().await,
        (1, 1),
        "{label}: one order row and one outbox row"
    );

    let mut changed = create_request("one-key", "alice");
    changed.items[0].quantity += 1;
    let conflict = client.clone().create_order(changed).await.unwrap_err();
    assert_eq!(
        conflict.code(),
        Code::AlreadyExists,
        "{label}: {conflict:?}"
    );
    assert_eq!(
        stack.counts().await,
        (1, 1),
        "{label}: the conflict wrote nothing"
    );
    stack.stop().await;
}

#[tokio::test]
async fn concurrent_same_key_one_order_postgres() {
    concurrent_creates_with_one_key(Backend::Postgres, "PostgreSQL").await;
}

#[tokio::test]
async fn concurrent_same_key_one_order_sqlite() {
    concurrent_creates_with_one_key(Backend::Sqlite, "SQLite").await;
}

#[test]
fn order_check_flags_swapped_events() {
    let seeded = seed_plan("swap", 2, 3);
    let mut delivered: Vec<Uuid> = seeded.iter().map(|event| event.event_id).collect();
    assert!(order_violations(&seeded, &delivered).is_empty());

    // Sequence-major plan: index 0 is swap-0 #0 and index 2 is swap-0 #1.
    delivered.swap(0, 2);
    let violations = order_violations(&seeded, &delivered);
    assert_eq!(violations.first(), Some(&("swap-0".to_string(), 0, 1)));

    // A late repeat of an earlier event is a duplicate, not an ordering violation.
    let mut repeated: Vec<Uuid> = seeded.iter().map(|event| event.event_id).collect();
    repeated.push(seeded[0].event_id);
    assert!(order_violations(&seeded, &repeated).is_empty());
    assert_eq!(duplicate_count(&repeated), 1);
}
