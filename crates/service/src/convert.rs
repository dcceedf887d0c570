//! Conversions between protobuf messages and `biz` types.

use std::time::Duration;

use api::order::v1 as pb;
use biz::{
    CreateOrder, Currency, Order, OrderItem, OrderStatus, PlaceOrder, RequestId, Saga, SagaState,
    SagaStep, UserId, ValidationError,
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

/// Validates a `wait_timeout`: unset means no wait; negative durations are invalid. The use
/// case checks the maximum, which is configured.
pub(crate) fn wait_from(
    timeout: Option<prost_types::Duration>,
) -> Result<Duration, ValidationError> {
    let Some(timeout) = timeout else {
        return Ok(Duration::ZERO);
    };
    Duration::try_from(timeout).map_err(|_| {
        let seconds = timeout.seconds as f64 + f64::from(timeout.nanos) / 1e9;
        ValidationError::new(
            "wait_timeout",
            format!("is {seconds}s; use a duration of 0 or more, such as \"5s\""),
        )
    })
}

/// Validates a `PlaceOrderRequest`: the order fields as for CreateOrder, and its
/// `wait_timeout`.
pub(crate) fn place_order_from(
    request: pb::PlaceOrderRequest,
) -> Result<PlaceOrder, ValidationError> {
    let wait = wait_from(request.wait_timeout)?;
    let order = create_order_from(pb::CreateOrderRequest {
        request_id: request.request_id,
        user_id: request.user_id,
        currency: request.currency,
        items: request.items,
    })?;
    Ok(PlaceOrder { order, wait })
}

pub(crate) fn saga_to_pb(saga: Saga) -> pb::Saga {
    pb::Saga {
        id: saga.id.to_string(),
        order_id: saga.order_id.to_string(),
        state: saga_state_to_pb(saga.state) as i32,
        steps: saga.steps.into_iter().map(step_to_pb).collect(),
        error: saga.error.unwrap_or_default(),
        created_at: Some(timestamp(saga.created_at)),
        updated_at: Some(timestamp(saga.updated_at)),
    }
}

fn saga_state_to_pb(state: SagaState) -> pb::SagaState {
    match state {
        SagaState::Running => pb::SagaState::Running,
        SagaState::Compensating => pb::SagaState::Compensating,
        SagaState::Succeeded => pb::SagaState::Succeeded,
        SagaState::Compensated => pb::SagaState::Compensated,
        SagaState::Failed => pb::SagaState::Failed,
    }
}

fn step_to_pb(step: SagaStep) -> pb::SagaStep {
    pb::SagaStep {
        name: step.name.as_str().to_string(),
        outcome: step.outcome.as_str().to_string(),
        attempts: step.attempts,
        last_error: step.last_error.unwrap_or_default(),
        started_at: Some(timestamp(step.started_at)),
        finished_at: step.finished_at.map(timestamp),
    }
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

#[cfg(test)]
mod tests {
    use proptest::{collection::vec, prelude::*};

    use super::*;

    /// Codes that ISO 4217 defines, so the conversion must accept them.
    const VALID_CODES: [&str; 5] = ["EUR", "USD", "JPY", "GBP", "CHF"];

    /// Identifiers around every rule: valid, empty, near the length limit in one-, two- and
    /// three-byte characters, with a control character, with surrounding whitespace, or any
    /// short Unicode string.
    fn identifier(max_len: usize) -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z0-9'%_;-]{1,12}",
            1 => Just(String::new()),
            1 => proptest::string::string_regex(&format!("[a-zé日]{{{},{}}}", max_len - 2, max_len + 2))
                .expect("valid regex"),
            1 => "[a-z]{0,3}[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}][a-z]{0,3}",
            1 => "[ \\t][a-z]{1,4}|[a-z]{1,4}[ \\t]",
            1 => ".{0,6}",
        ]
    }

    fn currency() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => proptest::sample::select(VALID_CODES.as_slice()).prop_map(str::to_string),
            1 => "[A-Za-z]{0,5}",
            1 => ".{0,4}",
        ]
    }

    fn item() -> impl Strategy<Value = pb::OrderItem> {
        // A few one-letter SKUs make repeated SKUs likely.
        let sku = prop_oneof![2 => "[a-c]", 3 => identifier(biz::order::MAX_SKU_LEN)];
        let quantity = prop_oneof![
            0u32..3,
            1u32..=1_000_000,
            999_999u32..=1_000_002,
            Just(u32::MAX),
        ];
        let unit_price = prop_oneof![
            -2i64..3,
            0i64..1_000_000,
            (i64::MAX / 4)..=i64::MAX,
            Just(i64::MIN),
        ];
        (sku, quantity, unit_price).prop_map(|(sku, quantity, unit_price)| pb::OrderItem {
            sku,
            quantity,
            unit_price,
        })
    }

    fn request() -> impl Strategy<Value = pb::CreateOrderRequest> {
        let items = prop_oneof![
            9 => vec(item(), 0..6),
            1 => vec(item(), 99..=101),
        ];
        (
            identifier(biz::order::MAX_ID_LEN),
            identifier(biz::order::MAX_ID_LEN),
            currency(),
            items,
        )
            .prop_map(
                |(request_id, user_id, currency, items)| pb::CreateOrderRequest {
                    request_id,
                    user_id,
                    currency,
                    items,
                },
            )
    }

    /// Checks the identifier rule, restated apart from `biz`: 1 to `max_len` characters, no
    /// control characters and no surrounding whitespace.
    fn identifier_ok(value: &str, max_len: usize) -> bool {
        !value.is_empty()
            && value.chars().count() <= max_len
            && !value.chars().any(char::is_control)
            && value.trim() == value
    }

    fn checked_total(items: &[pb::OrderItem]) -> Option<i64> {
        items.iter().try_fold(0i64, |total, item| {
            total.checked_add(item.unit_price.checked_mul(i64::from(item.quantity))?)
        })
    }

    fn sku_ok(items: &[pb::OrderItem], index: usize) -> bool {
        let sku = &items[index].sku;
        identifier_ok(sku, biz::order::MAX_SKU_LEN)
            && !items[..index].iter().any(|earlier| &earlier.sku == sku)
    }

    /// Splits `items[3].quantity` into `(3, "quantity")`.
    fn item_path(field: &str) -> Option<(usize, &str)> {
        let rest = field.strip_prefix("items[")?;
        let (index, name) = rest.split_once("].")?;
        Some((index.parse().ok()?, name))
    }

    /// Returns whether `request` breaks the rule of `field`, or `None` for an unknown path.
    fn breaks_rule(request: &pb::CreateOrderRequest, field: &str) -> Option<bool> {
        let items = &request.items;
        let broken = match field {
            "request_id" => !identifier_ok(&request.request_id, biz::order::MAX_ID_LEN),
            "user_id" => !identifier_ok(&request.user_id, biz::order::MAX_ID_LEN),
            "currency" => !VALID_CODES.contains(&request.currency.as_str()),
            "items" => {
                items.is_empty()
                    || items.len() > biz::order::MAX_ITEMS
                    || checked_total(items).is_none()
            }
            _ => {
                let (index, name) = item_path(field)?;
                let item = items.get(index)?;
                match name {
                    "sku" => !sku_ok(items, index),
                    "quantity" => item.quantity == 0 || item.quantity > 1_000_000,
                    "unit_price" => item.unit_price < 0,
                    _ => return None,
                }
            }
        };
        Some(broken)
    }

    fn assert_valid_result(request: &pb::CreateOrderRequest, created: &CreateOrder) {
        let items = &request.items;
        assert!(identifier_ok(&request.request_id, biz::order::MAX_ID_LEN));
        assert!(identifier_ok(&request.user_id, biz::order::MAX_ID_LEN));
        assert_eq!(created.request_id.as_str(), request.request_id);
        assert_eq!(created.user_id.as_str(), request.user_id);
        assert_eq!(created.currency.code(), request.currency);
        assert!((1..=biz::order::MAX_ITEMS).contains(&items.len()));
        assert_eq!(created.items.len(), items.len());
        for (index, (kept, sent)) in created.items.iter().zip(items).enumerate() {
            assert!(sku_ok(items, index), "items[{index}].sku {:?}", sent.sku);
            assert!((1..=1_000_000).contains(&sent.quantity));
            assert!(sent.unit_price >= 0);
            assert_eq!(kept.sku.as_str(), sent.sku);
            assert_eq!(kept.quantity, sent.quantity);
            assert_eq!(kept.unit_price, sent.unit_price);
        }
        assert_eq!(Some(created.total_amount), checked_total(items));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn create_order_from_matches_rules(request in request()) {
            match create_order_from(request.clone()) {
                Ok(created) => assert_valid_result(&request, &created),
                Err(error) => {
                    let broken = breaks_rule(&request, &error.field);
                    prop_assert!(broken.is_some(), "unknown field path {:?}", error.field);
                    prop_assert_eq!(
                        broken,
                        Some(true),
                        "{} is reported, but the request keeps that rule: {}",
                        error.field,
                        error.message
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod wait_tests {
    use super::*;

    #[test]
    fn wait_timeout_defaults_to_zero() {
        assert_eq!(wait_from(None), Ok(Duration::ZERO));
        let five = prost_types::Duration {
            seconds: 5,
            nanos: 500_000_000,
        };
        assert_eq!(wait_from(Some(five)), Ok(Duration::from_millis(5500)));
    }

    #[test]
    fn negative_wait_timeout_names_field() {
        let negative = prost_types::Duration {
            seconds: -5,
            nanos: 0,
        };

        let error = wait_from(Some(negative)).unwrap_err();

        assert_eq!(error.field, "wait_timeout");
        assert!(error.message.starts_with("is -5s;"), "{}", error.message);
    }
}
