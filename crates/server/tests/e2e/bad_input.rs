//! Bad-input corpus for CreateOrder, GetOrder and ListOrders: every invalid request fails with
//! INVALID_ARGUMENT naming its field and writes nothing, and odd but valid text round-trips.

use api::order::v1::{GetOrderRequest, ListOrdersRequest};
use tonic::{Code, Status};

use super::*;

type CreateEdit = fn(&mut CreateOrderRequest);

/// Repeats `text` until the result has `count` characters.
fn chars(text: &str, count: usize) -> String {
    text.chars().cycle().take(count).collect()
}

fn item(sku: &str, quantity: u32, unit_price: i64) -> pb::OrderItem {
    pb::OrderItem {
        sku: sku.into(),
        quantity,
        unit_price,
    }
}

/// Returns `count` valid items with distinct SKUs.
fn many_items(count: usize) -> Vec<pb::OrderItem> {
    (0..count)
        .map(|index| item(&format!("sku-{index}"), 1, 1))
        .collect()
}

/// Invalid CreateOrder requests: the field path the error must start with, a case name, and
/// the edit that breaks a valid request.
fn create_cases() -> Vec<(&'static str, &'static str, CreateEdit)> {
    vec![
        ("request_id", "empty", |r| r.request_id.clear()),
        ("request_id", "129 ASCII chars", |r| {
            r.request_id = chars("r", 129)
        }),
        ("request_id", "129 two-byte chars", |r| {
            r.request_id = chars("é", 129)
        }),
        ("request_id", "129 four-byte chars", |r| {
            r.request_id = chars("🦀", 129)
        }),
        ("request_id", "100,000 chars", |r| {
            r.request_id = chars("r", 100_000)
        }),
        ("request_id", "NUL", |r| r.request_id = "req\u{0}1".into()),
        ("request_id", "tab", |r| r.request_id = "req\t1".into()),
        ("request_id", "DEL", |r| r.request_id = "req\u{7f}".into()),
        ("request_id", "C1 control", |r| {
            r.request_id = "req\u{85}".into()
        }),
        ("request_id", "leading space", |r| {
            r.request_id = " req".into()
        }),
        ("request_id", "trailing space", |r| {
            r.request_id = "req ".into()
        }),
        ("user_id", "empty", |r| r.user_id.clear()),
        ("user_id", "129 two-byte chars", |r| {
            r.user_id = chars("ü", 129)
        }),
        ("user_id", "100,000 chars", |r| {
            r.user_id = chars("u", 100_000)
        }),
        ("user_id", "newline", |r| r.user_id = "alice\nbob".into()),
        ("user_id", "escape", |r| r.user_id = "alice\u{1b}[2J".into()),
        ("user_id", "only whitespace", |r| r.user_id = "   ".into()),
        ("currency", "empty", |r| r.currency.clear()),
        ("currency", "lower case", |r| r.currency = "eur".into()),
        ("currency", "four letters", |r| r.currency = "EURO".into()),
        ("currency", "two letters", |r| r.currency = "EU".into()),
        ("currency", "unknown code", |r| r.currency = "ABC".into()),
        ("currency", "symbol", |r| r.currency = "€".into()),
        ("currency", "padded", |r| r.currency = " EUR".into()),
        ("currency", "NUL inside", |r| r.currency = "E\u{0}R".into()),
        ("currency", "SQL", |r| r.currency = "EUR' OR '1'='1".into()),
        ("currency", "1,000 chars", |r| {
            r.currency = chars("E", 1_000)
        }),
        ("items", "none", |r| r.items.clear()),
        ("items", "101 items", |r| r.items = many_items(101)),
        ("items", "100,000 items", |r| r.items = many_items(100_000)),
        ("items", "line total overflows", |r| {
            r.items = vec![item("a", 1_000_000, i64::MAX / 999_999)];
        }),
        ("items", "sum overflows", |r| {
            r.items = vec![item("a", 1, i64::MAX), item("b", 1, 1)];
        }),
        ("items", "sum of halves overflows", |r| {
            r.items = vec![
                item("a", 1, i64::MAX / 2 + 1),
                item("b", 1, i64::MAX / 2 + 1),
            ];
        }),
        ("items[0].quantity", "zero", |r| r.items[0].quantity = 0),
        ("items[0].quantity", "1,000,001", |r| {
            r.items[0].quantity = 1_000_001;
        }),
        ("items[0].quantity", "u32::MAX", |r| {
            r.items[0].quantity = u32::MAX;
        }),
        ("items[1].quantity", "zero", |r| r.items[1].quantity = 0),
        ("items[0].unit_price", "-1", |r| r.items[0].unit_price = -1),
        ("items[1].unit_price", "i64::MIN", |r| {
            r.items[1].unit_price = i64::MIN;
        }),
        ("items[0].sku", "empty", |r| r.items[0].sku.clear()),
        ("items[0].sku", "65 ASCII chars", |r| {
            r.items[0].sku = chars("s", 65)
        }),
        ("items[0].sku", "65 three-byte chars", |r| {
            r.items[0].sku = chars("日", 65);
        }),
        ("items[0].sku", "100,000 chars", |r| {
            r.items[0].sku = chars("s", 100_000);
        }),
        ("items[0].sku", "newline", |r| {
            r.items[0].sku = "bo\nok".into()
        }),
        ("items[0].sku", "trailing space", |r| {
            r.items[0].sku = "book ".into();
        }),
        ("items[1].sku", "repeats items[0]", |r| {
            r.items[1].sku = "book".into();
        }),
        ("items[99].sku", "last of 100 empty", |r| {
            r.items = many_items(100);
            r.items[99].sku.clear();
        }),
    ]
}

/// Invalid GetOrder ids.
fn get_cases() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("not a UUID", "not-a-uuid".into()),
        ("SQL", "'; DROP TABLE orders; --".into()),
        ("UUID with a suffix", format!("{}x", uuid::Uuid::nil())),
        ("UUID with a space", format!(" {}", uuid::Uuid::nil())),
        ("1,000 chars", chars("0", 1_000)),
        ("NUL", "\u{0}".into()),
    ]
}

/// Invalid ListOrders requests: the field path, a case name, and the request.
fn list_cases() -> Vec<(&'static str, &'static str, ListOrdersRequest)> {
    let request = |user_id: &str, page_size: i32, page_token: &str| ListOrdersRequest {
        user_id: user_id.into(),
        page_size,
        page_token: page_token.into(),
    };
    vec![
        ("user_id", "empty", request("", 10, "")),
        ("user_id", "129 chars", request(&chars("u", 129), 10, "")),
        ("user_id", "control char", request("alice\u{0}", 10, "")),
        ("page_size", "-1", request("alice", -1, "")),
        ("page_size", "i32::MIN", request("alice", i32::MIN, "")),
        ("page_token", "garbage", request("alice", 10, "abc")),
        ("page_token", "SQL", request("alice", 10, "' OR 1=1 --")),
        ("page_token", "-1", request("alice", 10, "-1")),
        (
            "page_token",
            "100,000 chars",
            request("alice", 10, &chars("t", 100_000)),
        ),
    ]
}

fn assert_invalid(status: &Status, field: &str, case: &str) {
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{field} ({case}): {status:?}"
    );
    let message = status.message();
    assert!(
        message.starts_with(&format!("{field}: ")),
        "{field} ({case}): message does not start with the field: {}",
        &message[..message.len().min(200)]
    );
}

async fn rejects_bad_input(backend: Backend) {
    let mut stack = Stack::new(backend, required_env("TEST_AMQP_URL")).await;
    let addr = stack.start_server().await;
    let mut client = client(&addr).await;

    for (field, case, edit) in create_cases() {
        let mut request = create_request(&format!("bad-{field}-{case}"), "alice");
        edit(&mut request);
        let status = client.create_order(request).await.unwrap_err();
        assert_invalid(&status, field, case);
    }
    for (case, id) in get_cases() {
        let status = client.get_order(GetOrderRequest { id }).await.unwrap_err();
        assert_invalid(&status, "id", case);
    }
    for (field, case, request) in list_cases() {
        let status = client.list_orders(request).await.unwrap_err();
        assert_invalid(&status, field, case);
    }

    assert_eq!(
        stack.counts().await,
        (0, 0),
        "no invalid request wrote an order or an event"
    );
    stack.stop().await;
}

/// Rejects requests whose invalid value is too long to echo: the rejection must stay an
/// INVALID_ARGUMENT that names the field, whatever the size of the value.
async fn rejects_oversize_values(backend: Backend) {
    let mut stack = Stack::new(backend, required_env("TEST_AMQP_URL")).await;
    let addr = stack.start_server().await;
    let mut client = client(&addr).await;

    let mut request = create_request("oversize-currency", "alice");
    request.currency = chars("E", 100_000);
    let status = client.create_order(request).await.unwrap_err();
    assert_invalid(&status, "currency", "100,000 chars");

    // A new connection, because the client drops the first one on an oversized header.
    let mut client = super::client(&addr).await;
    let id = chars("0", 100_000);
    let status = client.get_order(GetOrderRequest { id }).await.unwrap_err();
    assert_invalid(&status, "id", "100,000 chars");

    assert_eq!(stack.counts().await, (0, 0), "nothing was written");
    stack.stop().await;
}

#[tokio::test]
async fn oversize_value_rejected_sqlite() {
    rejects_oversize_values(Backend::Sqlite).await;
}

#[tokio::test]
async fn bad_input_rejected_sqlite() {
    rejects_bad_input(Backend::Sqlite).await;
}

#[tokio::test]
async fn bad_input_rejected_postgres() {
    rejects_bad_input(Backend::Postgres).await;
}

/// Valid requests with SQL metacharacters, LIKE wildcards, placeholders and multi-byte text at
/// the length limits: `(request_id, user_id, sku)`. Each user id is used once.
fn odd_cases() -> Vec<(String, String, String)> {
    vec![
        (
            "odd'; DROP TABLE orders; --".into(),
            "'; DROP TABLE orders; --".into(),
            "Robert'); DROP TABLE order_items;--".into(),
        ),
        ("odd-like".into(), "%".into(), "_".into()),
        (
            "odd-quotes".into(),
            "\" OR \"1\"=\"1".into(),
            "back\\slash \\x00".into(),
        ),
        ("odd-placeholders".into(), "$1".into(), "?".into()),
        (chars("é", 128), chars("é", 128), chars("日", 64)),
        (chars("🦀", 128), chars("🦀", 128), chars("🦀", 64)),
        (
            "odd-scripts".into(),
            "ユーザー ñandú".into(),
            "Ωmega — ∑".into(),
        ),
        (
            "odd-zero-width".into(),
            "zero\u{200b}width".into(),
            "a\u{301}".into(),
        ),
    ]
}

/// Clears the timestamps, which [`created_at_round_trips_postgres`] checks on its own.
fn without_times(order: pb::Order) -> pb::Order {
    pb::Order {
        created_at: None,
        updated_at: None,
        ..order
    }
}

async fn odd_input_round_trips(backend: Backend) {
    let mut stack = Stack::new(backend, required_env("TEST_AMQP_URL")).await;
    let addr = stack.start_server().await;
    let mut client = client(&addr).await;

    let cases = odd_cases();
    for (request_id, user_id, sku) in &cases {
        let mut request = create_request(request_id, user_id);
        request.items[0].sku = sku.clone();
        let created = client
            .create_order(request)
            .await
            .unwrap_or_else(|status| panic!("{user_id:?}: CreateOrder failed: {status:?}"))
            .into_inner()
            .order
            .expect("order returned");
        let fetched = client
            .get_order(GetOrderRequest {
                id: created.id.clone(),
            })
            .await
            .unwrap_or_else(|status| panic!("{user_id:?}: GetOrder failed: {status:?}"))
            .into_inner()
            .order
            .expect("order returned");
        assert_eq!(&fetched.user_id, user_id, "user_id round-trips");
        assert_eq!(&fetched.request_id, request_id, "request_id round-trips");
        assert_eq!(&fetched.items[0].sku, sku, "sku round-trips");
        assert_eq!(
            without_times(fetched),
            without_times(created.clone()),
            "{user_id:?}: GetOrder returns the order"
        );

        let listed = client
            .list_orders(ListOrdersRequest {
                user_id: user_id.clone(),
                page_size: 100,
                page_token: String::new(),
            })
            .await
            .unwrap_or_else(|status| panic!("{user_id:?}: ListOrders failed: {status:?}"))
            .into_inner();
        let listed_ids: Vec<&str> = listed
            .orders
            .iter()
            .map(|order| order.id.as_str())
            .collect();
        assert_eq!(
            listed_ids,
            vec![created.id.as_str()],
            "{user_id:?}: ListOrders returns exactly this user's order"
        );
    }

    let count = cases.len() as u64;
    assert_eq!(
        stack.counts().await,
        (count, count),
        "one order and one event per odd request"
    );
    stack.stop().await;
}

#[tokio::test]
async fn odd_input_round_trips_sqlite() {
    odd_input_round_trips(Backend::Sqlite).await;
}

#[tokio::test]
async fn odd_input_round_trips_postgres() {
    odd_input_round_trips(Backend::Postgres).await;
}

#[tokio::test]
async fn created_at_round_trips_postgres() {
    let mut stack = Stack::new(Backend::Postgres, required_env("TEST_AMQP_URL")).await;
    let addr = stack.start_server().await;
    let mut client = client(&addr).await;

    let created = create_order(&mut client, "timestamps").await;
    let fetched = client
        .get_order(GetOrderRequest {
            id: created.id.clone(),
        })
        .await
        .expect("GetOrder succeeds")
        .into_inner()
        .order
        .expect("order returned");
    assert_eq!(
        fetched.created_at, created.created_at,
        "created_at round-trips"
    );
    assert_eq!(
        fetched.updated_at, created.updated_at,
        "updated_at round-trips"
    );
    stack.stop().await;
}
