//! The operator side of `SeaOrmOutboxRepo`: dead events, re-drives, backlog figures and the
//! deletion of old `SENT` rows.

use std::time::Duration;

use async_trait::async_trait;
use biz::{OutboxAdminRepo, OutboxRecord, OutboxStats, OutboxStatus, RepoError};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Value,
};
use tracing::instrument;
use uuid::Uuid;

use crate::{
    entity::outbox_events::{self, STATUS_DEAD, STATUS_FAILED, STATUS_PENDING, STATUS_SENT},
    error::classify,
    outbox_repo::SeaOrmOutboxRepo,
};

/// Sets a row back to the state of a fresh event, keeping `last_error` for the record.
const REDRIVE_SET: &str = "status = 'PENDING', retry_count = 0, next_retry_at = NULL, \
     locked_by = NULL, locked_until = NULL";

impl SeaOrmOutboxRepo {
    /// Returns `now - age` as SQL with its parameter at `index`, and that parameter.
    fn now_minus(&self, index: usize, age: Duration) -> (String, Value) {
        match self.backend() {
            DbBackend::Postgres => (
                format!("now() - make_interval(secs => ${index})"),
                age.as_secs_f64().into(),
            ),
            _ => (
                "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', ?)".to_string(),
                format!("-{:.3} seconds", age.as_secs_f64()).into(),
            ),
        }
    }
}

fn to_record(row: outbox_events::Model) -> Result<OutboxRecord, RepoError> {
    let status = row.status.parse::<OutboxStatus>().map_err(|error| {
        RepoError::Other(format!("outbox event {}: {error}", row.event_id).into())
    })?;
    Ok(OutboxRecord {
        id: row.id,
        event_id: row.event_id,
        aggregate_type: row.aggregate_type,
        aggregate_id: row.aggregate_id,
        event_type: row.event_type,
        status,
        retry_count: u32::try_from(row.retry_count).unwrap_or(0),
        last_error: row.last_error,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

#[async_trait]
impl OutboxAdminRepo for SeaOrmOutboxRepo {
    #[instrument(skip(self), err(Display))]
    async fn list_dead(
        &self,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<OutboxRecord>, RepoError> {
        let mut select = outbox_events::Entity::find()
            .filter(outbox_events::Column::Status.eq(STATUS_DEAD))
            .order_by_asc(outbox_events::Column::Id)
            .limit(u64::from(limit));
        if let Some(after) = after {
            select = select.filter(outbox_events::Column::Id.gt(after));
        }
        let rows = select.all(&self.db).await.map_err(classify)?;
        rows.into_iter().map(to_record).collect()
    }

    #[instrument(skip(self), err(Display))]
    async fn find(&self, event_id: Uuid) -> Result<Option<OutboxRecord>, RepoError> {
        let row = outbox_events::Entity::find()
            .filter(outbox_events::Column::EventId.eq(event_id))
            .one(&self.db)
            .await
            .map_err(classify)?;
        row.map(to_record).transpose()
    }

    #[instrument(skip(self), err(Display))]
    async fn redrive(&self, event_id: Uuid) -> Result<bool, RepoError> {
        let sql = format!(
            "UPDATE outbox_events SET {REDRIVE_SET}, updated_at = {} \
             WHERE event_id = {} AND status = '{STATUS_DEAD}'",
            self.now(),
            self.param(1)
        );
        let result = self
            .db
            .execute_raw(self.statement(sql, vec![event_id.into()]))
            .await
            .map_err(classify)?;
        Ok(result.rows_affected() == 1)
    }

    #[instrument(skip(self), err(Display))]
    async fn redrive_all_dead(&self) -> Result<u64, RepoError> {
        let sql = format!(
            "UPDATE outbox_events SET {REDRIVE_SET}, updated_at = {} WHERE status = '{STATUS_DEAD}'",
            self.now()
        );
        let result = self
            .db
            .execute_raw(self.statement(sql, Vec::new()))
            .await
            .map_err(classify)?;
        Ok(result.rows_affected())
    }

    #[instrument(skip(self), err(Display))]
    async fn stats(&self) -> Result<OutboxStats, RepoError> {
        let rows = self
            .db
            .query_all_raw(self.statement(
                "SELECT status, COUNT(*) AS row_count FROM outbox_events GROUP BY status".into(),
                Vec::new(),
            ))
            .await
            .map_err(classify)?;
        let mut stats = OutboxStats::default();
        for row in rows {
            let status: String = row.try_get("", "status").map_err(classify)?;
            let count: i64 = row.try_get("", "row_count").map_err(classify)?;
            let count = u64::try_from(count).unwrap_or(0);
            match status.as_str() {
                STATUS_PENDING => stats.pending = count,
                STATUS_FAILED => stats.failed = count,
                STATUS_DEAD => stats.dead = count,
                STATUS_SENT => stats.sent = count,
                _ => {}
            }
        }

        let oldest = outbox_events::Entity::find()
            .filter(outbox_events::Column::Status.is_in([STATUS_PENDING, STATUS_FAILED]))
            .order_by_asc(outbox_events::Column::Id)
            .one(&self.db)
            .await
            .map_err(classify)?;
        stats.oldest_unsent_at = oldest.map(|row| row.created_at);
        Ok(stats)
    }

    #[instrument(skip(self), err(Display))]
    async fn delete_sent(&self, older_than: Duration, limit: u32) -> Result<u64, RepoError> {
        let (cutoff, cutoff_value) = self.now_minus(1, older_than);
        let sql = format!(
            "DELETE FROM outbox_events WHERE id IN (SELECT id FROM outbox_events \
                 WHERE status = '{STATUS_SENT}' AND published_at < {cutoff} \
                 ORDER BY id LIMIT {})",
            self.param(2)
        );
        let result = self
            .db
            .execute_raw(self.statement(sql, vec![cutoff_value, i64::from(limit).into()]))
            .await
            .map_err(classify)?;
        Ok(result.rows_affected())
    }
}
