//! The saga rows of `make bench`: PlaceOrder's saga against real `inventory-server` and
//! `payment-server` processes, beside two ceilings measured in the same run.
//!
//! - saga: `OrderSagaUseCase::place_order` driven in this process, built by
//!   `server::wire::order_sagas` from configs/config.yaml with its gRPC clients aimed at the
//!   participants. This is the code order-server runs for PlaceOrder, without order-server's
//!   own gRPC hop. N sagas from C tasks, each call waiting until its saga ends. Every saga must
//!   end `SUCCEEDED` with its order `CONFIRMED`, or the run panics.
//! - ceiling: plain `GetStock` calls against the same inventory-server from C tasks, 4 per saga
//!   (a saga calls its participants 4 times). That is the saga rate if only its round trips
//!   cost.
//! - ceiling: `OrderUseCase::create_order` from C tasks on the saga's order database, one local
//!   transaction per order. A saga starts with a similar transaction and then saves its row
//!   9 more times.
//!
//! Each participant has its own fresh database on the same backend as the order database.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use api::{
    inventory::v1::{
        GetStockRequest, SetStockRequest, inventory_service_client::InventoryServiceClient,
    },
    payment::v1::{DepositRequest, payment_service_client::PaymentServiceClient},
};
use biz::{OrderSagaUseCase, OrderStatus, PlaceOrder, SagaState};
use futures::future::join_all;
use testkit::ServiceProcess;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{create_run, database, rate, sample_order};

/// Participant calls of one successful saga: ReserveStock, FreezeBalance, ConfirmStock and
/// ConfirmPayment.
const CALLS_PER_SAGA: usize = 4;
/// Users that `sample_order` spreads orders over.
const USERS: usize = 50;
/// How long a PlaceOrder call waits for its saga, at most `saga.max_wait_secs` of the
/// configuration.
const SAGA_WAIT: Duration = Duration::from_secs(60);

fn config_path() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/config.yaml"
    ))
}

/// One participant process on its own fresh database.
struct Participant {
    process: ServiceProcess,
    url: String,
    _folder: Option<tempfile::TempDir>,
}

impl Participant {
    async fn start(binary: &str, backend: &str) -> Self {
        let (database_url, folder) = match backend {
            "sqlite" => {
                let folder = tempfile::tempdir().unwrap();
                (testkit::sqlite_url(folder.path()), Some(folder))
            }
            _ => (testkit::fresh_postgres_database().await, None),
        };
        let env = [
            ("APP__DATA__DATABASE_URL", database_url),
            ("APP__SERVER__GRPC_ADDR", "127.0.0.1:0".to_string()),
        ];
        let mut process = ServiceProcess::start(Path::new(binary), config_path(), &env);
        let url = format!("http://{}", process.grpc_addr().await);
        Self {
            process,
            url,
            _folder: folder,
        }
    }

    /// Peak resident memory of the process in KiB, read before it stops.
    fn peak_rss_kib(&self) -> u64 {
        let pid = self.process.id().expect("participant is running");
        super::peak_rss_kib_of(&format!("/proc/{pid}/status"))
    }

    async fn stop(self) {
        let status = self.process.terminate().await;
        assert!(status.success(), "participant exited with {status}");
    }
}

async fn inventory_client(url: &str) -> InventoryServiceClient<Channel> {
    InventoryServiceClient::connect(url.to_string())
        .await
        .expect("inventory-server accepts connections")
}

/// Stocks every SKU of `sample_order` and funds every user it names, enough for `sagas`
/// orders.
async fn stock_and_fund(inventory_url: &str, payment_url: &str, sagas: usize) {
    let sample = sample_order(0);
    let mut inventory = inventory_client(inventory_url).await;
    for item in &sample.items {
        let units = i64::from(item.quantity) * sagas as i64;
        inventory
            .set_stock(SetStockRequest {
                sku: item.sku.to_string(),
                available: units,
            })
            .await
            .expect("SetStock succeeds");
    }
    let mut payment = PaymentServiceClient::connect(payment_url.to_string())
        .await
        .expect("payment-server accepts connections");
    for user in 0..USERS.min(sagas) {
        payment
            .deposit(DepositRequest {
                user_id: format!("user-{user}"),
                amount: sample.total_amount * sagas as i64,
            })
            .await
            .expect("Deposit succeeds");
    }
}

/// Builds the saga use case as order-server does, on `db`, calling the given participants.
fn order_sagas(
    db: sea_orm::DatabaseConnection,
    inventory_url: &str,
    payment_url: &str,
    shutdown: CancellationToken,
) -> Arc<OrderSagaUseCase> {
    let mut config = conf::Config::load(config_path()).expect("configs/config.yaml loads");
    config.saga.inventory_url = inventory_url.to_string();
    config.saga.payment_url = payment_url.to_string();
    let owner = server::wire::relay_id("bench");
    server::wire::order_sagas(&config, db, owner, shutdown).expect("saga use case builds")
}

/// Places `count` orders through their sagas from `concurrency` tasks, each waiting for its
/// saga to end. Returns the elapsed time and how many sagas ended in each outcome.
async fn saga_run(
    sagas: &Arc<OrderSagaUseCase>,
    count: usize,
    concurrency: usize,
) -> (Duration, BTreeMap<String, usize>) {
    let per_task = count.div_ceil(concurrency);
    let start = Instant::now();
    let tasks = (0..concurrency).map(|task| {
        let sagas = sagas.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for index in (task * per_task)..((task + 1) * per_task).min(count) {
                let request = PlaceOrder {
                    order: sample_order(index),
                    wait: SAGA_WAIT,
                };
                let outcome = match sagas.place_order(request).await {
                    Ok((order, saga)) => format!("{} / {}", saga.state, order.status.as_str()),
                    Err(error) => format!("PlaceOrder failed: {error}"),
                };
                outcomes.push(outcome);
            }
            outcomes
        })
    });
    let mut outcomes = BTreeMap::new();
    for task in join_all(tasks).await {
        for outcome in task.unwrap() {
            *outcomes.entry(outcome).or_insert(0) += 1;
        }
    }
    (start.elapsed(), outcomes)
}

/// Issues `calls` GetStock calls from `concurrency` tasks over one HTTP/2 connection, as the
/// saga's inventory client does.
async fn get_stock_run(inventory_url: &str, calls: usize, concurrency: usize) -> Duration {
    let client = inventory_client(inventory_url).await;
    let sku = sample_order(0).items[0].sku.to_string();
    let per_task = calls.div_ceil(concurrency);
    let start = Instant::now();
    let tasks = (0..concurrency).map(|task| {
        let mut client = client.clone();
        let sku = sku.clone();
        let calls_here = per_task.min(calls.saturating_sub(task * per_task));
        tokio::spawn(async move {
            for _ in 0..calls_here {
                client
                    .get_stock(GetStockRequest { sku: sku.clone() })
                    .await
                    .expect("GetStock succeeds");
            }
        })
    });
    for task in join_all(tasks).await {
        task.unwrap();
    }
    start.elapsed()
}

/// Returns (available, reserved) of `sku`.
async fn stock(inventory_url: &str, sku: &str) -> (i64, i64) {
    let stock = inventory_client(inventory_url)
        .await
        .get_stock(GetStockRequest { sku: sku.into() })
        .await
        .expect("GetStock succeeds")
        .into_inner();
    (stock.available, stock.reserved)
}

/// Runs and prints the saga rows on `backend`, stops the participants, and returns one line
/// on each participant's peak resident memory.
pub async fn saga_rows(backend: &str, count: usize, concurrency: usize) -> Vec<String> {
    let inventory = Participant::start(env!("CARGO_BIN_EXE_inventory-server"), backend).await;
    let payment = Participant::start(env!("CARGO_BIN_EXE_payment-server"), backend).await;
    stock_and_fund(&inventory.url, &payment.url, count).await;
    let (db, _folder) = database(backend).await;
    let shutdown = CancellationToken::new();
    let sagas = order_sagas(db.clone(), &inventory.url, &payment.url, shutdown);

    let (elapsed, outcomes) = saga_run(&sagas, count, concurrency).await;
    let succeeded_label = format!(
        "{} / {}",
        SagaState::Succeeded,
        OrderStatus::Confirmed.as_str()
    );
    let succeeded = outcomes.get(&succeeded_label).copied().unwrap_or(0);
    assert_eq!(
        succeeded, count,
        "every saga must end {succeeded_label}; outcomes on {backend}: {outcomes:?}"
    );
    println!(
        "| saga: PlaceOrder, {concurrency} tasks, {succeeded} of {count} {} | {backend} | {count} | {:.2} | {:.0} |",
        SagaState::Succeeded,
        elapsed.as_secs_f64(),
        rate(count, elapsed)
    );
    for item in &sample_order(0).items {
        assert_eq!(
            stock(&inventory.url, &item.sku.to_string()).await,
            (0, 0),
            "every unit of {} is sold and none stays reserved",
            item.sku
        );
    }

    let calls = count * CALLS_PER_SAGA;
    let raw = get_stock_run(&inventory.url, calls, concurrency).await;
    println!(
        "| ceiling: {CALLS_PER_SAGA} GetStock calls per saga, {concurrency} tasks | {backend} | {count} | {:.2} | {:.0} |",
        raw.as_secs_f64(),
        rate(count, raw)
    );
    let create = create_run(&db, count, concurrency).await;
    println!(
        "| ceiling: CreateOrder on the order database, {concurrency} tasks | {backend} | {count} | {:.2} | {:.0} |",
        create.as_secs_f64(),
        rate(count, create)
    );

    let memory = vec![
        format!(
            "inventory-server on {backend}: {} MiB",
            inventory.peak_rss_kib() / 1024
        ),
        format!(
            "payment-server on {backend}: {} MiB",
            payment.peak_rss_kib() / 1024
        ),
    ];
    sagas.shut_down(Duration::from_secs(10)).await;
    db.close().await.unwrap();
    inventory.stop().await;
    payment.stop().await;
    memory
}
