//! Schema migrations, written once for SQLite and PostgreSQL. Processes apply them at start-up
//! when `data.auto_migrate` is on; the `migrate` binary applies them on demand.

pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::{MigrationTrait, async_trait};

mod m20261204_000001_create_tables;
mod m20261204_000002_create_inbox;
mod m20261204_000003_index_unsent_outbox_rows;
mod m20261204_000004_create_participant_tables;
mod m20261204_000005_extend_saga_instances;

/// PostgreSQL channel that `outbox_events` inserts notify, so relays wake without polling.
pub const OUTBOX_NOTIFY_CHANNEL: &str = "outbox_events";

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261204_000001_create_tables::Migration),
            Box::new(m20261204_000002_create_inbox::Migration),
            Box::new(m20261204_000003_index_unsent_outbox_rows::Migration),
            Box::new(m20261204_000004_create_participant_tables::Migration),
            Box::new(m20261204_000005_extend_saga_instances::Migration),
        ]
    }
}
