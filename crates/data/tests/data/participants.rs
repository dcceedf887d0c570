//! The inventory and payment repositories: figures after each step, the idempotency barrier
//! (repeats, null compensation, hanging tries, confirm and cancel rules) and concurrent calls.

use std::sync::Arc;

use biz::{
    SagaId, Sku, UserId,
    inventory::{InventoryRepo, ReserveStock, StockItem},
    participant::ParticipantError,
    payment::{Freeze, PaymentRepo},
};
use data::{
    SeaOrmInventoryRepo, SeaOrmPaymentRepo,
    entity::{outbox_events, saga_barriers},
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};

use super::*;

on_both_backends!(
    stock_reserve_then_confirm,
    stock_reserve_then_release,
    stock_shortage_changes_nothing,
    stock_repeats_return_first_result,
    stock_null_compensation_blocks_try,
    stock_confirm_and_release_rules,
    stock_set_keeps_reserved,
    stock_concurrent_reserves_stop_at_zero,
    stock_concurrent_duplicate_tries_apply_once,
    stock_try_and_cancel_race_leaks_nothing,
    balance_freeze_then_confirm,
    balance_freeze_then_unfreeze,
    balance_shortage_changes_nothing,
    balance_repeats_return_first_result,
    balance_null_compensation_blocks_try,
    balance_confirm_and_unfreeze_rules,
    balance_deposit_overflow_is_rejected,
    balance_concurrent_freezes_stop_at_zero,
    balance_concurrent_duplicate_tries_apply_once,
);

fn sku(value: &str) -> Sku {
    Sku::parse(value).unwrap()
}

fn items(list: &[(&str, i64)]) -> Vec<StockItem> {
    list.iter()
        .enumerate()
        .map(|(index, (sku, quantity))| StockItem::parse(index, *sku, *quantity).unwrap())
        .collect()
}

fn reserve_request(saga_id: SagaId, list: &[(&str, i64)]) -> ReserveStock {
    ReserveStock::new(saga_id, items(list)).unwrap()
}

/// Returns (available, reserved) of `name`.
async fn stock(repo: &SeaOrmInventoryRepo, name: &str) -> (i64, i64) {
    let stock = repo
        .get_stock(&sku(name))
        .await
        .unwrap()
        .expect("SKU exists");
    (stock.available, stock.reserved)
}

/// Returns the event types in the outbox of `saga_id`, oldest first.
async fn saga_events(db: &DatabaseConnection, saga_id: SagaId) -> Vec<String> {
    let mut rows = outbox_events::Entity::find()
        .filter(outbox_events::Column::AggregateId.eq(saga_id.to_string()))
        .all(db)
        .await
        .unwrap();
    rows.sort_by_key(|row| row.id);
    rows.into_iter().map(|row| row.event_type).collect()
}

async fn event_count(db: &DatabaseConnection) -> u64 {
    outbox_events::Entity::find().count(db).await.unwrap()
}

fn rejection<T: std::fmt::Debug>(result: Result<T, ParticipantError>) -> String {
    match result {
        Err(ParticipantError::Rejected(message)) => message,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

async fn stocked(db: &DatabaseConnection, list: &[(&str, i64)]) -> SeaOrmInventoryRepo {
    let repo = SeaOrmInventoryRepo::new(db.clone());
    for (name, available) in list {
        repo.set_stock(&sku(name), *available).await.unwrap();
    }
    repo
}

async fn stock_reserve_then_confirm(db: DatabaseConnection) {
    let repo = stocked(&db, &[("book", 10), ("pen", 5)]).await;
    let saga = SagaId::new();

    let reservation = repo
        .reserve(&reserve_request(saga, &[("book", 3), ("pen", 2)]))
        .await
        .unwrap();

    assert_eq!(reservation.items, items(&[("book", 3), ("pen", 2)]));
    assert_eq!(stock(&repo, "book").await, (7, 3));
    assert_eq!(stock(&repo, "pen").await, (3, 2));
    assert_eq!(saga_events(&db, saga).await, ["StockReserved"]);

    repo.confirm(saga).await.unwrap();

    assert_eq!(stock(&repo, "book").await, (7, 0));
    assert_eq!(stock(&repo, "pen").await, (3, 0));
    assert_eq!(
        saga_events(&db, saga).await,
        ["StockReserved", "StockConfirmed"]
    );
    let confirmed = outbox_events::Entity::find()
        .filter(outbox_events::Column::EventType.eq("StockConfirmed"))
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(confirmed.aggregate_type, "reservation");
    assert_eq!(confirmed.headers["routing_key"], "reservation.confirmed");
    assert_eq!(confirmed.payload["saga_id"], saga.to_string());
    assert_eq!(confirmed.payload["items"].as_array().unwrap().len(), 2);
}

async fn stock_reserve_then_release(db: DatabaseConnection) {
    let repo = stocked(&db, &[("book", 10)]).await;
    let saga = SagaId::new();
    repo.reserve(&reserve_request(saga, &[("book", 4)]))
        .await
        .unwrap();

    let released = repo.release(saga).await.unwrap();

    assert!(!released.nothing_reserved);
    assert_eq!(stock(&repo, "book").await, (10, 0));
    assert_eq!(
        saga_events(&db, saga).await,
        ["StockReserved", "StockReleased"]
    );
}

async fn stock_shortage_changes_nothing(db: DatabaseConnection) {
    let repo = stocked(&db, &[("book", 10), ("pen", 1)]).await;
    let saga = SagaId::new();
    let request = reserve_request(saga, &[("book", 3), ("pen", 2)]);

    let message = rejection(repo.reserve(&request).await);

    assert!(message.contains("\"pen\""), "{message}");
    assert!(message.contains("has 1 units available"), "{message}");
    assert!(message.contains("2 were requested"), "{message}");
    assert_eq!(stock(&repo, "book").await, (10, 0));
    assert_eq!(stock(&repo, "pen").await, (1, 0));
    assert_eq!(event_count(&db).await, 0);

    let repeated = rejection(repo.reserve(&request).await);
    assert_eq!(repeated, message);

    let unknown = rejection(
        repo.reserve(&reserve_request(SagaId::new(), &[("ghost", 1)]))
            .await,
    );
    assert!(unknown.contains("\"ghost\" is unknown"), "{unknown}");
    assert_eq!(event_count(&db).await, 0);
    assert_eq!(stock(&repo, "book").await, (10, 0));
}

async fn stock_repeats_return_first_result(db: DatabaseConnection) {
    let repo = stocked(&db, &[("book", 10)]).await;
    let saga = SagaId::new();

    let first = repo
        .reserve(&reserve_request(saga, &[("book", 2)]))
        .await
        .unwrap();
    // A repeat returns what the first try reserved, whatever it requests.
    let second = repo
        .reserve(&reserve_request(saga, &[("book", 5)]))
        .await
        .unwrap();

    assert_eq!(second, first);
    assert_eq!(stock(&repo, "book").await, (8, 2));

    repo.confirm(saga).await.unwrap();
    repo.confirm(saga).await.unwrap();

    assert_eq!(stock(&repo, "book").await, (8, 0));
    assert_eq!(
        saga_events(&db, saga).await,
        ["StockReserved", "StockConfirmed"]
    );

    let other = SagaId::new();
    repo.reserve(&reserve_request(other, &[("book", 1)]))
        .await
        .unwrap();
    let first_release = repo.release(other).await.unwrap();
    let second_release = repo.release(other).await.unwrap();
    assert_eq!(first_release, second_release);
    assert_eq!(stock(&repo, "book").await, (8, 0));
    assert_eq!(
        saga_events(&db, other).await,
        ["StockReserved", "StockReleased"]
    );
}

async fn stock_null_compensation_blocks_try(db: DatabaseConnection) {
    let repo = stocked(&db, &[("book", 10)]).await;
    let saga = SagaId::new();

    let released = repo.release(saga).await.unwrap();
    let repeated = repo.release(saga).await.unwrap();
    let message = rejection(repo.reserve(&reserve_request(saga, &[("book", 1)])).await);

    assert!(released.nothing_reserved);
    assert!(repeated.nothing_reserved);
    assert!(message.contains("already released"), "{message}");
    assert_eq!(stock(&repo, "book").await, (10, 0));
    assert_eq!(event_count(&db).await, 0);
    let barriers = saga_barriers::Entity::find()
        .filter(saga_barriers::Column::SagaId.eq(saga.as_uuid()))
        .all(&db)
        .await
        .unwrap();
    let mut recorded: Vec<(String, String)> = barriers
        .into_iter()
        .map(|row| (row.operation, row.outcome))
        .collect();
    recorded.sort();
    assert_eq!(
        recorded,
        [
            ("cancel".to_string(), "NULL".to_string()),
            ("try".to_string(), "REJECTED".to_string())
        ]
    );
}

async fn stock_confirm_and_release_rules(db: DatabaseConnection) {
    let repo = stocked(&db, &[("book", 10)]).await;

    let never_reserved = rejection(repo.confirm(SagaId::new()).await);
    assert!(
        never_reserved.contains("no stock reservation"),
        "{never_reserved}"
    );

    let released = SagaId::new();
    repo.reserve(&reserve_request(released, &[("book", 2)]))
        .await
        .unwrap();
    repo.release(released).await.unwrap();
    let message = rejection(repo.confirm(released).await);
    assert!(message.contains("already released"), "{message}");

    let confirmed = SagaId::new();
    repo.reserve(&reserve_request(confirmed, &[("book", 3)]))
        .await
        .unwrap();
    repo.confirm(confirmed).await.unwrap();
    let message = rejection(repo.release(confirmed).await);
    assert!(message.contains("already confirmed"), "{message}");

    assert_eq!(stock(&repo, "book").await, (7, 0));
    assert_eq!(
        saga_events(&db, released).await,
        ["StockReserved", "StockReleased"]
    );
    assert_eq!(
        saga_events(&db, confirmed).await,
        ["StockReserved", "StockConfirmed"]
    );
}

async fn stock_set_keeps_reserved(db: DatabaseConnection) {
    let repo = stocked(&db, &[("book", 10)]).await;
    repo.reserve(&reserve_request(SagaId::new(), &[("book", 4)]))
        .await
        .unwrap();

    let stock = repo.set_stock(&sku("book"), 50).await.unwrap();

    assert_eq!((stock.available, stock.reserved), (50, 4));
    assert_eq!(repo.get_stock(&sku("none")).await.unwrap(), None);
}

async fn stock_concurrent_reserves_stop_at_zero(db: DatabaseConnection) {
    let repo = Arc::new(stocked(&db, &[("book", 10)]).await);

    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.reserve(&reserve_request(SagaId::new(), &[("book", 1)]))
                    .await
            })
        })
        .collect();
    let mut reserved = 0;
    let mut rejected = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => reserved += 1,
            Err(ParticipantError::Rejected(_)) => rejected += 1,
            Err(error) => panic!("unexpected error: {error:?}"),
        }
    }

    assert_eq!(reserved, 10);
    assert_eq!(rejected, 30);
    assert_eq!(stock(&repo, "book").await, (0, 10));
    assert_eq!(event_count(&db).await, 10);
}

async fn stock_concurrent_duplicate_tries_apply_once(db: DatabaseConnection) {
    let repo = Arc::new(stocked(&db, &[("book", 10)]).await);
    let saga = SagaId::new();

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.reserve(&reserve_request(saga, &[("book", 2)])).await })
        })
        .collect();
    for task in tasks {
        let reservation = task.await.unwrap().expect("every repeat succeeds");
        assert_eq!(reservation.items, items(&[("book", 2)]));
    }

    assert_eq!(stock(&repo, "book").await, (8, 2));
    assert_eq!(saga_events(&db, saga).await, ["StockReserved"]);
}

/// Sends a try and a cancel of one saga at once and checks that, whichever runs first, no
/// reservation is left behind once both returned.
async fn stock_try_and_cancel_race_leaks_nothing(db: DatabaseConnection) {
    let repo = Arc::new(stocked(&db, &[("book", 100)]).await);

    for _ in 0..10 {
        let saga = SagaId::new();
        let reserve = {
            let repo = repo.clone();
            tokio::spawn(async move { repo.reserve(&reserve_request(saga, &[("book", 1)])).await })
        };
        let release = {
            let repo = repo.clone();
            tokio::spawn(async move { repo.release(saga).await })
        };
        let reserved = reserve.await.unwrap();
        let released = release.await.unwrap().expect("release succeeds");

        if reserved.is_ok() {
            assert!(
                !released.nothing_reserved,
                "saga {saga}: reserved but not released"
            );
        } else {
            assert!(released.nothing_reserved, "saga {saga}");
            rejection(reserved);
        }
        assert_eq!(stock(&repo, "book").await, (100, 0), "saga {saga}");
    }
}

fn user(value: &str) -> UserId {
    UserId::parse(value).unwrap()
}

fn freeze_request(saga_id: SagaId, user_id: &str, amount: i64) -> Freeze {
    Freeze::parse(saga_id, user_id.to_string(), amount).unwrap()
}

/// Returns (balance, frozen) of `user_id`.
async fn account(repo: &SeaOrmPaymentRepo, user_id: &str) -> (i64, i64) {
    let account = repo
        .get_account(&user(user_id))
        .await
        .unwrap()
        .expect("account exists");
    (account.balance, account.frozen)
}

async fn funded(db: &DatabaseConnection, user_id: &str, amount: i64) -> SeaOrmPaymentRepo {
    let repo = SeaOrmPaymentRepo::new(db.clone());
    repo.deposit(&user(user_id), amount).await.unwrap();
    repo
}

async fn balance_freeze_then_confirm(db: DatabaseConnection) {
    let repo = funded(&db, "alice", 1000).await;
    let saga = SagaId::new();

    let freeze = repo
        .freeze(&freeze_request(saga, "alice", 300))
        .await
        .unwrap();

    assert_eq!(freeze.amount, 300);
    assert_eq!(account(&repo, "alice").await, (1000, 300));
    assert_eq!(saga_events(&db, saga).await, ["BalanceFrozen"]);

    repo.confirm(saga).await.unwrap();

    assert_eq!(account(&repo, "alice").await, (700, 0));
    assert_eq!(
        saga_events(&db, saga).await,
        ["BalanceFrozen", "PaymentConfirmed"]
    );
    let confirmed = outbox_events::Entity::find()
        .filter(outbox_events::Column::EventType.eq("PaymentConfirmed"))
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(confirmed.aggregate_type, "payment");
    assert_eq!(confirmed.headers["routing_key"], "payment.confirmed");
    assert_eq!(confirmed.payload["user_id"], "alice");
    assert_eq!(confirmed.payload["amount"], 300);
}

async fn balance_freeze_then_unfreeze(db: DatabaseConnection) {
    let repo = funded(&db, "alice", 1000).await;
    let saga = SagaId::new();
    repo.freeze(&freeze_request(saga, "alice", 400))
        .await
        .unwrap();

    let unfrozen = repo.unfreeze(saga).await.unwrap();

    assert!(!unfrozen.nothing_frozen);
    assert_eq!(account(&repo, "alice").await, (1000, 0));
    assert_eq!(
        saga_events(&db, saga).await,
        ["BalanceFrozen", "BalanceUnfrozen"]
    );
}

async fn balance_shortage_changes_nothing(db: DatabaseConnection) {
    let repo = funded(&db, "alice", 500).await;
    repo.freeze(&freeze_request(SagaId::new(), "alice", 200))
        .await
        .unwrap();
    let before = event_count(&db).await;
    let request = freeze_request(SagaId::new(), "alice", 301);

    let message = rejection(repo.freeze(&request).await);

    assert!(message.contains("has 300 unfrozen"), "{message}");
    assert!(message.contains("301 was requested"), "{message}");
    assert_eq!(account(&repo, "alice").await, (500, 200));
    assert_eq!(event_count(&db).await, before);
    assert_eq!(rejection(repo.freeze(&request).await), message);

    let unknown = rejection(repo.freeze(&freeze_request(SagaId::new(), "bob", 1)).await);
    assert!(unknown.contains("\"bob\" has no account"), "{unknown}");
    assert_eq!(event_count(&db).await, before);
}

async fn balance_repeats_return_first_result(db: DatabaseConnection) {
    let repo = funded(&db, "alice", 1000).await;
    let saga = SagaId::new();

    let first = repo
        .freeze(&freeze_request(saga, "alice", 100))
        .await
        .unwrap();
    let second = repo
        .freeze(&freeze_request(saga, "alice", 900))
        .await
        .unwrap();
    repo.confirm(saga).await.unwrap();
    repo.confirm(saga).await.unwrap();

    assert_eq!(second, first);
    assert_eq!(account(&repo, "alice").await, (900, 0));
    assert_eq!(
        saga_events(&db, saga).await,
        ["BalanceFrozen", "PaymentConfirmed"]
    );

    let other = SagaId::new();
    repo.freeze(&freeze_request(other, "alice", 50))
        .await
        .unwrap();
    assert_eq!(
        repo.unfreeze(other).await.unwrap(),
        repo.unfreeze(other).await.unwrap()
    );
    assert_eq!(account(&repo, "alice").await, (900, 0));
    assert_eq!(
        saga_events(&db, other).await,
        ["BalanceFrozen", "BalanceUnfrozen"]
    );
}

async fn balance_null_compensation_blocks_try(db: DatabaseConnection) {
    let repo = funded(&db, "alice", 1000).await;
    let saga = SagaId::new();

    let unfrozen = repo.unfreeze(saga).await.unwrap();
    let repeated = repo.unfreeze(saga).await.unwrap();
    let message = rejection(repo.freeze(&freeze_request(saga, "alice", 10)).await);

    assert!(unfrozen.nothing_frozen);
    assert!(repeated.nothing_frozen);
    assert!(message.contains("already unfrozen"), "{message}");
    assert_eq!(account(&repo, "alice").await, (1000, 0));
    assert!(saga_events(&db, saga).await.is_empty());
}

async fn balance_confirm_and_unfreeze_rules(db: DatabaseConnection) {
    let repo = funded(&db, "alice", 1000).await;

    let never_frozen = rejection(repo.confirm(SagaId::new()).await);
    assert!(never_frozen.contains("no balance freeze"), "{never_frozen}");

    let undone = SagaId::new();
    repo.freeze(&freeze_request(undone, "alice", 100))
        .await
        .unwrap();
    repo.unfreeze(undone).await.unwrap();
    let message = rejection(repo.confirm(undone).await);
    assert!(message.contains("already unfrozen"), "{message}");

    let confirmed = SagaId::new();
    repo.freeze(&freeze_request(confirmed, "alice", 250))
        .await
        .unwrap();
    repo.confirm(confirmed).await.unwrap();
    let message = rejection(repo.unfreeze(confirmed).await);
    assert!(message.contains("already confirmed"), "{message}");

    assert_eq!(account(&repo, "alice").await, (750, 0));
}

async fn balance_deposit_overflow_is_rejected(db: DatabaseConnection) {
    let repo = funded(&db, "alice", i64::MAX - 5).await;

    let message = rejection(repo.deposit(&user("alice"), 6).await);
    let account_after = repo.deposit(&user("alice"), 5).await.unwrap();

    assert!(message.contains("past 9223372036854775807"), "{message}");
    assert_eq!(account_after.balance, i64::MAX);
    assert_eq!(repo.get_account(&user("nobody")).await.unwrap(), None);
}

async fn balance_concurrent_freezes_stop_at_zero(db: DatabaseConnection) {
    let repo = Arc::new(funded(&db, "alice", 10).await);

    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.freeze(&freeze_request(SagaId::new(), "alice", 1))
                    .await
            })
        })
        .collect();
    let mut frozen = 0;
    let mut rejected = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => frozen += 1,
            Err(ParticipantError::Rejected(_)) => rejected += 1,
            Err(error) => panic!("unexpected error: {error:?}"),
        }
    }

    assert_eq!(frozen, 10);
    assert_eq!(rejected, 30);
    assert_eq!(account(&repo, "alice").await, (10, 10));
    assert_eq!(event_count(&db).await, 10);
}

async fn balance_concurrent_duplicate_tries_apply_once(db: DatabaseConnection) {
    let repo = Arc::new(funded(&db, "alice", 1000).await);
    let saga = SagaId::new();

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.freeze(&freeze_request(saga, "alice", 70)).await })
        })
        .collect();
    for task in tasks {
        let freeze = task.await.unwrap().expect("every repeat succeeds");
        assert_eq!(freeze.amount, 70);
    }

    assert_eq!(account(&repo, "alice").await, (1000, 70));
    assert_eq!(saga_events(&db, saga).await, ["BalanceFrozen"]);
}
