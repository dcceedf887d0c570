//! The id of one order saga, which the participants also use as their idempotency key.

use std::{fmt, str::FromStr};

use uuid::Uuid;

use crate::error::{ValidationError, quote};

/// Saga id: a UUIDv7, so ids sort by start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SagaId(Uuid);

impl SagaId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Parses an id from a request field.
    ///
    /// # Errors
    ///
    /// Returns a [`ValidationError`] on `field` unless `value` is a UUID.
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        if value.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        Uuid::from_str(value)
            .map(Self)
            .map_err(|_| ValidationError::new(field, format!("{} is not a UUID", quote(value))))
    }
}

impl Default for SagaId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
