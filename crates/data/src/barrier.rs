//! The idempotency barrier of the saga participants: one `saga_barriers` row per
//! (saga, step, operation), written in the same transaction as the business change.
//!
//! Every step transaction starts by serialising on its (saga, step). On PostgreSQL it takes a
//! transaction-scoped advisory lock, so that a try and a cancel of the same step, which insert
//! different barrier rows, cannot both pass their checks. SQLite lets one writer at a time,
//! and the barrier insert that follows is the transaction's first statement, so the write lock
//! is taken at once and never upgraded from a read lock (which fails with SQLITE_BUSY instead
//! of waiting).

use biz::{
    RepoError, SagaId,
    participant::{Operation, Outcome, Step, StepBarriers},
};
use chrono::Utc;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, EntityTrait, QueryFilter, SqlErr, Statement, TransactionTrait,
    sea_query::Expr,
};

use crate::{
    entity::saga_barriers::{self, Column, Entity},
    error::classify,
};

/// Begins a transaction of `saga_id`'s `step`, serialised on the step, and inserts the
/// barrier of `operation`. Returns `None`, with nothing written, when that barrier exists.
pub(crate) async fn begin_step(
    db: &DatabaseConnection,
    saga_id: SagaId,
    step: Step,
    operation: Operation,
) -> Result<Option<DatabaseTransaction>, RepoError> {
    let txn = db.begin().await.map_err(classify)?;
    lock_step(&txn, saga_id, step).await.map_err(classify)?;
    if insert(&txn, saga_id, step, operation)
        .await
        .map_err(classify)?
    {
        Ok(Some(txn))
    } else {
        rollback(txn).await;
        Ok(None)
    }
}

/// Waits for the other transactions of `saga_id`'s `step` to end, on PostgreSQL. A hash
/// collision with another (saga, step) only makes the two wait for each other.
pub(crate) async fn lock_step(
    txn: &DatabaseTransaction,
    saga_id: SagaId,
    step: Step,
) -> Result<(), DbErr> {
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let key = format!("{saga_id}:{}", step.as_str());
    txn.query_one_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        [key.into()],
    ))
    .await?;
    Ok(())
}

/// Inserts the barrier of `operation` with outcome `APPLIED`, which the caller changes with
/// [`set_outcome`] when it decides otherwise. Returns false, with `txn` aborted on
/// PostgreSQL, when the barrier exists: the operation was received before.
pub(crate) async fn insert(
    txn: &DatabaseTransaction,
    saga_id: SagaId,
    step: Step,
    operation: Operation,
) -> Result<bool, DbErr> {
    let row = saga_barriers::ActiveModel {
        saga_id: Set(saga_id.as_uuid()),
        step: Set(step.as_str().to_string()),
        operation: Set(operation.as_str().to_string()),
        outcome: Set(Outcome::APPLIED.to_string()),
        message: Set(None),
        created_at: Set(Utc::now()),
    };
    match Entity::insert(row).exec_without_returning(txn).await {
        Ok(_) => Ok(true),
        Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

pub(crate) async fn set_outcome(
    txn: &DatabaseTransaction,
    saga_id: SagaId,
    step: Step,
    operation: Operation,
    outcome: &Outcome,
) -> Result<(), DbErr> {
    Entity::update_many()
        .col_expr(Column::Outcome, Expr::value(outcome.as_str()))
        .col_expr(Column::Message, Expr::value(outcome.message()))
        .filter(Column::SagaId.eq(saga_id.as_uuid()))
        .filter(Column::Step.eq(step.as_str()))
        .filter(Column::Operation.eq(operation.as_str()))
        .exec(txn)
        .await?;
    Ok(())
}

/// Loads the barriers of `saga_id`'s `step`, leaving out `except`: the operation whose own
/// barrier the caller has just inserted.
pub(crate) async fn load<C: ConnectionTrait>(
    db: &C,
    saga_id: SagaId,
    step: Step,
    except: Option<Operation>,
) -> Result<StepBarriers, DbErr> {
    let rows = Entity::find()
        .filter(Column::SagaId.eq(saga_id.as_uuid()))
        .filter(Column::Step.eq(step.as_str()))
        .all(db)
        .await?;
    let mut barriers = StepBarriers::default();
    for row in rows {
        let outcome = Outcome::from_stored(&row.outcome, row.message).ok_or_else(|| {
            DbErr::Custom(format!(
                "saga {saga_id} has a barrier with unknown outcome {:?}",
                row.outcome
            ))
        })?;
        let slot = match row.operation.as_str() {
            "try" if except != Some(Operation::Try) => &mut barriers.tried,
            "confirm" if except != Some(Operation::Confirm) => &mut barriers.confirmed,
            "cancel" if except != Some(Operation::Cancel) => &mut barriers.cancelled,
            "try" | "confirm" | "cancel" => continue,
            other => {
                return Err(DbErr::Custom(format!(
                    "saga {saga_id} has a barrier with unknown operation {other:?}"
                )));
            }
        };
        *slot = Some(outcome);
    }
    Ok(barriers)
}

/// Rolls back `txn`. A failed rollback commits nothing either: the database discards the
/// transaction when its connection closes, so the error is dropped.
pub(crate) async fn rollback(txn: DatabaseTransaction) {
    if let Err(error) = txn.rollback().await {
        tracing::warn!(error = %error, "failed to roll back a saga step transaction");
    }
}
