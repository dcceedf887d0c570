//! The order saga as data: its state, the steps it ran with their outcomes, and the rules for
//! moving between states. `OrderSagaUseCase` drives it and `SagaRepo` stores it.

use std::{fmt, str::FromStr};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use crate::{order::OrderId, saga_id::SagaId};

pub const SAGA_TYPE_PLACE_ORDER: &str = "place_order";

/// Separates the failed compensations from their cause in the error of a `FAILED` saga.
const COMPENSATING_BECAUSE: &str = "; compensating because ";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SagaState {
    Running,
    Compensating,
    Succeeded,
    Compensated,
    Failed,
}

impl SagaState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Compensating => "COMPENSATING",
            Self::Succeeded => "SUCCEEDED",
            Self::Compensated => "COMPENSATED",
            Self::Failed => "FAILED",
        }
    }

    /// True once nothing more will happen to the saga.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Compensated | Self::Failed)
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SagaState {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "RUNNING" => Ok(Self::Running),
            "COMPENSATING" => Ok(Self::Compensating),
            "SUCCEEDED" => Ok(Self::Succeeded),
            "COMPENSATED" => Ok(Self::Compensated),
            "FAILED" => Ok(Self::Failed),
            other => Err(format!("unknown saga state {other:?}")),
        }
    }
}

/// The steps of the order saga, forward ones first, then the compensations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepName {
    CreateOrder,
    ReserveStock,
    FreezeBalance,
    ConfirmStock,
    ConfirmPayment,
    ConfirmOrder,
    UnfreezeBalance,
    ReleaseStock,
    CancelOrder,
}

impl StepName {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::CreateOrder => "create_order",
            Self::ReserveStock => "reserve_stock",
            Self::FreezeBalance => "freeze_balance",
            Self::ConfirmStock => "confirm_stock",
            Self::ConfirmPayment => "confirm_payment",
            Self::ConfirmOrder => "confirm_order",
            Self::UnfreezeBalance => "unfreeze_balance",
            Self::ReleaseStock => "release_stock",
            Self::CancelOrder => "cancel_order",
        }
    }

    /// Position in the list above, stored as `current_step`.
    pub fn index(&self) -> i32 {
        *self as i32
    }
}

impl fmt::Display for StepName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepOutcome {
    /// Started and not finished, so calls may be under way.
    Pending,
    Succeeded,
    /// The participant rejected it, so the step had no effect.
    Rejected,
    /// Given up after its deadline or retry budget. It may or may not have taken effect.
    Failed,
}

impl StepOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Succeeded => "SUCCEEDED",
            Self::Rejected => "REJECTED",
            Self::Failed => "FAILED",
        }
    }
}

/// One entry of the step log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaStep {
    pub name: StepName,
    pub outcome: StepOutcome,
    /// Participant calls made for the step.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saga {
    pub id: SagaId,
    pub order_id: OrderId,
    pub state: SagaState,
    /// Steps in the order they started.
    pub steps: Vec<SagaStep>,
    /// Reason the saga compensated or failed.
    pub error: Option<String>,
    /// Set by CancelOrder, which makes the saga compensate before its next forward step.
    pub cancel_requested: bool,
    /// When the pending forward step gives up.
    pub deadline: Option<DateTime<Utc>>,
    /// Incremented by every save, for optimistic concurrency.
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Saga {
    /// Starts the saga of `order_id`, whose order is created in the same transaction.
    pub fn start(order_id: OrderId, now: DateTime<Utc>) -> Self {
        let now = now.trunc_subsecs(6);
        Self {
            id: SagaId::new(),
            order_id,
            state: SagaState::Running,
            steps: vec![SagaStep {
                name: StepName::CreateOrder,
                outcome: StepOutcome::Succeeded,
                attempts: 1,
                last_error: None,
                started_at: now,
                finished_at: Some(now),
            }],
            error: None,
            cancel_requested: false,
            deadline: None,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    /// Returns the latest step with `name`.
    pub fn step(&self, name: StepName) -> Option<&SagaStep> {
        self.steps.iter().rev().find(|step| step.name == name)
    }

    fn step_mut(&mut self, name: StepName) -> Option<&mut SagaStep> {
        self.steps.iter_mut().rev().find(|step| step.name == name)
    }

    /// Returns the step that ran last, whose index is stored as `current_step`.
    pub fn current_step(&self) -> StepName {
        self.steps
            .last()
            .map_or(StepName::CreateOrder, |step| step.name)
    }

    pub fn succeeded(&self, name: StepName) -> bool {
        self.step(name)
            .is_some_and(|step| step.outcome == StepOutcome::Succeeded)
    }

    /// Returns whether undoing `name` is needed: the step started and is not known to have had
    /// no effect. A step that started with no call recorded still counts, because a process
    /// can die between a call and the save that records it. A step rejected at its first call
    /// changed nothing; one rejected after an unanswered call may have taken effect through
    /// that call.
    pub fn needs_compensation(&self, name: StepName) -> bool {
        self.step(name)
            .is_some_and(|step| !(step.outcome == StepOutcome::Rejected && step.attempts <= 1))
    }

    /// Opens `name` unless it is open already. A forward step gets its deadline here.
    pub fn begin_step(
        &mut self,
        name: StepName,
        deadline: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) {
        if self
            .step(name)
            .is_some_and(|step| step.outcome == StepOutcome::Pending)
        {
            return;
        }
        self.steps.push(SagaStep {
            name,
            outcome: StepOutcome::Pending,
            attempts: 0,
            last_error: None,
            started_at: now.trunc_subsecs(6),
            finished_at: None,
        });
        self.deadline = deadline.map(|at| at.trunc_subsecs(6));
    }

    /// Counts one call of `name`, with its error when it failed.
    pub fn record_attempt(&mut self, name: StepName, error: Option<String>) {
        if let Some(step) = self.step_mut(name) {
            step.attempts += 1;
            if error.is_some() {
                step.last_error = error;
            }
        }
    }

    pub fn attempts(&self, name: StepName) -> u32 {
        self.step(name).map_or(0, |step| step.attempts)
    }

    pub fn finish_step(&mut self, name: StepName, outcome: StepOutcome, now: DateTime<Utc>) {
        if let Some(step) = self.step_mut(name) {
            step.outcome = outcome;
            step.finished_at = Some(now.trunc_subsecs(6));
        }
        self.deadline = None;
    }

    /// Turns to compensation: the pending forward step, if any, is given up as `FAILED`.
    pub fn compensate(&mut self, reason: String, now: DateTime<Utc>) {
        for step in &mut self.steps {
            if step.outcome == StepOutcome::Pending {
                step.outcome = StepOutcome::Failed;
                step.finished_at = Some(now.trunc_subsecs(6));
            }
        }
        self.state = SagaState::Compensating;
        self.error = Some(reason);
        self.deadline = None;
    }

    /// Ends the saga `FAILED`: an operator has to look at it.
    pub fn fail(&mut self, reason: String) {
        self.state = SagaState::Failed;
        self.error = Some(reason);
        self.deadline = None;
    }

    /// Ends a compensating saga `FAILED` with `failures`, keeping the reason it compensated
    /// for in the error, so that [`Self::reopen`] can restore it.
    pub fn fail_compensation(&mut self, failures: &str) {
        let cause = self.error.take().unwrap_or_default();
        self.fail(format!("{failures}{COMPENSATING_BECAUSE}{cause}"));
    }

    /// Turns a `FAILED` saga back to the state it failed in, so that a driver takes up its
    /// failed step again with a fresh retry budget. Returns false for a saga that is not
    /// `FAILED`.
    pub fn reopen(&mut self) -> bool {
        if self.state != SagaState::Failed {
            return false;
        }
        let compensating = self.steps.iter().any(|step| {
            matches!(
                step.name,
                StepName::UnfreezeBalance | StepName::ReleaseStock | StepName::CancelOrder
            )
        });
        if compensating {
            self.state = SagaState::Compensating;
            // The error goes back to the reason the saga compensates for.
            self.error = self
                .error
                .as_deref()
                .and_then(|error| error.split_once(COMPENSATING_BECAUSE))
                .map(|(_, cause)| cause.to_string());
        } else {
            self.state = SagaState::Running;
            self.error = None;
        }
        true
    }

    /// Records the final local step (`confirm_order` or `cancel_order`) and the final state.
    pub fn finish(&mut self, last_step: StepName, state: SagaState, now: DateTime<Utc>) {
        self.begin_step(last_step, None, now);
        self.record_attempt(last_step, None);
        self.finish_step(last_step, StepOutcome::Succeeded, now);
        self.state = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensation_covers_steps_that_may_have_run() {
        let now = Utc::now();
        let mut saga = Saga::start(OrderId::new(), now);
        assert!(!saga.needs_compensation(StepName::ReserveStock));

        saga.begin_step(StepName::ReserveStock, Some(now), now);
        assert!(
            saga.needs_compensation(StepName::ReserveStock),
            "a call may be unrecorded"
        );

        saga.record_attempt(StepName::ReserveStock, Some("rejected".into()));
        saga.finish_step(StepName::ReserveStock, StepOutcome::Rejected, now);
        assert!(
            !saga.needs_compensation(StepName::ReserveStock),
            "rejected at once"
        );

        saga.begin_step(StepName::FreezeBalance, Some(now), now);
        saga.record_attempt(StepName::FreezeBalance, Some("deadline exceeded".into()));
        saga.compensate("gave up".into(), now);
        assert!(
            saga.needs_compensation(StepName::FreezeBalance),
            "outcome unknown"
        );
        assert_eq!(
            saga.step(StepName::FreezeBalance).unwrap().outcome,
            StepOutcome::Failed
        );
        assert_eq!(saga.state, SagaState::Compensating);
    }

    #[test]
    fn reopen_returns_to_the_failed_phase() {
        let now = Utc::now();
        let mut compensating = Saga::start(OrderId::new(), now);
        compensating.compensate("freeze_balance was rejected".into(), now);
        compensating.begin_step(StepName::ReleaseStock, None, now);
        compensating.fail_compensation("release_stock failed 3 times");
        assert_eq!(
            compensating.error.as_deref(),
            Some("release_stock failed 3 times; compensating because freeze_balance was rejected")
        );

        assert!(compensating.reopen());
        assert_eq!(compensating.state, SagaState::Compensating);
        assert_eq!(
            compensating.error.as_deref(),
            Some("freeze_balance was rejected")
        );
        assert!(!compensating.reopen(), "only a FAILED saga reopens");

        let mut confirming = Saga::start(OrderId::new(), now);
        confirming.begin_step(StepName::ConfirmStock, None, now);
        confirming.fail("confirm_stock failed 3 times".into());
        assert!(confirming.reopen());
        assert_eq!(confirming.state, SagaState::Running);
        assert_eq!(confirming.error, None);
    }

    #[test]
    fn begin_step_keeps_an_open_step() {
        let now = Utc::now();
        let mut saga = Saga::start(OrderId::new(), now);
        saga.begin_step(StepName::ReserveStock, Some(now), now);
        saga.record_attempt(StepName::ReserveStock, Some("unavailable".into()));
        saga.begin_step(StepName::ReserveStock, Some(now), now);

        assert_eq!(saga.steps.len(), 2);
        assert_eq!(saga.attempts(StepName::ReserveStock), 1);
        assert_eq!(saga.current_step(), StepName::ReserveStock);
    }

    #[test]
    fn states_round_trip() {
        for state in [
            SagaState::Running,
            SagaState::Compensating,
            SagaState::Succeeded,
            SagaState::Compensated,
            SagaState::Failed,
        ] {
            assert_eq!(state.as_str().parse::<SagaState>(), Ok(state));
        }
    }
}
