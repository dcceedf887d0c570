//! SeaORM entities, one module per table. They stay inside `data`: repositories convert them
//! to `biz` types.

pub mod inbox_messages;
pub mod order_items;
pub mod orders;
pub mod outbox_events;
pub mod saga_instances;
pub mod user_order_totals;
