//! `OrderUseCase`: creating and reading orders. Creating commits the order and its
//! `OrderCreated` outbox event together, and honours the client's idempotency key.

use std::sync::Arc;

use chrono::Utc;
use tracing::{debug, instrument};

use crate::{
    error::{OrderError, RepoError},
    order::{CreateOrder, Order, OrderId, OrderPage, PageQuery},
    outbox::NewOutboxEvent,
    ports::OrderRepo,
};

pub struct OrderUseCase {
    repo: Arc<dyn OrderRepo>,
}

impl OrderUseCase {
    pub fn new(repo: Arc<dyn OrderRepo>) -> Self {
        Self { repo }
    }

    /// Creates a pending order and its `OrderCreated` event in one transaction. A repeated
    /// request with the same `request_id` and content returns the first order and adds no
    /// event.
    ///
    /// # Errors
    ///
    /// [`OrderError::RequestIdReused`] when the `request_id` belongs to an order with other
    /// content; [`OrderError::Unavailable`] or [`OrderError::Internal`] on storage failure.
    #[instrument(skip_all, fields(request_id = %request.request_id, order_id))]
    pub async fn create_order(&self, request: CreateOrder) -> Result<Order, OrderError> {
        if let Some(existing) = self.repo.find_by_request_id(&request.request_id).await? {
            return Self::replay(existing, &request);
        }

        let order = Order::place(request.clone(), Utc::now());
        let event = NewOutboxEvent::order_created(&order);
        tracing::Span::current().record("order_id", tracing::field::display(order.id));
        match self.repo.create_with_event(&order, &event).await {
            Ok(()) => {
                metrics::counter!("orders_created_total").increment(1);
                debug!(event_id = %event.event_id, "order created");
                Ok(order)
            }
            // A concurrent request with the same key won the insert: return its order as a replay.
            Err(RepoError::Duplicate(_)) => {
                let existing = self
                    .repo
                    .find_by_request_id(&request.request_id)
                    .await?
                    .ok_or_else(|| {
                        OrderError::Internal("duplicate request_id but no order found".into())
                    })?;
                Self::replay(existing, &request)
            }
            Err(error) => Err(error.into()),
        }
    }

    fn replay(existing: Order, request: &CreateOrder) -> Result<Order, OrderError> {
        if existing.matches_request(request) {
            debug!(order_id = %existing.id, "idempotent replay");
            Ok(existing)
        } else {
            Err(OrderError::RequestIdReused(request.request_id.to_string()))
        }
    }

    /// Returns the order with `id`.
    ///
    /// # Errors
    ///
    /// [`OrderError::NotFound`] when there is none; storage failures as for
    /// [`Self::create_order`].
    #[instrument(skip(self))]
    pub async fn get_order(&self, id: OrderId) -> Result<Order, OrderError> {
        self.repo.get(id).await?.ok_or(OrderError::NotFound(id))
    }

    /// Returns one page of a user's orders, newest first.
    #[instrument(skip_all, fields(user_id = %query.user_id, limit = query.limit))]
    pub async fn list_orders(&self, query: PageQuery) -> Result<OrderPage, OrderError> {
        Ok(self.repo.list(&query).await?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::{
        RequestId,
        order::{Currency, OrderItem, UserId},
    };

    /// Keeps orders and events in memory; `fail_insert` makes the next insert fail.
    #[derive(Default)]
    struct MemoryOrderRepo {
        orders: Mutex<Vec<Order>>,
        events: Mutex<Vec<NewOutboxEvent>>,
        fail_insert: Mutex<bool>,
    }

    #[async_trait]
    impl OrderRepo for MemoryOrderRepo {
        async fn create_with_event(
            &self,
            order: &Order,
            event: &NewOutboxEvent,
        ) -> Result<(), RepoError> {
            if std::mem::take(&mut *self.fail_insert.lock().unwrap()) {
                return Err(RepoError::Unavailable("connection refused".into()));
            }
            let mut orders = self.orders.lock().unwrap();
            if orders.iter().any(|o| o.request_id == order.request_id) {
                return Err(RepoError::Duplicate("request_id".into()));
            }
            orders.push(order.clone());
            self.events.lock().unwrap().push(event.clone());
            Ok(())
        }

        async fn get(&self, id: OrderId) -> Result<Option<Order>, RepoError> {
            Ok(self
                .orders
                .lock()
                .unwrap()
                .iter()
                .find(|o| o.id == id)
                .cloned())
        }

        async fn find_by_request_id(
            &self,
            request_id: &RequestId,
        ) -> Result<Option<Order>, RepoError> {
            let orders = self.orders.lock().unwrap();
            Ok(orders.iter().find(|o| &o.request_id == request_id).cloned())
        }

        async fn list(&self, _query: &PageQuery) -> Result<OrderPage, RepoError> {
            unimplemented!("not used by these tests")
        }

        async fn change_status(&self, _change: &crate::OrderChange) -> Result<bool, RepoError> {
            unimplemented!("not used by these tests")
        }
    }

    fn create_request(request_id: &str, quantity: u32) -> CreateOrder {
        CreateOrder::new(
            RequestId::parse(request_id).unwrap(),
            UserId::parse("user-1").unwrap(),
            Currency::parse("EUR").unwrap(),
            vec![OrderItem::parse(0, "sku-1", quantity, 250).unwrap()],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn create_records_one_event() {
        let repo = Arc::new(MemoryOrderRepo::default());
        let usecase = OrderUseCase::new(repo.clone());

        let order = usecase
            .create_order(create_request("r-1", 2))
            .await
            .unwrap();

        assert_eq!(order.total_amount, 500);
        let events = repo.events.lock().unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].aggregate_id, order.id.to_string());
        assert_eq!(events[0].routing_key, "order.created");
        assert_eq!(events[0].payload["total_amount"], 500);
    }

    #[tokio::test]
    async fn repeated_request_returns_first_order() {
        let repo = Arc::new(MemoryOrderRepo::default());
        let usecase = OrderUseCase::new(repo.clone());

        let first = usecase
            .create_order(create_request("r-1", 2))
            .await
            .unwrap();
        let second = usecase
            .create_order(create_request("r-1", 2))
            .await
            .unwrap();

        assert_eq!(first.id, second.id);
        assert_eq!(repo.events.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn reused_request_id_is_rejected() {
        let repo = Arc::new(MemoryOrderRepo::default());
        let usecase = OrderUseCase::new(repo.clone());
        usecase
            .create_order(create_request("r-1", 2))
            .await
            .unwrap();

        let error = usecase
            .create_order(create_request("r-1", 3))
            .await
            .unwrap_err();

        assert!(
            matches!(error, OrderError::RequestIdReused(ref id) if id == "r-1"),
            "{error}"
        );
        assert_eq!(repo.orders.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn storage_outage_is_unavailable() {
        let repo = Arc::new(MemoryOrderRepo::default());
        *repo.fail_insert.lock().unwrap() = true;
        let usecase = OrderUseCase::new(repo.clone());

        let error = usecase
            .create_order(create_request("r-1", 1))
            .await
            .unwrap_err();

        assert!(matches!(error, OrderError::Unavailable(_)), "{error}");
        assert!(repo.events.lock().unwrap().is_empty());
    }
}
