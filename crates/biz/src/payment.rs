//! The payment participant of the order saga: user balances, of which a saga's try freezes
//! an amount, its confirm takes the amount out of the balance, and its cancel unfreezes it.
//! The rules for repeated and out-of-order calls are in [`crate::participant`].

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{SubsecRound, Utc};
use serde_json::json;
use tracing::{debug, instrument};
use uuid::Uuid;

use crate::{
    error::{RepoError, ValidationError},
    order::UserId,
    outbox::NewOutboxEvent,
    participant::ParticipantError,
    saga_id::SagaId,
};

/// Maximum amount of one freeze or deposit, in minor units: half of `i64::MAX`, so that the
/// sum of two amounts fits in an `i64`. Balances may grow up to `i64::MAX` by deposits.
pub const MAX_AMOUNT: i64 = i64::MAX / 2;

pub const AGGREGATE_PAYMENT: &str = "payment";
pub const EVENT_BALANCE_FROZEN: &str = "BalanceFrozen";
pub const EVENT_PAYMENT_CONFIRMED: &str = "PaymentConfirmed";
pub const EVENT_BALANCE_UNFROZEN: &str = "BalanceUnfrozen";

/// Validates an amount in minor units from the request field `amount`.
///
/// # Errors
///
/// Returns a [`ValidationError`] on `amount` outside 1..=[`MAX_AMOUNT`].
pub fn parse_amount(amount: i64) -> Result<i64, ValidationError> {
    if !(1..=MAX_AMOUNT).contains(&amount) {
        return Err(ValidationError::new(
            "amount",
            format!("is {amount}; it must be 1 to {MAX_AMOUNT} (minor units)"),
        ));
    }
    Ok(amount)
}

/// A validated FreezeBalance request, and the freeze it made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freeze {
    pub saga_id: SagaId,
    pub user_id: UserId,
    /// Minor units.
    pub amount: i64,
}

impl Freeze {
    /// Builds a freeze request from its request fields.
    ///
    /// # Errors
    ///
    /// Returns a [`ValidationError`] on `user_id` or `amount`.
    pub fn parse(saga_id: SagaId, user_id: String, amount: i64) -> Result<Self, ValidationError> {
        Ok(Self {
            saga_id,
            user_id: UserId::parse(user_id)?,
            amount: parse_amount(amount)?,
        })
    }
}

/// One user's money, in minor units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub user_id: UserId,
    /// Money the user owns, frozen part included.
    pub balance: i64,
    /// Part of the balance held by sagas.
    pub frozen: i64,
}

/// The result of an unfreeze.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unfrozen {
    /// True when there was no freeze to undo (a null compensation).
    pub nothing_frozen: bool,
}

fn payment_event(event_type: &str, routing_key: &str, freeze: &Freeze) -> NewOutboxEvent {
    let event_id = Uuid::new_v4();
    let occurred_at = Utc::now().trunc_subsecs(6);
    NewOutboxEvent {
        event_id,
        aggregate_type: AGGREGATE_PAYMENT.to_string(),
        aggregate_id: freeze.saga_id.to_string(),
        event_type: event_type.to_string(),
        routing_key: routing_key.to_string(),
        payload: json!({
            "event_id": event_id,
            "saga_id": freeze.saga_id.to_string(),
            "user_id": freeze.user_id.as_str(),
            "amount": freeze.amount,
            "occurred_at": occurred_at,
        }),
        occurred_at,
    }
}

impl NewOutboxEvent {
    /// Builds the `BalanceFrozen` event of a saga's applied try.
    pub fn balance_frozen(freeze: &Freeze) -> Self {
        payment_event(EVENT_BALANCE_FROZEN, "payment.frozen", freeze)
    }

    /// Builds the `PaymentConfirmed` event of a saga's applied confirm.
    pub fn payment_confirmed(freeze: &Freeze) -> Self {
        payment_event(EVENT_PAYMENT_CONFIRMED, "payment.confirmed", freeze)
    }

    /// Builds the `BalanceUnfrozen` event of a saga's applied cancel.
    pub fn balance_unfrozen(freeze: &Freeze) -> Self {
        payment_event(EVENT_BALANCE_UNFROZEN, "payment.unfrozen", freeze)
    }
}

/// Storage of accounts and freezes. Each of `freeze`, `confirm` and `unfreeze` runs in one
/// transaction that records the saga barrier, changes the account, and inserts the event
/// built by the matching [`NewOutboxEvent`] constructor, all together or nothing. A repeated
/// call for the same saga returns the first result and changes nothing, following
/// [`crate::participant::StepBarriers`].
#[async_trait]
pub trait PaymentRepo: Send + Sync + 'static {
    /// Freezes `request.amount` of the user's unfrozen balance and returns the saga's freeze,
    /// which for a repeated call is the first one.
    ///
    /// # Errors
    ///
    /// [`ParticipantError::Rejected`] for an unknown account, too small an unfrozen balance,
    /// or a saga whose freeze was already undone; storage failures as
    /// [`ParticipantError::Unavailable`] or [`ParticipantError::Internal`].
    async fn freeze(&self, request: &Freeze) -> Result<Freeze, ParticipantError>;

    /// Takes the saga's frozen amount out of the balance.
    ///
    /// # Errors
    ///
    /// [`ParticipantError::Rejected`] when the saga has no applied freeze or undid it.
    async fn confirm(&self, saga_id: SagaId) -> Result<(), ParticipantError>;

    /// Unfreezes the saga's amount, or records a null compensation when there is no freeze.
    ///
    /// # Errors
    ///
    /// [`ParticipantError::Rejected`] when the payment was already confirmed.
    async fn unfreeze(&self, saga_id: SagaId) -> Result<Unfrozen, ParticipantError>;

    /// Returns the account of `user_id`, or `None` when there is none.
    async fn get_account(&self, user_id: &UserId) -> Result<Option<Account>, RepoError>;

    /// Adds `amount` to the balance of `user_id`, opening the account when new.
    ///
    /// # Errors
    ///
    /// [`ParticipantError::Rejected`] when the balance would pass `i64::MAX`.
    async fn deposit(&self, user_id: &UserId, amount: i64) -> Result<Account, ParticipantError>;
}

pub struct PaymentUseCase {
    repo: Arc<dyn PaymentRepo>,
}

impl PaymentUseCase {
    pub fn new(repo: Arc<dyn PaymentRepo>) -> Self {
        Self { repo }
    }

    /// Freezes the request's amount for its saga. See [`PaymentRepo::freeze`].
    #[instrument(skip_all, fields(saga_id = %request.saga_id, user_id = %request.user_id))]
    pub async fn freeze_balance(&self, request: Freeze) -> Result<Freeze, ParticipantError> {
        let result = self.repo.freeze(&request).await;
        count("freeze", &result);
        result
    }

    /// Confirms the saga's payment. See [`PaymentRepo::confirm`].
    #[instrument(skip(self))]
    pub async fn confirm_payment(&self, saga_id: SagaId) -> Result<(), ParticipantError> {
        let result = self.repo.confirm(saga_id).await;
        count("confirm", &result);
        result
    }

    /// Undoes the saga's freeze. See [`PaymentRepo::unfreeze`].
    #[instrument(skip(self))]
    pub async fn unfreeze_balance(&self, saga_id: SagaId) -> Result<Unfrozen, ParticipantError> {
        let result = self.repo.unfreeze(saga_id).await;
        count("unfreeze", &result);
        result
    }

    /// Returns the account of `user_id`.
    ///
    /// # Errors
    ///
    /// [`ParticipantError::NotFound`] when the user has no account.
    #[instrument(skip_all, fields(user_id = %user_id))]
    pub async fn get_account(&self, user_id: UserId) -> Result<Account, ParticipantError> {
        self.repo.get_account(&user_id).await?.ok_or_else(|| {
            ParticipantError::NotFound(format!("account of user {:?} not found", user_id.as_str()))
        })
    }

    /// Adds `amount` to the user's balance; see [`parse_amount`] for the limits.
    #[instrument(skip_all, fields(user_id = %user_id, amount))]
    pub async fn deposit(&self, user_id: UserId, amount: i64) -> Result<Account, ParticipantError> {
        let amount = parse_amount(amount)?;
        let account = self.repo.deposit(&user_id, amount).await?;
        debug!(balance = account.balance, "deposit made");
        Ok(account)
    }
}

/// Counts the outcome of one step call in `payment_steps_total`.
fn count<T>(operation: &'static str, result: &Result<T, ParticipantError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(ParticipantError::Rejected(_)) => "rejected",
        Err(_) => "error",
    };
    metrics::counter!("payment_steps_total", "operation" => operation, "outcome" => outcome)
        .increment(1);
    if let Err(ParticipantError::Rejected(message)) = result {
        debug!(operation, message, "step rejected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_limits_name_field() {
        for amount in [0, -5, MAX_AMOUNT + 1] {
            let error = parse_amount(amount).unwrap_err();
            assert_eq!(error.field, "amount", "{amount}");
        }
        assert_eq!(parse_amount(1), Ok(1));
        assert_eq!(parse_amount(MAX_AMOUNT), Ok(MAX_AMOUNT));
    }

    #[test]
    fn freeze_rules_name_field() {
        let saga = SagaId::new();

        let error = Freeze::parse(saga, String::new(), 5).unwrap_err();
        assert_eq!(error.field, "user_id");

        let error = Freeze::parse(saga, "alice".into(), 0).unwrap_err();
        assert_eq!(error.field, "amount");
    }

    #[test]
    fn events_carry_saga_user_and_amount() {
        let freeze = Freeze::parse(SagaId::new(), "alice".into(), 750).unwrap();

        let frozen = NewOutboxEvent::balance_frozen(&freeze);
        let confirmed = NewOutboxEvent::payment_confirmed(&freeze);
        let unfrozen = NewOutboxEvent::balance_unfrozen(&freeze);

        assert_eq!(frozen.routing_key, "payment.frozen");
        assert_eq!(confirmed.routing_key, "payment.confirmed");
        assert_eq!(confirmed.event_type, "PaymentConfirmed");
        assert_eq!(unfrozen.routing_key, "payment.unfrozen");
        assert_eq!(frozen.aggregate_type, "payment");
        assert_eq!(frozen.aggregate_id, freeze.saga_id.to_string());
        assert_eq!(frozen.payload["event_id"], frozen.event_id.to_string());
        assert_eq!(frozen.payload["user_id"], "alice");
        assert_eq!(frozen.payload["amount"], 750);
    }
}
