//! `SeaOrmInventoryRepo`: stock per SKU and the reservations of sagas, each change committed
//! with its barrier row and outbox event. See [`crate::barrier`] for how calls of one saga
//! are serialised.

use async_trait::async_trait;
use biz::{
    NewOutboxEvent, RepoError, SagaId, Sku,
    inventory::{InventoryRepo, Released, Reservation, ReserveStock, Stock, StockItem},
    participant::{Decision, Operation, Outcome, ParticipantError, Step},
};
use chrono::Utc;
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    QueryFilter, QueryOrder, TransactionTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};
use tracing::instrument;

use crate::{
    barrier,
    entity::{
        stock_reservations::{self, STATE_CONFIRMED, STATE_RELEASED, STATE_RESERVED},
        stocks,
    },
    error::classify,
    order_repo::insert_outbox_event,
};

const STEP: Step = Step::ReserveStock;

#[derive(Clone)]
pub struct SeaOrmInventoryRepo {
    db: DatabaseConnection,
}

impl SeaOrmInventoryRepo {
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
    async fn replay_reserve(&self, saga_id: SagaId) -> Result<Reservation, ParticipantError> {
        let barriers = barrier::load(&self.db, saga_id, STEP, None)
            .await
            .map_err(classify)?;
        match barriers.tried {
            Some(Outcome::Applied) => Ok(Reservation {
                saga_id,
                items: reserved_items(&self.db, saga_id).await?,
            }),
            Some(Outcome::Rejected(message)) => Err(ParticipantError::Rejected(message)),
            other => Err(corrupt(format!(
                "saga {saga_id} has a try barrier with outcome {other:?}"
            ))
            .into()),
        }
    }

    /// Moves the request's units from available to reserved inside `txn`. Returns the
    /// rejection message, with `txn` left for the caller to roll back, when an item is short.
    async fn apply_reserve(
        txn: &DatabaseTransaction,
        request: &ReserveStock,
    ) -> Result<Option<String>, RepoError> {
        // Updating rows in SKU order keeps concurrent reservations from deadlocking on
        // PostgreSQL's row locks.
        let mut items: Vec<&StockItem> = request.items.iter().collect();
        items.sort_by(|a, b| a.sku.as_str().cmp(b.sku.as_str()));
        let now = Utc::now();
        for item in &items {
            let updated = stocks::Entity::update_many()
                .col_expr(
                    stocks::Column::Available,
                    Expr::col(stocks::Column::Available).sub(item.quantity),
                )
                .col_expr(
                    stocks::Column::Reserved,
                    Expr::col(stocks::Column::Reserved).add(item.quantity),
                )
                .col_expr(
                    stocks::Column::Version,
                    Expr::col(stocks::Column::Version).add(1),
                )
                .col_expr(stocks::Column::UpdatedAt, Expr::value(now))
                .filter(stocks::Column::Sku.eq(item.sku.as_str()))
                .filter(stocks::Column::Available.gte(item.quantity))
                .exec(txn)
                .await
                .map_err(classify)?
                .rows_affected;
            if updated == 0 {
                return Ok(Some(shortage(txn, request.saga_id, item).await?));
            }
        }
        let rows = request
            .items
            .iter()
            .map(|item| stock_reservations::ActiveModel {
                saga_id: Set(request.saga_id.as_uuid()),
                sku: Set(item.sku.to_string()),
                quantity: Set(item.quantity),
                state: Set(STATE_RESERVED.to_string()),
                created_at: Set(now),
                updated_at: Set(now),
            });
        stock_reservations::Entity::insert_many(rows)
            .exec_without_returning(txn)
            .await
            .map_err(classify)?;
        let event = NewOutboxEvent::stock_reserved(request.saga_id, &request.items);
        insert_outbox_event(txn, &event).await.map_err(classify)?;
        Ok(None)
    }

    /// Moves every reserved unit of `saga_id` out of `reserved`, back to `available` when
    /// `release` is true, and marks its reservation rows `state`. Returns the items.
    async fn settle(
        txn: &DatabaseTransaction,
        saga_id: SagaId,
        release: bool,
        state: &str,
    ) -> Result<Vec<StockItem>, RepoError> {
        let items = reserved_items(txn, saga_id).await?;
        let now = Utc::now();
        for item in &items {
            let mut update = stocks::Entity::update_many()
                .col_expr(
                    stocks::Column::Reserved,
                    Expr::col(stocks::Column::Reserved).sub(item.quantity),
                )
                .col_expr(
                    stocks::Column::Version,
                    Expr::col(stocks::Column::Version).add(1),
                )
                .col_expr(stocks::Column::UpdatedAt, Expr::value(now));
            if release {
                update = update.col_expr(
                    stocks::Column::Available,
                    Expr::col(stocks::Column::Available).add(item.quantity),
                );
            }
            let updated = update
                .filter(stocks::Column::Sku.eq(item.sku.as_str()))
                .filter(stocks::Column::Reserved.gte(item.quantity))
                .exec(txn)
                .await
                .map_err(classify)?
                .rows_affected;
            if updated == 0 {
                return Err(corrupt(format!(
                    "SKU {:?} has fewer reserved units than the {} of saga {saga_id}",
                    item.sku.as_str(),
                    item.quantity
                )));
            }
        }
        stock_reservations::Entity::update_many()
            .col_expr(stock_reservations::Column::State, Expr::value(state))
            .col_expr(stock_reservations::Column::UpdatedAt, Expr::value(now))
            .filter(stock_reservations::Column::SagaId.eq(saga_id.as_uuid()))
            .exec(txn)
            .await
            .map_err(classify)?;
        Ok(items)
    }
}

/// Builds the rejection message of a reservation that `item` cannot get.
async fn shortage(
    txn: &DatabaseTransaction,
    saga_id: SagaId,
    item: &StockItem,
) -> Result<String, RepoError> {
    let stock = stocks::Entity::find_by_id(item.sku.as_str())
        .one(txn)
        .await
        .map_err(classify)?;
    Ok(match stock {
        None => format!(
            "saga {saga_id}: SKU {:?} is unknown, so nothing was reserved",
            item.sku.as_str()
        ),
        Some(stock) => format!(
            "saga {saga_id}: SKU {:?} has {} units available but {} were requested, so nothing \
             was reserved",
            item.sku.as_str(),
            stock.available,
            item.quantity
        ),
    })
}

async fn reserved_items<C: ConnectionTrait>(
    db: &C,
    saga_id: SagaId,
) -> Result<Vec<StockItem>, RepoError> {
    let rows = stock_reservations::Entity::find()
        .filter(stock_reservations::Column::SagaId.eq(saga_id.as_uuid()))
        .order_by_asc(stock_reservations::Column::Sku)
        .all(db)
        .await
        .map_err(classify)?;
    rows.into_iter()
        .enumerate()
        .map(|(index, row)| {
            StockItem::parse(index, row.sku, row.quantity)
                .map_err(|error| corrupt(format!("saga {saga_id} has an invalid item: {error}")))
        })
        .collect()
}

fn corrupt(message: String) -> RepoError {
    RepoError::Other(message.into())
}

fn to_stock(row: stocks::Model) -> Result<Stock, RepoError> {
    Ok(Stock {
        sku: Sku::parse(row.sku)
            .map_err(|error| corrupt(format!("stock row has an invalid SKU: {error}")))?,
        available: row.available,
        reserved: row.reserved,
    })
}

#[async_trait]
impl InventoryRepo for SeaOrmInventoryRepo {
    #[instrument(skip_all, fields(saga_id = %request.saga_id), err(level = "debug", Display))]
    async fn reserve(&self, request: &ReserveStock) -> Result<Reservation, ParticipantError> {
        let saga_id = request.saga_id;
        let Some(txn) = self.begin_step(saga_id, Operation::Try).await? else {
            return self.replay_reserve(saga_id).await;
        };
        let barriers = barrier::load(&txn, saga_id, STEP, Some(Operation::Try))
            .await
            .map_err(classify)?;
        let rejection = match barriers.decide_try(saga_id, STEP) {
            Decision::Reject(message) => Some(message),
            Decision::Apply | Decision::NullCompensation => {
                // A savepoint, so that a short item undoes the updates of the items before
                // it while the barrier row stays to record the rejection.
                let savepoint = txn.begin().await.map_err(classify)?;
                let shortage = Self::apply_reserve(&savepoint, request).await?;
                if shortage.is_none() {
                    savepoint.commit().await.map_err(classify)?;
                } else {
                    savepoint.rollback().await.map_err(classify)?;
                }
                shortage
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
        Ok(Reservation {
            saga_id,
            items: request.items.clone(),
        })
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
        let items = Self::settle(&txn, saga_id, false, STATE_CONFIRMED).await?;
        let event = NewOutboxEvent::stock_confirmed(saga_id, &items);
        insert_outbox_event(&txn, &event).await.map_err(classify)?;
        txn.commit().await.map_err(classify)?;
        Ok(())
    }

    #[instrument(skip(self), err(level = "debug", Display))]
    async fn release(&self, saga_id: SagaId) -> Result<Released, ParticipantError> {
        let Some(txn) = self.begin_step(saga_id, Operation::Cancel).await? else {
            let barriers = barrier::load(&self.db, saga_id, STEP, None)
                .await
                .map_err(classify)?;
            return Ok(Released {
                nothing_reserved: barriers.cancelled == Some(Outcome::Null),
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
                Ok(Released {
                    nothing_reserved: true,
                })
            }
            Decision::Apply => {
                let items = Self::settle(&txn, saga_id, true, STATE_RELEASED).await?;
                let event = NewOutboxEvent::stock_released(saga_id, &items);
                insert_outbox_event(&txn, &event).await.map_err(classify)?;
                txn.commit().await.map_err(classify)?;
                Ok(Released {
                    nothing_reserved: false,
                })
            }
        }
    }

    #[instrument(skip_all, fields(sku = %sku), err(level = "debug", Display))]
    async fn get_stock(&self, sku: &Sku) -> Result<Option<Stock>, RepoError> {
        stocks::Entity::find_by_id(sku.as_str())
            .one(&self.db)
            .await
            .map_err(classify)?
            .map(to_stock)
            .transpose()
    }

    #[instrument(skip_all, fields(sku = %sku, available), err(level = "debug", Display))]
    async fn set_stock(&self, sku: &Sku, available: i64) -> Result<Stock, RepoError> {
        use stocks::{Column, Entity};

        let now = Utc::now();
        let row = stocks::ActiveModel {
            sku: Set(sku.to_string()),
            available: Set(available),
            reserved: Set(0),
            version: Set(1),
            created_at: Set(now),
            updated_at: Set(now),
        };
        // One statement on both backends; the reserved units of an existing SKU stay.
        let on_conflict = OnConflict::column(Column::Sku)
            .value(Column::Available, available)
            .value(Column::Version, Expr::col((Entity, Column::Version)).add(1))
            .value(Column::UpdatedAt, now)
            .to_owned();
        let txn = self.db.begin().await.map_err(classify)?;
        Entity::insert(row)
            .on_conflict(on_conflict)
            .exec_without_returning(&txn)
            .await
            .map_err(classify)?;
        let stored = Entity::find_by_id(sku.as_str())
            .one(&txn)
            .await
            .map_err(classify)?
            .ok_or_else(|| {
                corrupt(format!(
                    "SKU {:?} is missing after its upsert",
                    sku.as_str()
                ))
            })?;
        txn.commit().await.map_err(classify)?;
        to_stock(stored)
    }
}
