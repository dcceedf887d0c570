//! `SeaOrmOutboxRepo`: claiming, completing and releasing outbox rows with leases on the
//! database clock. PostgreSQL claims with `FOR UPDATE SKIP LOCKED`; SQLite, which serializes
//! writers, claims with one conditional `UPDATE ... RETURNING`.

use std::time::Duration;

use async_trait::async_trait;
use biz::{OutboxEvent, OutboxRepo, RepoError};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement, Value, sqlx,
};
use tracing::{instrument, warn};

use crate::{
    entity::outbox_events::{self, STATUS_DEAD, STATUS_FAILED, STATUS_PENDING, STATUS_SENT},
    error::classify,
    sql,
    trace_context::TRACEPARENT,
};

/// Rows a relay may claim: unsent, due, not leased, and first unsent of their aggregate.
const DUE_FILTER: &str = "o.status IN ('PENDING', 'FAILED') \
     AND (o.next_retry_at IS NULL OR o.next_retry_at <= {now}) \
     AND (o.locked_until IS NULL OR o.locked_until <= {now}) \
     AND NOT EXISTS (SELECT 1 FROM outbox_events p \
         WHERE p.aggregate_type = o.aggregate_type AND p.aggregate_id = o.aggregate_id \
         AND p.status IN ('PENDING', 'FAILED') AND p.id < o.id)";

#[derive(Clone)]
pub struct SeaOrmOutboxRepo {
    pub(crate) db: DatabaseConnection,
}

impl SeaOrmOutboxRepo {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub(crate) fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub(crate) fn now(&self) -> &'static str {
        sql::now(self.backend())
    }

    /// Returns the placeholder of parameter `index` (from 1) in this backend's SQL dialect.
    pub(crate) fn param(&self, index: usize) -> String {
        sql::param(self.backend(), index)
    }

    /// Returns `now + delay` as SQL with its parameter at `index`, and that parameter.
    pub(crate) fn now_plus(&self, index: usize, delay: Duration) -> (String, Value) {
        sql::now_plus(self.backend(), index, delay)
    }

    fn id_list(&self, first_index: usize, ids: &[i64]) -> (String, Vec<Value>) {
        let placeholders: Vec<String> = (0..ids.len())
            .map(|offset| self.param(first_index + offset))
            .collect();
        (
            placeholders.join(", "),
            ids.iter().map(|&id| id.into()).collect(),
        )
    }

    pub(crate) fn statement(&self, sql: String, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(self.backend(), sql, values)
    }
}

#[async_trait]
impl OutboxRepo for SeaOrmOutboxRepo {
    #[instrument(skip(self), err(Display))]
    async fn claim(
        &self,
        relay_id: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<OutboxEvent>, RepoError> {
        let now = self.now();
        let due = DUE_FILTER.replace("{now}", now);
        let (lease_until, lease_value) = self.now_plus(3, lease);
        let sql = match self.backend() {
            DbBackend::Postgres => format!(
                "WITH due AS (SELECT o.id FROM outbox_events o WHERE {due} \
                     ORDER BY o.id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE outbox_events e SET locked_by = $1, locked_until = {lease_until}, \
                     updated_at = now() \
                 FROM due WHERE e.id = due.id RETURNING e.*"
            ),
            // One statement holds SQLite's write lock from the select to the update, so two
            // relays cannot claim the same row.
            _ => format!(
                "UPDATE outbox_events SET locked_by = ?, locked_until = {lease_until}, \
                     updated_at = {now} \
                 WHERE id IN (SELECT o.id FROM outbox_events o WHERE {due} \
                     ORDER BY o.id LIMIT ?) \
                 RETURNING *"
            ),
        };
        let values = match self.backend() {
            DbBackend::Postgres => vec![relay_id.into(), i64::from(limit).into(), lease_value],
            _ => vec![relay_id.into(), lease_value, i64::from(limit).into()],
        };
        let mut rows = outbox_events::Entity::find()
            .from_raw_sql(self.statement(sql, values))
            .all(&self.db)
            .await
            .map_err(classify)?;
        // RETURNING follows no particular order.
        rows.sort_by_key(|row| row.id);
        rows.into_iter().map(to_event).collect()
    }

    #[instrument(skip(self, ids), fields(count = ids.len()), err(Display))]
    async fn mark_sent(&self, relay_id: &str, ids: &[i64]) -> Result<u64, RepoError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let now = self.now();
        let (id_list, mut values) = self.id_list(2, ids);
        let sql = format!(
            "UPDATE outbox_events SET status = '{STATUS_SENT}', published_at = {now}, \
                 updated_at = {now}, locked_by = NULL, locked_until = NULL, next_retry_at = NULL \
             WHERE locked_by = {} AND status IN ('{STATUS_PENDING}', '{STATUS_FAILED}') \
                 AND id IN ({id_list})",
            self.param(1)
        );
        values.insert(0, relay_id.into());
        let result = self
            .db
            .execute_raw(self.statement(sql, values))
            .await
            .map_err(classify)?;
        Ok(result.rows_affected())
    }

    #[instrument(skip(self, error), err(Display))]
    async fn mark_failed(
        &self,
        relay_id: &str,
        id: i64,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<(), RepoError> {
        let now = self.now();
        let mut values: Vec<Value> = vec![error.into()];
        let (status, next_retry_at) = match retry_in {
            Some(delay) => {
                let (sql, value) = self.now_plus(2, delay);
                values.push(value);
                (STATUS_FAILED, sql)
            }
            None => (STATUS_DEAD, "NULL".to_string()),
        };
        let index = values.len();
        let sql = format!(
            "UPDATE outbox_events SET status = '{status}', retry_count = retry_count + 1, \
                 last_error = {}, next_retry_at = {next_retry_at}, updated_at = {now}, \
                 locked_by = NULL, locked_until = NULL \
             WHERE id = {} AND locked_by = {}",
            self.param(1),
            self.param(index + 1),
            self.param(index + 2),
        );
        values.push(id.into());
        values.push(relay_id.into());
        let result = self
            .db
            .execute_raw(self.statement(sql, values))
            .await
            .map_err(classify)?;
        if result.rows_affected() == 0 {
            warn!(id, "lease lost before recording the failed publish");
        }
        Ok(())
    }

    #[instrument(skip(self, ids), fields(count = ids.len()), err(Display))]
    async fn release(&self, relay_id: &str, ids: &[i64]) -> Result<u64, RepoError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let (id_list, mut values) = self.id_list(2, ids);
        let sql = format!(
            "UPDATE outbox_events SET locked_by = NULL, locked_until = NULL, updated_at = {} \
             WHERE locked_by = {} AND id IN ({id_list})",
            self.now(),
            self.param(1)
        );
        values.insert(0, relay_id.into());
        let result = self
            .db
            .execute_raw(self.statement(sql, values))
            .await
            .map_err(classify)?;
        Ok(result.rows_affected())
    }
}

fn to_event(row: outbox_events::Model) -> Result<OutboxEvent, RepoError> {
    let routing_key = row
        .headers
        .get("routing_key")
        .and_then(|value| value.as_str())
        .ok_or_else(|| {
            RepoError::Other(
                format!("outbox event {} has no routing_key header", row.event_id).into(),
            )
        })?
        .to_string();
    let traceparent = row
        .headers
        .get(TRACEPARENT)
        .and_then(|value| value.as_str())
        .map(str::to_string);
    Ok(OutboxEvent {
        id: row.id,
        event_id: row.event_id,
        aggregate_type: row.aggregate_type,
        aggregate_id: row.aggregate_id,
        event_type: row.event_type,
        routing_key,
        payload: row.payload,
        retry_count: u32::try_from(row.retry_count).unwrap_or(0),
        traceparent,
        created_at: row.created_at,
    })
}

/// Wakes a relay when a transaction that inserted outbox rows commits, through PostgreSQL
/// `LISTEN/NOTIFY`. On SQLite there is no such signal and [`Self::listen`] returns `None`.
pub struct OutboxNotifications {
    listener: sqlx::postgres::PgListener,
    /// Consecutive failed waits, to log the first and then one in sixty.
    failures: u64,
}

impl OutboxNotifications {
    /// Starts listening on the outbox channel, or returns `None` on SQLite.
    ///
    /// # Errors
    ///
    /// Returns the driver's error when the listening connection cannot be opened.
    pub async fn listen(db: &DatabaseConnection) -> Result<Option<Self>, RepoError> {
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(None);
        }
        let pool = db.get_postgres_connection_pool();
        let mut listener = sqlx::postgres::PgListener::connect_with(pool)
            .await
            .map_err(|error| RepoError::Unavailable(Box::new(error)))?;
        listener
            .listen(migration::OUTBOX_NOTIFY_CHANNEL)
            .await
            .map_err(|error| RepoError::Unavailable(Box::new(error)))?;
        Ok(Some(Self {
            listener,
            failures: 0,
        }))
    }

    /// Waits for the next notification. After a lost connection this returns after a pause of
    /// a second, so that the caller polls once for anything missed meanwhile, and the listener
    /// reconnects on the next call.
    pub async fn recv(&mut self) {
        match self.listener.recv().await {
            Ok(_) => self.failures = 0,
            Err(error) => {
                self.failures += 1;
                if self.failures == 1 || self.failures.is_multiple_of(60) {
                    warn!(error = %error, failures = self.failures, "outbox notification listener failed, reconnecting");
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}
