//! `OrderService`: the `order.v1.OrderService` gRPC handlers.

use std::sync::Arc;

use api::order::v1::{self as pb, order_service_server::OrderService as OrderServiceApi};
use biz::{OrderId, OrderSagaUseCase, OrderUseCase, PageQuery, SagaId, UserId, ValidationError};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::{
    convert::{create_order_from, order_to_pb, place_order_from, saga_to_pb, wait_from},
    error::{invalid_argument, status_from},
};

/// Page size when the request leaves `page_size` at 0.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Larger page sizes are lowered to this.
pub const MAX_PAGE_SIZE: u32 = 100;

/// Maximum length of a cancel reason, in characters.
pub const MAX_REASON_CHARS: usize = 256;

pub struct OrderService {
    orders: Arc<OrderUseCase>,
    sagas: Arc<OrderSagaUseCase>,
}

impl OrderService {
    pub fn new(orders: Arc<OrderUseCase>, sagas: Arc<OrderSagaUseCase>) -> Self {
        Self { orders, sagas }
    }
}

fn cancel_reason(reason: &str) -> Result<&str, ValidationError> {
    let length = reason.chars().count();
    if length > MAX_REASON_CHARS {
        return Err(ValidationError::new(
            "reason",
            format!("is {length} characters long; the maximum is {MAX_REASON_CHARS}"),
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "reason",
            "must not contain control characters",
        ));
    }
    Ok(reason)
}

/// Validates a request's `page_size`: 0 selects [`DEFAULT_PAGE_SIZE`], and sizes above
/// [`MAX_PAGE_SIZE`] are lowered to it.
pub(crate) fn page_size(requested: i32) -> Result<u32, ValidationError> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size if size < 0 => Err(ValidationError::new(
            "page_size",
            format!("is {size}; use 0 for the default or a positive size"),
        )),
        size => Ok(size.unsigned_abs().min(MAX_PAGE_SIZE)),
    }
}

fn page_query(request: pb::ListOrdersRequest) -> Result<PageQuery, ValidationError> {
    let user_id = UserId::parse(request.user_id)?;
    let limit = page_size(request.page_size)?;
    let after = if request.page_token.is_empty() {
        None
    } else {
        let token = OrderId::parse("page_token", &request.page_token).map_err(|_| {
            ValidationError::new(
                "page_token",
                "is not a token from a previous ListOrders response; send it unchanged or leave it empty",
            )
        })?;
        Some(token)
    };
    Ok(PageQuery {
        user_id,
        after,
        limit,
    })
}

#[tonic::async_trait]
impl OrderServiceApi for OrderService {
    #[instrument(skip_all, fields(rpc = "CreateOrder"))]
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let command = create_order_from(request.into_inner()).map_err(invalid_argument)?;
        let order = self
            .orders
            .create_order(command)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pb::CreateOrderResponse {
            order: Some(order_to_pb(order)),
        }))
    }

    #[instrument(skip_all, fields(rpc = "GetOrder"))]
    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let id = OrderId::parse("id", &request.into_inner().id).map_err(invalid_argument)?;
        let order = self.orders.get_order(id).await.map_err(status_from)?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(order_to_pb(order)),
        }))
    }

    #[instrument(skip_all, fields(rpc = "ListOrders"))]
    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let query = page_query(request.into_inner()).map_err(invalid_argument)?;
        let page = self.orders.list_orders(query).await.map_err(status_from)?;
        Ok(Response::new(pb::ListOrdersResponse {
            next_page_token: page.next_after.map(|id| id.to_string()).unwrap_or_default(),
            orders: page.orders.into_iter().map(order_to_pb).collect(),
        }))
    }

    #[instrument(skip_all, fields(rpc = "PlaceOrder"))]
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let command = place_order_from(request.into_inner()).map_err(invalid_argument)?;
        let (order, saga) = self.sagas.place_order(command).await.map_err(status_from)?;
        Ok(Response::new(pb::PlaceOrderResponse {
            order: Some(order_to_pb(order)),
            saga: Some(saga_to_pb(saga)),
        }))
    }

    #[instrument(skip_all, fields(rpc = "GetSaga"))]
    async fn get_saga(
        &self,
        request: Request<pb::GetSagaRequest>,
    ) -> Result<Response<pb::Saga>, Status> {
        let request = request.into_inner();
        let saga = match (request.id.is_empty(), request.order_id.is_empty()) {
            (false, true) => {
                let id = SagaId::parse("id", &request.id).map_err(invalid_argument)?;
                self.sagas.get_saga(id).await
            }
            (true, false) => {
                let order_id =
                    OrderId::parse("order_id", &request.order_id).map_err(invalid_argument)?;
                self.sagas.get_saga_of_order(order_id).await
            }
            _ => {
                return Err(invalid_argument(ValidationError::new(
                    "id",
                    "give either id (the saga's UUID) or order_id (its order's UUID), not both or neither",
                )));
            }
        };
        Ok(Response::new(saga_to_pb(saga.map_err(status_from)?)))
    }

    #[instrument(skip_all, fields(rpc = "ResumeSaga"))]
    async fn resume_saga(
        &self,
        request: Request<pb::ResumeSagaRequest>,
    ) -> Result<Response<pb::Saga>, Status> {
        let id = SagaId::parse("id", &request.into_inner().id).map_err(invalid_argument)?;
        let saga = self.sagas.resume_saga(id).await.map_err(status_from)?;
        Ok(Response::new(saga_to_pb(saga)))
    }

    #[instrument(skip_all, fields(rpc = "PayOrder"))]
    async fn pay_order(
        &self,
        request: Request<pb::PayOrderRequest>,
    ) -> Result<Response<pb::PayOrderResponse>, Status> {
        let id =
            OrderId::parse("order_id", &request.into_inner().order_id).map_err(invalid_argument)?;
        let order = self.sagas.pay_order(id).await.map_err(status_from)?;
        Ok(Response::new(pb::PayOrderResponse {
            order: Some(order_to_pb(order)),
        }))
    }

    #[instrument(skip_all, fields(rpc = "CancelOrder"))]
    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let request = request.into_inner();
        let id = OrderId::parse("order_id", &request.order_id).map_err(invalid_argument)?;
        let reason = cancel_reason(&request.reason).map_err(invalid_argument)?;
        let wait = wait_from(request.wait_timeout).map_err(invalid_argument)?;
        let (order, saga) = self
            .sagas
            .cancel_order(id, reason, wait)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pb::CancelOrderResponse {
            order: Some(order_to_pb(order)),
            saga: saga.map(saga_to_pb),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list_request(page_size: i32, page_token: &str) -> pb::ListOrdersRequest {
        pb::ListOrdersRequest {
            user_id: "alice".into(),
            page_size,
            page_token: page_token.into(),
        }
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(
            page_query(list_request(0, "")).unwrap().limit,
            DEFAULT_PAGE_SIZE
        );
        assert_eq!(page_query(list_request(5, "")).unwrap().limit, 5);
        assert_eq!(
            page_query(list_request(1000, "")).unwrap().limit,
            MAX_PAGE_SIZE
        );
    }

    #[test]
    fn bad_paging_names_field() {
        assert_eq!(
            page_query(list_request(-1, "")).unwrap_err().field,
            "page_size"
        );
        assert_eq!(
            page_query(list_request(10, "nope")).unwrap_err().field,
            "page_token"
        );

        let mut request = list_request(10, "");
        request.user_id = String::new();
        assert_eq!(page_query(request).unwrap_err().field, "user_id");
    }
}
