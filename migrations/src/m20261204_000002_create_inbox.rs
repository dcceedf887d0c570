//! The consumer inbox, which records each processed message id once per consumer, and the
//! `user_order_totals` projection that the example consumer maintains.

use sea_orm_migration::{
    MigrationTrait, SchemaManager, async_trait,
    prelude::{DbErr, DeriveIden, DeriveMigrationName, Index, Table},
    schema::{big_integer, string_len, timestamp_with_time_zone},
    sea_orm,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum InboxMessages {
    Table,
    Consumer,
    MessageId,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum UserOrderTotals {
    Table,
    UserId,
    Currency,
    OrderCount,
    TotalAmount,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The primary key is the deduplication: a second insert of the same pair fails with
        // a unique violation, or waits for the first transaction to end.
        manager
            .create_table(
                Table::create()
                    .table(InboxMessages::Table)
                    .col(string_len(InboxMessages::Consumer, 128))
                    .col(string_len(InboxMessages::MessageId, 128))
                    .col(timestamp_with_time_zone(InboxMessages::ReceivedAt))
                    .primary_key(
                        Index::create()
                            .col(InboxMessages::Consumer)
                            .col(InboxMessages::MessageId),
                    )
                    .to_owned(),
            )
            .await?;

        // One row per user and currency, because amounts in different currencies do not add.
        manager
            .create_table(
                Table::create()
                    .table(UserOrderTotals::Table)
                    .col(string_len(UserOrderTotals::UserId, 128))
                    .col(string_len(UserOrderTotals::Currency, 3))
                    .col(big_integer(UserOrderTotals::OrderCount))
                    .col(big_integer(UserOrderTotals::TotalAmount))
                    .col(timestamp_with_time_zone(UserOrderTotals::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(UserOrderTotals::UserId)
                            .col(UserOrderTotals::Currency),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(UserOrderTotals::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(InboxMessages::Table).to_owned())
            .await
    }
}
