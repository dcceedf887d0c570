//! Partial indexes over unsent outbox rows, so that claiming stays fast however many `SENT`
//! rows wait for the retention job.

use sea_orm_migration::{
    MigrationTrait, SchemaManager, async_trait,
    prelude::{DbErr, DeriveMigrationName},
    sea_orm::ConnectionTrait,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite and PostgreSQL share this syntax for partial indexes.
        let connection = manager.get_connection();
        connection
            .execute_unprepared(
                "CREATE INDEX idx_outbox_events_unsent_id ON outbox_events (id) \
                 WHERE status IN ('PENDING', 'FAILED')",
            )
            .await?;
        connection
            .execute_unprepared(
                "CREATE INDEX idx_outbox_events_unsent_aggregate \
                 ON outbox_events (aggregate_type, aggregate_id, id) \
                 WHERE status IN ('PENDING', 'FAILED')",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let connection = manager.get_connection();
        connection
            .execute_unprepared("DROP INDEX IF EXISTS idx_outbox_events_unsent_aggregate")
            .await?;
        connection
            .execute_unprepared("DROP INDEX IF EXISTS idx_outbox_events_unsent_id")
            .await?;
        Ok(())
    }
}
