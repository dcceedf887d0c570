//! Operating the outbox through order.v1.OutboxAdmin: dead events, re-drives, backlog
//! figures, and cron-worker's deletion of old SENT rows.

use std::time::Duration;

use api::order::v1::{
    GetOutboxStatsRequest, ListDeadEventsRequest, OutboxEventStatus, RedriveDeadEventsRequest,
    RedriveEventRequest, outbox_admin_client::OutboxAdminClient,
};
use data::entity::outbox_events;
use sea_orm::{EntityTrait, PaginatorTrait};
use testkit::{QueueReader, required_env};
use tonic::Code;

use super::*;

async fn admin_client(addr: &str) -> OutboxAdminClient<Channel> {
    OutboxAdminClient::connect(format!("http://{addr}"))
        .await
        .expect("order-server accepts connections")
}

#[tokio::test]
async fn dead_event_is_redriven() {
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    // No queue is bound to the exchange, so a mandatory publish comes back unroutable, and a
    // single attempt makes the event DEAD.
    stack.set("APP__BROKER__QUEUE", "");
    stack.set("APP__OUTBOX__MAX_ATTEMPTS", "1");
    let addr = stack.start_server().await;
    stack.start_daemon().await;
    let mut orders = client(&addr).await;
    let mut admin = admin_client(&addr).await;
    let order = create_order(&mut orders, "redrive-1").await;

    let stats_deadline = Duration::from_secs(30);
    let mut dead_listed = Vec::new();
    let went_dead = testkit::wait_until(stats_deadline, || {
        let mut admin = admin.clone();
        async move {
            let stats = admin
                .get_outbox_stats(GetOutboxStatsRequest {})
                .await
                .unwrap();
            stats.into_inner().dead == 1
        }
    })
    .await;
    assert!(went_dead, "the unroutable event goes DEAD");
    let page = admin
        .list_dead_events(ListDeadEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    dead_listed.extend(page.events);
    assert_eq!(dead_listed.len(), 1);
    let dead = &dead_listed[0];
    assert_eq!(dead.aggregate_id, order.id);
    assert_eq!(dead.status, OutboxEventStatus::Dead as i32);
    assert!(
        dead.last_error.contains("unroutable"),
        "{}",
        dead.last_error
    );
    assert!(page.next_page_token.is_empty());

    // Once a queue is bound, the re-driven event is delivered.
    let mut reader = stack.reader().await;
    let redriven = admin
        .redrive_event(RedriveEventRequest {
            event_id: dead.event_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert_eq!(redriven.retry_count, 0);
    let received = reader.receive(1, DELIVERY_DEADLINE).await;
    assert_eq!(received.len(), 1);
    let message_id = received[0]
        .properties
        .message_id()
        .as_ref()
        .unwrap()
        .to_string();
    assert_eq!(message_id, dead.event_id);

    let sent_deadline = Duration::from_secs(30);
    let marked = testkit::wait_until(sent_deadline, || {
        let mut admin = admin.clone();
        async move {
            let stats = admin
                .get_outbox_stats(GetOutboxStatsRequest {})
                .await
                .unwrap();
            let stats = stats.into_inner();
            stats.sent == 1 && stats.dead == 0 && stats.oldest_unsent_age.is_none()
        }
    })
    .await;
    assert!(marked, "the re-driven event is marked SENT");

    let not_dead = admin
        .redrive_event(RedriveEventRequest {
            event_id: dead.event_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(not_dead.code(), Code::FailedPrecondition);
    let unknown = admin
        .redrive_event(RedriveEventRequest {
            event_id: uuid_v4(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let invalid = admin
        .redrive_event(RedriveEventRequest {
            event_id: "42".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(
        invalid.message().starts_with("event_id: "),
        "{}",
        invalid.message()
    );
    let none_left = admin
        .redrive_dead_events(RedriveDeadEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none_left.redriven, 0);

    stack.stop().await;
}

#[tokio::test]
async fn cron_worker_deletes_old_sent_rows() {
    let mut stack = Stack::new(Backend::Sqlite, required_env("TEST_AMQP_URL")).await;
    stack.set("APP__OUTBOX__CRON_SCHEDULE", "* * * * * *");
    stack.set("APP__OUTBOX__CLEANUP_SCHEDULE", "* * * * * *");
    stack.set("APP__OUTBOX__RETENTION_SECS", "0");
    let addr = stack.start_server().await;
    let mut orders = client(&addr).await;
    for index in 0..3 {
        create_order(&mut orders, &format!("retention-{index}")).await;
    }
    let mut reader: QueueReader = stack.reader().await;

    stack
        .start_worker(env!("CARGO_BIN_EXE_cron-worker"), "outbox cleanup started")
        .await;

    assert_eq!(reader.receive(3, DELIVERY_DEADLINE).await.len(), 3);
    let db = stack.db().await;
    let emptied = testkit::wait_until(Duration::from_secs(30), || {
        let db = db.clone();
        async move { outbox_events::Entity::find().count(&db).await.unwrap() == 0 }
    })
    .await;
    assert!(emptied, "sent rows past the retention are deleted");
    let (order_count, _) = stack.counts().await;
    assert_eq!(order_count, 3, "orders stay");

    db.close().await.unwrap();
    stack.stop().await;
}
