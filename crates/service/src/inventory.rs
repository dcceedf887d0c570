//! `InventoryService`: the `inventory.v1.InventoryService` gRPC handlers.

use std::sync::Arc;

use api::inventory::v1::{
    self as pb, inventory_service_server::InventoryService as InventoryServiceApi,
};
use biz::{
    SagaId, Sku, ValidationError,
    inventory::{InventoryUseCase, ReserveStock, Stock, StockItem},
};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::{error::invalid_argument, participant_error::participant_status};

pub struct InventoryService {
    inventory: Arc<InventoryUseCase>,
}

impl InventoryService {
    pub fn new(inventory: Arc<InventoryUseCase>) -> Self {
        Self { inventory }
    }
}

fn saga_id(value: &str) -> Result<SagaId, Status> {
    SagaId::parse("saga_id", value).map_err(invalid_argument)
}

pub(crate) fn reserve_request(
    request: pb::ReserveStockRequest,
) -> Result<ReserveStock, ValidationError> {
    let saga_id = SagaId::parse("saga_id", &request.saga_id)?;
    let items = request
        .items
        .into_iter()
        .enumerate()
        .map(|(index, item)| StockItem::parse(index, item.sku, item.quantity))
        .collect::<Result<Vec<_>, _>>()?;
    ReserveStock::new(saga_id, items)
}

fn items_to_pb(items: Vec<StockItem>) -> Vec<pb::StockItem> {
    items
        .into_iter()
        .map(|item| pb::StockItem {
            sku: item.sku.to_string(),
            quantity: item.quantity,
        })
        .collect()
}

fn stock_to_pb(stock: Stock) -> pb::Stock {
    pb::Stock {
        sku: stock.sku.to_string(),
        available: stock.available,
        reserved: stock.reserved,
    }
}

#[tonic::async_trait]
impl InventoryServiceApi for InventoryService {
    #[instrument(skip_all, fields(rpc = "ReserveStock"))]
    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        let command = reserve_request(request.into_inner()).map_err(invalid_argument)?;
        let reservation = self
            .inventory
            .reserve_stock(command)
            .await
            .map_err(participant_status)?;
        Ok(Response::new(pb::ReserveStockResponse {
            saga_id: reservation.saga_id.to_string(),
            items: items_to_pb(reservation.items),
        }))
    }

    /// Confirms what the service reserved for the saga; the request's items are not read.
    #[instrument(skip_all, fields(rpc = "ConfirmStock"))]
    async fn confirm_stock(
        &self,
        request: Request<pb::ConfirmStockRequest>,
    ) -> Result<Response<pb::ConfirmStockResponse>, Status> {
        let saga_id = saga_id(&request.into_inner().saga_id)?;
        self.inventory
            .confirm_stock(saga_id)
            .await
            .map_err(participant_status)?;
        Ok(Response::new(pb::ConfirmStockResponse {
            saga_id: saga_id.to_string(),
        }))
    }

    /// Releases what the service reserved for the saga; the request's items are not read.
    #[instrument(skip_all, fields(rpc = "ReleaseStock"))]
    async fn release_stock(
        &self,
        request: Request<pb::ReleaseStockRequest>,
    ) -> Result<Response<pb::ReleaseStockResponse>, Status> {
        let saga_id = saga_id(&request.into_inner().saga_id)?;
        let released = self
            .inventory
            .release_stock(saga_id)
            .await
            .map_err(participant_status)?;
        Ok(Response::new(pb::ReleaseStockResponse {
            saga_id: saga_id.to_string(),
            nothing_reserved: released.nothing_reserved,
        }))
    }

    #[instrument(skip_all, fields(rpc = "GetStock"))]
    async fn get_stock(
        &self,
        request: Request<pb::GetStockRequest>,
    ) -> Result<Response<pb::Stock>, Status> {
        let sku = Sku::parse(request.into_inner().sku).map_err(invalid_argument)?;
        let stock = self
            .inventory
            .get_stock(sku)
            .await
            .map_err(participant_status)?;
        Ok(Response::new(stock_to_pb(stock)))
    }

    #[instrument(skip_all, fields(rpc = "SetStock"))]
    async fn set_stock(
        &self,
        request: Request<pb::SetStockRequest>,
    ) -> Result<Response<pb::Stock>, Status> {
        let request = request.into_inner();
        let sku = Sku::parse(request.sku).map_err(invalid_argument)?;
        let stock = self
            .inventory
            .set_stock(sku, request.available)
            .await
            .map_err(participant_status)?;
        Ok(Response::new(stock_to_pb(stock)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, quantity: i64) -> pb::StockItem {
        pb::StockItem {
            sku: sku.into(),
            quantity,
        }
    }

    fn request(saga_id: &str, items: Vec<pb::StockItem>) -> pb::ReserveStockRequest {
        pb::ReserveStockRequest {
            saga_id: saga_id.into(),
            items,
        }
    }

    #[test]
    fn reserve_validation_names_field() {
        let saga = SagaId::new().to_string();
        let cases = [
            (request("", vec![item("a", 1)]), "saga_id"),
            (request("nope", vec![item("a", 1)]), "saga_id"),
            (request(&saga, vec![]), "items"),
            (
                request(&saga, vec![item("a", 1), item("b", 1), item("c", 0)]),
                "items[2].quantity",
            ),
            (request(&saga, vec![item("", 1)]), "items[0].sku"),
            (
                request(&saga, vec![item("a", 1), item("a", 1)]),
                "items[1].sku",
            ),
        ];
        for (request, field) in cases {
            let error = reserve_request(request).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
    }

    #[test]
    fn valid_reserve_keeps_items() {
        let saga = SagaId::new();

        let command = reserve_request(request(&saga.to_string(), vec![item("a", 3)])).unwrap();

        assert_eq!(command.saga_id, saga);
        assert_eq!(command.items[0].quantity, 3);
    }
}
