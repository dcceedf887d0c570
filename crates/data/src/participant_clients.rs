//! gRPC clients of the saga's participants, implementing the `biz` client ports. Each call
//! carries its own timeout, and every failure is sorted into the class that decides what the
//! saga does next.

use std::time::Duration;

use api::{
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    payment::v1::{self as payment, payment_service_client::PaymentServiceClient},
};
use async_trait::async_trait;
use biz::{CallError, CallErrorKind, InventoryClient, OrderItem, PaymentClient, SagaId, UserId};
use tonic::{Code, Request, Status, transport::Channel, transport::Endpoint};

use crate::trace_context::{TRACEPARENT, current_traceparent};

/// Maximum wait for a TCP connection to a participant.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a channel to `url` that connects on first use, so that a process starts while the
/// participant is still down.
///
/// # Errors
///
/// Returns a message naming `url` when it is not a valid address.
fn lazy_channel(url: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|error| format!("{url:?} is not a valid gRPC address: {error}"))?;
    Ok(endpoint.connect_timeout(CONNECT_TIMEOUT).connect_lazy())
}

/// Classifies a failed call. A business rejection ends the step. Codes that mean the
/// participant did nothing are retried, and so are calls that timed out. Requests that the
/// participant can never accept are not retried.
pub fn classify_status(status: &Status) -> CallError {
    let kind = match status.code() {
        Code::FailedPrecondition => CallErrorKind::Rejected,
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted => CallErrorKind::Transient,
        Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Internal => {
            CallErrorKind::Unknown
        }
        _ => CallErrorKind::NonRetryable,
    };
    CallError {
        kind,
        message: format!("{:?}: {}", status.code(), status.message()),
    }
}

/// Builds a request that gives up after `timeout` and carries the current trace context.
fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    if let Some(value) = current_traceparent().and_then(|value| value.parse().ok()) {
        request.metadata_mut().insert(TRACEPARENT, value);
    }
    request
}

/// Converts a call's result: drops the response on success, and on failure classifies the
/// status, adding the participant's address when it was unreachable or timed out.
fn outcome<T>(result: Result<tonic::Response<T>, Status>, url: &str) -> Result<(), CallError> {
    result.map(drop).map_err(|status| {
        let mut error = classify_status(&status);
        if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) {
            error.message.push_str(&format!(" (calling {url})"));
        }
        error
    })
}

fn stock_items(items: &[OrderItem]) -> Vec<inventory::StockItem> {
    items
        .iter()
        .map(|item| inventory::StockItem {
            sku: item.sku.to_string(),
            quantity: i64::from(item.quantity),
        })
        .collect()
}

#[derive(Clone)]
pub struct GrpcInventoryClient {
    client: InventoryServiceClient<Channel>,
    url: String,
}

impl GrpcInventoryClient {
    /// # Errors
    ///
    /// Returns a message when `url` is not a valid address.
    pub fn new(url: &str) -> Result<Self, String> {
        Ok(Self {
            client: InventoryServiceClient::new(lazy_channel(url)?),
            url: url.to_string(),
        })
    }
}

#[async_trait]
impl InventoryClient for GrpcInventoryClient {
    async fn reserve(
        &self,
        saga: SagaId,
        items: &[OrderItem],
        timeout: Duration,
    ) -> Result<(), CallError> {
        let request = inventory::ReserveStockRequest {
            saga_id: saga.to_string(),
            items: stock_items(items),
        };
        let mut client = self.client.clone();
        outcome(
            client.reserve_stock(with_timeout(request, timeout)).await,
            &self.url,
        )
    }

    async fn confirm(
        &self,
        saga: SagaId,
        items: &[OrderItem],
        timeout: Duration,
    ) -> Result<(), CallError> {
        let request = inventory::ConfirmStockRequest {
            saga_id: saga.to_string(),
            items: stock_items(items),
        };
        let mut client = self.client.clone();
        outcome(
            client.confirm_stock(with_timeout(request, timeout)).await,
            &self.url,
        )
    }

    async fn release(
        &self,
        saga: SagaId,
        items: &[OrderItem],
        timeout: Duration,
    ) -> Result<(), CallError> {
        let request = inventory::ReleaseStockRequest {
            saga_id: saga.to_string(),
            items: stock_items(items),
        };
        let mut client = self.client.clone();
        outcome(
            client.release_stock(with_timeout(request, timeout)).await,
            &self.url,
        )
    }
}

#[derive(Clone)]
pub struct GrpcPaymentClient {
    client: PaymentServiceClient<Channel>,
    url: String,
}

impl GrpcPaymentClient {
    /// # Errors
    ///
    /// Returns a message when `url` is not a valid address.
    pub fn new(url: &str) -> Result<Self, String> {
        Ok(Self {
            client: PaymentServiceClient::new(lazy_channel(url)?),
            url: url.to_string(),
        })
    }
}

#[async_trait]
impl PaymentClient for GrpcPaymentClient {
    async fn freeze(
        &self,
        saga: SagaId,
        user: &UserId,
        amount: i64,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let request = payment::FreezeBalanceRequest {
            saga_id: saga.to_string(),
            user_id: user.to_string(),
            amount,
        };
        let mut client = self.client.clone();
        outcome(
            client.freeze_balance(with_timeout(request, timeout)).await,
            &self.url,
        )
    }

    async fn confirm(
        &self,
        saga: SagaId,
        user: &UserId,
        amount: i64,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let request = payment::ConfirmPaymentRequest {
            saga_id: saga.to_string(),
            user_id: user.to_string(),
            amount,
        };
        let mut client = self.client.clone();
        outcome(
            client.confirm_payment(with_timeout(request, timeout)).await,
            &self.url,
        )
    }

    async fn unfreeze(
        &self,
        saga: SagaId,
        user: &UserId,
        amount: i64,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let request = payment::UnfreezeBalanceRequest {
            saga_id: saga.to_string(),
            user_id: user.to_string(),
            amount,
        };
        let mut client = self.client.clone();
        outcome(
            client
                .unfreeze_balance(with_timeout(request, timeout))
                .await,
            &self.url,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_saga_outcomes() {
        let cases = [
            (Code::FailedPrecondition, CallErrorKind::Rejected),
            (Code::Unavailable, CallErrorKind::Transient),
            (Code::ResourceExhausted, CallErrorKind::Transient),
            (Code::Aborted, CallErrorKind::Transient),
            (Code::DeadlineExceeded, CallErrorKind::Unknown),
            (Code::Cancelled, CallErrorKind::Unknown),
            (Code::InvalidArgument, CallErrorKind::NonRetryable),
            (Code::Unauthenticated, CallErrorKind::NonRetryable),
            (Code::PermissionDenied, CallErrorKind::NonRetryable),
            (Code::Unimplemented, CallErrorKind::NonRetryable),
        ];
        for (code, kind) in cases {
            assert_eq!(
                classify_status(&Status::new(code, "x")).kind,
                kind,
                "{code:?}"
            );
        }
    }

    #[test]
    fn bad_address_is_reported() {
        let error = GrpcInventoryClient::new("not a url")
            .err()
            .expect("rejected");
        assert!(error.contains("not a url"), "{error}");
    }
}
