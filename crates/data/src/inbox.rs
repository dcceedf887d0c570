//! `Inbox`: consumer-side deduplication of at-least-once messages. Each message id is recorded
//! in `inbox_messages` in the same transaction as the handler's writes, so its effect commits once.

use std::fmt;

use chrono::Utc;
use futures::future::BoxFuture;
use sea_orm::{
    ActiveValue::Set, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, SqlErr,
    TransactionTrait,
};
use tracing::warn;

use crate::{entity::inbox_messages, error::is_transient};

/// Maximum length in characters of a consumer name and of a message id: the width of their
/// `VARCHAR(128)` columns.
pub const MAX_INBOX_KEY_CHARS: usize = 128;

/// A consumer name or message id that does not fit `inbox_messages`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} has {length} characters; it must have 1 to {MAX_INBOX_KEY_CHARS}")]
pub struct InvalidInboxKey {
    pub field: &'static str,
    pub length: usize,
}

/// Outcome of [`Inbox::process`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Processed<T> {
    /// The message id was new: the handler ran, and its writes committed with the inbox row.
    Handled(T),
    /// The inbox already contains the message id, committed by this or another process: the
    /// handler did not run, and nothing was written.
    Duplicate,
}

/// Failure of [`Inbox::process`]. In every case nothing was recorded, except possibly after
/// a failed commit, so the message may be delivered and processed again.
#[derive(Debug, thiserror::Error)]
pub enum InboxError<E> {
    #[error(transparent)]
    InvalidMessageId(InvalidInboxKey),
    /// The handler returned an error; the transaction was rolled back.
    #[error("message handler failed: {0}")]
    Handler(E),
    /// The database could not be reached, was busy, or aborted the transaction for a conflict;
    /// retrying later may work.
    #[error("database unavailable, retry later: {0}")]
    Unavailable(DbErr),
    /// Any other failure to begin, insert the inbox row, or commit.
    #[error("inbox database operation failed: {0}")]
    Database(DbErr),
}

impl<E> InboxError<E> {
    /// Returns whether the inbox itself failed in a way that a later retry may fix. A
    /// handler's errors are the handler's to classify, so `Handler` returns false.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

fn classify<E>(error: DbErr) -> InboxError<E> {
    if is_transient(&error) {
        InboxError::Unavailable(error)
    } else {
        InboxError::Database(error)
    }
}

/// The inbox of one consumer. Clones share the connection pool.
///
/// The primary key `(consumer, message_id)` guarantees one processing per id. A concurrent
/// delivery of the same id waits for the first transaction to end, then finds the row if that
/// transaction committed, or goes ahead if it rolled back. On PostgreSQL it waits for the
/// uncommitted row. On SQLite it waits for the write lock, up to the busy timeout (5 s by
/// default in sqlx), and fails with [`InboxError::Unavailable`] after that.
#[derive(Clone)]
pub struct Inbox {
    db: DatabaseConnection,
    consumer: String,
}

impl fmt::Debug for Inbox {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Inbox")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl Inbox {
    /// Creates the inbox of `consumer`, a stable name for the processing (such as the
    /// projection it maintains). Consumers with different names process the same message
    /// independently.
    ///
    /// # Errors
    ///
    /// [`InvalidInboxKey`] when `consumer` is empty or longer than [`MAX_INBOX_KEY_CHARS`].
    pub fn new(
        db: DatabaseConnection,
        consumer: impl Into<String>,
    ) -> Result<Self, InvalidInboxKey> {
        let consumer = consumer.into();
        check_key("consumer", &consumer)?;
        Ok(Self { db, consumer })
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Runs `handler` for message `message_id` and commits its writes at most once for this
    /// consumer.
    ///
    /// Begins a transaction and inserts the inbox row. When the row exists already, it rolls
    /// back and returns [`Processed::Duplicate`] without calling `handler`. Otherwise it calls
    /// `handler` with the open transaction, so the handler's writes commit together with the
    /// inbox row, and commits when the handler returns `Ok`.
    ///
    /// The handler must do all its writes through the transaction it gets. Writes through
    /// another connection, and side effects outside the database, are not undone on rollback
    /// and may be repeated when the message is processed again.
    ///
    /// # Errors
    ///
    /// - [`InboxError::InvalidMessageId`] when `message_id` is empty or too long.
    /// - [`InboxError::Handler`] when the handler fails. The transaction is rolled back, no
    ///   inbox row is recorded, and a later delivery of the message is processed afresh.
    /// - [`InboxError::Unavailable`] or [`InboxError::Database`] when beginning, inserting or
    ///   committing fails. When the commit fails, the outcome is unknown, but a retry is
    ///   safe: if the commit did happen, the retry returns [`Processed::Duplicate`].
    pub async fn process<F, T, E>(
        &self,
        message_id: &str,
        handler: F,
    ) -> Result<Processed<T>, InboxError<E>>
    where
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<T, E>> + Send,
        T: Send,
        E: Send,
    {
        check_key("message_id", message_id).map_err(InboxError::InvalidMessageId)?;
        let txn = self.db.begin().await.map_err(classify)?;

        let row = inbox_messages::ActiveModel {
            consumer: Set(self.consumer.clone()),
            message_id: Set(message_id.to_owned()),
            received_at: Set(Utc::now()),
        };
        // A plain insert, not ON CONFLICT DO NOTHING, so that PostgreSQL reports the conflict
        // as an error after the competing transaction commits.
        let inserted = inbox_messages::Entity::insert(row)
            .exec_without_returning(&txn)
            .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                rollback(txn, message_id).await;
                return Ok(Processed::Duplicate);
            }
            Err(error) => {
                rollback(txn, message_id).await;
                return Err(classify(error));
            }
        }

        match handler(&txn).await {
            Ok(value) => {
                txn.commit().await.map_err(classify)?;
                Ok(Processed::Handled(value))
            }
            Err(error) => {
                rollback(txn, message_id).await;
                Err(InboxError::Handler(error))
            }
        }
    }
}

fn check_key(field: &'static str, value: &str) -> Result<(), InvalidInboxKey> {
    let length = value.chars().count();
    if length == 0 || length > MAX_INBOX_KEY_CHARS {
        return Err(InvalidInboxKey { field, length });
    }
    Ok(())
}

fn is_unique_violation(error: &DbErr) -> bool {
    matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// Rolls back `txn`. A failed rollback commits nothing either: the database discards the
/// transaction when its connection closes, so the failure is only logged.
async fn rollback(txn: DatabaseTransaction, message_id: &str) {
    if let Err(error) = txn.rollback().await {
        warn!(error = %error, message_id, "failed to roll back the inbox transaction");
    }
}
