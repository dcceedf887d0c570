//! `PaymentService`: the `payment.v1.PaymentService` gRPC handlers.

use std::sync::Arc;

use api::payment::v1::{self as pb, payment_service_server::PaymentService as PaymentServiceApi};
use biz::{
    SagaId, UserId, ValidationError,
    payment::{Account, Freeze, PaymentUseCase},
};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::{error::invalid_argument, participant_error::participant_status};

pub struct PaymentService {
    payments: Arc<PaymentUseCase>,
}

impl PaymentService {
    pub fn new(payments: Arc<PaymentUseCase>) -> Self {
        Self { payments }
    }
}

fn saga_id(value: &str) -> Result<SagaId, Status> {
    SagaId::parse("saga_id", value).map_err(invalid_argument)
}

pub(crate) fn freeze_request(request: pb::FreezeBalanceRequest) -> Result<Freeze, ValidationError> {
    let saga_id = SagaId::parse("saga_id", &request.saga_id)?;
    Freeze::parse(saga_id, request.user_id, request.amount)
}

fn account_to_pb(account: Account) -> pb::Account {
    pb::Account {
        user_id: account.user_id.to_string(),
        balance: account.balance,
        frozen: account.frozen,
    }
}

#[tonic::async_trait]
impl PaymentServiceApi for PaymentService {
    #[instrument(skip_all, fields(rpc = "FreezeBalance"))]
    async fn freeze_balance(
        &self,
        request: Request<pb::FreezeBalanceRequest>,
    ) -> Result<Response<pb::FreezeBalanceResponse>, Status> {
        let command = freeze_request(request.into_inner()).map_err(invalid_argument)?;
        let freeze = self
            .payments
            .freeze_balance(command)
            .await
            .map_err(participant_status)?;
        Ok(Response::new(pb::FreezeBalanceResponse {
            saga_id: freeze.saga_id.to_string(),
            user_id: freeze.user_id.to_string(),
            amount: freeze.amount,
        }))
    }

    /// Confirms what the service froze for the saga; the request's user and amount are not
    /// read.
    #[instrument(skip_all, fields(rpc = "ConfirmPayment"))]
    async fn confirm_payment(
        &self,
        request: Request<pb::ConfirmPaymentRequest>,
    ) -> Result<Response<pb::ConfirmPaymentResponse>, Status> {
        let saga_id = saga_id(&request.into_inner().saga_id)?;
        self.payments
            .confirm_payment(saga_id)
            .await
            .map_err(participant_status)?;
        Ok(Response::new(pb::ConfirmPaymentResponse {
            saga_id: saga_id.to_string(),
        }))
    }

    /// Unfreezes what the service froze for the saga; the request's user and amount are not
    /// read.
    #[instrument(skip_all, fields(rpc = "UnfreezeBalance"))]
    async fn unfreeze_balance(
        &self,
        request: Request<pb::UnfreezeBalanceRequest>,
    ) -> Result<Response<pb::UnfreezeBalanceResponse>, Status> {
        let saga_id = saga_id(&request.into_inner().saga_id)?;
        let unfrozen = self
            .payments
            .unfreeze_balance(saga_id)
            .await
            .map_err(participant_status)?;
        Ok(Response::new(pb::UnfreezeBalanceResponse {
            saga_id: saga_id.to_string(),
            nothing_frozen: unfrozen.nothing_frozen,
        }))
    }

    #[instrument(skip_all, fields(rpc = "GetAccount"))]
    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let user_id = UserId::parse(request.into_inner().user_id).map_err(invalid_argument)?;
        let account = self
            .payments
            .get_account(user_id)
            .await
            .map_err(participant_status)?;
        Ok(Response::new(account_to_pb(account)))
    }

    #[instrument(skip_all, fields(rpc = "Deposit"))]
    async fn deposit(
        &self,
        request: Request<pb::DepositRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        let user_id = UserId::parse(request.user_id).map_err(invalid_argument)?;
        let account = self
            .payments
            .deposit(user_id, request.amount)
            .await
            .map_err(participant_status)?;
        Ok(Response::new(account_to_pb(account)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(saga_id: &str, user_id: &str, amount: i64) -> pb::FreezeBalanceRequest {
        pb::FreezeBalanceRequest {
            saga_id: saga_id.into(),
            user_id: user_id.into(),
            amount,
        }
    }

    #[test]
    fn freeze_validation_names_field() {
        let saga = SagaId::new().to_string();
        let cases = [
            (request("", "alice", 1), "saga_id"),
            (request(&saga, "", 1), "user_id"),
            (request(&saga, "alice", 0), "amount"),
            (request(&saga, "alice", -3), "amount"),
        ];
        for (request, field) in cases {
            let error = freeze_request(request).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
    }

    #[test]
    fn valid_freeze_keeps_fields() {
        let saga = SagaId::new();

        let freeze = freeze_request(request(&saga.to_string(), "alice", 42)).unwrap();

        assert_eq!(freeze.saga_id, saga);
        assert_eq!(freeze.user_id.as_str(), "alice");
        assert_eq!(freeze.amount, 42);
    }
}
