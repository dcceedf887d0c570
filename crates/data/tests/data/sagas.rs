//! The saga repository: the start transaction, versioned saves under a lease, order changes in
//! the same transaction, cancel requests, and claims of stalled sagas.

use std::time::Duration;

use biz::{OrderChange, OrderStatus, Saga, SagaRepo, SagaState, StepName, StepOutcome};
use data::{SeaOrmSagaRepo, entity::saga_instances};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};

use super::*;

on_both_backends!(
    saga_start_writes_order_event_and_saga,
    saga_save_needs_version_and_owner,
    saga_order_change_commits_with_saga,
    saga_cancel_request_only_while_running,
    saga_claims_only_expired_leases,
);

/// A short lease, for the claim tests; the others never wait for one to pass.
const SHORT_LEASE: Duration = Duration::from_millis(300);

async fn start_saga(
    repo: &SeaOrmSagaRepo,
    request_id: &str,
    owner: &str,
    lease: Duration,
) -> (Order, Saga) {
    let order = Order::place(create_request(request_id, "alice"), Utc::now());
    let event = NewOutboxEvent::order_created(&order);
    let saga = Saga::start(order.id, order.created_at);
    repo.start(&order, &event, &saga, owner, lease)
        .await
        .expect("saga starts");
    (order, saga)
}

async fn saga_start_writes_order_event_and_saga(db: DatabaseConnection) {
    let repo = SeaOrmSagaRepo::new(db.clone());

    let (order, saga) = start_saga(&repo, "s-1", "owner-a", LEASE).await;

    let stored = repo.get(saga.id).await.unwrap().expect("saga exists");
    assert_eq!(stored, saga);
    assert_eq!(
        repo.find_by_order(order.id).await.unwrap(),
        Some(saga.clone())
    );
    let orders = SeaOrmOrderRepo::new(db.clone());
    assert_eq!(orders.get(order.id).await.unwrap(), Some(order.clone()));
    assert_eq!(outbox_events::Entity::find().count(&db).await.unwrap(), 1);

    // The same request_id again writes nothing.
    let again = Order::place(create_request("s-1", "alice"), Utc::now());
    let error = repo
        .start(
            &again,
            &NewOutboxEvent::order_created(&again),
            &Saga::start(again.id, again.created_at),
            "owner-a",
            LEASE,
        )
        .await
        .unwrap_err();
    assert!(matches!(error, RepoError::Duplicate(_)), "{error}");
    assert_eq!(saga_instances::Entity::find().count(&db).await.unwrap(), 1);
    assert_eq!(outbox_events::Entity::find().count(&db).await.unwrap(), 1);
}

async fn saga_save_needs_version_and_owner(db: DatabaseConnection) {
    let repo = SeaOrmSagaRepo::new(db.clone());
    let (_, mut saga) = start_saga(&repo, "s-1", "owner-a", LEASE).await;
    let now = Utc::now();
    saga.begin_step(
        StepName::ReserveStock,
        Some(now + chrono::Duration::seconds(5)),
        now,
    );
    saga.record_attempt(StepName::ReserveStock, Some("Unavailable: down".into()));

    assert!(
        !repo.save(&saga, "owner-b", LEASE, None).await.unwrap(),
        "another owner"
    );
    assert!(
        repo.save(&saga, "owner-a", LEASE, None).await.unwrap(),
        "the owner"
    );
    assert!(
        !repo.save(&saga, "owner-a", LEASE, None).await.unwrap(),
        "a stale version"
    );

    let stored = repo.get(saga.id).await.unwrap().unwrap();
    assert_eq!(stored.version, saga.version + 1);
    assert_eq!(stored.steps, saga.steps);
    assert_eq!(stored.deadline, saga.deadline);
    assert_eq!(stored.current_step(), StepName::ReserveStock);
}

async fn saga_order_change_commits_with_saga(db: DatabaseConnection) {
    let repo = SeaOrmSagaRepo::new(db.clone());
    let orders = SeaOrmOrderRepo::new(db.clone());
    let (order, mut saga) = start_saga(&repo, "s-1", "owner-a", LEASE).await;
    let now = Utc::now();
    saga.finish(StepName::ConfirmOrder, SagaState::Succeeded, now);

    // A change that does not apply rolls the saga's save back too.
    let wrong = OrderChange {
        order_id: order.id,
        from: OrderStatus::Confirmed,
        to: OrderStatus::Paid,
        event: NewOutboxEvent::order_status_changed(&order, OrderStatus::Paid, None, now),
    };
    assert!(
        repo.save(&saga, "owner-a", LEASE, Some(&wrong))
            .await
            .is_err()
    );
    assert_eq!(
        repo.get(saga.id).await.unwrap().unwrap().state,
        SagaState::Running
    );
    assert_eq!(outbox_events::Entity::find().count(&db).await.unwrap(), 1);

    let change = OrderChange {
        order_id: order.id,
        from: OrderStatus::Pending,
        to: OrderStatus::Confirmed,
        event: NewOutboxEvent::order_status_changed(&order, OrderStatus::Confirmed, None, now),
    };
    assert!(
        repo.save(&saga, "owner-a", LEASE, Some(&change))
            .await
            .unwrap()
    );

    let stored = repo.get(saga.id).await.unwrap().unwrap();
    assert_eq!(stored.state, SagaState::Succeeded);
    assert_eq!(
        stored.step(StepName::ConfirmOrder).unwrap().outcome,
        StepOutcome::Succeeded
    );
    let confirmed = orders.get(order.id).await.unwrap().unwrap();
    assert_eq!(confirmed.status, OrderStatus::Confirmed);
    assert_eq!(confirmed.version, order.version + 1);
    let confirmed_events = outbox_events::Entity::find()
        .filter(outbox_events::Column::EventType.eq("OrderConfirmed"))
        .count(&db)
        .await
        .unwrap();
    assert_eq!(confirmed_events, 1);
    // A finished saga has no owner, so no worker claims it.
    let row = saga_instances::Entity::find_by_id(saga.id.as_uuid())
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.locked_by, row.locked_until), (None, None));
}

async fn saga_cancel_request_only_while_running(db: DatabaseConnection) {
    let repo = SeaOrmSagaRepo::new(db.clone());
    let (_, mut saga) = start_saga(&repo, "s-1", "owner-a", LEASE).await;

    assert!(repo.request_cancel(saga.id).await.unwrap());
    assert!(repo.get(saga.id).await.unwrap().unwrap().cancel_requested);
    // The owner's save keeps the flag it did not set.
    assert!(repo.save(&saga, "owner-a", LEASE, None).await.unwrap());
    saga.version += 1;
    assert!(repo.get(saga.id).await.unwrap().unwrap().cancel_requested);

    saga.compensate("cancelled by the client".into(), Utc::now());
    assert!(repo.save(&saga, "owner-a", LEASE, None).await.unwrap());
    let (_, other) = start_saga(&repo, "s-2", "owner-a", LEASE).await;
    let mut finished = other.clone();
    finished.fail("gave up".into());
    assert!(repo.save(&finished, "owner-a", LEASE, None).await.unwrap());

    assert!(!repo.request_cancel(saga.id).await.unwrap(), "compensating");
    assert!(!repo.request_cancel(other.id).await.unwrap(), "failed");
}

async fn saga_claims_only_expired_leases(db: DatabaseConnection) {
    let repo = SeaOrmSagaRepo::new(db.clone());
    let (_, live) = start_saga(&repo, "s-live", "owner-a", LEASE).await;
    let (_, stalled) = start_saga(&repo, "s-stalled", "owner-a", SHORT_LEASE).await;
    let (_, released) = start_saga(&repo, "s-released", "owner-a", LEASE).await;
    repo.release(released.id, "owner-a").await.unwrap();

    // The short lease passes on the database clock, so poll until both are claimed.
    let claimed = std::sync::Mutex::new(Vec::new());
    let both = testkit::wait_until(Duration::from_secs(10), || async {
        let batch = repo.claim_stalled("owner-b", 10, LEASE).await.unwrap();
        let mut claimed = claimed.lock().unwrap();
        claimed.extend(batch);
        claimed.len() >= 2
    })
    .await;
    let claimed = claimed.into_inner().unwrap();
    assert!(both, "claimed only {claimed:?}");

    let mut ids: Vec<_> = claimed.iter().map(|saga| saga.id).collect();
    ids.sort();
    let mut expected = vec![stalled.id, released.id];
    expected.sort();
    assert_eq!(ids, expected, "the live saga stays with its owner");
    assert!(
        claimed.iter().all(|saga| saga.version == 2),
        "a claim counts as a change"
    );
    assert!(
        repo.claim_stalled("owner-c", 10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "owner-b holds them now"
    );
    // The old owner's next save fails, so two drivers never run one saga.
    assert!(!repo.save(&stalled, "owner-a", LEASE, None).await.unwrap());
    assert!(repo.save(&live, "owner-a", LEASE, None).await.unwrap());
}
