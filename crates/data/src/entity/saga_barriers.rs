use sea_orm::entity::prelude::{
    ActiveModelBehavior, DateTimeUtc, DeriveEntityModel, DerivePrimaryKey, DeriveRelation,
    EntityTrait, EnumIter, PrimaryKeyTrait, Uuid,
};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "saga_barriers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub saga_id: Uuid,
    /// `reserve_stock` or `freeze_balance`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub step: String,
    /// `try`, `confirm` or `cancel`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub operation: String,
    /// `APPLIED`, `REJECTED` or `NULL`.
    pub outcome: String,
    /// The rejection message when `outcome` is `REJECTED`.
    pub message: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
