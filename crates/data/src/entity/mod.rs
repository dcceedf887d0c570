//! SeaORM entities, one module per table. They stay inside `data`: repositories convert them
//! to `biz` types.

pub mod accounts;
pub mod balance_freezes;
pub mod inbox_messages;
pub mod order_items;
pub mod orders;
pub mod outbox_events;
pub mod saga_barriers;
pub mod saga_instances;
pub mod stock_reservations;
pub mod stocks;
pub mod user_order_totals;
