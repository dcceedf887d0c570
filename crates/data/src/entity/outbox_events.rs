use biz::NewOutboxEvent;
use chrono::Utc;
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::entity::prelude::{
    ActiveModelBehavior, DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation,
    EntityTrait, EnumIter, Json, PrimaryKeyTrait, Uuid,
};

/// `PENDING`: not yet published. `SENT`: confirmed by the broker. `FAILED`: the last attempt
/// failed and another is due at `next_retry_at`. `DEAD`: given up; an operator re-drives it.
pub const STATUS_PENDING: &str = "PENDING";
pub const STATUS_SENT: &str = "SENT";
pub const STATUS_FAILED: &str = "FAILED";
pub const STATUS_DEAD: &str = "DEAD";

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub payload: Json,
    /// Transport metadata: the routing key, and trace context when there is one.
    #[sea_orm(column_type = "JsonBinary")]
    pub headers: Json,
    pub status: String,
    pub retry_count: i32,
    pub next_retry_at: Option<DateTimeUtc>,
    pub last_error: Option<String>,
    pub locked_by: Option<String>,
    pub locked_until: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub published_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl ActiveModel {
    /// Returns a new `PENDING` row for `event`, with no attempt made yet.
    pub fn pending(event: &NewOutboxEvent) -> Self {
        Self {
            id: NotSet,
            event_id: Set(event.event_id),
            aggregate_type: Set(event.aggregate_type.clone()),
            aggregate_id: Set(event.aggregate_id.clone()),
            event_type: Set(event.event_type.clone()),
            payload: Set(event.payload.clone()),
            headers: Set(headers(event)),
            status: Set(STATUS_PENDING.to_string()),
            retry_count: Set(0),
            next_retry_at: Set(None),
            last_error: Set(None),
            locked_by: Set(None),
            locked_until: Set(None),
            created_at: Set(event.occurred_at),
            updated_at: Set(Utc::now()),
            published_at: Set(None),
        }
    }
}

/// Returns the headers of `event`'s row: its routing key, and the trace context of the current
/// span when tracing is set up.
fn headers(event: &NewOutboxEvent) -> Json {
    let mut headers = serde_json::json!({ "routing_key": event.routing_key });
    if let Some(traceparent) = crate::trace_context::current_traceparent() {
        headers[crate::trace_context::TRACEPARENT] = Json::from(traceparent);
    }
    headers
}
