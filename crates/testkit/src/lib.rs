//! Helpers for the integration tests, which run against the real PostgreSQL and RabbitMQ that
//! `make test` (scripts/test.sh) starts on loopback and describes in environment variables.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

mod postgres;
mod process;

use futures::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use sea_orm::{ConnectionTrait, Database};
use tokio::process::{Child, Command};

pub use postgres::PostgresNode;
pub use process::ServiceProcess;

/// Returns the environment variable `name`, which `make test` sets.
///
/// # Panics
///
/// Panics with instructions when it is missing: these tests need the real services.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set; run the tests with `make test`, which starts PostgreSQL and RabbitMQ")
    })
}

/// Returns a name unique to this call, usable in database, exchange and queue names.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Creates an empty PostgreSQL database on the test cluster and returns its URL.
pub async fn fresh_postgres_database() -> String {
    let admin_url = required_env("TEST_POSTGRES_URL");
    let name = unique_name("test");
    let admin = Database::connect(&admin_url)
        .await
        .expect("test PostgreSQL cluster is reachable");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE succeeds");
    admin.close().await.expect("admin connection closes");
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("TEST_POSTGRES_URL ends with a database name");
    format!("{base}/{name}")
}

/// Returns the URL of a SQLite file in `folder`, created on first connect.
pub fn sqlite_url(folder: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", folder.join("order.db").display())
}

/// Polls `condition` every 50 ms until it is true or `deadline` passes, and returns whether it
/// became true.
pub async fn wait_until<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A queue bound to a topic exchange, for reading what the relays published.
pub struct QueueReader {
    _connection: Connection,
    channel: Channel,
    consumer: Consumer,
}

impl QueueReader {
    /// Declares `exchange` (durable topic, as the service does) and a durable queue bound to it
    /// with `binding`, and starts consuming.
    pub async fn bind(amqp_url: &str, exchange: &str, binding: &str) -> Self {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .expect("test broker is reachable");
        let channel = connection.create_channel().await.expect("channel opens");
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("exchange declares");
        let queue = unique_name("reader");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .expect("queue declares");
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue binds");
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "testkit".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consumer starts");
        Self {
            _connection: connection,
            channel,
            consumer,
        }
    }

    /// Consumes from an existing queue, such as the one the service declares.
    pub async fn consume(amqp_url: &str, queue: &str) -> Self {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .expect("test broker is reachable");
        let channel = connection.create_channel().await.expect("channel opens");
        let consumer = channel
            .basic_consume(
                queue.into(),
                "testkit".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consumer starts");
        Self {
            _connection: connection,
            channel,
            consumer,
        }
    }

    /// Receives and acknowledges messages until `count` arrived or `deadline` passed.
    pub async fn receive(&mut self, count: usize, deadline: Duration) -> Vec<Delivery> {
        let mut received = Vec::with_capacity(count);
        let end = tokio::time::Instant::now() + deadline;
        while received.len() < count {
            let next = tokio::time::timeout_at(end, self.consumer.next()).await;
            let Ok(Some(Ok(delivery))) = next else {
                break;
            };
            delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack succeeds");
            received.push(delivery);
        }
        received
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// A private RabbitMQ node for tests that take the broker down, started through
/// `scripts/rabbitmq.sh` in a scratch folder and stopped on [`RabbitNode::stop`] or drop.
pub struct RabbitNode {
    folder: tempfile::TempDir,
    server: Option<Child>,
    pub port: u16,
}

fn rabbitmq_script() -> PathBuf {
    PathBuf::from(required_env("RABBITMQ_SCRIPT"))
}

/// Returns a TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("an ephemeral port is available")
}

impl RabbitNode {
    /// Starts a node and waits until it accepts AMQP connections.
    pub async fn start() -> Self {
        let folder = tempfile::Builder::new()
            .prefix("rabbitmq-")
            .tempdir()
            .expect("scratch folder is created");
        let port = free_port();
        let dist_port = free_port();
        let server = Command::new(rabbitmq_script())
            .arg("run")
            .arg(folder.path())
            .arg(port.to_string())
            .arg(dist_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("scripts/rabbitmq.sh starts");
        let node = Self {
            folder,
            server: Some(server),
            port,
        };
        node.script(&["wait", &node.folder_arg(), "90"]).await;
        node
    }

    fn folder_arg(&self) -> String {
        self.folder.path().display().to_string()
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    async fn script(&self, args: &[&str]) {
        let status = Command::new(rabbitmq_script())
            .args(args)
            .stdout(Stdio::null())
            .status()
            .await
            .expect("scripts/rabbitmq.sh runs");
        assert!(
            status.success(),
            "scripts/rabbitmq.sh {args:?} failed: {status}"
        );
    }

    /// Stops the broker application, keeping the node: connections drop and new ones fail.
    pub async fn stop_app(&self) {
        self.script(&["ctl", &self.folder_arg(), "stop_app"]).await;
    }

    /// Starts the broker application again after [`Self::stop_app`].
    pub async fn start_app(&self) {
        self.script(&["ctl", &self.folder_arg(), "start_app"]).await;
        self.script(&["wait", &self.folder_arg(), "90"]).await;
    }

    /// Stops the node and waits for its process to exit.
    pub async fn stop(mut self) {
        self.script(&["stop", &self.folder_arg()]).await;
        if let Some(mut server) = self.server.take() {
            let _ = server.wait().await;
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        // A test that panicked before `stop` still ends the node; `kill_on_drop` only signals
        // the script, so ask the node itself to stop as well.
        if let Some(mut server) = self.server.take() {
            let _ = std::process::Command::new(rabbitmq_script())
                .arg("stop")
                .arg(self.folder.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = server.start_kill();
        }
    }
}
