//! The order saga across three real processes: order-server, inventory-server and
//! payment-server, each with its own database, outbox and exchange.

use std::time::Duration;

use api::{
    inventory::v1::{
        GetStockRequest, SetStockRequest, inventory_service_client::InventoryServiceClient,
    },
    order::v1::{
        self as pb, CancelOrderRequest, GetSagaRequest, PayOrderRequest, PlaceOrderRequest,
        SagaState, order_service_client::OrderServiceClient,
    },
    payment::v1::{
        DepositRequest, GetAccountRequest, payment_service_client::PaymentServiceClient,
    },
};
use testkit::{ServiceProcess, free_port, required_env, wait_until};
use tonic::{Code, transport::Channel};

use super::*;

/// A W3C trace context as a client sends it, and the prefix that names its trace.
const CLIENT_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CLIENT_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-";

/// Long enough for any saga in these tests to end, on a loaded two-core machine.
const SAGA_DEADLINE: Duration = Duration::from_secs(60);
const BOOK_PRICE: i64 = 1250;

/// Which participant a test stops and starts.
#[derive(Clone, Copy, Debug)]
enum Participant {
    Inventory,
    Payment,
}

/// The order service and both participants, each on a [`Stack`] of its own. Participants
/// listen on fixed free ports, so that a test can stop one and start it again at the same
/// address.
struct SagaStack {
    order: Stack,
    inventory: Stack,
    payment: Stack,
    inventory_port: u16,
    payment_port: u16,
    inventory_server: Option<ServiceProcess>,
    payment_server: Option<ServiceProcess>,
    order_server: Option<ServiceProcess>,
    order_addr: String,
}

impl SagaStack {
    async fn new(backend: Backend) -> Self {
        let amqp_url = required_env("TEST_AMQP_URL");
        let mut inventory = Stack::new(backend, amqp_url.clone()).await;
        let mut payment = Stack::new(backend, amqp_url.clone()).await;
        let mut order = Stack::new(backend, amqp_url).await;
        let inventory_port = free_port();
        let payment_port = free_port();
        inventory.set(
            "APP__SERVER__GRPC_ADDR",
            &format!("127.0.0.1:{inventory_port}"),
        );
        payment.set(
            "APP__SERVER__GRPC_ADDR",
            &format!("127.0.0.1:{payment_port}"),
        );
        let saga_settings = [
            (
                "APP__SAGA__INVENTORY_URL",
                format!("http://127.0.0.1:{inventory_port}"),
            ),
            (
                "APP__SAGA__PAYMENT_URL",
                format!("http://127.0.0.1:{payment_port}"),
            ),
            ("APP__SAGA__CALL_TIMEOUT_MS", "1000".to_string()),
            ("APP__SAGA__STEP_DEADLINE_MS", "30000".to_string()),
            ("APP__SAGA__MAX_ATTEMPTS", "100".to_string()),
            ("APP__SAGA__BACKOFF_MIN_MS", "20".to_string()),
            ("APP__SAGA__BACKOFF_MAX_MS", "200".to_string()),
            ("APP__SAGA__LEASE_SECS", "2".to_string()),
            ("APP__SAGA__RECOVERY_INTERVAL_MS", "100".to_string()),
        ];
        for (key, value) in saga_settings {
            order.set(key, &value);
        }
        Self {
            order,
            inventory,
            payment,
            inventory_port,
            payment_port,
            inventory_server: None,
            payment_server: None,
            order_server: None,
            order_addr: String::new(),
        }
    }

    /// Starts both participants and order-server.
    async fn start(backend: Backend) -> Self {
        let mut stack = Self::new(backend).await;
        stack.start_participant(Participant::Inventory).await;
        stack.start_participant(Participant::Payment).await;
        stack.start_order_server(&[]).await;
        stack
    }

    async fn start_participant(&mut self, participant: Participant) {
        let (stack, binary) = match participant {
            Participant::Inventory => (&self.inventory, env!("CARGO_BIN_EXE_inventory-server")),
            Participant::Payment => (&self.payment, env!("CARGO_BIN_EXE_payment-server")),
        };
        let mut process = stack.start(binary);
        process.grpc_addr().await;
        match participant {
            Participant::Inventory => self.inventory_server = Some(process),
            Participant::Payment => self.payment_server = Some(process),
        }
    }

    /// Stops a participant with SIGTERM and checks that it exits 0.
    async fn stop_participant(&mut self, participant: Participant) {
        let process = match participant {
            Participant::Inventory => self.inventory_server.take(),
            Participant::Payment => self.payment_server.take(),
        };
        let status = process.expect("participant is running").terminate().await;
        assert!(status.success(), "{participant:?} exited with {status}");
    }

    /// Starts order-server with `extra` settings on top of the stack's.
    async fn start_order_server(&mut self, extra: &[(&'static str, String)]) {
        let mut env = self.order.env.clone();
        env.extend(extra.iter().cloned());
        let mut process = ServiceProcess::start(
            Path::new(env!("CARGO_BIN_EXE_order-server")),
            &config_path(),
            &env,
        );
        self.order_addr = process.grpc_addr().await;
        self.order_server = Some(process);
    }

    /// Stops order-server with SIGTERM and checks that it exits 0.
    async fn stop_order_server(&mut self) {
        let process = self.order_server.take().expect("order-server is running");
        let status = process.terminate().await;
        assert!(status.success(), "order-server exited with {status}");
    }

    /// Kills order-server with SIGKILL, as a crash would.
    async fn kill_order_server(&mut self) {
        self.order_server
            .take()
            .expect("order-server is running")
            .kill()
            .await;
    }

    /// Starts daemon-worker on all three databases, so every outbox is relayed and the order
    /// database's stalled sagas are resumed.
    async fn start_relays(&mut self) {
        self.order.start_daemon().await;
        self.inventory.start_daemon().await;
        self.payment.start_daemon().await;
    }

    async fn orders(&self) -> OrderServiceClient<Channel> {
        client(&self.order_addr).await
    }

    async fn inventory(&self) -> InventoryServiceClient<Channel> {
        InventoryServiceClient::connect(format!("http://127.0.0.1:{}", self.inventory_port))
            .await
            .expect("inventory-server accepts connections")
    }

    async fn payment(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::connect(format!("http://127.0.0.1:{}", self.payment_port))
            .await
            .expect("payment-server accepts connections")
    }

    async fn set_stock(&self, sku: &str, available: i64) {
        self.inventory()
            .await
            .set_stock(SetStockRequest {
                sku: sku.into(),
                available,
            })
            .await
            .expect("SetStock succeeds");
    }

    /// Returns (available, reserved) of `sku`.
    async fn stock(&self, sku: &str) -> (i64, i64) {
        let stock = self
            .inventory()
            .await
            .get_stock(GetStockRequest { sku: sku.into() })
            .await
            .expect("GetStock succeeds")
            .into_inner();
        (stock.available, stock.reserved)
    }

    async fn deposit(&self, user_id: &str, amount: i64) {
        self.payment()
            .await
            .deposit(DepositRequest {
                user_id: user_id.into(),
                amount,
            })
            .await
            .expect("Deposit succeeds");
    }

    /// Returns (balance, frozen) of `user_id`.
    async fn account(&self, user_id: &str) -> (i64, i64) {
        let account = self
            .payment()
            .await
            .get_account(GetAccountRequest {
                user_id: user_id.into(),
            })
            .await
            .expect("GetAccount succeeds")
            .into_inner();
        (account.balance, account.frozen)
    }

    async fn place(
        &self,
        request_id: &str,
        user_id: &str,
        books: u32,
        wait: Duration,
    ) -> pb::PlaceOrderResponse {
        self.orders()
            .await
            .place_order(place_request(request_id, user_id, books, wait))
            .await
            .expect("PlaceOrder succeeds")
            .into_inner()
    }

    async fn saga(&self, id: &str) -> pb::Saga {
        self.orders()
            .await
            .get_saga(GetSagaRequest {
                id: id.into(),
                order_id: String::new(),
            })
            .await
            .expect("GetSaga succeeds")
            .into_inner()
    }

    /// Reads the saga until `condition` holds, and fails the test after [`SAGA_DEADLINE`].
    async fn wait_for_saga(
        &self,
        id: &str,
        what: &str,
        condition: impl Fn(&pb::Saga) -> bool,
    ) -> pb::Saga {
        let condition = &condition;
        let reached = wait_until(SAGA_DEADLINE, move || async move {
            condition(&self.saga(id).await)
        })
        .await;
        let saga = self.saga(id).await;
        assert!(reached, "saga never reached {what}: {saga:#?}");
        saga
    }

    async fn wait_until_final(&self, id: &str) -> pb::Saga {
        self.wait_for_saga(id, "a final state", is_final).await
    }

    async fn stop(mut self) {
        for process in [
            self.order_server.take(),
            self.payment_server.take(),
            self.inventory_server.take(),
        ]
        .into_iter()
        .flatten()
        {
            let status = process.terminate().await;
            assert!(
                status.success(),
                "process exited with {status} after SIGTERM"
            );
        }
        self.order.stop().await;
        self.payment.stop().await;
        self.inventory.stop().await;
    }
}

fn place_request(request_id: &str, user_id: &str, books: u32, wait: Duration) -> PlaceOrderRequest {
    PlaceOrderRequest {
        request_id: request_id.into(),
        user_id: user_id.into(),
        currency: "EUR".into(),
        items: vec![pb::OrderItem {
            sku: "book".into(),
            quantity: books,
            unit_price: BOOK_PRICE,
        }],
        wait_timeout: Some(prost_types::Duration {
            seconds: wait.as_secs() as i64,
            nanos: 0,
        }),
    }
}

fn is_final(saga: &pb::Saga) -> bool {
    matches!(
        saga.state(),
        SagaState::Succeeded | SagaState::Compensated | SagaState::Failed
    )
}

fn step<'a>(saga: &'a pb::Saga, name: &str) -> Option<&'a pb::SagaStep> {
    saga.steps.iter().rev().find(|step| step.name == name)
}

fn step_names(saga: &pb::Saga) -> Vec<&str> {
    saga.steps.iter().map(|step| step.name.as_str()).collect()
}

/// Returns the `traceparent` header of a message.
fn traceparent(delivery: &lapin::message::Delivery) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("traceparent")? {
        lapin::types::AMQPValue::LongString(value) => Some(value.to_string()),
        _ => None,
    }
}

fn event_types(deliveries: &[lapin::message::Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|delivery| {
            delivery
                .properties
                .kind()
                .as_ref()
                .expect("type is set")
                .to_string()
        })
        .collect()
}

async fn happy_path(backend: Backend) {
    let mut stack = SagaStack::start(backend).await;
    let mut order_events =
        QueueReader::bind(&stack.order.amqp_url, &stack.order.exchange, "#").await;
    let mut stock_events =
        QueueReader::bind(&stack.inventory.amqp_url, &stack.inventory.exchange, "#").await;
    let mut payment_events =
        QueueReader::bind(&stack.payment.amqp_url, &stack.payment.exchange, "#").await;
    stack.start_relays().await;
    stack.set_stock("book", 10).await;
    stack.deposit("alice", 10_000).await;

    // The client's trace context travels with the saga into every event it causes.
    let mut request = tonic::Request::new(place_request("happy-1", "alice", 2, SAGA_DEADLINE));
    request
        .metadata_mut()
        .insert("traceparent", CLIENT_TRACEPARENT.parse().unwrap());
    let response = stack
        .orders()
        .await
        .place_order(request)
        .await
        .expect("PlaceOrder succeeds")
        .into_inner();

    let saga = response.saga.expect("saga");
    let order = response.order.expect("order");
    assert_eq!(saga.state(), SagaState::Succeeded, "{saga:#?}");
    assert_eq!(order.status(), pb::OrderStatus::Confirmed);
    assert_eq!(
        step_names(&saga),
        [
            "create_order",
            "reserve_stock",
            "freeze_balance",
            "confirm_stock",
            "confirm_payment",
            "confirm_order"
        ]
    );
    assert!(
        saga.steps.iter().all(|step| step.outcome == "SUCCEEDED"),
        "{saga:#?}"
    );
    assert_eq!(stack.stock("book").await, (8, 0));
    assert_eq!(stack.account("alice").await, (10_000 - 2 * BOOK_PRICE, 0));

    let paid = stack
        .orders()
        .await
        .pay_order(PayOrderRequest {
            order_id: order.id.clone(),
        })
        .await
        .expect("PayOrder succeeds")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(paid.status(), pb::OrderStatus::Paid);
    let cancel = stack
        .orders()
        .await
        .cancel_order(CancelOrderRequest {
            order_id: order.id.clone(),
            reason: "changed my mind".into(),
            wait_timeout: None,
        })
        .await
        .expect_err("a paid order cannot be cancelled");
    assert_eq!(cancel.code(), Code::FailedPrecondition, "{cancel:?}");

    let orders = order_events.receive(3, DELIVERY_DEADLINE).await;
    assert_eq!(
        event_types(&orders),
        ["OrderCreated", "OrderConfirmed", "OrderPaid"]
    );
    let stock = stock_events.receive(2, DELIVERY_DEADLINE).await;
    assert_eq!(event_types(&stock), ["StockReserved", "StockConfirmed"]);
    let payments = payment_events.receive(2, DELIVERY_DEADLINE).await;
    assert_eq!(
        event_types(&payments),
        ["BalanceFrozen", "PaymentConfirmed"]
    );
    for delivery in orders.iter().chain(&stock).chain(&payments) {
        let body = payload(delivery);
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .expect("message_id");
        assert_eq!(body["event_id"], message_id.as_str());
    }
    // OrderPaid came from a request of its own, without the client's trace context.
    for delivery in orders[..2].iter().chain(&stock).chain(&payments) {
        let traceparent = traceparent(delivery).expect("traceparent header");
        assert!(traceparent.starts_with(CLIENT_TRACE), "{traceparent}");
    }
    let paid_trace = traceparent(&orders[2]).expect("traceparent header");
    assert!(!paid_trace.starts_with(CLIENT_TRACE), "{paid_trace}");
    stack.stop().await;
}

#[tokio::test]
async fn saga_happy_path_sqlite() {
    happy_path(Backend::Sqlite).await;
}

#[tokio::test]
async fn saga_happy_path_postgres() {
    happy_path(Backend::Postgres).await;
}

async fn rejections_compensate(backend: Backend) {
    let stack = SagaStack::start(backend).await;
    stack.set_stock("book", 10).await;
    stack.deposit("bob", 1_000).await;

    // Too little money: the stock reserved for the order goes back.
    let response = stack.place("poor-1", "bob", 2, SAGA_DEADLINE).await;

    let saga = response.saga.expect("saga");
    assert_eq!(saga.state(), SagaState::Compensated, "{saga:#?}");
    assert_eq!(
        response.order.expect("order").status(),
        pb::OrderStatus::Cancelled
    );
    assert_eq!(
        step_names(&saga),
        [
            "create_order",
            "reserve_stock",
            "freeze_balance",
            "release_stock",
            "cancel_order"
        ]
    );
    assert_eq!(step(&saga, "freeze_balance").unwrap().outcome, "REJECTED");
    assert!(saga.error.contains("freeze_balance"), "{}", saga.error);
    assert_eq!(stack.stock("book").await, (10, 0));
    assert_eq!(stack.account("bob").await, (1_000, 0));

    // Too little stock: nothing was frozen, so nothing is unfrozen.
    stack.deposit("bob", 100_000).await;
    let response = stack.place("greedy-1", "bob", 11, SAGA_DEADLINE).await;

    let saga = response.saga.expect("saga");
    assert_eq!(saga.state(), SagaState::Compensated, "{saga:#?}");
    assert_eq!(
        step_names(&saga),
        ["create_order", "reserve_stock", "cancel_order"]
    );
    assert_eq!(stack.stock("book").await, (10, 0));
    assert_eq!(stack.account("bob").await, (101_000, 0));
    stack.stop().await;
}

#[tokio::test]
async fn saga_rejections_compensate_sqlite() {
    rejections_compensate(Backend::Sqlite).await;
}

#[tokio::test]
async fn saga_rejections_compensate_postgres() {
    rejections_compensate(Backend::Postgres).await;
}

#[tokio::test]
async fn saga_waits_for_participant_back_within_deadline() {
    let mut stack = SagaStack::start(Backend::Sqlite).await;
    stack.set_stock("book", 10).await;
    stack.deposit("alice", 10_000).await;
    stack.stop_participant(Participant::Payment).await;

    let response = stack.place("late-1", "alice", 1, Duration::ZERO).await;
    let id = response.saga.expect("saga").id;
    stack
        .wait_for_saga(&id, "two freeze attempts", |saga| {
            step(saga, "freeze_balance").is_some_and(|step| step.attempts >= 2)
        })
        .await;
    stack.start_participant(Participant::Payment).await;
    let saga = stack.wait_until_final(&id).await;

    assert_eq!(saga.state(), SagaState::Succeeded, "{saga:#?}");
    assert!(
        step(&saga, "freeze_balance")
            .unwrap()
            .last_error
            .contains("Unavailable")
    );
    assert_eq!(stack.stock("book").await, (9, 0));
    assert_eq!(stack.account("alice").await, (10_000 - BOOK_PRICE, 0));
    stack.stop().await;
}

#[tokio::test]
async fn saga_compensates_when_participant_down_past_deadline() {
    let mut stack = SagaStack::new(Backend::Sqlite).await;
    stack.order.set("APP__SAGA__STEP_DEADLINE_MS", "1500");
    stack.start_participant(Participant::Inventory).await;
    stack.start_participant(Participant::Payment).await;
    stack.start_order_server(&[]).await;
    stack.set_stock("book", 10).await;
    stack.deposit("alice", 10_000).await;
    stack.stop_participant(Participant::Payment).await;

    let response = stack.place("down-1", "alice", 1, Duration::ZERO).await;
    let id = response.saga.expect("saga").id;
    let saga = stack
        .wait_for_saga(&id, "compensation", |saga| {
            saga.state() != SagaState::Running
        })
        .await;
    assert_eq!(
        step(&saga, "freeze_balance").unwrap().outcome,
        "FAILED",
        "{saga:#?}"
    );
    // The unfreeze has to reach the payment service, even though no freeze did.
    stack.start_participant(Participant::Payment).await;
    let saga = stack.wait_until_final(&id).await;

    assert_eq!(saga.state(), SagaState::Compensated, "{saga:#?}");
    assert_eq!(
        step(&saga, "unfreeze_balance").unwrap().outcome,
        "SUCCEEDED"
    );
    assert!(saga.error.contains("deadline"), "{}", saga.error);
    assert_eq!(stack.stock("book").await, (10, 0));
    assert_eq!(stack.account("alice").await, (10_000, 0));
    stack.stop().await;
}

#[tokio::test]
async fn cancel_order_compensates_running_saga() {
    let mut stack = SagaStack::start(Backend::Sqlite).await;
    stack.set_stock("book", 10).await;
    stack.deposit("alice", 10_000).await;
    stack.stop_participant(Participant::Payment).await;
    let response = stack.place("cancel-1", "alice", 3, Duration::ZERO).await;
    let order_id = response.order.expect("order").id;
    let id = response.saga.expect("saga").id;
    stack
        .wait_for_saga(&id, "a freeze attempt", |saga| {
            step(saga, "freeze_balance").is_some_and(|step| step.attempts >= 1)
        })
        .await;

    let mut orders = stack.orders().await;
    let cancel = tokio::spawn(async move {
        orders
            .cancel_order(CancelOrderRequest {
                order_id,
                reason: "changed my mind".into(),
                wait_timeout: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            })
            .await
    });
    stack
        .wait_for_saga(&id, "compensation", |saga| {
            saga.state() != SagaState::Running
        })
        .await;
    stack.start_participant(Participant::Payment).await;
    let cancelled = cancel
        .await
        .expect("cancel task")
        .expect("CancelOrder succeeds");

    assert_eq!(
        cancelled.into_inner().order.unwrap().status(),
        pb::OrderStatus::Cancelled
    );
    let saga = stack.saga(&id).await;
    assert_eq!(saga.state(), SagaState::Compensated, "{saga:#?}");
    assert_eq!(saga.error, "cancelled by the client");
    assert_eq!(stack.stock("book").await, (10, 0));
    assert_eq!(stack.account("alice").await, (10_000, 0));
    stack.stop().await;
}

#[tokio::test]
async fn repeated_place_order_returns_first_saga() {
    let stack = SagaStack::start(Backend::Sqlite).await;
    stack.set_stock("book", 10).await;
    stack.deposit("alice", 10_000).await;

    let first = stack.place("same-1", "alice", 1, SAGA_DEADLINE).await;
    let again = stack.place("same-1", "alice", 1, SAGA_DEADLINE).await;
    let other = stack
        .orders()
        .await
        .place_order(place_request("same-1", "alice", 2, Duration::ZERO))
        .await
        .expect_err("other content with the same request_id");

    assert_eq!(first.saga.unwrap().id, again.saga.unwrap().id);
    assert_eq!(other.code(), Code::AlreadyExists);
    assert_eq!(stack.stock("book").await, (9, 0));
    assert_eq!(stack.account("alice").await, (10_000 - BOOK_PRICE, 0));
    stack.stop().await;
}

/// Kills order-server with SIGKILL at each step boundary and starts it again, then checks
/// that daemon-worker resumes the saga after its lease and ends it with every figure
/// consistent.
async fn crash_at_each_boundary(backend: Backend) {
    let mut stack = SagaStack::new(backend).await;
    stack.order.set("APP__SAGA__LEASE_SECS", "3");
    stack.start_participant(Participant::Inventory).await;
    stack.start_participant(Participant::Payment).await;
    stack.order.start_daemon().await;
    stack.set_stock("book", 100).await;
    stack.deposit("rich", 1_000_000).await;
    stack.deposit("poor", 1).await;

    // (fail point, user, step that has finished when the driver stops, expected end)
    let boundaries = [
        (
            "reserve_stock",
            "rich",
            "create_order",
            SagaState::Succeeded,
        ),
        (
            "freeze_balance",
            "rich",
            "reserve_stock",
            SagaState::Succeeded,
        ),
        (
            "confirm_stock",
            "rich",
            "freeze_balance",
            SagaState::Succeeded,
        ),
        (
            "confirm_payment",
            "rich",
            "confirm_stock",
            SagaState::Succeeded,
        ),
        (
            "confirm_order",
            "rich",
            "confirm_payment",
            SagaState::Succeeded,
        ),
        (
            "release_stock",
            "poor",
            "freeze_balance",
            SagaState::Compensated,
        ),
        (
            "cancel_order",
            "poor",
            "release_stock",
            SagaState::Compensated,
        ),
    ];
    let mut confirmed_books = 0;
    for (index, (fail_point, user, finished, expected)) in boundaries.into_iter().enumerate() {
        let failpoints = format!("saga::before::{fail_point}=return");
        stack
            .start_order_server(&[("FAILPOINTS", failpoints)])
            .await;
        // The call waits a second, far longer than a whole saga takes, yet less than the
        // lease, so no worker can have taken the saga over yet.
        let response = stack
            .place(&format!("crash-{index}"), user, 1, Duration::from_secs(1))
            .await;
        let saga = response.saga.expect("saga");
        assert!(
            !is_final(&saga),
            "the fail point before {fail_point} stopped the saga: {saga:#?}"
        );
        assert!(
            step(&saga, fail_point).is_none(),
            "{fail_point} never started: {saga:#?}"
        );
        let id = saga.id;
        stack
            .wait_for_saga(&id, &format!("the end of {finished}"), |saga| {
                step(saga, finished).is_some_and(|step| step.finished_at.is_some())
            })
            .await;
        stack.kill_order_server().await;
        stack.start_order_server(&[]).await;

        let saga = stack.wait_until_final(&id).await;

        assert_eq!(
            saga.state(),
            expected,
            "crash before {fail_point}: {saga:#?}"
        );
        if expected == SagaState::Succeeded {
            confirmed_books += 1;
        }
        assert_eq!(
            stack.stock("book").await,
            (100 - confirmed_books, 0),
            "after {fail_point}"
        );
        assert_eq!(
            stack.account("rich").await,
            (1_000_000 - confirmed_books * BOOK_PRICE, 0),
            "after {fail_point}"
        );
        assert_eq!(stack.account("poor").await, (1, 0), "after {fail_point}");
        stack.stop_order_server().await;
    }
    stack.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features server/failpoints"
)]
async fn crash_at_each_boundary_sqlite() {
    crash_at_each_boundary(Backend::Sqlite).await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features server/failpoints"
)]
async fn crash_at_each_boundary_postgres() {
    crash_at_each_boundary(Backend::Postgres).await;
}

/// Places 200 orders of one book at once for 50 books in stock: exactly 50 sagas succeed and
/// every figure adds up.
async fn concurrent_orders_never_oversell(backend: Backend) {
    const ORDERS: usize = 200;
    const STOCK: i64 = 50;
    const BALANCE: i64 = 1_000_000;
    let stack = SagaStack::start(backend).await;
    stack.set_stock("book", STOCK).await;
    stack.deposit("crowd", BALANCE).await;

    let calls = (0..ORDERS).map(|index| {
        let request = place_request(&format!("rush-{index}"), "crowd", 1, SAGA_DEADLINE);
        let addr = stack.order_addr.clone();
        tokio::spawn(async move {
            let mut orders = client(&addr).await;
            orders
                .place_order(request)
                .await
                .map(tonic::Response::into_inner)
        })
    });
    let responses = futures::future::join_all(calls).await;

    let mut states = std::collections::HashMap::new();
    for response in responses {
        let response = response.expect("task").expect("PlaceOrder succeeds");
        let mut saga = response.saga.expect("saga");
        // On a loaded machine a saga may outlast the call's wait.
        if !is_final(&saga) {
            saga = stack.wait_until_final(&saga.id).await;
        }
        *states
            .entry(saga.state().as_str_name().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(states.get("SAGA_STATE_SUCCEEDED"), Some(&50), "{states:?}");
    assert_eq!(
        states.get("SAGA_STATE_COMPENSATED"),
        Some(&150),
        "{states:?}"
    );
    assert_eq!(stack.stock("book").await, (0, 0));
    assert_eq!(stack.account("crowd").await, (BALANCE - 50 * BOOK_PRICE, 0));
    stack.stop().await;
}

#[tokio::test]
async fn concurrent_orders_never_oversell_sqlite() {
    concurrent_orders_never_oversell(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_orders_never_oversell_postgres() {
    concurrent_orders_never_oversell(Backend::Postgres).await;
}

/// A compensation that cannot reach its participant ends the saga `FAILED` after its retry
/// budget. The saga is taken over by a daemon-worker started after the crash, with no new
/// traffic.
#[tokio::test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features server/failpoints"
)]
async fn unreachable_compensation_ends_failed() {
    let mut stack = SagaStack::new(Backend::Sqlite).await;
    stack.order.set("APP__SAGA__MAX_ATTEMPTS", "3");
    stack.start_participant(Participant::Inventory).await;
    stack.start_participant(Participant::Payment).await;
    stack.set_stock("book", 10).await;
    stack.deposit("poor", 1).await;
    let failpoints = "saga::before::release_stock=return".to_string();
    stack
        .start_order_server(&[("FAILPOINTS", failpoints)])
        .await;
    let response = stack.place("stuck-1", "poor", 1, Duration::ZERO).await;
    let id = response.saga.expect("saga").id;
    stack
        .wait_for_saga(&id, "compensation", |saga| {
            saga.state() == SagaState::Compensating
        })
        .await;
    stack.kill_order_server().await;
    stack.stop_participant(Participant::Inventory).await;
    stack.start_order_server(&[]).await;

    stack.order.start_daemon().await;
    let saga = stack.wait_until_final(&id).await;

    assert_eq!(saga.state(), SagaState::Failed, "{saga:#?}");
    let release = step(&saga, "release_stock").expect("release_stock ran");
    assert_eq!(release.outcome, "FAILED");
    assert_eq!(release.attempts, 3);
    assert!(release.last_error.contains("Unavailable"), "{release:?}");
    assert!(
        saga.error.contains("release_stock failed 3 times"),
        "{}",
        saga.error
    );
    assert!(saga.error.contains("freeze_balance"), "{}", saga.error);
    let order = stack
        .orders()
        .await
        .get_order(pb::GetOrderRequest {
            id: response.order.expect("order").id,
        })
        .await
        .expect("GetOrder succeeds")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(
        order.status(),
        pb::OrderStatus::Pending,
        "an operator decides"
    );

    // Once the inventory service is back, an operator resumes the saga and it compensates.
    stack.start_participant(Participant::Inventory).await;
    let resumed = stack
        .orders()
        .await
        .resume_saga(pb::ResumeSagaRequest { id: id.clone() })
        .await
        .expect("ResumeSaga succeeds")
        .into_inner();
    assert_eq!(resumed.state(), SagaState::Compensating);
    let saga = stack.wait_until_final(&id).await;
    assert_eq!(saga.state(), SagaState::Compensated, "{saga:#?}");
    assert!(saga.error.starts_with("freeze_balance"), "{}", saga.error);
    assert_eq!(stack.stock("book").await, (10, 0));
    let by_order = stack
        .orders()
        .await
        .get_saga(GetSagaRequest {
            id: String::new(),
            order_id: saga.order_id.clone(),
        })
        .await
        .expect("GetSaga by order succeeds")
        .into_inner();
    assert_eq!(by_order.id, id);
    stack.stop().await;
}

/// A reservation that commits but replies after the call's timeout has an unknown outcome.
/// The saga repeats the same call, and the barrier returns the first result for the repeat,
/// so the stock moves once.
#[tokio::test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features server/failpoints"
)]
async fn late_answer_is_repeated_and_applied_once() {
    let mut stack = SagaStack::new(Backend::Sqlite).await;
    stack
        .inventory
        .set("FAILPOINTS", "inventory::after_reserve=1*return(1500)");
    stack.start_participant(Participant::Inventory).await;
    stack.start_participant(Participant::Payment).await;
    stack.start_order_server(&[]).await;
    stack.set_stock("book", 10).await;
    stack.deposit("alice", 10_000).await;

    let response = stack
        .place("late-answer-1", "alice", 2, SAGA_DEADLINE)
        .await;

    let saga = response.saga.expect("saga");
    assert_eq!(saga.state(), SagaState::Succeeded, "{saga:#?}");
    let reserve = step(&saga, "reserve_stock").expect("reserve_stock ran");
    // Two calls at least: the late one and its repeat. A loaded machine may need more.
    assert!(reserve.attempts >= 2, "{reserve:?}");
    // tonic reports its own client timeout as CANCELLED "Timeout expired".
    assert!(
        reserve.last_error.contains("Timeout expired"),
        "{reserve:?}"
    );
    assert_eq!(stack.stock("book").await, (8, 0));
    assert_eq!(stack.account("alice").await, (10_000 - 2 * BOOK_PRICE, 0));
    stack.stop().await;
}

/// Replies that always arrive too late: the saga gives up at the step's deadline and
/// compensates, and the release undoes the reservation that did commit.
#[tokio::test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features server/failpoints"
)]
async fn late_answers_past_deadline_are_compensated() {
    let mut stack = SagaStack::new(Backend::Sqlite).await;
    stack
        .inventory
        .set("FAILPOINTS", "inventory::after_reserve=return(1500)");
    stack.order.set("APP__SAGA__STEP_DEADLINE_MS", "2500");
    stack.start_participant(Participant::Inventory).await;
    stack.start_participant(Participant::Payment).await;
    stack.start_order_server(&[]).await;
    stack.set_stock("book", 10).await;
    stack.deposit("alice", 10_000).await;

    let response = stack
        .place("late-answer-2", "alice", 2, SAGA_DEADLINE)
        .await;

    let saga = response.saga.expect("saga");
    assert_eq!(saga.state(), SagaState::Compensated, "{saga:#?}");
    assert_eq!(
        step_names(&saga),
        [
            "create_order",
            "reserve_stock",
            "release_stock",
            "cancel_order"
        ]
    );
    assert_eq!(step(&saga, "reserve_stock").unwrap().outcome, "FAILED");
    assert!(saga.error.contains("deadline"), "{}", saga.error);
    assert_eq!(stack.stock("book").await, (10, 0));
    assert_eq!(stack.account("alice").await, (10_000, 0));
    stack.stop().await;
}

#[tokio::test]
async fn saga_metrics_count_outcomes() {
    let mut stack = SagaStack::new(Backend::Sqlite).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    stack.start_participant(Participant::Inventory).await;
    stack.start_participant(Participant::Payment).await;
    stack
        .start_order_server(&[("APP__TELEMETRY__METRICS_ADDR", metrics.clone())])
        .await;
    stack.set_stock("book", 10).await;
    stack.deposit("alice", 2 * BOOK_PRICE).await;

    stack.place("metrics-1", "alice", 2, SAGA_DEADLINE).await;
    stack.place("metrics-2", "alice", 2, SAGA_DEADLINE).await;

    let expected = [
        "sagas_started_total 2",
        "sagas_finished_total{state=\"SUCCEEDED\"} 1",
        "sagas_finished_total{state=\"COMPENSATED\"} 1",
        "saga_calls_total{step=\"freeze_balance\",outcome=\"rejected\"} 1",
        "saga_calls_total{step=\"release_stock\",outcome=\"ok\"} 1",
    ];
    let (found, body) = super::metrics::wait_for_metrics(&metrics, &expected).await;
    assert!(found, "order-server metrics:\n{body}");
    stack.stop().await;
}

/// SIGTERM during a retry pause releases the saga's lease, so a worker takes the saga over at
/// once instead of after `saga.lease_secs`.
#[tokio::test]
async fn sigterm_releases_lease_of_retrying_saga() {
    let mut stack = SagaStack::new(Backend::Sqlite).await;
    stack.order.set("APP__SAGA__LEASE_SECS", "30");
    stack.order.set("APP__SAGA__BACKOFF_MIN_MS", "1000");
    stack.order.set("APP__SAGA__BACKOFF_MAX_MS", "5000");
    stack.start_participant(Participant::Inventory).await;
    stack.start_participant(Participant::Payment).await;
    stack.start_order_server(&[]).await;
    stack.set_stock("book", 10).await;
    stack.deposit("alice", 10_000).await;
    stack.stop_participant(Participant::Payment).await;
    let response = stack.place("sigterm-1", "alice", 1, Duration::ZERO).await;
    let id = response.saga.expect("saga").id;
    stack
        .wait_for_saga(&id, "a freeze attempt", |saga| {
            step(saga, "freeze_balance").is_some_and(|step| step.attempts >= 1)
        })
        .await;

    stack.stop_order_server().await;

    let db = stack.order.db().await;
    let row = data::entity::saga_instances::Entity::find_by_id(
        id.parse::<uuid::Uuid>().expect("saga id is a UUID"),
    )
    .one(&db)
    .await
    .expect("query succeeds")
    .expect("saga row exists");
    db.close().await.expect("close");
    assert_eq!(row.state, "RUNNING");
    assert_eq!(row.locked_until, None, "the lease was released");

    stack.start_participant(Participant::Payment).await;
    stack.order.start_daemon().await;
    stack.start_order_server(&[]).await;
    let saga = stack.wait_until_final(&id).await;
    assert_eq!(saga.state(), SagaState::Succeeded, "{saga:#?}");
    stack.stop().await;
}
