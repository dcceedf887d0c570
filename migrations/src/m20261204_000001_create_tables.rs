//! Orders, their items, the transactional outbox, and saga instances.

use sea_orm_migration::{
    MigrationTrait, SchemaManager, async_trait,
    prelude::{DbErr, DeriveIden, DeriveMigrationName, ForeignKey, ForeignKeyAction, Index, Table},
    schema::{
        big_integer, big_pk_auto, integer, json_binary, pk_uuid, string_len, string_len_null,
        text_null, timestamp_with_time_zone, timestamp_with_time_zone_null, uuid,
    },
    sea_orm::{ConnectionTrait, DbBackend},
};

use sea_orm_migration::sea_orm;

use crate::OUTBOX_NOTIFY_CHANNEL;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    RequestId,
    UserId,
    Status,
    Currency,
    TotalAmount,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum OrderItems {
    Table,
    Id,
    OrderId,
    LineNo,
    Sku,
    Quantity,
    UnitPrice,
}

#[derive(DeriveIden)]
enum OutboxEvents {
    Table,
    Id,
    EventId,
    AggregateType,
    AggregateId,
    EventType,
    Payload,
    Headers,
    Status,
    RetryCount,
    NextRetryAt,
    LastError,
    LockedBy,
    LockedUntil,
    CreatedAt,
    UpdatedAt,
    PublishedAt,
}

#[derive(DeriveIden)]
enum SagaInstances {
    Table,
    Id,
    SagaType,
    OrderId,
    State,
    CurrentStep,
    Payload,
    StepLog,
    RetryCount,
    NextRetryAt,
    Deadline,
    LockedBy,
    LockedUntil,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_orders(manager).await?;
        create_outbox_events(manager).await?;
        create_saga_instances(manager).await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            create_outbox_notify_trigger(manager).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            let connection = manager.get_connection();
            connection
                .execute_unprepared("DROP TRIGGER IF EXISTS outbox_events_notify ON outbox_events")
                .await?;
            connection
                .execute_unprepared("DROP FUNCTION IF EXISTS outbox_events_notify()")
                .await?;
        }
        manager
            .drop_table(Table::drop().table(SagaInstances::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(OutboxEvents::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(OrderItems::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Orders::Table).to_owned())
            .await
    }
}

async fn create_orders(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(Orders::Table)
                .col(pk_uuid(Orders::Id))
                .col(string_len(Orders::RequestId, 128).unique_key())
                .col(string_len(Orders::UserId, 128))
                .col(string_len(Orders::Status, 16))
                .col(string_len(Orders::Currency, 3))
                .col(big_integer(Orders::TotalAmount))
                .col(integer(Orders::Version))
                .col(timestamp_with_time_zone(Orders::CreatedAt))
                .col(timestamp_with_time_zone(Orders::UpdatedAt))
                .to_owned(),
        )
        .await?;
    // Keyset paging of one user's orders, newest first.
    manager
        .create_index(
            Index::create()
                .name("idx_orders_user_id_id")
                .table(Orders::Table)
                .col(Orders::UserId)
                .col(Orders::Id)
                .to_owned(),
        )
        .await?;

    manager
        .create_table(
            Table::create()
                .table(OrderItems::Table)
                .col(big_pk_auto(OrderItems::Id))
                .col(uuid(OrderItems::OrderId))
                .col(integer(OrderItems::LineNo))
                .col(string_len(OrderItems::Sku, 64))
                .col(big_integer(OrderItems::Quantity))
                .col(big_integer(OrderItems::UnitPrice))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_order_items_order_id")
                        .from(OrderItems::Table, OrderItems::OrderId)
                        .to(Orders::Table, Orders::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
    manager
        .create_index(
            Index::create()
                .name("idx_order_items_order_id_line_no")
                .table(OrderItems::Table)
                .col(OrderItems::OrderId)
                .col(OrderItems::LineNo)
                .unique()
                .to_owned(),
        )
        .await
}

async fn create_outbox_events(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(OutboxEvents::Table)
                .col(big_pk_auto(OutboxEvents::Id))
                .col(uuid(OutboxEvents::EventId).unique_key())
                .col(string_len(OutboxEvents::AggregateType, 64))
                .col(string_len(OutboxEvents::AggregateId, 128))
                .col(string_len(OutboxEvents::EventType, 128))
                .col(json_binary(OutboxEvents::Payload))
                .col(json_binary(OutboxEvents::Headers))
                .col(string_len(OutboxEvents::Status, 16).default("PENDING"))
                .col(integer(OutboxEvents::RetryCount).default(0))
                .col(timestamp_with_time_zone_null(OutboxEvents::NextRetryAt))
                .col(text_null(OutboxEvents::LastError))
                .col(string_len_null(OutboxEvents::LockedBy, 128))
                .col(timestamp_with_time_zone_null(OutboxEvents::LockedUntil))
                .col(timestamp_with_time_zone(OutboxEvents::CreatedAt))
                .col(timestamp_with_time_zone(OutboxEvents::UpdatedAt))
                .col(timestamp_with_time_zone_null(OutboxEvents::PublishedAt))
                .to_owned(),
        )
        .await?;
    // Relays scan unsent rows in id order.
    manager
        .create_index(
            Index::create()
                .name("idx_outbox_events_status_id")
                .table(OutboxEvents::Table)
                .col(OutboxEvents::Status)
                .col(OutboxEvents::Id)
                .to_owned(),
        )
        .await?;
    // The claim query looks for an earlier unsent event of the same aggregate.
    manager
        .create_index(
            Index::create()
                .name("idx_outbox_events_aggregate")
                .table(OutboxEvents::Table)
                .col(OutboxEvents::AggregateType)
                .col(OutboxEvents::AggregateId)
                .col(OutboxEvents::Id)
                .to_owned(),
        )
        .await
}

async fn create_saga_instances(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(SagaInstances::Table)
                .col(pk_uuid(SagaInstances::Id))
                .col(string_len(SagaInstances::SagaType, 64))
                .col(uuid(SagaInstances::OrderId))
                .col(string_len(SagaInstances::State, 16))
                .col(integer(SagaInstances::CurrentStep).default(0))
                .col(json_binary(SagaInstances::Payload))
                .col(json_binary(SagaInstances::StepLog))
                .col(integer(SagaInstances::RetryCount).default(0))
                .col(timestamp_with_time_zone_null(SagaInstances::NextRetryAt))
                .col(timestamp_with_time_zone_null(SagaInstances::Deadline))
                .col(string_len_null(SagaInstances::LockedBy, 128))
                .col(timestamp_with_time_zone_null(SagaInstances::LockedUntil))
                .col(integer(SagaInstances::Version).default(1))
                .col(timestamp_with_time_zone(SagaInstances::CreatedAt))
                .col(timestamp_with_time_zone(SagaInstances::UpdatedAt))
                .to_owned(),
        )
        .await?;
    manager
        .create_index(
            Index::create()
                .name("idx_saga_instances_order_id")
                .table(SagaInstances::Table)
                .col(SagaInstances::OrderId)
                .to_owned(),
        )
        .await?;
    // Workers look for unfinished sagas whose retry time has come.
    manager
        .create_index(
            Index::create()
                .name("idx_saga_instances_state_next_retry_at")
                .table(SagaInstances::Table)
                .col(SagaInstances::State)
                .col(SagaInstances::NextRetryAt)
                .to_owned(),
        )
        .await
}

/// Notifies [`OUTBOX_NOTIFY_CHANNEL`] once per inserting statement. PostgreSQL delivers the
/// notification when the inserting transaction commits, and never for a rollback.
async fn create_outbox_notify_trigger(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let connection = manager.get_connection();
    connection
        .execute_unprepared(&format!(
            "CREATE OR REPLACE FUNCTION outbox_events_notify() RETURNS trigger AS $$ \
             BEGIN PERFORM pg_notify('{OUTBOX_NOTIFY_CHANNEL}', ''); RETURN NULL; END; \
             $$ LANGUAGE plpgsql"
        ))
        .await?;
    connection
        .execute_unprepared(
            "CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events \
             FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify()",
        )
        .await?;
    Ok(())
}
