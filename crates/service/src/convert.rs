//! Conversions between protobuf messages and `biz` types.

use api::order::v1 as pb;
use biz::{
    CreateOrder, Currency, Order, OrderItem, OrderStatus, RequestId, UserId, ValidationError,
};
use chrono::{DateTime, Utc};

/// Validates a `CreateOrderRequest`, reporting the first invalid field.
pub(crate) fn create_order_from(
    request: pb::CreateOrderRequest,
) -> Result<CreateOrder, ValidationError> {
    let request_id = RequestId::parse(request.request_id)?;
    let user_id = UserId::parse(request.user_id)?;
    let currency = Currency::parse(&request.currency)?;
    if request.items.len() > biz::order::MAX_ITEMS {
        // Checked before the items themselves, so a huge list costs no per-item work.
        return Err(ValidationError::new(
            "items",
            format!(
                "has {} items; the maximum is {}",
                request.items.len(),
                biz::order::MAX_ITEMS
            ),
        ));
    }
    let items = request
        .items
        .into_iter()
        .enumerate()
        .map(|(index, item)| OrderItem::parse(index, item.sku, item.quantity, item.unit_price))
        .collect::<Result<Vec<_>, _>>()?;
    CreateOrder::new(request_id, user_id, currency, items)
}

pub(crate) fn order_to_pb(order: Order) -> pb::Order {
    pb::Order {
        id: order.id.to_string(),
        user_id: order.user_id.to_string(),
        currency: order.currency.code().to_string(),
        items: order
            .items
            .into_iter()
            .map(|item| pb::OrderItem {
                sku: item.sku.to_string(),
                quantity: item.quantity,
                unit_price: item.unit_price,
            })
            .collect(),
        total_amount: order.total_amount,
        status: status_to_pb(order.status) as i32,
        created_at: Some(timestamp(order.created_at)),
        updated_at: Some(timestamp(order.updated_at)),
        request_id: order.request_id.to_string(),
    }
}

fn status_to_pb(status: OrderStatus) -> pb::OrderStatus {
    match status {
        OrderStatus::Pending => pb::OrderStatus::Pending,
        OrderStatus::Confirmed => pb::OrderStatus::Confirmed,
        OrderStatus::Paid => pb::OrderStatus::Paid,
        OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
    }
}

pub(crate) fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}
