//! Tables of the saga participants: stock and its reservations for the inventory service,
//! accounts and their freezes for the payment service, and the idempotency barrier both use.
//! Every service's database gets them all, because every service runs the same migrations.

use sea_orm_migration::{
    MigrationTrait, SchemaManager, async_trait,
    prelude::{DbErr, DeriveIden, DeriveMigrationName, Expr, ExprTrait, Index, Table},
    schema::{
        big_integer, integer, pk_uuid, string_len, text_null, timestamp_with_time_zone, uuid,
    },
};

use sea_orm_migration::{prelude::IntoIden, sea_orm};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Stocks {
    Table,
    Sku,
    Available,
    Reserved,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum StockReservations {
    Table,
    SagaId,
    Sku,
    Quantity,
    State,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    UserId,
    Balance,
    Frozen,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum BalanceFreezes {
    Table,
    SagaId,
    UserId,
    Amount,
    State,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SagaBarriers {
    Table,
    SagaId,
    Step,
    Operation,
    Outcome,
    Message,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_inventory_tables(manager).await?;
        create_payment_tables(manager).await?;
        create_saga_barriers(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            SagaBarriers::Table.into_iden(),
            BalanceFreezes::Table.into_iden(),
            Accounts::Table.into_iden(),
            StockReservations::Table.into_iden(),
            Stocks::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

async fn create_inventory_tables(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    // The CHECK is the last guard against overselling: the conditional updates of the
    // repository never break it, and a bug that tried would fail instead of going negative.
    manager
        .create_table(
            Table::create()
                .table(Stocks::Table)
                .col(string_len(Stocks::Sku, 64).primary_key())
                .col(big_integer(Stocks::Available))
                .col(big_integer(Stocks::Reserved).default(0))
                .col(integer(Stocks::Version).default(1))
                .col(timestamp_with_time_zone(Stocks::CreatedAt))
                .col(timestamp_with_time_zone(Stocks::UpdatedAt))
                .check(
                    Expr::col(Stocks::Available)
                        .gte(0)
                        .and(Expr::col(Stocks::Reserved).gte(0)),
                )
                .to_owned(),
        )
        .await?;

    // One row per SKU of a saga's reservation; `state` is RESERVED, CONFIRMED or RELEASED.
    manager
        .create_table(
            Table::create()
                .table(StockReservations::Table)
                .col(uuid(StockReservations::SagaId))
                .col(string_len(StockReservations::Sku, 64))
                .col(big_integer(StockReservations::Quantity))
                .col(string_len(StockReservations::State, 16))
                .col(timestamp_with_time_zone(StockReservations::CreatedAt))
                .col(timestamp_with_time_zone(StockReservations::UpdatedAt))
                .primary_key(
                    Index::create()
                        .col(StockReservations::SagaId)
                        .col(StockReservations::Sku),
                )
                .check(Expr::col(StockReservations::Quantity).gt(0))
                .to_owned(),
        )
        .await
}

async fn create_payment_tables(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(Accounts::Table)
                .col(string_len(Accounts::UserId, 128).primary_key())
                .col(big_integer(Accounts::Balance))
                .col(big_integer(Accounts::Frozen).default(0))
                .col(integer(Accounts::Version).default(1))
                .col(timestamp_with_time_zone(Accounts::CreatedAt))
                .col(timestamp_with_time_zone(Accounts::UpdatedAt))
                .check(
                    Expr::col(Accounts::Frozen)
                        .gte(0)
                        .and(Expr::col(Accounts::Balance).gte(Expr::col(Accounts::Frozen))),
                )
                .to_owned(),
        )
        .await?;

    // One row per saga; `state` is FROZEN, CONFIRMED or UNFROZEN.
    manager
        .create_table(
            Table::create()
                .table(BalanceFreezes::Table)
                .col(pk_uuid(BalanceFreezes::SagaId))
                .col(string_len(BalanceFreezes::UserId, 128))
                .col(big_integer(BalanceFreezes::Amount))
                .col(string_len(BalanceFreezes::State, 16))
                .col(timestamp_with_time_zone(BalanceFreezes::CreatedAt))
                .col(timestamp_with_time_zone(BalanceFreezes::UpdatedAt))
                .check(Expr::col(BalanceFreezes::Amount).gt(0))
                .to_owned(),
        )
        .await
}

/// One row per (saga, step, operation) that a participant received: `operation` is `try`,
/// `confirm` or `cancel`, and `outcome` is `APPLIED`, `REJECTED` (with its `message`) or
/// `NULL` for a cancel that found nothing to undo.
async fn create_saga_barriers(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(SagaBarriers::Table)
                .col(uuid(SagaBarriers::SagaId))
                .col(string_len(SagaBarriers::Step, 32))
                .col(string_len(SagaBarriers::Operation, 16))
                .col(string_len(SagaBarriers::Outcome, 16))
                .col(text_null(SagaBarriers::Message))
                .col(timestamp_with_time_zone(SagaBarriers::CreatedAt))
                .primary_key(
                    Index::create()
                        .col(SagaBarriers::SagaId)
                        .col(SagaBarriers::Step)
                        .col(SagaBarriers::Operation),
                )
                .to_owned(),
        )
        .await
}
