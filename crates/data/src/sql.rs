//! SQL fragments that differ between SQLite and PostgreSQL, for the repositories that write
//! raw statements: the database clock and parameter placeholders.

use std::time::Duration;

use sea_orm::{DbBackend, Value};

/// The current time on the database clock, as SQL. SQLite stores timestamps as RFC 3339 text
/// with a `+00:00` offset, and such strings compare in time order.
const SQLITE_NOW: &str = "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')";
/// The database time plus a modifier parameter such as `+30.000 seconds`.
const SQLITE_NOW_PLUS: &str = "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', ?)";

/// Returns the current time on the database clock, as SQL.
pub(crate) fn now(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "now()",
        _ => SQLITE_NOW,
    }
}

/// Returns the placeholder of parameter `index` (from 1) in `backend`'s SQL dialect.
pub(crate) fn param(backend: DbBackend, index: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${index}"),
        _ => "?".to_string(),
    }
}

/// Returns `now + delay` on the database clock as SQL with its parameter at `index`, and that
/// parameter.
pub(crate) fn now_plus(backend: DbBackend, index: usize, delay: Duration) -> (String, Value) {
    match backend {
        DbBackend::Postgres => (
            format!("now() + make_interval(secs => ${index})"),
            delay.as_secs_f64().into(),
        ),
        _ => (
            SQLITE_NOW_PLUS.to_string(),
            format!("+{:.3} seconds", delay.as_secs_f64()).into(),
        ),
    }
}
