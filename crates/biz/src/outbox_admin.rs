//! `OutboxAdminUseCase`: what an operator does with the outbox — list and re-drive `DEAD`
//! events, read backlog figures — and the retention job that deletes old `SENT` rows.

use std::{fmt, str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tracing::{info, instrument};
use uuid::Uuid;

use crate::error::{BoxError, RepoError, ValidationError};

/// Lifecycle of an outbox row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutboxStatus {
    /// Not yet published.
    Pending,
    /// Confirmed by the broker.
    Sent,
    /// The last attempt failed; another is scheduled.
    Failed,
    /// Given up after the retry budget or a permanent failure; waits for an operator.
    Dead,
}

impl OutboxStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Sent => "SENT",
            Self::Failed => "FAILED",
            Self::Dead => "DEAD",
        }
    }
}

impl fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutboxStatus {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "PENDING" => Ok(Self::Pending),
            "SENT" => Ok(Self::Sent),
            "FAILED" => Ok(Self::Failed),
            "DEAD" => Ok(Self::Dead),
            other => Err(format!("unknown outbox status {other:?}")),
        }
    }
}

/// An outbox row as an operator sees it, without its payload.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxRecord {
    pub id: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub status: OutboxStatus,
    pub retry_count: u32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Row counts per status, and the creation time of the oldest unsent row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutboxStats {
    pub pending: u64,
    pub failed: u64,
    pub dead: u64,
    pub sent: u64,
    pub oldest_unsent_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeadEventPage {
    pub events: Vec<OutboxRecord>,
    /// Row id to continue after when more may follow.
    pub next_after: Option<i64>,
}

#[async_trait]
pub trait OutboxAdminRepo: Send + Sync + 'static {
    /// Returns up to `limit` `DEAD` rows with an id above `after`, in id order.
    async fn list_dead(
        &self,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<OutboxRecord>, RepoError>;

    /// Returns the row of `event_id`, or `None` when there is none.
    async fn find(&self, event_id: Uuid) -> Result<Option<OutboxRecord>, RepoError>;

    /// Makes the row of `event_id` `PENDING` with a zero retry count, if it is `DEAD`; returns
    /// whether it was.
    async fn redrive(&self, event_id: Uuid) -> Result<bool, RepoError>;

    /// Makes every `DEAD` row `PENDING` with a zero retry count; returns how many.
    async fn redrive_all_dead(&self) -> Result<u64, RepoError>;

    async fn stats(&self) -> Result<OutboxStats, RepoError>;

    /// Deletes up to `limit` `SENT` rows published more than `older_than` ago on the database
    /// clock; returns how many.
    async fn delete_sent(&self, older_than: Duration, limit: u32) -> Result<u64, RepoError>;
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxAdminError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("outbox event {0} not found")]
    NotFound(Uuid),
    #[error("outbox event {event_id} is {status}, not DEAD; only DEAD events can be re-driven")]
    NotDead {
        event_id: Uuid,
        status: OutboxStatus,
    },
    #[error("database unavailable, retry later")]
    Unavailable(#[source] BoxError),
    #[error("database operation failed")]
    Internal(#[source] BoxError),
}

crate::error::from_repo_error!(OutboxAdminError);

pub struct OutboxAdminUseCase {
    repo: Arc<dyn OutboxAdminRepo>,
}

impl OutboxAdminUseCase {
    pub fn new(repo: Arc<dyn OutboxAdminRepo>) -> Self {
        Self { repo }
    }

    /// Returns one page of `DEAD` events, oldest first.
    #[instrument(skip(self))]
    pub async fn list_dead(
        &self,
        after: Option<i64>,
        limit: u32,
    ) -> Result<DeadEventPage, OutboxAdminError> {
        let mut events = self.repo.list_dead(after, limit.saturating_add(1)).await?;
        let has_more = events.len() > limit as usize;
        events.truncate(limit as usize);
        let next_after = if has_more {
            events.last().map(|event| event.id)
        } else {
            None
        };
        Ok(DeadEventPage { events, next_after })
    }

    /// Makes one `DEAD` event `PENDING` again with a fresh retry budget.
    ///
    /// # Errors
    ///
    /// [`OutboxAdminError::NotFound`] for an unknown id, [`OutboxAdminError::NotDead`] when the
    /// event is in another state.
    #[instrument(skip(self))]
    pub async fn redrive(&self, event_id: Uuid) -> Result<OutboxRecord, OutboxAdminError> {
        let Some(record) = self.repo.find(event_id).await? else {
            return Err(OutboxAdminError::NotFound(event_id));
        };
        if record.status != OutboxStatus::Dead || !self.repo.redrive(event_id).await? {
            let status = match self.repo.find(event_id).await? {
                Some(current) => current.status,
                None => return Err(OutboxAdminError::NotFound(event_id)),
            };
            return Err(OutboxAdminError::NotDead { event_id, status });
        }
        info!(%event_id, "dead event re-driven");
        self.repo
            .find(event_id)
            .await?
            .ok_or(OutboxAdminError::NotFound(event_id))
    }

    /// Makes every `DEAD` event `PENDING` again; returns how many.
    #[instrument(skip(self))]
    pub async fn redrive_all(&self) -> Result<u64, OutboxAdminError> {
        let count = self.repo.redrive_all_dead().await?;
        info!(count, "dead events re-driven");
        Ok(count)
    }

    pub async fn stats(&self) -> Result<OutboxStats, OutboxAdminError> {
        Ok(self.repo.stats().await?)
    }

    /// Deletes `SENT` rows older than `retention` in batches of `batch_size`, until fewer than
    /// a batch remain or `max_batches` ran; returns how many rows went.
    #[instrument(skip(self))]
    pub async fn delete_sent(
        &self,
        retention: Duration,
        batch_size: u32,
        max_batches: usize,
    ) -> Result<u64, OutboxAdminError> {
        let mut deleted = 0;
        for _ in 0..max_batches {
            let batch = self.repo.delete_sent(retention, batch_size).await?;
            deleted += batch;
            if batch < u64::from(batch_size) {
                break;
            }
        }
        if deleted > 0 {
            info!(
                deleted,
                retention_secs = retention.as_secs(),
                "sent outbox rows deleted"
            );
        }
        Ok(deleted)
    }
}
