//! SeaORM entities, one module per table. They stay inside `data`: repositories convert them
//! to `biz` types.

pub mod order_items;
pub mod orders;
pub mod outbox_events;
pub mod saga_instances;
