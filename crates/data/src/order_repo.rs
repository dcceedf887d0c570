//! `SeaOrmOrderRepo`: orders and their items, written together with their outbox event.

use std::collections::HashMap;

use async_trait::async_trait;
use biz::{
    Currency, NewOutboxEvent, Order, OrderChange, OrderId, OrderItem, OrderPage, OrderRepo,
    PageQuery, RepoError, RequestId, UserId,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use tracing::instrument;
use uuid::Uuid;

use crate::{
    entity::{order_items, orders, outbox_events},
    error::classify,
};

#[derive(Clone)]
pub struct SeaOrmOrderRepo {
    db: DatabaseConnection,
}

impl SeaOrmOrderRepo {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    async fn load_items(
        &self,
        order_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<order_items::Model>>, RepoError> {
        let rows = order_items::Entity::find()
            .filter(order_items::Column::OrderId.is_in(order_ids.iter().copied()))
            .order_by_asc(order_items::Column::OrderId)
            .order_by_asc(order_items::Column::LineNo)
            .all(&self.db)
            .await
            .map_err(classify)?;
        let mut by_order: HashMap<Uuid, Vec<order_items::Model>> = HashMap::new();
        for row in rows {
            by_order.entry(row.order_id).or_default().push(row);
        }
        Ok(by_order)
    }

    async fn with_items(&self, rows: Vec<orders::Model>) -> Result<Vec<Order>, RepoError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        let mut items = self.load_items(&ids).await?;
        rows.into_iter()
            .map(|row| {
                let lines = items.remove(&row.id).unwrap_or_default();
                to_order(row, lines)
            })
            .collect()
    }
}

/// Inserts `order` and its items inside `txn`.
pub(crate) async fn insert_order(
    txn: &DatabaseTransaction,
    order: &Order,
) -> Result<(), sea_orm::DbErr> {
    orders::Entity::insert(orders::ActiveModel {
        id: Set(order.id.as_uuid()),
        request_id: Set(order.request_id.to_string()),
        user_id: Set(order.user_id.to_string()),
        status: Set(order.status.as_str().to_string()),
        currency: Set(order.currency.code().to_string()),
        total_amount: Set(order.total_amount),
        version: Set(order.version),
        created_at: Set(order.created_at),
        updated_at: Set(order.updated_at),
    })
    .exec_without_returning(txn)
    .await?;

    let lines = order
        .items
        .iter()
        .enumerate()
        .map(|(line_no, item)| order_items::ActiveModel {
            id: NotSet,
            order_id: Set(order.id.as_uuid()),
            line_no: Set(line_no as i32),
            sku: Set(item.sku.to_string()),
            quantity: Set(i64::from(item.quantity)),
            unit_price: Set(item.unit_price),
        });
    order_items::Entity::insert_many(lines)
        .exec_without_returning(txn)
        .await?;

    Ok(())
}

/// Applies `change` inside `txn` when the order still has status `change.from`, with its
/// event; returns whether it did.
pub(crate) async fn apply_change(
    txn: &DatabaseTransaction,
    change: &OrderChange,
) -> Result<bool, sea_orm::DbErr> {
    let result = orders::Entity::update_many()
        .col_expr(orders::Column::Status, Expr::value(change.to.as_str()))
        .col_expr(
            orders::Column::Version,
            Expr::col(orders::Column::Version).add(1),
        )
        .col_expr(
            orders::Column::UpdatedAt,
            Expr::value(change.event.occurred_at),
        )
        .filter(orders::Column::Id.eq(change.order_id.as_uuid()))
        .filter(orders::Column::Status.eq(change.from.as_str()))
        .exec(txn)
        .await?;
    if result.rows_affected == 0 {
        return Ok(false);
    }
    insert_outbox_event(txn, &change.event).await?;
    Ok(true)
}

/// Inserts an outbox row inside `txn`, so it commits or rolls back with the business change.
pub(crate) async fn insert_outbox_event(
    txn: &DatabaseTransaction,
    event: &NewOutboxEvent,
) -> Result<(), sea_orm::DbErr> {
    outbox_events::Entity::insert(outbox_events::ActiveModel::pending(event))
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

#[async_trait]
impl OrderRepo for SeaOrmOrderRepo {
    #[instrument(skip_all, fields(order_id = %order.id, event_id = %event.event_id), err(Display))]
    async fn create_with_event(
        &self,
        order: &Order,
        event: &NewOutboxEvent,
    ) -> Result<(), RepoError> {
        let txn = self.db.begin().await.map_err(classify)?;
        insert_order(&txn, order).await.map_err(classify)?;
        insert_outbox_event(&txn, event).await.map_err(classify)?;

        // Dropping an uncommitted transaction rolls it back, so every `?` above leaves nothing.
        txn.commit().await.map_err(classify)
    }

    #[instrument(skip(self), err(Display))]
    async fn get(&self, id: OrderId) -> Result<Option<Order>, RepoError> {
        let Some(row) = orders::Entity::find_by_id(id.as_uuid())
            .one(&self.db)
            .await
            .map_err(classify)?
        else {
            return Ok(None);
        };
        Ok(self.with_items(vec![row]).await?.pop())
    }

    #[instrument(skip_all, fields(request_id = %request_id), err(Display))]
    async fn find_by_request_id(&self, request_id: &RequestId) -> Result<Option<Order>, RepoError> {
        let Some(row) = orders::Entity::find()
            .filter(orders::Column::RequestId.eq(request_id.as_str()))
            .one(&self.db)
            .await
            .map_err(classify)?
        else {
            return Ok(None);
        };
        Ok(self.with_items(vec![row]).await?.pop())
    }

    #[instrument(skip_all, fields(user_id = %query.user_id, limit = query.limit), err(Display))]
    async fn list(&self, query: &PageQuery) -> Result<OrderPage, RepoError> {
        let mut select = orders::Entity::find()
            .filter(orders::Column::UserId.eq(query.user_id.as_str()))
            .order_by_desc(orders::Column::Id)
            .limit(u64::from(query.limit) + 1);
        if let Some(after) = query.after {
            select = select.filter(orders::Column::Id.lt(after.as_uuid()));
        }
        let mut rows = select.all(&self.db).await.map_err(classify)?;

        // Fetching one row past the page shows whether another page follows.
        let has_more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        let orders = self.with_items(rows).await?;
        let next_after = if has_more {
            orders.last().map(|order| order.id)
        } else {
            None
        };
        Ok(OrderPage { orders, next_after })
    }

    #[instrument(skip_all, fields(order_id = %change.order_id, to = change.to.as_str()), err(Display))]
    async fn change_status(&self, change: &OrderChange) -> Result<bool, RepoError> {
        let txn = self.db.begin().await.map_err(classify)?;
        let applied = apply_change(&txn, change).await.map_err(classify)?;
        if applied {
            txn.commit().await.map_err(classify)?;
        }
        Ok(applied)
    }
}

fn corrupt(message: String) -> RepoError {
    RepoError::Other(message.into())
}

fn to_order(row: orders::Model, lines: Vec<order_items::Model>) -> Result<Order, RepoError> {
    let items = lines
        .into_iter()
        .enumerate()
        .map(|(index, line)| {
            let quantity = u32::try_from(line.quantity)
                .map_err(|_| corrupt(format!("order {} has quantity {}", row.id, line.quantity)))?;
            OrderItem::parse(index, line.sku, quantity, line.unit_price)
                .map_err(|error| corrupt(format!("order {} has an invalid item: {error}", row.id)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let invalid = |error: biz::ValidationError| corrupt(format!("order {}: {error}", row.id));
    Ok(Order {
        id: OrderId::from_uuid(row.id),
        request_id: RequestId::parse(row.request_id).map_err(invalid)?,
        user_id: UserId::parse(row.user_id).map_err(invalid)?,
        currency: Currency::parse(&row.currency).map_err(invalid)?,
        items,
        total_amount: row.total_amount,
        status: row
            .status
            .parse()
            .map_err(|error: String| corrupt(format!("order {}: {error}", row.id)))?,
        version: row.version,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}
