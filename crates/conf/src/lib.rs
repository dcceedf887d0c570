//! Typed configuration for every binary: `configs/config.yaml` (or the file given with
//! `-conf`) first, then `APP__SECTION__KEY` environment variables on top.

mod secret;

use std::{ffi::OsString, io, net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

pub use secret::SecretUrl;

/// Prefix of environment overrides: `APP__DATA__DATABASE_URL` sets `data.database_url`.
pub const ENV_PREFIX: &str = "APP";

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration in {path}: {source}")]
pub struct ConfigError {
    path: String,
    #[source]
    source: Box<config::ConfigError>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub data: DataConfig,
    pub broker: BrokerConfig,
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub consumer: ConsumerConfig,
    #[serde(default)]
    pub saga: SagaConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the gRPC server binds; port 0 picks a free port.
    pub grpc_addr: SocketAddr,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `sqlite://PATH?mode=rwc` or `postgres://USER:PASSWORD@HOST:PORT/DB`.
    pub database_url: SecretUrl,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Apply pending migrations when a process starts.
    #[serde(default = "default_true")]
    pub auto_migrate: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `amqp://USER:PASSWORD@HOST:PORT/VHOST`; the default vhost `/` is written `%2f`.
    pub amqp_url: SecretUrl,
    /// Durable topic exchange that receives every event.
    pub exchange: String,
    /// Durable queue bound to the exchange with `#`, so that no event is dropped before a
    /// consumer exists. Empty declares no queue.
    #[serde(default)]
    pub queue: String,
    /// `x-queue-type` of that queue: `classic`, or `quorum` for replicated clusters. It must
    /// match the queue if it exists already.
    #[serde(default = "default_queue_type")]
    pub queue_type: String,
    /// `app_id` property of every published message.
    pub app_id: String,
    /// How long a publish waits for the broker's confirm before it counts as failed.
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
    /// Largest message body the broker accepts: RabbitMQ's `max_message_size`, 128 MiB by
    /// default in 3.8 to 3.13. Larger events go `DEAD` at once instead of being retried.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Events claimed and published per batch.
    pub batch_size: u32,
    /// How long a relay owns the rows it claimed; a crashed relay's rows are claimed again
    /// after this, on the database clock.
    pub lease_secs: u64,
    /// How long daemon-worker sleeps when the outbox is empty.
    pub poll_interval_ms: u64,
    /// Publish attempts per event before it goes `DEAD`.
    pub max_attempts: u32,
    /// First retry delay; each later one doubles, with jitter, up to `backoff_max_ms`.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Cron expression with seconds for cron-worker's dispatch job.
    pub cron_schedule: String,
    /// How long `SENT` rows are kept before cron-worker deletes them.
    #[serde(default = "default_retention_secs")]
    pub retention_secs: u64,
    /// Cron expression with seconds for cron-worker's deletion of old `SENT` rows.
    #[serde(default = "default_cleanup_schedule")]
    pub cleanup_schedule: String,
    /// Rows deleted per statement by the cleanup job, to keep each transaction short.
    #[serde(default = "default_cleanup_batch_size")]
    pub cleanup_batch_size: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `tracing_subscriber::EnvFilter` directives; `RUST_LOG` wins when set.
    #[serde(default = "default_log_filter")]
    pub log_filter: String,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Address of the Prometheus `/metrics` endpoint; absent serves none. Each process needs
    /// its own, such as `APP__TELEMETRY__METRICS_ADDR=127.0.0.1:9101`.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// How often the workers sample the outbox backlog for the metrics.
    #[serde(default = "default_backlog_sample_secs")]
    pub backlog_sample_secs: u64,
}

/// The example consumer, which keeps per-user order totals from `OrderCreated` events.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Durable queue that the consumer declares and binds to `broker.exchange` with the routing
    /// key `order.created`. It must differ from `broker.queue`, so the two do not share messages.
    #[serde(default = "default_consumer_queue")]
    pub queue: String,
    /// Deliveries the broker sends ahead of the acknowledgements (AMQP `basic.qos`).
    #[serde(default = "default_consumer_prefetch")]
    pub prefetch: u16,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            queue: default_consumer_queue(),
            prefetch: default_consumer_prefetch(),
        }
    }
}

/// The order saga: where its participants are, and how long and how often it retries them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SagaConfig {
    /// gRPC address of the inventory service, such as `http://127.0.0.1:9001`.
    pub inventory_url: String,
    /// gRPC address of the payment service, such as `http://127.0.0.1:9002`.
    pub payment_url: String,
    /// Maximum wait for one participant call. A call that takes longer has an unknown outcome
    /// and is repeated.
    pub call_timeout_ms: u64,
    /// How long a forward step (reserve stock, freeze balance) may keep retrying before the
    /// saga gives up and compensates.
    pub step_deadline_ms: u64,
    /// Calls per confirmation or compensation before the saga ends `FAILED`.
    pub max_attempts: u32,
    /// First retry delay; each later one doubles, with jitter, up to `backoff_max_ms`.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// How long a process owns a saga it runs. After a crash, a worker resumes the saga once
    /// this has passed on the database clock. It must exceed `call_timeout_ms` plus
    /// `backoff_max_ms` twice over, since the owner renews it only between calls.
    pub lease_secs: u64,
    /// Longest `wait_timeout` a PlaceOrder call may ask for.
    pub max_wait_secs: u64,
    /// How often daemon-worker looks for sagas to resume.
    pub recovery_interval_ms: u64,
    /// Cron expression with seconds for cron-worker's saga recovery job.
    pub recovery_schedule: String,
    /// Sagas one worker resumes at a time.
    pub recovery_batch_size: u32,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            inventory_url: "http://127.0.0.1:9001".into(),
            payment_url: "http://127.0.0.1:9002".into(),
            call_timeout_ms: 2_000,
            step_deadline_ms: 15_000,
            max_attempts: 60,
            backoff_min_ms: 100,
            backoff_max_ms: 5_000,
            lease_secs: 30,
            max_wait_secs: 60,
            recovery_interval_ms: 1_000,
            recovery_schedule: "*/10 * * * * *".into(),
            recovery_batch_size: 32,
        }
    }
}

impl SagaConfig {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    pub fn step_deadline(&self) -> Duration {
        Duration::from_millis(self.step_deadline_ms)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    pub fn max_wait(&self) -> Duration {
        Duration::from_secs(self.max_wait_secs)
    }

    pub fn recovery_interval(&self) -> Duration {
        Duration::from_millis(self.recovery_interval_ms)
    }

    fn validate(&self) -> Result<(), String> {
        for (key, url) in [
            ("saga.inventory_url", &self.inventory_url),
            ("saga.payment_url", &self.payment_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "{key} is {url:?}; use an address such as http://127.0.0.1:9001"
                ));
            }
        }
        if self.call_timeout_ms == 0 || self.step_deadline_ms == 0 {
            return Err("saga.call_timeout_ms and saga.step_deadline_ms must be at least 1".into());
        }
        if self.max_attempts == 0 || self.recovery_batch_size == 0 {
            return Err("saga.max_attempts and saga.recovery_batch_size must be at least 1".into());
        }
        if self.backoff_min_ms > self.backoff_max_ms {
            return Err(format!(
                "saga.backoff_min_ms ({}) must not exceed saga.backoff_max_ms ({})",
                self.backoff_min_ms, self.backoff_max_ms
            ));
        }
        let busy_ms = self.call_timeout_ms + 2 * self.backoff_max_ms;
        if self.lease_secs.saturating_mul(1000) <= busy_ms {
            return Err(format!(
                "saga.lease_secs ({}) must exceed saga.call_timeout_ms plus twice saga.backoff_max_ms ({busy_ms} ms), or a live saga could be resumed twice",
                self.lease_secs
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: default_log_filter(),
            log_format: LogFormat::default(),
            metrics_addr: None,
            backlog_sample_secs: default_backlog_sample_secs(),
        }
    }
}

impl Config {
    /// Loads `path`, then applies `APP__SECTION__KEY` environment overrides.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError`] when the file is missing or unreadable, a value has the wrong
    /// type, a key is unknown or a required key is absent.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, None)
    }

    fn load_with_env(
        path: &Path,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true);
        if let Some(env) = env {
            environment = environment.source(Some(env));
        }
        let wrap = |source| ConfigError {
            path: path.display().to_string(),
            source: Box::new(source),
        };
        let config = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Yaml))
            .add_source(environment)
            .build()
            .map_err(wrap)?;
        let config: Self = config.try_deserialize().map_err(wrap)?;
        config
            .validate()
            .map_err(|message| wrap(config::ConfigError::Message(message)))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let outbox = &self.outbox;
        if outbox.batch_size == 0 {
            return Err("outbox.batch_size must be at least 1".into());
        }
        if outbox.lease_secs == 0 {
            return Err("outbox.lease_secs must be at least 1".into());
        }
        if self.telemetry.backlog_sample_secs == 0 {
            return Err("telemetry.backlog_sample_secs must be at least 1".into());
        }
        if outbox.cleanup_batch_size == 0 {
            return Err("outbox.cleanup_batch_size must be at least 1".into());
        }
        if outbox.max_attempts == 0 {
            return Err("outbox.max_attempts must be at least 1".into());
        }
        if outbox.backoff_min_ms > outbox.backoff_max_ms {
            return Err(format!(
                "outbox.backoff_min_ms ({}) must not exceed outbox.backoff_max_ms ({})",
                outbox.backoff_min_ms, outbox.backoff_max_ms
            ));
        }
        if self.broker.exchange.is_empty() {
            return Err("broker.exchange must not be empty".into());
        }
        self.consumer.validate(&self.broker)?;
        self.saga.validate()?;
        Ok(())
    }
}

impl DataConfig {
    pub fn is_sqlite(&self) -> bool {
        self.database_url.expose().starts_with("sqlite:")
    }

    /// Creates the folder of a SQLite database file, so that `mode=rwc` can create the file.
    /// Does nothing for other databases and for in-memory SQLite.
    ///
    /// # Errors
    ///
    /// Returns the I/O error when the folder cannot be created.
    pub fn ensure_sqlite_folder(&self) -> io::Result<()> {
        let Some(rest) = self.database_url.expose().strip_prefix("sqlite:") else {
            return Ok(());
        };
        let path = rest.trim_start_matches("//");
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() || path == ":memory:" {
            return Ok(());
        }
        match Path::new(path).parent() {
            Some(folder) if !folder.as_os_str().is_empty() => std::fs::create_dir_all(folder),
            _ => Ok(()),
        }
    }
}

/// Rewrites the Go-style flag `-conf` (as in `-conf PATH` or `-conf=PATH`) to `--conf`, so
/// that clap accepts both spellings.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .map(|arg| match arg.to_str() {
            Some("-conf") => OsString::from("--conf"),
            Some(text) if text.starts_with("-conf=") => OsString::from(format!("-{text}")),
            _ => arg,
        })
        .collect()
}

impl OutboxConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

impl ConsumerConfig {
    fn validate(&self, broker: &BrokerConfig) -> Result<(), String> {
        if self.queue.is_empty() {
            return Err("consumer.queue must not be empty".into());
        }
        if self.queue == broker.queue {
            return Err(format!(
                "consumer.queue must differ from broker.queue (both are {:?}); the consumer would take the events meant for that queue's readers",
                self.queue
            ));
        }
        if self.prefetch == 0 {
            return Err("consumer.prefetch must be at least 1".into());
        }
        Ok(())
    }
}

impl TelemetryConfig {
    pub fn backlog_sample_interval(&self) -> Duration {
        Duration::from_secs(self.backlog_sample_secs)
    }
}

impl BrokerConfig {
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }
}

fn default_max_connections() -> u32 {
    10
}

fn default_true() -> bool {
    true
}

fn default_retention_secs() -> u64 {
    7 * 24 * 3600
}

fn default_cleanup_schedule() -> String {
    "0 */5 * * * *".into()
}

fn default_cleanup_batch_size() -> u32 {
    1000
}

fn default_queue_type() -> String {
    "classic".into()
}

fn default_max_message_bytes() -> usize {
    128 * 1024 * 1024
}

fn default_confirm_timeout_ms() -> u64 {
    30_000
}

fn default_consumer_queue() -> String {
    "order.events.user-order-totals".into()
}

fn default_consumer_prefetch() -> u16 {
    32
}

fn default_backlog_sample_secs() -> u64 {
    15
}

fn default_log_filter() -> String {
    "info".into()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/config.yaml");

    #[test]
    fn shipped_config_loads() {
        let config = Config::load(Path::new(SHIPPED)).expect("configs/config.yaml is valid");

        assert_eq!(config.server.grpc_addr.to_string(), "127.0.0.1:9000");
        assert!(config.data.database_url.expose().starts_with("sqlite://"));
        assert_eq!(config.broker.exchange, "order.events");
        assert_eq!(config.outbox.cron_schedule, "*/10 * * * * *");
    }

    #[test]
    fn environment_overrides_file() {
        let env = HashMap::from([
            ("APP__OUTBOX__BATCH_SIZE".to_string(), "7".to_string()),
            (
                "APP__DATA__DATABASE_URL".to_string(),
                "postgres://order:s3cret@127.0.0.1:5432/orders".to_string(),
            ),
        ]);

        let config = Config::load_with_env(Path::new(SHIPPED), Some(env)).expect("valid");

        assert_eq!(config.outbox.batch_size, 7);
        assert_eq!(
            config.data.database_url.expose(),
            "postgres://order:s3cret@127.0.0.1:5432/orders"
        );
    }

    #[test]
    fn invalid_value_names_the_key() {
        let env = HashMap::from([("APP__OUTBOX__BATCH_SIZE".to_string(), "0".to_string())]);

        let error = Config::load_with_env(Path::new(SHIPPED), Some(env)).unwrap_err();

        assert!(error.to_string().contains("outbox.batch_size"), "{error}");
    }

    #[test]
    fn consumer_section_is_optional() {
        let config = Config::load(Path::new(SHIPPED)).expect("configs/config.yaml is valid");

        assert_eq!(config.consumer.queue, "order.events.user-order-totals");
        assert_eq!(config.consumer.prefetch, 32);
    }

    #[test]
    fn consumer_queue_must_differ() {
        let env = HashMap::from([(
            "APP__CONSUMER__QUEUE".to_string(),
            "order.events.all".to_string(),
        )]);

        let error = Config::load_with_env(Path::new(SHIPPED), Some(env)).unwrap_err();

        assert!(error.to_string().contains("consumer.queue"), "{error}");
    }

    #[test]
    fn saga_lease_shorter_than_backoff_rejected() {
        let env = HashMap::from([
            ("APP__SAGA__LEASE_SECS".to_string(), "5".to_string()),
            ("APP__SAGA__BACKOFF_MAX_MS".to_string(), "3000".to_string()),
        ]);

        let error = Config::load_with_env(Path::new(SHIPPED), Some(env)).unwrap_err();

        assert!(error.to_string().contains("saga.lease_secs"), "{error}");
    }

    #[test]
    fn go_style_conf_flag_is_accepted() {
        let args =
            ["bin", "-conf", "a.yaml", "-conf=b.yaml", "--conf", "c.yaml"].map(OsString::from);

        let normalized = normalize_args(args);

        let expected = [
            "bin",
            "--conf",
            "a.yaml",
            "--conf=b.yaml",
            "--conf",
            "c.yaml",
        ];
        assert_eq!(normalized, expected.map(OsString::from));
    }

    #[test]
    fn sqlite_folder_is_created() {
        let scratch = tempfile::tempdir().unwrap();
        let file = scratch.path().join("nested/deeper/order.db");
        let config = DataConfig {
            database_url: SecretUrl::new(format!("sqlite://{}?mode=rwc", file.display())),
            max_connections: 1,
            auto_migrate: true,
        };

        config.ensure_sqlite_folder().unwrap();

        assert!(file.parent().unwrap().is_dir());
    }

    #[test]
    fn missing_file_names_the_path() {
        let error = Config::load(Path::new("/nonexistent/config.yaml")).unwrap_err();

        assert!(
            error.to_string().contains("/nonexistent/config.yaml"),
            "{error}"
        );
    }
}
