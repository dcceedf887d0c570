use sea_orm::entity::prelude::{
    ActiveModelBehavior, DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation,
    EntityTrait, EnumIter, Json, PrimaryKeyTrait, Uuid,
};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "saga_instances")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub saga_type: String,
    pub order_id: Uuid,
    /// `RUNNING`, `COMPENSATING`, `SUCCEEDED`, `COMPENSATED` or `FAILED`.
    pub state: String,
    pub current_step: i32,
    #[sea_orm(column_type = "JsonBinary")]
    pub payload: Json,
    /// Per step: name, outcome, attempts, last error and timestamps.
    #[sea_orm(column_type = "JsonBinary")]
    pub step_log: Json,
    pub retry_count: i32,
    pub next_retry_at: Option<DateTimeUtc>,
    pub deadline: Option<DateTimeUtc>,
    pub locked_by: Option<String>,
    pub locked_until: Option<DateTimeUtc>,
    pub version: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Set by CancelOrder while the saga runs; the saga then compensates.
    pub cancel_requested: bool,
    /// Reason the saga compensated or failed.
    pub error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
