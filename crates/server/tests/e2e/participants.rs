//! The saga participants as processes: inventory-server and payment-server called through
//! tonic clients on SQLite and PostgreSQL, and a participant's event published by
//! daemon-worker.

use api::{
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    payment::v1::{self as payment, payment_service_client::PaymentServiceClient},
};
use biz::SagaId;
use tonic::Code;

use super::*;

fn participant_config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name)
}

impl Stack {
    /// Starts `binary` with the participant configuration `config` and returns its address
    /// once it listens.
    async fn start_participant(&mut self, binary: &str, config: &str) -> String {
        let mut server =
            ServiceProcess::start(Path::new(binary), &participant_config(config), &self.env);
        let addr = server.grpc_addr().await;
        self.processes.push(server);
        addr
    }
}

async fn inventory_client(stack: &mut Stack) -> InventoryServiceClient<Channel> {
    let addr = stack
        .start_participant(env!("CARGO_BIN_EXE_inventory-server"), "inventory.yaml")
        .await;
    InventoryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("inventory-server accepts connections")
}

async fn payment_client(stack: &mut Stack) -> PaymentServiceClient<Channel> {
    let addr = stack
        .start_participant(env!("CARGO_BIN_EXE_payment-server"), "payment.yaml")
        .await;
    PaymentServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("payment-server accepts connections")
}

fn stock_item(sku: &str, quantity: i64) -> inventory::StockItem {
    inventory::StockItem {
        sku: sku.into(),
        quantity,
    }
}

fn reserve(saga_id: &str, items: Vec<inventory::StockItem>) -> inventory::ReserveStockRequest {
    inventory::ReserveStockRequest {
        saga_id: saga_id.into(),
        items,
    }
}

/// Returns (available, reserved) of `sku`.
async fn stock(client: &mut InventoryServiceClient<Channel>, sku: &str) -> (i64, i64) {
    let stock = client
        .get_stock(inventory::GetStockRequest { sku: sku.into() })
        .await
        .expect("GetStock succeeds")
        .into_inner();
    (stock.available, stock.reserved)
}

async fn release(
    client: &mut InventoryServiceClient<Channel>,
    saga_id: &str,
) -> Result<inventory::ReleaseStockResponse, tonic::Status> {
    client
        .release_stock(inventory::ReleaseStockRequest {
            saga_id: saga_id.into(),
            items: Vec::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn confirm(
    client: &mut InventoryServiceClient<Channel>,
    saga_id: &str,
) -> Result<inventory::ConfirmStockResponse, tonic::Status> {
    client
        .confirm_stock(inventory::ConfirmStockRequest {
            saga_id: saga_id.into(),
            items: Vec::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn inventory_steps(backend: Backend) {
    let mut stack = Stack::new(backend, required_env("TEST_AMQP_URL")).await;
    let mut client = inventory_client(&mut stack).await;
    for (sku, available) in [("book", 10), ("pen", 5)] {
        let stock = client
            .set_stock(inventory::SetStockRequest {
                sku: sku.into(),
                available,
            })
            .await
            .expect("SetStock succeeds")
            .into_inner();
        assert_eq!((stock.available, stock.reserved), (available, 0));
    }

    // Reserve, repeat, confirm.
    let saga = SagaId::new().to_string();
    let request = reserve(&saga, vec![stock_item("book", 3), stock_item("pen", 2)]);
    let first = client
        .reserve_stock(request.clone())
        .await
        .unwrap()
        .into_inner();
    let repeated = client.reserve_stock(request).await.unwrap().into_inner();
    assert_eq!(first, repeated);
    assert_eq!(first.items.len(), 2);
    assert_eq!(stock(&mut client, "book").await, (7, 3));
    assert_eq!(stock(&mut client, "pen").await, (3, 2));
    confirm(&mut client, &saga)
        .await
        .expect("ConfirmStock succeeds");
    confirm(&mut client, &saga)
        .await
        .expect("a repeated confirm succeeds");
    assert_eq!(stock(&mut client, "book").await, (7, 0));
    let status = release(&mut client, &saga).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("already confirmed"), "{status:?}");

    // Reserve, release, then a late confirm.
    let released = SagaId::new().to_string();
    client
        .reserve_stock(reserve(&released, vec![stock_item("book", 4)]))
        .await
        .unwrap();
    let response = release(&mut client, &released).await.unwrap();
    assert!(!response.nothing_reserved);
    assert_eq!(stock(&mut client, "book").await, (7, 0));
    let status = confirm(&mut client, &released).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // Null compensation, then the hanging try.
    let hanging = SagaId::new().to_string();
    let response = release(&mut client, &hanging).await.unwrap();
    assert!(response.nothing_reserved);
    let status = client
        .reserve_stock(reserve(&hanging, vec![stock_item("book", 1)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("already released"), "{status:?}");

    // Too little stock.
    let short = SagaId::new().to_string();
    let status = client
        .reserve_stock(reserve(
            &short,
            vec![stock_item("book", 1), stock_item("pen", 4)],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("\"pen\""), "{status:?}");

    // Invalid input names the field and changes nothing.
    let valid_saga = SagaId::new().to_string();
    let cases = [
        (
            reserve("not-a-uuid", vec![stock_item("book", 1)]),
            "saga_id",
        ),
        (
            reserve(
                &valid_saga,
                vec![
                    stock_item("book", 1),
                    stock_item("pen", 1),
                    stock_item("cup", 0),
                ],
            ),
            "items[2].quantity",
        ),
        (reserve(&valid_saga, vec![]), "items"),
    ];
    for (request, field) in cases {
        let status = client.reserve_stock(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{field}: {status:?}"
        );
    }
    let status = client
        .set_stock(inventory::SetStockRequest {
            sku: "book".into(),
            available: -1,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("available: "), "{status:?}");
    let status = client
        .get_stock(inventory::GetStockRequest {
            sku: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(stock(&mut client, "book").await, (7, 0));
    assert_eq!(stock(&mut client, "pen").await, (3, 0));
    // StockReserved twice, StockConfirmed, StockReleased.
    assert_eq!(stack.counts().await.1, 4);

    stack.stop().await;
}

#[tokio::test]
async fn inventory_steps_sqlite() {
    inventory_steps(Backend::Sqlite).await;
}

#[tokio::test]
async fn inventory_steps_postgres() {
    inventory_steps(Backend::Postgres).await;
}

fn freeze(saga_id: &str, user_id: &str, amount: i64) -> payment::FreezeBalanceRequest {
    payment::FreezeBalanceRequest {
        saga_id: saga_id.into(),
        user_id: user_id.into(),
        amount,
    }
}

/// Returns (balance, frozen) of `user_id`.
async fn account(client: &mut PaymentServiceClient<Channel>, user_id: &str) -> (i64, i64) {
    let account = client
        .get_account(payment::GetAccountRequest {
            user_id: user_id.into(),
        })
        .await
        .expect("GetAccount succeeds")
        .into_inner();
    (account.balance, account.frozen)
}

async fn unfreeze(
    client: &mut PaymentServiceClient<Channel>,
    saga_id: &str,
) -> Result<payment::UnfreezeBalanceResponse, tonic::Status> {
    client
        .unfreeze_balance(payment::UnfreezeBalanceRequest {
            saga_id: saga_id.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn confirm_payment(
    client: &mut PaymentServiceClient<Channel>,
    saga_id: &str,
) -> Result<payment::ConfirmPaymentResponse, tonic::Status> {
    client
        .confirm_payment(payment::ConfirmPaymentRequest {
            saga_id: saga_id.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn payment_steps(backend: Backend) {
    let mut stack = Stack::new(backend, required_env("TEST_AMQP_URL")).await;
    let mut client = payment_client(&mut stack).await;
    let deposited = client
        .deposit(payment::DepositRequest {
            user_id: "alice".into(),
            amount: 1000,
        })
        .await
        .expect("Deposit succeeds")
        .into_inner();
    assert_eq!((deposited.balance, deposited.frozen), (1000, 0));

    // Freeze, repeat, confirm.
    let saga = SagaId::new().to_string();
    let first = client
        .freeze_balance(freeze(&saga, "alice", 300))
        .await
        .unwrap()
        .into_inner();
    let repeated = client
        .freeze_balance(freeze(&saga, "alice", 300))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, repeated);
    assert_eq!(account(&mut client, "alice").await, (1000, 300));
    confirm_payment(&mut client, &saga)
        .await
        .expect("ConfirmPayment succeeds");
    confirm_payment(&mut client, &saga)
        .await
        .expect("a repeated confirm succeeds");
    assert_eq!(account(&mut client, "alice").await, (700, 0));
    let status = unfreeze(&mut client, &saga).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // Freeze, unfreeze, then a late confirm.
    let undone = SagaId::new().to_string();
    client
        .freeze_balance(freeze(&undone, "alice", 200))
        .await
        .unwrap();
    assert!(!unfreeze(&mut client, &undone).await.unwrap().nothing_frozen);
    assert_eq!(account(&mut client, "alice").await, (700, 0));
    let status = confirm_payment(&mut client, &undone).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // Null compensation, then the hanging try.
    let hanging = SagaId::new().to_string();
    assert!(
        unfreeze(&mut client, &hanging)
            .await
            .unwrap()
            .nothing_frozen
    );
    let status = client
        .freeze_balance(freeze(&hanging, "alice", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("already unfrozen"), "{status:?}");

    // Too small a balance, and an unknown account.
    let status = client
        .freeze_balance(freeze(&SagaId::new().to_string(), "alice", 701))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let status = client
        .freeze_balance(freeze(&SagaId::new().to_string(), "bob", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // Invalid input names the field and changes nothing.
    let valid_saga = SagaId::new().to_string();
    let cases = [
        (freeze("", "alice", 1), "saga_id"),
        (freeze(&valid_saga, "", 1), "user_id"),
        (freeze(&valid_saga, "alice", 0), "amount"),
    ];
    for (request, field) in cases {
        let status = client.freeze_balance(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{field}: {status:?}"
        );
    }
    let status = client
        .deposit(payment::DepositRequest {
            user_id: "alice".into(),
            amount: -5,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("amount: "), "{status:?}");
    let status = client
        .get_account(payment::GetAccountRequest {
            user_id: "bob".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(account(&mut client, "alice").await, (700, 0));
    // BalanceFrozen twice, PaymentConfirmed, BalanceUnfrozen.
    assert_eq!(stack.counts().await.1, 4);

    stack.stop().await;
}

#[tokio::test]
async fn payment_steps_sqlite() {
    payment_steps(Backend::Sqlite).await;
}

#[tokio::test]
async fn payment_steps_postgres() {
    payment_steps(Backend::Postgres).await;
}

#[tokio::test]
async fn stock_reserved_reaches_queue() {
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    let mut client = inventory_client(&mut stack).await;
    let mut worker = ServiceProcess::start(
        Path::new(env!("CARGO_BIN_EXE_daemon-worker")),
        &participant_config("inventory.yaml"),
        &stack.env,
    );
    worker
        .wait_for_log("daemon relay started", Duration::from_secs(60))
        .await;
    stack.processes.push(worker);
    let mut reader = QueueReader::bind(&stack.amqp_url, &stack.exchange, "reservation.#").await;
    client
        .set_stock(inventory::SetStockRequest {
            sku: "book".into(),
            available: 5,
        })
        .await
        .unwrap();

    let saga = SagaId::new().to_string();
    client
        .reserve_stock(reserve(&saga, vec![stock_item("book", 2)]))
        .await
        .expect("ReserveStock succeeds");

    let received = reader.receive(1, DELIVERY_DEADLINE).await;
    assert_eq!(received.len(), 1, "the StockReserved event arrives");
    let delivery = &received[0];
    assert_eq!(delivery.routing_key.as_str(), "reservation.reserved");
    assert_eq!(
        delivery.properties.kind().as_ref().unwrap().as_str(),
        "StockReserved"
    );
    let body = payload(delivery);
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .expect("message_id is set")
        .to_string();
    assert_eq!(body["event_id"], message_id.as_str());
    assert_eq!(body["saga_id"], saga.as_str());
    assert_eq!(body["items"][0]["sku"], "book");
    assert_eq!(body["items"][0]["quantity"], 2);

    stack.stop().await;
}
