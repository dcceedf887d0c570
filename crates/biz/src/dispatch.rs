//! The outbox relay use case: claim due events, publish them with publisher confirms, and
//! record each outcome. The worker binaries decide when it runs; this module decides what a
//! run does.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{debug, error, info, warn};

use crate::{
    error::RepoError,
    outbox::{OutboxEvent, RetryPolicy},
    ports::{EventPublisher, OutboxRepo, PublishError},
};

#[derive(Clone, Debug)]
pub struct DispatchSettings {
    /// Identifies this relay in `locked_by`; unique per process.
    pub relay_id: String,
    pub batch_size: u32,
    pub lease: Duration,
    pub retry: RetryPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Broker(#[from] PublishError),
}

/// Counts of one batch or one drain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchReport {
    pub claimed: usize,
    pub sent: usize,
    /// Failed and scheduled for another attempt.
    pub failed: usize,
    /// Failed for good: `DEAD`, waiting for an operator.
    pub dead: usize,
}

impl DispatchReport {
    fn add(&mut self, other: DispatchReport) {
        self.claimed += other.claimed;
        self.sent += other.sent;
        self.failed += other.failed;
        self.dead += other.dead;
    }
}

pub struct OutboxDispatcher {
    repo: Arc<dyn OutboxRepo>,
    publisher: Arc<dyn EventPublisher>,
    settings: DispatchSettings,
}

impl OutboxDispatcher {
    pub fn new(
        repo: Arc<dyn OutboxRepo>,
        publisher: Arc<dyn EventPublisher>,
        settings: DispatchSettings,
    ) -> Self {
        Self {
            repo,
            publisher,
            settings,
        }
    }

    pub fn settings(&self) -> &DispatchSettings {
        &self.settings
    }

    /// Claims one batch, publishes it and records the outcomes.
    ///
    /// # Errors
    ///
    /// [`DispatchError::Broker`] when the broker is unreachable; the claimed events are
    /// released without counting an attempt. [`DispatchError::Repo`] when the database fails;
    /// leases that could not be updated expire by themselves.
    pub async fn dispatch_batch(&self) -> Result<DispatchReport, DispatchError> {
        let started = Instant::now();
        let settings = &self.settings;
        let events = self
            .repo
            .claim(&settings.relay_id, settings.batch_size, settings.lease)
            .await?;
        if events.is_empty() {
            return Ok(DispatchReport::default());
        }
        let ids: Vec<i64> = events.iter().map(|event| event.id).collect();
        debug!(
            claimed = events.len(),
            first_id = ids[0],
            "claimed outbox batch"
        );

        let outcomes = match self.publisher.publish(&events).await {
            Ok(outcomes) => outcomes,
            Err(broker_error) => {
                if let Err(release_error) = self.repo.release(&settings.relay_id, &ids).await {
                    // The leases expire by themselves, so the events are only delayed.
                    warn!(error = %release_error, "failed to release claimed events");
                }
                return Err(broker_error.into());
            }
        };

        let mut report = DispatchReport {
            claimed: events.len(),
            ..DispatchReport::default()
        };
        let mut sent = Vec::with_capacity(events.len());
        for (event, outcome) in events.iter().zip(outcomes) {
            match outcome {
                Ok(()) => sent.push(event.id),
                Err(failure) => {
                    let dead = self
                        .record_failure(event, &failure.message, failure.permanent)
                        .await?;
                    if dead {
                        report.dead += 1;
                    } else {
                        report.failed += 1;
                    }
                }
            }
        }
        if !sent.is_empty() {
            let marked = self.repo.mark_sent(&settings.relay_id, &sent).await?;
            if marked != sent.len() as u64 {
                // Another relay took over an expired lease; it publishes those events again,
                // and consumers drop the duplicates by message_id.
                warn!(
                    confirmed = sent.len(),
                    marked, "lease lost before marking events sent"
                );
            }
            report.sent = sent.len();
        }
        metrics::counter!("outbox_events_published_total").increment(report.sent as u64);
        metrics::histogram!("outbox_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(report)
    }

    /// Returns true when the event went `DEAD`.
    async fn record_failure(
        &self,
        event: &OutboxEvent,
        message: &str,
        permanent: bool,
    ) -> Result<bool, RepoError> {
        let failed_attempts = event.retry_count + 1;
        let retry_in = if permanent {
            None
        } else {
            self.settings.retry.next_delay(failed_attempts)
        };
        match retry_in {
            Some(delay) => warn!(
                event_id = %event.event_id,
                attempt = failed_attempts,
                retry_in_ms = delay.as_millis() as u64,
                error = message,
                "publish failed, will retry"
            ),
            None => error!(
                event_id = %event.event_id,
                attempt = failed_attempts,
                permanent,
                error = message,
                "publish failed for good, event is dead"
            ),
        }
        self.repo
            .mark_failed(&self.settings.relay_id, event.id, message, retry_in)
            .await?;
        let result = if retry_in.is_some() { "retry" } else { "dead" };
        metrics::counter!("outbox_publish_failures_total", "result" => result).increment(1);
        Ok(retry_in.is_none())
    }

    /// Dispatches batches until the outbox has no due events, `max_batches` ran, or
    /// `should_stop` returns true between batches.
    ///
    /// # Errors
    ///
    /// As [`Self::dispatch_batch`]; batches before the failing one stay done.
    pub async fn drain(
        &self,
        max_batches: usize,
        should_stop: impl Fn() -> bool,
    ) -> Result<DispatchReport, DispatchError> {
        let mut total = DispatchReport::default();
        for _ in 0..max_batches {
            if should_stop() {
                break;
            }
            let report = self.dispatch_batch().await?;
            total.add(report);
            if report.claimed < self.settings.batch_size as usize {
                break;
            }
        }
        if total.claimed > 0 {
            info!(
                claimed = total.claimed,
                sent = total.sent,
                failed = total.failed,
                dead = total.dead,
                "outbox drained"
            );
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use chrono::Utc;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::ports::PublishFailure;

    #[derive(Clone, Debug, PartialEq)]
    enum Row {
        Pending,
        Leased,
        Sent,
        Failed { retry_in: Duration },
        Dead,
    }

    /// In-memory outbox: claims every pending row, ignoring order and time.
    struct MemoryOutbox {
        rows: Mutex<Vec<(OutboxEvent, Row)>>,
    }

    impl MemoryOutbox {
        fn with_events(count: i64) -> Self {
            let rows = (1..=count)
                .map(|id| {
                    let event = OutboxEvent {
                        id,
                        event_id: Uuid::new_v4(),
                        aggregate_type: "order".into(),
                        aggregate_id: format!("order-{id}"),
                        event_type: "OrderCreated".into(),
                        routing_key: "order.created".into(),
                        payload: json!({}),
                        retry_count: 0,
                        traceparent: None,
                        created_at: Utc::now(),
                    };
                    (event, Row::Pending)
                })
                .collect();
            Self {
                rows: Mutex::new(rows),
            }
        }

        fn states(&self) -> Vec<Row> {
            self.rows
                .lock()
                .unwrap()
                .iter()
                .map(|(_, row)| row.clone())
                .collect()
        }
    }

    #[async_trait]
    impl OutboxRepo for MemoryOutbox {
        async fn claim(
            &self,
            _relay_id: &str,
            limit: u32,
            _lease: Duration,
        ) -> Result<Vec<OutboxEvent>, RepoError> {
            let mut rows = self.rows.lock().unwrap();
            let mut claimed = Vec::new();
            for (event, row) in rows.iter_mut() {
                if *row == Row::Pending && claimed.len() < limit as usize {
                    *row = Row::Leased;
                    claimed.push(event.clone());
                }
            }
            Ok(claimed)
        }

        async fn mark_sent(&self, _relay_id: &str, ids: &[i64]) -> Result<u64, RepoError> {
            let mut rows = self.rows.lock().unwrap();
            for (event, row) in rows.iter_mut() {
                if ids.contains(&event.id) {
                    *row = Row::Sent;
                }
            }
            Ok(ids.len() as u64)
        }

        async fn mark_failed(
            &self,
            _relay_id: &str,
            id: i64,
            _error: &str,
            retry_in: Option<Duration>,
        ) -> Result<(), RepoError> {
            let mut rows = self.rows.lock().unwrap();
            let (event, row) = rows.iter_mut().find(|(event, _)| event.id == id).unwrap();
            event.retry_count += 1;
            *row = match retry_in {
                Some(retry_in) => Row::Failed { retry_in },
                None => Row::Dead,
            };
            Ok(())
        }

        async fn release(&self, _relay_id: &str, ids: &[i64]) -> Result<u64, RepoError> {
            let mut rows = self.rows.lock().unwrap();
            for (event, row) in rows.iter_mut() {
                if ids.contains(&event.id) {
                    *row = Row::Pending;
                }
            }
            Ok(ids.len() as u64)
        }
    }

    /// Publishes by a script: a broker outage, or a failure for chosen row ids.
    #[derive(Default)]
    struct ScriptedPublisher {
        down: bool,
        failing: Vec<(i64, bool)>,
        published: Mutex<Vec<i64>>,
    }

    #[async_trait]
    impl EventPublisher for ScriptedPublisher {
        async fn publish(
            &self,
            events: &[OutboxEvent],
        ) -> Result<Vec<Result<(), PublishFailure>>, PublishError> {
            if self.down {
                return Err(PublishError("connection refused".into()));
            }
            let outcomes = events
                .iter()
                .map(
                    |event| match self.failing.iter().find(|(id, _)| *id == event.id) {
                        Some(&(_, permanent)) => Err(PublishFailure {
                            message: "rejected".into(),
                            permanent,
                        }),
                        None => {
                            self.published.lock().unwrap().push(event.id);
                            Ok(())
                        }
                    },
                )
                .collect();
            Ok(outcomes)
        }
    }

    fn dispatcher(
        outbox: Arc<MemoryOutbox>,
        publisher: Arc<ScriptedPublisher>,
        batch_size: u32,
    ) -> OutboxDispatcher {
        OutboxDispatcher::new(
            outbox,
            publisher,
            DispatchSettings {
                relay_id: "test-relay".into(),
                batch_size,
                lease: Duration::from_secs(30),
                retry: RetryPolicy {
                    max_attempts: 3,
                    min_delay: Duration::from_secs(1),
                    max_delay: Duration::from_secs(10),
                },
            },
        )
    }

    #[tokio::test]
    async fn drain_sends_whole_backlog() {
        let outbox = Arc::new(MemoryOutbox::with_events(25));
        let publisher = Arc::new(ScriptedPublisher::default());

        let report = dispatcher(outbox.clone(), publisher.clone(), 10)
            .drain(100, || false)
            .await
            .unwrap();

        assert_eq!(report.claimed, 25);
        assert_eq!(report.sent, 25);
        assert!(outbox.states().iter().all(|row| *row == Row::Sent));
        assert_eq!(publisher.published.lock().unwrap().len(), 25);
    }

    #[tokio::test]
    async fn broker_outage_releases_batch() {
        let outbox = Arc::new(MemoryOutbox::with_events(3));
        let publisher = Arc::new(ScriptedPublisher {
            down: true,
            ..ScriptedPublisher::default()
        });

        let error = dispatcher(outbox.clone(), publisher, 10)
            .dispatch_batch()
            .await
            .unwrap_err();

        assert!(matches!(error, DispatchError::Broker(_)), "{error}");
        assert!(outbox.states().iter().all(|row| *row == Row::Pending));
        let rows = outbox.rows.lock().unwrap();
        assert!(rows.iter().all(|(event, _)| event.retry_count == 0));
    }

    #[tokio::test]
    async fn failures_retry_or_die() {
        let outbox = Arc::new(MemoryOutbox::with_events(3));
        let publisher = Arc::new(ScriptedPublisher {
            failing: vec![(1, false), (2, true)],
            ..ScriptedPublisher::default()
        });

        let report = dispatcher(outbox.clone(), publisher, 10)
            .dispatch_batch()
            .await
            .unwrap();

        assert_eq!(report.sent, 1);
        assert_eq!(report.failed, 1);
        assert_eq!(report.dead, 1);
        let states = outbox.states();
        assert!(
            matches!(states[0], Row::Failed { retry_in } if retry_in >= Duration::from_secs(1))
        );
        assert_eq!(states[1], Row::Dead);
        assert_eq!(states[2], Row::Sent);
    }

    #[tokio::test]
    async fn retry_budget_ends_dead() {
        let outbox = Arc::new(MemoryOutbox::with_events(1));
        outbox.rows.lock().unwrap()[0].0.retry_count = 2;
        let publisher = Arc::new(ScriptedPublisher {
            failing: vec![(1, false)],
            ..ScriptedPublisher::default()
        });

        let report = dispatcher(outbox.clone(), publisher, 10)
            .dispatch_batch()
            .await
            .unwrap();

        assert_eq!(report.dead, 1);
        assert_eq!(outbox.states(), vec![Row::Dead]);
    }
}
