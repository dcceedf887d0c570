//! `SeaOrmSagaRepo`: saga rows, saved with optimistic versions and leased to the process that
//! drives them. Leases use the database clock, as the outbox's do, so that clock skew between
//! servers and workers cannot hand one saga to two drivers.

use std::time::Duration;

use async_trait::async_trait;
use biz::{
    NewOutboxEvent, Order, OrderChange, OrderId, RepoError, Saga, SagaId, SagaRepo, SagaStep,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, Statement, TransactionTrait, Value,
};
use serde_json::json;
use tracing::instrument;

use crate::{
    entity::saga_instances,
    error::classify,
    order_repo::{apply_change, insert_order, insert_outbox_event},
    sql,
};

#[derive(Clone)]
pub struct SeaOrmSagaRepo {
    db: DatabaseConnection,
}

impl SeaOrmSagaRepo {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    fn now(&self) -> &'static str {
        sql::now(self.backend())
    }

    /// Returns the placeholder of parameter `index`, counted from 1.
    fn param(&self, index: usize) -> String {
        sql::param(self.backend(), index)
    }

    /// Returns `now + lease` as SQL with its parameter at `index`, and that parameter.
    fn lease_until(&self, index: usize, lease: Duration) -> (String, Value) {
        sql::now_plus(self.backend(), index, lease)
    }

    fn statement(&self, sql: String, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(self.backend(), sql, values)
    }

    /// Writes `saga` over the stored row of its version inside `txn`, leased to `owner`
    /// unless the saga is final. The row must be leased to `owner`, or, with `reopening`,
    /// be `FAILED`. Returns whether the row matched.
    async fn update_row(
        &self,
        txn: &impl ConnectionTrait,
        saga: &Saga,
        owner: &str,
        lease: Duration,
        reopening: bool,
    ) -> Result<bool, sea_orm::DbErr> {
        let step_log = serde_json::to_value(&saga.steps).map_err(|error| {
            sea_orm::DbErr::Custom(format!("cannot encode the step log: {error}"))
        })?;
        // A finished saga has no owner.
        let (locked_by, locked_until, lease_value) = if saga.state.is_final() {
            ("NULL".to_string(), "NULL".to_string(), None)
        } else {
            let (until, value) = self.lease_until(8, lease);
            (self.param(7), until, Some(value))
        };
        let p = |index| self.param(index);
        let mut sql = format!(
            "UPDATE saga_instances SET state = {}, current_step = {}, step_log = {}, error = {}, \
                 deadline = {}, updated_at = {}, version = version + 1, \
                 locked_by = {locked_by}, locked_until = {locked_until} ",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
        );
        let mut values: Vec<Value> = vec![
            saga.state.as_str().into(),
            saga.current_step().index().into(),
            step_log.into(),
            saga.error.clone().into(),
            saga.deadline.into(),
            saga.updated_at.into(),
        ];
        let mut next = 7;
        if let Some(lease_value) = lease_value {
            values.push(owner.into());
            values.push(lease_value);
            next = 9;
        }
        sql.push_str(&format!(
            "WHERE id = {} AND version = {} ",
            p(next),
            p(next + 1)
        ));
        values.push(saga.id.as_uuid().into());
        values.push(saga.version.into());
        if reopening {
            sql.push_str("AND state = 'FAILED'");
        } else {
            sql.push_str(&format!("AND locked_by = {}", p(next + 2)));
            values.push(owner.into());
        }
        let result = txn.execute_raw(self.statement(sql, values)).await?;
        Ok(result.rows_affected() == 1)
    }
}

#[async_trait]
impl SagaRepo for SeaOrmSagaRepo {
    #[instrument(skip_all, fields(saga_id = %saga.id, order_id = %order.id), err(Display))]
    async fn start(
        &self,
        order: &Order,
        event: &NewOutboxEvent,
        saga: &Saga,
        owner: &str,
        lease: Duration,
    ) -> Result<(), RepoError> {
        let txn = self.db.begin().await.map_err(classify)?;
        insert_order(&txn, order).await.map_err(classify)?;
        insert_outbox_event(&txn, event).await.map_err(classify)?;
        let step_log =
            serde_json::to_value(&saga.steps).map_err(|error| RepoError::Other(Box::new(error)))?;
        saga_instances::Entity::insert(saga_instances::ActiveModel {
            id: Set(saga.id.as_uuid()),
            saga_type: Set(biz::saga::SAGA_TYPE_PLACE_ORDER.to_string()),
            order_id: Set(order.id.as_uuid()),
            state: Set(saga.state.as_str().to_string()),
            current_step: Set(saga.current_step().index()),
            payload: Set(json!({
                "user_id": order.user_id.as_str(),
                "currency": order.currency.code(),
                "total_amount": order.total_amount,
            })),
            step_log: Set(step_log),
            retry_count: Set(0),
            next_retry_at: Set(None),
            deadline: Set(saga.deadline),
            locked_by: Set(Some(owner.to_string())),
            locked_until: Set(None),
            version: Set(saga.version),
            created_at: Set(saga.created_at),
            updated_at: Set(saga.updated_at),
            cancel_requested: Set(false),
            error: Set(None),
        })
        .exec_without_returning(&txn)
        .await
        .map_err(classify)?;
        let (until, value) = self.lease_until(1, lease);
        let sql = format!(
            "UPDATE saga_instances SET locked_until = {until} WHERE id = {}",
            self.param(2)
        );
        txn.execute_raw(self.statement(sql, vec![value, saga.id.as_uuid().into()]))
            .await
            .map_err(classify)?;
        txn.commit().await.map_err(classify)
    }

    #[instrument(skip_all, fields(saga_id = %saga.id, state = %saga.state, version = saga.version), err(Display))]
    async fn save(
        &self,
        saga: &Saga,
        owner: &str,
        lease: Duration,
        change: Option<&OrderChange>,
    ) -> Result<bool, RepoError> {
        let txn = self.db.begin().await.map_err(classify)?;
        // The saga row goes first: it is the write that decides who owns the saga.
        if !self
            .update_row(&txn, saga, owner, lease, false)
            .await
            .map_err(classify)?
        {
            return Ok(false);
        }
        if let Some(change) = change
            && !apply_change(&txn, change).await.map_err(classify)?
        {
            return Err(RepoError::Other(
                format!(
                    "order {} is no longer {}; saga {} cannot move it to {}",
                    change.order_id,
                    change.from.as_str(),
                    saga.id,
                    change.to.as_str()
                )
                .into(),
            ));
        }
        txn.commit().await.map_err(classify)?;
        Ok(true)
    }

    #[instrument(skip(self), err(Display))]
    async fn get(&self, id: SagaId) -> Result<Option<Saga>, RepoError> {
        saga_instances::Entity::find_by_id(id.as_uuid())
            .one(&self.db)
            .await
            .map_err(classify)?
            .map(to_saga)
            .transpose()
    }

    #[instrument(skip(self), err(Display))]
    async fn find_by_order(&self, order_id: OrderId) -> Result<Option<Saga>, RepoError> {
        saga_instances::Entity::find()
            .filter(saga_instances::Column::OrderId.eq(order_id.as_uuid()))
            .one(&self.db)
            .await
            .map_err(classify)?
            .map(to_saga)
            .transpose()
    }

    #[instrument(skip(self), err(Display))]
    async fn request_cancel(&self, id: SagaId) -> Result<bool, RepoError> {
        let result = saga_instances::Entity::update_many()
            .col_expr(
                saga_instances::Column::CancelRequested,
                sea_orm::sea_query::Expr::value(true),
            )
            .filter(saga_instances::Column::Id.eq(id.as_uuid()))
            .filter(saga_instances::Column::State.eq(biz::SagaState::Running.as_str()))
            .exec(&self.db)
            .await
            .map_err(classify)?;
        Ok(result.rows_affected == 1)
    }

    #[instrument(skip(self), err(Display))]
    async fn claim_stalled(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Saga>, RepoError> {
        let now = self.now();
        let stalled = format!(
            "s.state IN ('RUNNING', 'COMPENSATING') \
             AND (s.locked_until IS NULL OR s.locked_until <= {now})"
        );
        let (until, lease_value) = self.lease_until(3, lease);
        let sql = match self.backend() {
            DbBackend::Postgres => format!(
                "WITH due AS (SELECT s.id FROM saga_instances s WHERE {stalled} \
                     ORDER BY s.created_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE saga_instances t SET locked_by = $1, locked_until = {until}, \
                     version = t.version + 1 \
                 FROM due WHERE t.id = due.id RETURNING t.id"
            ),
            // One statement holds SQLite's write lock from the select to the update.
            _ => format!(
                "UPDATE saga_instances SET locked_by = ?, locked_until = {until}, \
                     version = version + 1 \
                 WHERE id IN (SELECT s.id FROM saga_instances s WHERE {stalled} \
                     ORDER BY s.created_at LIMIT ?) \
                 RETURNING id"
            ),
        };
        let values = match self.backend() {
            DbBackend::Postgres => vec![owner.into(), i64::from(limit).into(), lease_value],
            _ => vec![owner.into(), lease_value, i64::from(limit).into()],
        };
        // Only the ids come back, and a second query reads the rows. With `RETURNING *` here,
        // sqlx-sqlite 0.9.1 panicked in a test (row index out of bounds) after ALTER TABLE had
        // added columns to this table.
        let claimed = self
            .db
            .query_all_raw(self.statement(sql, values))
            .await
            .map_err(classify)?;
        let ids = claimed
            .iter()
            .map(|row| row.try_get::<uuid::Uuid>("", "id"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(classify)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = saga_instances::Entity::find()
            .filter(saga_instances::Column::Id.is_in(ids))
            .filter(saga_instances::Column::LockedBy.eq(owner))
            .all(&self.db)
            .await
            .map_err(classify)?;
        rows.into_iter().map(to_saga).collect()
    }

    #[instrument(skip_all, fields(saga_id = %saga.id, state = %saga.state), err(Display))]
    async fn reopen(&self, saga: &Saga, owner: &str, lease: Duration) -> Result<bool, RepoError> {
        self.update_row(&self.db, saga, owner, lease, true)
            .await
            .map_err(classify)
    }

    #[instrument(skip(self), err(Display))]
    async fn release(&self, id: SagaId, owner: &str) -> Result<(), RepoError> {
        let sql = format!(
            "UPDATE saga_instances SET locked_until = NULL WHERE id = {} AND locked_by = {}",
            self.param(1),
            self.param(2)
        );
        self.db
            .execute_raw(self.statement(sql, vec![id.as_uuid().into(), owner.into()]))
            .await
            .map_err(classify)?;
        Ok(())
    }
}

fn to_saga(row: saga_instances::Model) -> Result<Saga, RepoError> {
    let corrupt = |message: String| RepoError::Other(format!("saga {}: {message}", row.id).into());
    let steps: Vec<SagaStep> = serde_json::from_value(row.step_log.clone())
        .map_err(|error| corrupt(format!("unreadable step log: {error}")))?;
    Ok(Saga {
        id: SagaId::from_uuid(row.id),
        order_id: OrderId::from_uuid(row.order_id),
        state: row.state.parse().map_err(corrupt)?,
        steps,
        error: row.error,
        cancel_requested: row.cancel_requested,
        deadline: row.deadline,
        version: row.version,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}
