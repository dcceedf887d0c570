//! Shared parts of the saga participants (inventory and payment): the error their use cases
//! return, and the rules of the idempotency barrier that makes try, confirm and cancel safe to
//! repeat and to receive out of order.
//!
//! A barrier row is recorded per (saga, step, operation). The repositories write it in the same
//! transaction as the business change, then apply these rules to the barriers of the other
//! operations of the same step.

use crate::{
    error::{BoxError, ValidationError},
    saga_id::SagaId,
};

/// Failure of an inventory or payment use case call.
#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    NotFound(String),
    /// The step cannot be applied in the current state, such as too little stock or a try
    /// that arrives after its cancel. Retrying the same call returns the same rejection, so
    /// the orchestrator compensates instead.
    #[error("{0}")]
    Rejected(String),
    #[error("database unavailable, retry later")]
    Unavailable(#[source] BoxError),
    #[error("database operation failed")]
    Internal(#[source] BoxError),
}

crate::error::from_repo_error!(ParticipantError);

/// A participant's step of the order saga, as stored in `saga_barriers.step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    ReserveStock,
    FreezeBalance,
}

impl Step {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ReserveStock => "reserve_stock",
            Self::FreezeBalance => "freeze_balance",
        }
    }

    /// Returns the resource that a try of this step holds, for messages.
    fn resource(&self) -> &'static str {
        match self {
            Self::ReserveStock => "stock reservation",
            Self::FreezeBalance => "balance freeze",
        }
    }

    /// Returns the past participle of this step's cancel, for messages.
    fn cancelled(&self) -> &'static str {
        match self {
            Self::ReserveStock => "released",
            Self::FreezeBalance => "unfrozen",
        }
    }
}

/// The phase of a step, as stored in `saga_barriers.operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Try,
    Confirm,
    Cancel,
}

impl Operation {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Try => "try",
            Self::Confirm => "confirm",
            Self::Cancel => "cancel",
        }
    }
}

/// Result of a recorded operation, as stored in `saga_barriers.outcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The business change committed with the barrier.
    Applied,
    /// Nothing changed, and a repeat returns the same message.
    Rejected(String),
    /// A cancel that found nothing to undo (a null compensation).
    Null,
}

impl Outcome {
    pub const APPLIED: &'static str = "APPLIED";
    pub const REJECTED: &'static str = "REJECTED";
    pub const NULL: &'static str = "NULL";

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Applied => Self::APPLIED,
            Self::Rejected(_) => Self::REJECTED,
            Self::Null => Self::NULL,
        }
    }

    pub fn message(&self) -> Option<&str> {
        match self {
            Self::Rejected(message) => Some(message),
            _ => None,
        }
    }

    /// Rebuilds an outcome from its stored columns; `None` for an unknown value.
    pub fn from_stored(outcome: &str, message: Option<String>) -> Option<Self> {
        match outcome {
            Self::APPLIED => Some(Self::Applied),
            Self::REJECTED => Some(Self::Rejected(message.unwrap_or_default())),
            Self::NULL => Some(Self::Null),
            _ => None,
        }
    }
}

/// The barriers recorded for one (saga, step) before the current operation's own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepBarriers {
    pub tried: Option<Outcome>,
    pub confirmed: Option<Outcome>,
    pub cancelled: Option<Outcome>,
}

/// Action of a new (not repeated) operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Make the business change and record the barrier as applied.
    Apply,
    /// Record a cancel with outcome `NULL` and change nothing: there is nothing to undo.
    NullCompensation,
    /// Change nothing, with this message.
    Reject(String),
}

impl StepBarriers {
    /// Decides a first try. A try after the step's cancel is a hanging try: applying it would
    /// hold a resource that no compensation will ever release.
    pub fn decide_try(&self, saga_id: SagaId, step: Step) -> Decision {
        if self.cancelled.is_some() {
            return Decision::Reject(format!(
                "saga {saga_id} already {} its {}, so the late try is rejected",
                step.cancelled(),
                step.resource()
            ));
        }
        Decision::Apply
    }

    /// Decides a first confirm: only an applied try that was not cancelled can be confirmed.
    pub fn decide_confirm(&self, saga_id: SagaId, step: Step) -> Decision {
        if self.cancelled.is_some() {
            return Decision::Reject(format!(
                "saga {saga_id} already {} its {}, so it cannot be confirmed",
                step.cancelled(),
                step.resource()
            ));
        }
        match self.tried {
            Some(Outcome::Applied) => Decision::Apply,
            Some(_) => Decision::Reject(format!(
                "saga {saga_id} has no {} to confirm: its try was rejected",
                step.resource()
            )),
            None => Decision::Reject(format!(
                "saga {saga_id} has no {} to confirm",
                step.resource()
            )),
        }
    }

    /// Decides a first cancel. A cancel without an applied try is a null compensation, and a
    /// cancel after the confirm is rejected because the resource is gone.
    pub fn decide_cancel(&self, saga_id: SagaId, step: Step) -> Decision {
        if self.confirmed.is_some() {
            return Decision::Reject(format!(
                "saga {saga_id} already confirmed its {}, so it cannot be {}",
                step.resource(),
                step.cancelled()
            ));
        }
        match self.tried {
            Some(Outcome::Applied) => Decision::Apply,
            _ => Decision::NullCompensation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Step = Step::ReserveStock;

    fn barriers(
        tried: Option<Outcome>,
        confirmed: Option<Outcome>,
        cancelled: Option<Outcome>,
    ) -> StepBarriers {
        StepBarriers {
            tried,
            confirmed,
            cancelled,
        }
    }

    #[test]
    fn try_after_cancel_is_hanging() {
        let saga = SagaId::new();

        let fresh = StepBarriers::default().decide_try(saga, STEP);
        let hanging = barriers(None, None, Some(Outcome::Null)).decide_try(saga, STEP);

        assert_eq!(fresh, Decision::Apply);
        let Decision::Reject(message) = hanging else {
            panic!("expected a rejection, got {hanging:?}");
        };
        assert!(message.contains("already released"), "{message}");
        assert!(message.contains(&saga.to_string()), "{message}");
    }

    #[test]
    fn confirm_needs_applied_try() {
        let saga = SagaId::new();
        let rejected = Outcome::Rejected("too little stock".into());
        let cases = [
            (barriers(Some(Outcome::Applied), None, None), true),
            (barriers(None, None, None), false),
            (barriers(Some(rejected), None, None), false),
            (
                barriers(Some(Outcome::Applied), None, Some(Outcome::Applied)),
                false,
            ),
        ];
        for (state, applies) in cases {
            let decision = state.decide_confirm(saga, Step::FreezeBalance);
            assert_eq!(
                decision == Decision::Apply,
                applies,
                "{state:?}: {decision:?}"
            );
        }
    }

    #[test]
    fn cancel_without_try_is_null() {
        let saga = SagaId::new();
        let rejected = Outcome::Rejected("too little stock".into());

        let none = StepBarriers::default().decide_cancel(saga, STEP);
        let after_rejection = barriers(Some(rejected), None, None).decide_cancel(saga, STEP);
        let after_try = barriers(Some(Outcome::Applied), None, None).decide_cancel(saga, STEP);

        assert_eq!(none, Decision::NullCompensation);
        assert_eq!(after_rejection, Decision::NullCompensation);
        assert_eq!(after_try, Decision::Apply);
    }

    #[test]
    fn cancel_after_confirm_is_rejected() {
        let state = barriers(Some(Outcome::Applied), Some(Outcome::Applied), None);

        let decision = state.decide_cancel(SagaId::new(), Step::FreezeBalance);

        let Decision::Reject(message) = decision else {
            panic!("expected a rejection, got {decision:?}");
        };
        assert!(message.contains("already confirmed"), "{message}");
        assert!(message.contains("unfrozen"), "{message}");
    }

    #[test]
    fn outcome_round_trips_storage() {
        for outcome in [
            Outcome::Applied,
            Outcome::Null,
            Outcome::Rejected("no stock".into()),
        ] {
            let stored =
                Outcome::from_stored(outcome.as_str(), outcome.message().map(str::to_string));
            assert_eq!(stored, Some(outcome));
        }
        assert_eq!(Outcome::from_stored("LOST", None), None);
    }
}
