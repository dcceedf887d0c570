//! The order aggregate and the validated values it is built from. Every constructor checks
//! its rule and names the offending request field, so an invalid value never reaches storage.

use std::{collections::HashSet, fmt, str::FromStr};

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{ValidationError, quote};

/// Maximum length of `request_id` and `user_id`, in characters.
pub const MAX_ID_LEN: usize = 128;
/// Maximum length of a SKU, in characters.
pub const MAX_SKU_LEN: usize = 64;
/// Maximum number of items in one order.
pub const MAX_ITEMS: usize = 100;
/// Maximum units of one item.
pub const MAX_QUANTITY: u32 = 1_000_000;

/// Order id: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct OrderId(Uuid);

impl OrderId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Parses an id from a request field.
    ///
    /// # Errors
    ///
    /// Returns a [`ValidationError`] on `field` unless `value` is a UUID.
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        if value.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        Uuid::from_str(value)
            .map(Self)
            .map_err(|_| ValidationError::new(field, format!("{} is not a UUID", quote(value))))
    }
}

impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Checks an identifier: 1 to `max_len` characters, none of them control characters or
/// surrounding whitespace.
fn check_identifier(field: &str, value: &str, max_len: usize) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    let length = value.chars().count();
    if length > max_len {
        return Err(ValidationError::new(
            field,
            format!("is {length} characters long; the maximum is {max_len}"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    if value.trim() != value {
        return Err(ValidationError::new(
            field,
            "must not start or end with whitespace",
        ));
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` as the request field of the same name.
            ///
            /// # Errors
            ///
            /// Returns a [`ValidationError`] when the value is empty, too long, or contains
            /// control characters or surrounding whitespace.
            pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
                Self::parse_field($field, value)
            }

            /// Like [`Self::parse`], reporting errors against `field`.
            pub fn parse_field(
                field: &str,
                value: impl Into<String>,
            ) -> Result<Self, ValidationError> {
                let value = value.into();
                check_identifier(field, &value, $max)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// The client's idempotency key for a create request.
    RequestId,
    "request_id",
    MAX_ID_LEN
);
identifier!(
    /// The customer who places the order.
    UserId,
    "user_id",
    MAX_ID_LEN
);
identifier!(
    /// Stock keeping unit.
    Sku,
    "sku",
    MAX_SKU_LEN
);

/// An ISO 4217 currency code such as `EUR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// Parses an upper-case ISO 4217 code.
    ///
    /// # Errors
    ///
    /// Returns a [`ValidationError`] on `currency` for anything else, including lower case.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        if value.is_empty() {
            return Err(ValidationError::new("currency", "must not be empty"));
        }
        iso_currency::Currency::from_code(value)
            .map(Self)
            .ok_or_else(|| {
                ValidationError::new(
                    "currency",
                    format!(
                        "{} is not an ISO 4217 code; use three upper-case letters such as EUR",
                        quote(value)
                    ),
                )
            })
    }

    pub fn code(&self) -> &'static str {
        self.0.code()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

/// One line of an order. Prices are integer minor units of the order currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrderItem {
    pub sku: Sku,
    pub quantity: u32,
    pub unit_price: i64,
}

impl OrderItem {
    /// Validates the item at `index` of the request's `items`.
    ///
    /// # Errors
    ///
    /// Returns a [`ValidationError`] on `items[index].FIELD` for an invalid SKU, a quantity
    /// outside 1..=[`MAX_QUANTITY`] or a negative unit price.
    pub fn parse(
        index: usize,
        sku: impl Into<String>,
        quantity: u32,
        unit_price: i64,
    ) -> Result<Self, ValidationError> {
        let sku = Sku::parse_field(&format!("items[{index}].sku"), sku)?;
        if quantity == 0 {
            return Err(ValidationError::new(
                format!("items[{index}].quantity"),
                "must be at least 1",
            ));
        }
        if quantity > MAX_QUANTITY {
            return Err(ValidationError::new(
                format!("items[{index}].quantity"),
                format!("is {quantity}; the maximum is {MAX_QUANTITY}"),
            ));
        }
        if unit_price < 0 {
            return Err(ValidationError::new(
                format!("items[{index}].unit_price"),
                format!("is {unit_price}; it must be at least 0 (minor units)"),
            ));
        }
        Ok(Self {
            sku,
            quantity,
            unit_price,
        })
    }

    /// Returns `quantity * unit_price`, or `None` on overflow.
    pub fn line_total(&self) -> Option<i64> {
        self.unit_price.checked_mul(i64::from(self.quantity))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Paid,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Paid => "PAID",
            Self::Cancelled => "CANCELLED",
        }
    }
}

impl FromStr for OrderStatus {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "PENDING" => Ok(Self::Pending),
            "CONFIRMED" => Ok(Self::Confirmed),
            "PAID" => Ok(Self::Paid),
            "CANCELLED" => Ok(Self::Cancelled),
            other => Err(format!("unknown order status {other:?}")),
        }
    }
}

/// A validated create request: the input of [`crate::OrderUseCase::create_order`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateOrder {
    pub request_id: RequestId,
    pub user_id: UserId,
    pub currency: Currency,
    pub items: Vec<OrderItem>,
    /// Sum of the line totals, in minor units.
    pub total_amount: i64,
}

impl CreateOrder {
    /// Builds a create request from validated parts and computes its total.
    ///
    /// # Errors
    ///
    /// Returns a [`ValidationError`] on `items` when there are none, more than
    /// [`MAX_ITEMS`], a repeated SKU, or a total that overflows a signed 64-bit integer.
    pub fn new(
        request_id: RequestId,
        user_id: UserId,
        currency: Currency,
        items: Vec<OrderItem>,
    ) -> Result<Self, ValidationError> {
        if items.is_empty() {
            return Err(ValidationError::new(
                "items",
                "must contain at least one item",
            ));
        }
        if items.len() > MAX_ITEMS {
            return Err(ValidationError::new(
                "items",
                format!("has {} items; the maximum is {MAX_ITEMS}", items.len()),
            ));
        }
        let mut seen = HashSet::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            if !seen.insert(item.sku.as_str()) {
                return Err(ValidationError::new(
                    format!("items[{index}].sku"),
                    format!(
                        "{:?} appears twice; put the whole quantity in one item",
                        item.sku.as_str()
                    ),
                ));
            }
        }
        let total_amount = items
            .iter()
            .try_fold(0i64, |total, item| total.checked_add(item.line_total()?))
            .ok_or_else(|| {
                ValidationError::new("items", "total amount overflows a signed 64-bit integer")
            })?;
        Ok(Self {
            request_id,
            user_id,
            currency,
            items,
            total_amount,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub request_id: RequestId,
    pub user_id: UserId,
    pub currency: Currency,
    pub items: Vec<OrderItem>,
    pub total_amount: i64,
    pub status: OrderStatus,
    /// Incremented by every change, for optimistic concurrency.
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Order {
    /// Creates a new pending order from a validated request. Times are cut to microseconds,
    /// the precision PostgreSQL stores, so that a read returns what the create returned.
    pub fn place(request: CreateOrder, now: DateTime<Utc>) -> Self {
        let now = now.trunc_subsecs(6);
        Self {
            id: OrderId::new(),
            request_id: request.request_id,
            user_id: request.user_id,
            currency: request.currency,
            items: request.items,
            total_amount: request.total_amount,
            status: OrderStatus::Pending,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    /// Returns whether `request` has the same content as this order, so that a retried request
    /// with the same idempotency key gets this order back.
    pub fn matches_request(&self, request: &CreateOrder) -> bool {
        self.request_id == request.request_id
            && self.user_id == request.user_id
            && self.currency == request.currency
            && self.items == request.items
    }
}

/// Keyset page request: orders older than `after`, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageQuery {
    pub user_id: UserId,
    pub after: Option<OrderId>,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    /// Id of the last order on this page when more may follow.
    pub next_after: Option<OrderId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(index: usize, sku: &str, quantity: u32, unit_price: i64) -> OrderItem {
        OrderItem::parse(index, sku, quantity, unit_price).expect("valid item")
    }

    fn request(items: Vec<OrderItem>) -> Result<CreateOrder, ValidationError> {
        CreateOrder::new(
            RequestId::parse("req-1").unwrap(),
            UserId::parse("user-1").unwrap(),
            Currency::parse("EUR").unwrap(),
            items,
        )
    }

    #[test]
    fn total_is_sum_of_lines() {
        let order = request(vec![item(0, "a", 2, 150), item(1, "b", 1, 99)]).unwrap();

        assert_eq!(order.total_amount, 399);
    }

    #[test]
    fn identifier_rules_name_field() {
        let cases = [
            ("", "must not be empty"),
            (" x", "whitespace"),
            ("a\u{0}b", "control characters"),
        ];
        for (value, expected) in cases {
            let error = UserId::parse(value).unwrap_err();
            assert_eq!(error.field, "user_id", "{value:?}");
            assert!(error.message.contains(expected), "{value:?}: {error}");
        }

        let too_long = "é".repeat(MAX_ID_LEN + 1);
        let error = RequestId::parse(too_long).unwrap_err();
        assert_eq!(error.field, "request_id");
        assert!(error.message.contains("maximum is 128"), "{error}");

        let at_limit = "é".repeat(MAX_ID_LEN);
        assert!(RequestId::parse(at_limit).is_ok());
    }

    #[test]
    fn currency_must_be_iso_code() {
        assert_eq!(Currency::parse("EUR").unwrap().code(), "EUR");
        for value in ["", "eur", "EU", "EURO", "XXY", "€"] {
            let error = Currency::parse(value).unwrap_err();
            assert_eq!(error.field, "currency", "{value:?}");
        }
    }

    #[test]
    fn item_rules_name_field() {
        let error = OrderItem::parse(3, "sku", 0, 1).unwrap_err();
        assert_eq!(error.field, "items[3].quantity");

        let error = OrderItem::parse(0, "sku", MAX_QUANTITY + 1, 1).unwrap_err();
        assert_eq!(error.field, "items[0].quantity");

        let error = OrderItem::parse(1, "sku", 1, -1).unwrap_err();
        assert_eq!(error.field, "items[1].unit_price");

        let error = OrderItem::parse(2, "", 1, 1).unwrap_err();
        assert_eq!(error.field, "items[2].sku");

        assert!(OrderItem::parse(0, "sku", 1, 0).is_ok());
    }

    #[test]
    fn order_rules_name_field() {
        let error = request(vec![]).unwrap_err();
        assert_eq!(error.field, "items");

        let many = (0..=MAX_ITEMS)
            .map(|i| item(i, &format!("sku-{i}"), 1, 1))
            .collect();
        let error = request(many).unwrap_err();
        assert_eq!(error.field, "items");

        let error = request(vec![item(0, "a", 1, 1), item(1, "a", 1, 1)]).unwrap_err();
        assert_eq!(error.field, "items[1].sku");

        let error = request(vec![item(0, "a", MAX_QUANTITY, i64::MAX)]).unwrap_err();
        assert_eq!(error.field, "items");
        assert!(error.message.contains("overflow"), "{error}");

        let error = request(vec![item(0, "a", 1, i64::MAX), item(1, "b", 1, 1)]).unwrap_err();
        assert_eq!(error.field, "items");
    }

    #[test]
    fn matches_request_compares_content() {
        let create = request(vec![item(0, "a", 1, 5)]).unwrap();
        let order = Order::place(create.clone(), Utc::now());

        assert!(order.matches_request(&create));

        let other = request(vec![item(0, "a", 2, 5)]).unwrap();
        assert!(!order.matches_request(&other));
    }

    #[test]
    fn placed_order_keeps_microseconds() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T10:00:00.123456789Z").unwrap();

        let order = Order::place(request(vec![item(0, "a", 1, 5)]).unwrap(), now.to_utc());

        assert_eq!(order.created_at.timestamp_subsec_nanos(), 123_456_000);
        assert_eq!(order.updated_at, order.created_at);
    }

    #[test]
    fn order_ids_sort_by_creation() {
        let first = OrderId::new();
        let second = OrderId::new();

        assert!(first < second);
    }
}
