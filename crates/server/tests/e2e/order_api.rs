//! Creating, reading and publishing orders through order.v1.OrderService.

use std::{collections::HashSet, process::Command, time::Duration};

use api::order::v1::{self as pb, GetOrderRequest, ListOrdersRequest};
use data::entity::outbox_events;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use testkit::{QueueReader, RabbitNode, required_env};
use tonic::Code;

use super::*;

#[tokio::test]
async fn grpcurl_order_reaches_queue_sqlite() {
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    let addr = stack.start_server().await;
    stack.start_daemon().await;
    let mut reader = stack.reader().await;

    let request = r#"{"request_id":"demo-1","user_id":"alice","currency":"EUR",
        "items":[{"sku":"book","quantity":2,"unit_price":1250}]}"#;
    let response = grpcurl(&[
        "-plaintext",
        "-d",
        request,
        &addr,
        "order.v1.OrderService/CreateOrder",
    ]);

    let order = &response["order"];
    let order_id = order["id"].as_str().expect("order id").to_string();
    assert_eq!(order["status"], "ORDER_STATUS_PENDING");
    assert_eq!(order["totalAmount"], "2500");
    let received = reader.receive(1, DELIVERY_DEADLINE).await;
    assert_eq!(received.len(), 1, "the OrderCreated event arrives");
    let delivery = &received[0];
    assert_eq!(delivery.routing_key.as_str(), "order.created");
    assert_eq!(*delivery.properties.delivery_mode(), Some(2));
    assert_eq!(
        delivery.properties.kind().as_ref().unwrap().as_str(),
        "OrderCreated"
    );
    let body = payload(delivery);
    assert_eq!(body["order_id"], order_id.as_str());
    assert_eq!(body["user_id"], "alice");
    assert_eq!(body["total_amount"], 2500);
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["items"][0]["sku"], "book");
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .unwrap()
        .to_string();
    assert_eq!(body["event_id"], message_id.as_str());
    let db = stack.db().await;
    let event = outbox_events::Entity::find()
        .one(&db)
        .await
        .unwrap()
        .expect("event row");
    assert_eq!(event.event_id.to_string(), message_id);
    assert!(
        testkit::wait_until(DELIVERY_DEADLINE, || async {
            let row = outbox_events::Entity::find_by_id(event.id)
                .one(&db)
                .await
                .unwrap();
            row.is_some_and(|row| row.status == "SENT")
        })
        .await,
        "the event row is marked SENT"
    );

    // Reflection lists the services and health reports SERVING, with no proto files at hand.
    let services = Command::new(required_env("GRPCURL"))
        .args(["-plaintext", &addr, "list"])
        .output()
        .expect("grpcurl runs");
    let services = String::from_utf8_lossy(&services.stdout);
    assert!(services.contains("order.v1.OrderService"), "{services}");
    assert!(services.contains("grpc.health.v1.Health"), "{services}");
    let health = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert_eq!(health["status"], "SERVING");

    stack.stop().await;
}

#[tokio::test]
async fn tonic_client_gets_and_lists() {
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    let addr = stack.start_server().await;
    let mut client = client(&addr).await;

    let mut created = Vec::new();
    for index in 0..5 {
        created.push(create_order(&mut client, &format!("list-{index}")).await);
    }
    let other = client
        .create_order(create_request("other-user", "bob"))
        .await
        .unwrap()
        .into_inner();
    assert!(other.order.is_some());

    let fetched = client
        .get_order(GetOrderRequest {
            id: created[0].id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(fetched, created[0]);
    assert_eq!(fetched.total_amount, 2 * 1250 + 3 * 99);
    assert_eq!(fetched.status, pb::OrderStatus::Pending as i32);

    let mut listed = Vec::new();
    let mut page_token = String::new();
    for _ in 0..10 {
        let page = client
            .list_orders(ListOrdersRequest {
                user_id: "alice".into(),
                page_size: 2,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.orders.len() <= 2);
        listed.extend(page.orders.into_iter().map(|order| order.id));
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    let expected: Vec<String> = created.iter().rev().map(|order| order.id.clone()).collect();
    assert_eq!(listed, expected, "all of alice's orders, newest first");

    let missing = client
        .get_order(GetOrderRequest { id: uuid_v4() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    stack.stop().await;
}

#[tokio::test]
async fn invalid_requests_write_nothing() {
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    let addr = stack.start_server().await;
    let mut client = client(&addr).await;

    type Edit = fn(&mut CreateOrderRequest);
    let cases: Vec<(&str, Edit)> = vec![
        ("request_id", |r| r.request_id.clear()),
        ("request_id", |r| r.request_id = "r".repeat(129)),
        ("user_id", |r| r.user_id.clear()),
        ("user_id", |r| r.user_id = "bad\nuser".into()),
        ("currency", |r| r.currency.clear()),
        ("currency", |r| r.currency = "eur".into()),
        ("currency", |r| r.currency = "EURO".into()),
        ("currency", |r| r.currency = "ABC".into()),
        ("items", |r| r.items.clear()),
        ("items[0].quantity", |r| r.items[0].quantity = 0),
        ("items[1].unit_price", |r| r.items[1].unit_price = -1),
        ("items[0].sku", |r| r.items[0].sku.clear()),
        ("items[1].sku", |r| r.items[1].sku = "book".into()),
        ("items", |r| {
            r.items[0].quantity = 1_000_000;
            r.items[0].unit_price = i64::MAX / 2;
        }),
        ("items", |r| {
            let item = r.items[0].clone();
            r.items = (0..101)
                .map(|index| pb::OrderItem {
                    sku: format!("sku-{index}"),
                    ..item.clone()
                })
                .collect();
        }),
    ];
    for (field, edit) in cases {
        let mut request = create_request("bad-input", "alice");
        edit(&mut request);
        let status = client.create_order(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{field}: {}",
            status.message()
        );
    }

    let bad_id = client
        .get_order(GetOrderRequest {
            id: "not-a-uuid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    assert!(bad_id.message().starts_with("id: "), "{}", bad_id.message());
    let bad_page = client
        .list_orders(ListOrdersRequest {
            user_id: "alice".into(),
            page_size: -5,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_page.code(), Code::InvalidArgument);
    assert!(
        bad_page.message().starts_with("page_size: "),
        "{}",
        bad_page.message()
    );

    assert_eq!(
        stack.counts().await,
        (0, 0),
        "no order and no event was written"
    );
    stack.stop().await;
}

#[tokio::test]
async fn repeated_request_id_makes_one_order() {
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    let addr = stack.start_server().await;
    let mut client = client(&addr).await;

    let first = create_order(&mut client, "same-key").await;
    let second = create_order(&mut client, "same-key").await;
    assert_eq!(first, second, "the repeat returns the first order");

    let mut changed = create_request("same-key", "alice");
    changed.items[0].quantity = 5;
    let conflict = client.create_order(changed).await.unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    assert!(
        conflict.message().contains("same-key"),
        "{}",
        conflict.message()
    );

    assert_eq!(stack.counts().await, (1, 1), "one order and one event");
    stack.stop().await;
}

#[tokio::test]
async fn postgres_daemon_wakes_on_notify() {
    let mut stack = Stack::new(Backend::Postgres, required_env("TEST_AMQP_URL")).await;
    // Polling alone would wait ten minutes: only a notification can deliver in time.
    stack.set("APP__OUTBOX__POLL_INTERVAL_MS", "600000");
    let addr = stack.start_server().await;
    stack.start_daemon().await;
    let mut reader = stack.reader().await;
    let mut client = client(&addr).await;

    let mut order_ids = HashSet::new();
    for index in 0..3 {
        order_ids.insert(create_order(&mut client, &format!("pg-{index}")).await.id);
    }

    let received = reader.receive(3, DELIVERY_DEADLINE).await;
    assert_eq!(received.len(), 3);
    let delivered: HashSet<String> = received
        .iter()
        .map(|delivery| payload(delivery)["order_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered, order_ids);
    assert_eq!(message_ids(&received).len(), 3);
    stack.stop().await;
}

#[tokio::test]
async fn cron_worker_drains_on_schedule() {
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    stack.set("APP__OUTBOX__CRON_SCHEDULE", "* * * * * *");
    // Small batches, so one tick has to drain several of them.
    stack.set("APP__OUTBOX__BATCH_SIZE", "2");
    let addr = stack.start_server().await;
    let mut client = client(&addr).await;
    let mut order_ids = HashSet::new();
    for index in 0..7 {
        order_ids.insert(create_order(&mut client, &format!("cron-{index}")).await.id);
    }
    let mut reader = stack.reader().await;

    stack
        .start_worker(env!("CARGO_BIN_EXE_cron-worker"), "cron relay started")
        .await;

    let received = reader.receive(7, DELIVERY_DEADLINE).await;
    let delivered: HashSet<String> = received
        .iter()
        .map(|delivery| payload(delivery)["order_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered, order_ids);
    stack.stop().await;
}

#[tokio::test]
async fn broker_outage_delays_but_keeps_events() {
    let node = RabbitNode::start().await;
    let mut stack = Stack::new(Backend::Sqlite, node.amqp_url()).await;
    let addr = stack.start_server().await;
    stack.start_daemon().await;
    let mut client = client(&addr).await;
    let mut order_ids = HashSet::new();
    order_ids.insert(create_order(&mut client, "before-outage").await.id);
    let db = stack.db().await;
    let all_sent = |expected: u64| {
        let db = db.clone();
        async move {
            let sent = outbox_events::Entity::find()
                .filter(outbox_events::Column::Status.eq("SENT"))
                .count(&db)
                .await
                .unwrap();
            sent == expected
        }
    };
    assert!(
        testkit::wait_until(DELIVERY_DEADLINE, || all_sent(1)).await,
        "first event is sent"
    );

    node.stop_app().await;
    for index in 0..5 {
        order_ids.insert(
            create_order(&mut client, &format!("during-outage-{index}"))
                .await
                .id,
        );
    }
    assert_eq!(
        stack.counts().await,
        (6, 6),
        "orders are accepted while the broker is down"
    );
    node.start_app().await;

    assert!(
        testkit::wait_until(Duration::from_secs(60), || all_sent(6)).await,
        "every event is sent after the broker is back"
    );
    let mut queue = QueueReader::consume(&node.amqp_url(), &stack.queue).await;
    let received = queue.receive(6, DELIVERY_DEADLINE).await;
    let delivered: HashSet<String> = received
        .iter()
        .map(|delivery| payload(delivery)["order_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered, order_ids, "the durable queue kept every event");

    db.close().await.unwrap();
    drop(queue);
    stack.stop().await;
    node.stop().await;
}

/// Processes that start together on a new database race to migrate it; every one of them must
/// come up.
#[tokio::test]
async fn processes_starting_together_all_migrate() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let mut stack = Stack::new(backend, required_env("TEST_AMQP_URL")).await;
        let mut server = stack.start(env!("CARGO_BIN_EXE_order-server"));
        let mut daemon = stack.start(env!("CARGO_BIN_EXE_daemon-worker"));
        let mut cron = stack.start(env!("CARGO_BIN_EXE_cron-worker"));

        server.grpc_addr().await;
        daemon
            .wait_for_log("daemon relay started", Duration::from_secs(60))
            .await;
        cron.wait_for_log("cron relay started", Duration::from_secs(60))
            .await;

        stack.processes.extend([server, daemon, cron]);
        stack.stop().await;
    }
}
