//! Classification of database errors into the `biz` repository error.

use biz::RepoError;
use sea_orm::{DbErr, RuntimeErr, SqlErr, sqlx};

/// Maps a SeaORM error: unique violations to `Duplicate`, lost or refused connections to
/// `Unavailable`, anything else to `Other`.
pub(crate) fn classify(error: DbErr) -> RepoError {
    if let Some(SqlErr::UniqueConstraintViolation(detail)) = error.sql_err() {
        return RepoError::Duplicate(detail);
    }
    if is_unavailable(&error) {
        return RepoError::Unavailable(Box::new(error));
    }
    RepoError::Other(Box::new(error))
}

/// Returns whether retrying the same operation later may succeed: the cases of `Unavailable`
/// above, plus PostgreSQL serialization failures (40001) and deadlocks (40P01), which roll
/// back only the failing transaction.
pub fn is_transient(error: &DbErr) -> bool {
    if is_unavailable(error) {
        return true;
    }
    match error {
        DbErr::Exec(RuntimeErr::SqlxError(source))
        | DbErr::Query(RuntimeErr::SqlxError(source)) => matches!(
            source.as_ref(),
            sqlx::Error::Database(database)
                if database.code().is_some_and(|code| code == "40001" || code == "40P01")
        ),
        _ => false,
    }
}

fn is_unavailable(error: &DbErr) -> bool {
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(source))
        | DbErr::Query(RuntimeErr::SqlxError(source)) => is_sqlx_unavailable(source),
        _ => false,
    }
}

fn is_sqlx_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL class 57P (operator intervention, e.g. admin_shutdown) and 08
        // (connection exception), and SQLite's "database is locked" after the busy timeout.
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("57P") || code.starts_with("08") || code == "5" || code == "6"
        }),
        _ => false,
    }
}
