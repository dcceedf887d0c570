//! Errors of the business layer: invalid input, repository failures, and what the order use
//! case returns to its callers.

use std::error::Error as StdError;

use crate::{order::OrderId, saga_id::SagaId};

pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A request value that breaks a rule. `field` is the request field path, such as
/// `items[2].quantity`, so a client can point at the culprit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Maximum length, in characters, of the part of a rejected value that a message repeats.
const MAX_QUOTED_CHARS: usize = 40;

/// Quotes `value` for an error message, cut to its first 40 characters. A message that
/// repeated a huge value would exceed the header limits of gRPC clients (16 KiB by default in
/// hyper), which then drop the connection instead of showing the error.
pub fn quote(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}... ({} characters)", value.chars().count())
    } else {
        format!("{head:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_cuts_long_values() {
        assert_eq!(quote("EUR"), "\"EUR\"");
        let long = "é".repeat(100_000);
        let quoted = quote(&long);
        assert!(quoted.len() < 200, "{quoted}");
        assert!(quoted.ends_with("... (100000 characters)"), "{quoted}");
    }
}

/// Failure of a repository call, as every port in [`crate::ports`] reports it.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A row with the same unique key exists, such as an order's `request_id`.
    #[error("duplicate key: {0}")]
    Duplicate(String),
    /// The database could not be reached or dropped the connection; retrying later may work.
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    /// Any other database failure, including rows that cannot be decoded.
    #[error("database operation failed")]
    Other(#[source] BoxError),
}

/// Failure of an [`crate::OrderUseCase`] call.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("order {0} not found")]
    NotFound(OrderId),
    #[error("saga {0} not found")]
    SagaNotFound(SagaId),
    #[error("order {0} has no saga: CreateOrder made it, and only PlaceOrder runs one")]
    NoSaga(OrderId),
    /// The order or its saga is in a state that does not allow the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The idempotency key was used before for a request with different content.
    #[error(
        "request_id {0:?} was already used for a different order; send a new request_id for a new order"
    )]
    RequestIdReused(String),
    #[error("database unavailable, retry later")]
    Unavailable(#[source] BoxError),
    #[error("database operation failed")]
    Internal(#[source] BoxError),
}

/// Implements `From<RepoError>` for a use case error with `Unavailable` and `Internal`
/// variants. A duplicate key that reaches a caller is a bug, so it counts as internal.
macro_rules! from_repo_error {
    ($error:ty) => {
        impl From<$crate::error::RepoError> for $error {
            fn from(error: $crate::error::RepoError) -> Self {
                match error {
                    $crate::error::RepoError::Unavailable(source) => Self::Unavailable(source),
                    $crate::error::RepoError::Duplicate(key) => {
                        Self::Internal(format!("unexpected duplicate {key}").into())
                    }
                    $crate::error::RepoError::Other(source) => Self::Internal(source),
                }
            }
        }
    };
}
pub(crate) use from_repo_error;

from_repo_error!(OrderError);
