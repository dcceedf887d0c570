//! End-to-end tests: the real binaries as processes, a real RabbitMQ, SQLite and PostgreSQL,
//! called through the real grpcurl binary and a tonic client. This file contains the harness, and
//! each module contains the tests of one area.

mod bad_input;
mod consumer;
mod drills;
mod metrics;
mod order_api;
mod outbox_admin;
mod participants;
mod saga;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use api::order::v1::{self as pb, CreateOrderRequest, order_service_client::OrderServiceClient};
use data::entity::{orders, outbox_events};
use sea_orm::{Database, DatabaseConnection, EntityTrait, PaginatorTrait};
use serde_json::Value;
use testkit::{QueueReader, ServiceProcess, required_env, unique_name};
use tonic::transport::Channel;

const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);

fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/config.yaml")
}

/// One isolated deployment: its own database, exchange and queue, and the processes started
/// on them. Processes are stopped with SIGTERM by [`Stack::stop`], which checks they exit 0.
struct Stack {
    env: Vec<(&'static str, String)>,
    database_url: String,
    amqp_url: String,
    exchange: String,
    queue: String,
    processes: Vec<ServiceProcess>,
    _folder: tempfile::TempDir,
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Stack {
    async fn new(backend: Backend, amqp_url: String) -> Self {
        let folder = tempfile::tempdir().expect("temporary folder");
        let database_url = match backend {
            Backend::Sqlite => testkit::sqlite_url(folder.path()),
            Backend::Postgres => testkit::fresh_postgres_database().await,
        };
        let exchange = unique_name("order.events");
        let queue = unique_name("order.events.all");
        let env = vec![
            ("APP__DATA__DATABASE_URL", database_url.clone()),
            ("APP__BROKER__AMQP_URL", amqp_url.clone()),
            ("APP__BROKER__EXCHANGE", exchange.clone()),
            ("APP__BROKER__QUEUE", queue.clone()),
            ("APP__SERVER__GRPC_ADDR", "127.0.0.1:0".to_string()),
            ("APP__OUTBOX__POLL_INTERVAL_MS", "50".to_string()),
        ];
        Self {
            env,
            database_url,
            amqp_url,
            exchange,
            queue,
            processes: Vec::new(),
            _folder: folder,
        }
    }

    fn set(&mut self, key: &'static str, value: &str) {
        self.env.retain(|(existing, _)| *existing != key);
        self.env.push((key, value.to_string()));
    }

    /// Starts order-server and returns its address once it listens.
    async fn start_server(&mut self) -> String {
        let mut server = self.start(env!("CARGO_BIN_EXE_order-server"));
        let addr = server.grpc_addr().await;
        self.processes.push(server);
        addr
    }

    /// Starts a worker binary and waits until its relay loop runs.
    async fn start_worker(&mut self, binary: &str, ready_message: &str) {
        let mut worker = self.start(binary);
        worker
            .wait_for_log(ready_message, Duration::from_secs(60))
            .await;
        self.processes.push(worker);
    }

    async fn start_daemon(&mut self) {
        self.start_worker(env!("CARGO_BIN_EXE_daemon-worker"), "daemon relay started")
            .await;
    }

    fn start(&self, binary: &str) -> ServiceProcess {
        ServiceProcess::start(Path::new(binary), &config_path(), &self.env)
    }

    async fn reader(&self) -> QueueReader {
        QueueReader::bind(&self.amqp_url, &self.exchange, "order.created").await
    }

    async fn db(&self) -> DatabaseConnection {
        Database::connect(&self.database_url)
            .await
            .expect("test database is reachable")
    }

    async fn counts(&self) -> (u64, u64) {
        let db = self.db().await;
        let orders = orders::Entity::find()
            .count(&db)
            .await
            .expect("count orders");
        let events = outbox_events::Entity::find()
            .count(&db)
            .await
            .expect("count events");
        db.close().await.expect("close");
        (orders, events)
    }

    async fn stop(self) {
        for process in self.processes.into_iter().rev() {
            let status = process.terminate().await;
            assert!(
                status.success(),
                "process exited with {status} after SIGTERM"
            );
        }
    }
}

async fn client(addr: &str) -> OrderServiceClient<Channel> {
    OrderServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("order-server accepts connections")
}

fn create_request(request_id: &str, user_id: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        request_id: request_id.into(),
        user_id: user_id.into(),
        currency: "EUR".into(),
        items: vec![
            pb::OrderItem {
                sku: "book".into(),
                quantity: 2,
                unit_price: 1250,
            },
            pb::OrderItem {
                sku: "pen".into(),
                quantity: 3,
                unit_price: 99,
            },
        ],
    }
}

async fn create_order(client: &mut OrderServiceClient<Channel>, request_id: &str) -> pb::Order {
    client
        .create_order(create_request(request_id, "alice"))
        .await
        .expect("CreateOrder succeeds")
        .into_inner()
        .order
        .expect("response carries the order")
}

/// Returns a random UUID that names nothing in any database.
fn uuid_v4() -> String {
    unique_name("x").trim_start_matches("x_").to_string()
}

fn grpcurl(args: &[&str]) -> Value {
    let output = Command::new(required_env("GRPCURL"))
        .args(args)
        .output()
        .expect("grpcurl runs");
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("grpcurl prints JSON")
}

fn message_ids(deliveries: &[lapin::message::Delivery]) -> HashSet<String> {
    deliveries
        .iter()
        .map(|delivery| {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .expect("message_id is set");
            id.to_string()
        })
        .collect()
}

fn payload(delivery: &lapin::message::Delivery) -> Value {
    serde_json::from_slice(&delivery.data).expect("payload is JSON")
}
