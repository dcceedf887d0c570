//! `SagaId`: the id of one saga instance, and the idempotency key of every participant step.

use std::{fmt, str::FromStr};

use serde::Serialize;
use uuid::Uuid;

use crate::error::{ValidationError, quote};

/// Saga id: a UUIDv7 when created here, so ids sort by creation time. Participants accept any
/// UUID version from their callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
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

    /// Parses a saga id from the request field `field`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_field() {
        let error = SagaId::parse("saga_id", "").unwrap_err();
        assert_eq!(error.field, "saga_id");

        let error = SagaId::parse("saga_id", "not-a-uuid").unwrap_err();
        assert_eq!(error.field, "saga_id");
        assert!(error.message.contains("not a UUID"), "{error}");
    }

    #[test]
    fn parse_round_trips_display() {
        let id = SagaId::new();

        let parsed = SagaId::parse("saga_id", &id.to_string()).unwrap();

        assert_eq!(parsed, id);
    }
}
