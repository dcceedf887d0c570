//! Adds what the saga orchestrator keeps beside the step log: the cancel flag that
//! CancelOrder sets, and the reason a saga compensated or failed.

use sea_orm_migration::{
    MigrationTrait, SchemaManager, async_trait,
    prelude::{DbErr, DeriveIden, DeriveMigrationName, Table},
    schema::{boolean, text_null},
};

use sea_orm_migration::sea_orm;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SagaInstances {
    Table,
    CancelRequested,
    Error,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite takes one column per ALTER TABLE.
        manager
            .alter_table(
                Table::alter()
                    .table(SagaInstances::Table)
                    .add_column(boolean(SagaInstances::CancelRequested).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(SagaInstances::Table)
                    .add_column(text_null(SagaInstances::Error))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(SagaInstances::Table)
                    .drop_column(SagaInstances::Error)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(SagaInstances::Table)
                    .drop_column(SagaInstances::CancelRequested)
                    .to_owned(),
            )
            .await
    }
}
