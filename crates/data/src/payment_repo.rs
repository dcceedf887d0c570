//! `SeaOrmPaymentRepo`: user accounts and the freezes of sagas, each change committed with
//! its barrier row and outbox event. See [`crate::barrier`] for how calls of one saga are
//! serialised.

use async_trait::async_trait;
use biz::{
    NewOutboxEvent, RepoError, SagaId, UserId,
    participant::{Decision, Operation, Outcome, ParticipantError, Step},
    payment::{Account, Freeze, PaymentRepo, Unfrozen},
};
use chrono::Utc;
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    QueryFilter, TransactionTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};
use tracing::instrument;

use crate::{
    barrier,
    entity::{
        accounts,
        balance_freezes::{self, STATE_CONFIRMED, STATE_FROZEN, STATE_UNFROZEN},
    },
    error::classify,
    order_repo::insert_outbox_event,
};

const STEP: Step = Step::FreezeBalance;

#[derive(Clone)]
pub struct SeaOrmPaymentRepo {
    db: DatabaseConnection,
}

impl SeaOrmPaymentRepo {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Begins a transaction of this participant's step. See [`barrier::begin_step`].
    async fn begin_step(
        &self,
        saga_id: SagaId,
        operation: Operation,
    ) -> Result<Option<DatabaseTransaction>, RepoError> {
        barrier::begin_step(&self.db, saga_id, STEP, operation).await
    }

    /// Returns the first result of a repeated try.
    async fn replay_freeze(&self, saga_id: SagaId) -> Result<Freeze, ParticipantError> {
        let barriers = barrier::load(&self.db, saga_id, STEP, None)
            .await
            .map_err(classify)?;
        match barriers.tried {
            Some(Outcome::Applied) => Ok(frozen_amount(&self.db, saga_id).await?),
            Some(Outcome::Rejected(message)) => Err(ParticipantError::Rejected(message)),
            other => Err(corrupt(format!(
                "saga {saga_id} has a try barrier with outcome {other:?}"
            ))
            .into()),
        }
    }

    /// Freezes the request's amount inside `txn`. Returns the rejection message, with
    /// nothing changed, when the account is unknown or its unfrozen balance is too small.
    async fn apply_freeze(
        txn: &DatabaseTransaction,
        request: &Freeze,
    ) -> Result<Option<String>, RepoError> {
        let now = Utc::now();
        let updated = accounts::Entity::update_many()
            .col_expr(
                accounts::Column::Frozen,
                Expr::col(accounts::Column::Frozen).add(request.amount),
            )
            .col_expr(
                accounts::Column::Version,
                Expr::col(accounts::Column::Version).add(1),
            )
            .col_expr(accounts::Column::UpdatedAt, Expr::value(now))
            .filter(accounts::Column::UserId.eq(request.user_id.as_str()))
            .filter(
                Expr::col(accounts::Column::Balance)
                    .sub(Expr::col(accounts::Column::Frozen))
                    .gte(request.amount),
            )
            .exec(txn)
            .await
            .map_err(classify)?
            .rows_affected;
        if updated == 0 {
            return Ok(Some(shortage(txn, request).await?));
        }
        balance_freezes::Entity::insert(balance_freezes::ActiveModel {
            saga_id: Set(request.saga_id.as_uuid()),
            user_id: Set(request.user_id.to_string()),
            amount: Set(request.amount),
            state: Set(STATE_FROZEN.to_string()),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec_without_returning(txn)
        .await
        .map_err(classify)?;
        let event = NewOutboxEvent::balance_frozen(request);
        insert_outbox_event(txn, &event).await.map_err(classify)?;
        Ok(None)
    }

    /// Takes the saga's frozen amount off `frozen`, and off `balance` too when `confirm` is
    /// true, and marks the freeze `state`. Returns the freeze.
    async fn settle(
        txn: &DatabaseTransaction,
        saga_id: SagaId,
        confirm: bool,
        state: &str,
    ) -> Result<Freeze, RepoError> {
        let freeze = frozen_amount(txn, saga_id).await?;
        let now = Utc::now();
        let mut update = accounts::Entity::update_many()
            .col_expr(
                accounts::Column::Frozen,
                Expr::col(accounts::Column::Frozen).sub(freeze.amount),
            )
            .col_expr(
                accounts::Column::Version,
                Expr::col(accounts::Column::Version).add(1),
            )
            .col_expr(accounts::Column::UpdatedAt, Expr::value(now));
        if confirm {
            update = update.col_expr(
                accounts::Column::Balance,
                Expr::col(accounts::Column::Balance).sub(freeze.amount),
            );
        }
        let updated = update
            .filter(accounts::Column::UserId.eq(freeze.user_id.as_str()))
            .filter(accounts::Column::Frozen.gte(freeze.amount))
            .exec(txn)
            .await
            .map_err(classify)?
            .rows_affected;
        if updated == 0 {
            return Err(corrupt(format!(
                "user {:?} has less frozen than the {} of saga {saga_id}",
                freeze.user_id.as_str(),
                freeze.amount
            )));
        }
        balance_freezes::Entity::update_many()
            .col_expr(balance_freezes::Column::State, Expr::value(state))
            .col_expr(balance_freezes::Column::UpdatedAt, Expr::value(now))
            .filter(balance_freezes::Column::SagaId.eq(saga_id.as_uuid()))
            .exec(txn)
            .await
            .map_err(classify)?;
        Ok(freeze)
    }
}

/// Builds the rejection message of a freeze that the account cannot cover.
async fn shortage(txn: &DatabaseTransaction, request: &Freeze) -> Result<String, RepoError> {
    let account = accounts::Entity::find_by_id(request.user_id.as_str())
        .one(txn)
        .await
        .map_err(classify)?;
    Ok(match account {
        None => format!(
            "saga {}: user {:?} has no account, so nothing was frozen",
            request.saga_id,
            request.user_id.as_str()
        ),
        Some(account) => format!(
            "saga {}: user {:?} has {} unfrozen but {} was requested, so nothing was frozen",
            request.saga_id,
            request.user_id.as_str(),
            account.balance - account.frozen,
            request.amount
        ),
    })
}

async fn frozen_amount<C: ConnectionTrait>(db: &C, saga_id: SagaId) -> Result<Freeze, RepoError> {
    let row = balance_freezes::Entity::find_by_id(saga_id.as_uuid())
        .one(db)
        .await
        .map_err(classify)?
        .ok_or_else(|| corrupt(format!("saga {saga_id} has an applied try but no freeze")))?;
    Ok(Freeze {
        saga_id,
        user_id: UserId::parse(row.user_id)
            .map_err(|error| corrupt(format!("saga {saga_id} has an invalid freeze: {error}")))?,
        amount: row.amount,
    })
}

fn corrupt(message: String) -> RepoError {
    RepoError::Other(message.into())
}

fn to_account(row: accounts::Model) -> Result<Account, RepoError> {
    Ok(Account {
        user_id: UserId::parse(row.user_id)
            .map_err(|error| corrupt(format!("account row has an invalid user_id: {error}")))?,
        balance: row.balance,
        frozen: row.frozen,
    })
}

#[async_trait]
impl PaymentRepo for SeaOrmPaymentRepo {
    #[instrument(skip_all, fields(saga_id = %request.saga_id), err(level = "debug", Display))]
    async fn freeze(&self, request: &Freeze) -> Result<Freeze, ParticipantError> {
        let saga_id = request.saga_id;
        let Some(txn) = self.begin_step(saga_id, Operation::Try).await? else {
            return self.replay_freeze(saga_id).await;
        };
        let barriers = barrier::load(&txn, saga_id, STEP, Some(Operation::Try))
            .await
            .map_err(classify)?;
        let rejection = match barriers.decide_try(saga_id, STEP) {
            Decision::Reject(message) => Some(message),
            Decision::Apply | Decision::NullCompensation => {
                Self::apply_freeze(&txn, request).await?
            }
        };
        if let Some(message) = rejection {
            let outcome = Outcome::Rejected(message.clone());
            barrier::set_outcome(&txn, saga_id, STEP, Operation::Try, &outcome)
                .await
                .map_err(classify)?;
            txn.commit().await.map_err(classify)?;
            return Err(ParticipantError::Rejected(message));
        }
        txn.commit().await.map_err(classify)?;
        Ok(request.clone())
    }

    #[instrument(skip(self), err(level = "debug", Display))]
    async fn confirm(&self, saga_id: SagaId) -> Result<(), ParticipantError> {
        let Some(txn) = self.begin_step(saga_id, Operation::Confirm).await? else {
            return Ok(());
        };
        let barriers = barrier::load(&txn, saga_id, STEP, Some(Operation::Confirm))
            .await
            .map_err(classify)?;
        // `decide_confirm` returns `Apply` or `Reject` only.
        if let Decision::Reject(message) = barriers.decide_confirm(saga_id, STEP) {
            barrier::rollback(txn).await;
            return Err(ParticipantError::Rejected(message));
        }
        let freeze = Self::settle(&txn, saga_id, true, STATE_CONFIRMED).await?;
        let event = NewOutboxEvent::payment_confirmed(&freeze);
        insert_outbox_event(&txn, &event).await.map_err(classify)?;
        txn.commit().await.map_err(classify)?;
        Ok(())
    }

    #[instrument(skip(self), err(level = "debug", Display))]
    async fn unfreeze(&self, saga_id: SagaId) -> Result<Unfrozen, ParticipantError> {
        let Some(txn) = self.begin_step(saga_id, Operation::Cancel).await? else {
            let barriers = barrier::load(&self.db, saga_id, STEP, None)
                .await
                .map_err(classify)?;
            return Ok(Unfrozen {
                nothing_frozen: barriers.cancelled == Some(Outcome::Null),
            });
        };
        let barriers = barrier::load(&txn, saga_id, STEP, Some(Operation::Cancel))
            .await
            .map_err(classify)?;
        match barriers.decide_cancel(saga_id, STEP) {
            Decision::Reject(message) => {
                barrier::rollback(txn).await;
                Err(ParticipantError::Rejected(message))
            }
            Decision::NullCompensation => {
                barrier::set_outcome(&txn, saga_id, STEP, Operation::Cancel, &Outcome::Null)
                    .await
                    .map_err(classify)?;
                txn.commit().await.map_err(classify)?;
                Ok(Unfrozen {
                    nothing_frozen: true,
                })
            }
            Decision::Apply => {
                let freeze = Self::settle(&txn, saga_id, false, STATE_UNFROZEN).await?;
                let event = NewOutboxEvent::balance_unfrozen(&freeze);
                insert_outbox_event(&txn, &event).await.map_err(classify)?;
                txn.commit().await.map_err(classify)?;
                Ok(Unfrozen {
                    nothing_frozen: false,
                })
            }
        }
    }

    #[instrument(skip_all, fields(user_id = %user_id), err(level = "debug", Display))]
    async fn get_account(&self, user_id: &UserId) -> Result<Option<Account>, RepoError> {
        accounts::Entity::find_by_id(user_id.as_str())
            .one(&self.db)
            .await
            .map_err(classify)?
            .map(to_account)
            .transpose()
    }

    #[instrument(skip_all, fields(user_id = %user_id, amount), err(level = "debug", Display))]
    async fn deposit(&self, user_id: &UserId, amount: i64) -> Result<Account, ParticipantError> {
        use accounts::{Column, Entity};

        let now = Utc::now();
        let row = accounts::ActiveModel {
            user_id: Set(user_id.to_string()),
            balance: Set(amount),
            frozen: Set(0),
            version: Set(1),
            created_at: Set(now),
            updated_at: Set(now),
        };
        // One statement on both backends. The WHERE clause skips the update instead of
        // overflowing, and a skipped update affects no row.
        let on_conflict = OnConflict::column(Column::UserId)
            .value(
                Column::Balance,
                Expr::col((Entity, Column::Balance)).add(amount),
            )
            .value(Column::Version, Expr::col((Entity, Column::Version)).add(1))
            .value(Column::UpdatedAt, now)
            .action_and_where(Expr::col((Entity, Column::Balance)).lte(i64::MAX - amount))
            .to_owned();
        let txn = self.db.begin().await.map_err(classify)?;
        let affected = Entity::insert(row)
            .on_conflict(on_conflict)
            .exec_without_returning(&txn)
            .await
            .map_err(classify)?;
        let stored = Entity::find_by_id(user_id.as_str())
            .one(&txn)
            .await
            .map_err(classify)?
            .ok_or_else(|| {
                corrupt(format!(
                    "account {:?} is missing after its upsert",
                    user_id.as_str()
                ))
            })?;
        if affected == 0 {
            barrier::rollback(txn).await;
            return Err(ParticipantError::Rejected(format!(
                "a deposit of {amount} would take the balance {} of user {:?} past {}",
                stored.balance,
                user_id.as_str(),
                i64::MAX
            )));
        }
        txn.commit().await.map_err(classify)?;
        Ok(to_account(stored)?)
    }
}
