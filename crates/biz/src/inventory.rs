//! The inventory participant of the order saga: stock per SKU, reserved for a saga by its try,
//! taken out of stock by its confirm, or returned by its cancel. The rules for repeated and
//! out-of-order calls are in [`crate::participant`].

use std::{collections::HashSet, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Value, json};
use tracing::{debug, instrument};
use uuid::Uuid;

use crate::{
    error::{RepoError, ValidationError},
    order::{MAX_ITEMS, Sku},
    outbox::NewOutboxEvent,
    participant::ParticipantError,
    saga_id::SagaId,
};

/// Maximum units of one item in a reservation.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Maximum available units of one SKU that `SetStock` accepts. It leaves room for every
/// reserved unit to return without overflowing a signed 64-bit column.
pub const MAX_AVAILABLE: i64 = i64::MAX / 2;

pub const AGGREGATE_RESERVATION: &str = "reservation";
pub const EVENT_STOCK_RESERVED: &str = "StockReserved";
pub const EVENT_STOCK_CONFIRMED: &str = "StockConfirmed";
pub const EVENT_STOCK_RELEASED: &str = "StockReleased";

/// Units of one SKU in a reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockItem {
    pub sku: Sku,
    pub quantity: i64,
}

impl StockItem {
    /// Validates the item at `index` of the request's `items`.
    ///
    /// # Errors
    ///
    /// Returns a [`ValidationError`] on `items[index].sku` or `items[index].quantity` for an
    /// invalid SKU or a quantity outside 1..=[`MAX_QUANTITY`].
    pub fn parse(
        index: usize,
        sku: impl Into<String>,
        quantity: i64,
    ) -> Result<Self, ValidationError> {
        let sku = Sku::parse_field(&format!("items[{index}].sku"), sku)?;
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(ValidationError::new(
                format!("items[{index}].quantity"),
                format!("is {quantity}; it must be 1 to {MAX_QUANTITY}"),
            ));
        }
        Ok(Self { sku, quantity })
    }
}

/// A validated ReserveStock request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveStock {
    pub saga_id: SagaId,
    pub items: Vec<StockItem>,
}

impl ReserveStock {
    /// Builds a reservation request from validated items.
    ///
    /// # Errors
    ///
    /// Returns a [`ValidationError`] on `items` when there are none or more than
    /// [`MAX_ITEMS`], and on `items[i].sku` for a SKU that an earlier item has.
    pub fn new(saga_id: SagaId, items: Vec<StockItem>) -> Result<Self, ValidationError> {
        if items.is_empty() {
            return Err(ValidationError::new(
                "items",
                "must contain at least one item",
            ));
        }
        if items.len() > MAX_ITEMS {
            return Err(ValidationError::new(
                "items",
                format!("has {} items; the maximum is {MAX_ITEMS}", items.len()),
            ));
        }
        let mut seen = HashSet::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            if !seen.insert(item.sku.as_str()) {
                return Err(ValidationError::new(
                    format!("items[{index}].sku"),
                    format!(
                        "{:?} appears twice; put the whole quantity in one item",
                        item.sku.as_str()
                    ),
                ));
            }
        }
        Ok(Self { saga_id, items })
    }
}

/// Validates the `available` units of a SetStock request.
///
/// # Errors
///
/// Returns a [`ValidationError`] on `available` outside 0..=[`MAX_AVAILABLE`].
pub fn parse_available(available: i64) -> Result<i64, ValidationError> {
    if !(0..=MAX_AVAILABLE).contains(&available) {
        return Err(ValidationError::new(
            "available",
            format!("is {available}; it must be 0 to {MAX_AVAILABLE}"),
        ));
    }
    Ok(available)
}

/// Stock of one SKU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stock {
    pub sku: Sku,
    /// Units that can be reserved.
    pub available: i64,
    /// Units held by sagas that have not confirmed or released them yet.
    pub reserved: i64,
}

/// The units reserved for a saga: the result of its try, returned again for a repeated try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub saga_id: SagaId,
    pub items: Vec<StockItem>,
}

/// The result of a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// True when there was no reservation to release (a null compensation).
    pub nothing_reserved: bool,
}

fn items_json(items: &[StockItem]) -> Vec<Value> {
    items
        .iter()
        .map(|item| json!({ "sku": item.sku.as_str(), "quantity": item.quantity }))
        .collect()
}

fn reservation_event(
    event_type: &str,
    routing_key: &str,
    saga_id: SagaId,
    items: &[StockItem],
) -> NewOutboxEvent {
    let event_id = Uuid::new_v4();
    let occurred_at: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    NewOutboxEvent {
        event_id,
        aggregate_type: AGGREGATE_RESERVATION.to_string(),
        aggregate_id: saga_id.to_string(),
        event_type: event_type.to_string(),
        routing_key: routing_key.to_string(),
        payload: json!({
            "event_id": event_id,
            "saga_id": saga_id.to_string(),
            "items": items_json(items),
            "occurred_at": occurred_at,
        }),
        occurred_at,
    }
}

impl NewOutboxEvent {
    /// Builds the `StockReserved` event of a saga's applied try.
    pub fn stock_reserved(saga_id: SagaId, items: &[StockItem]) -> Self {
        reservation_event(EVENT_STOCK_RESERVED, "reservation.reserved", saga_id, items)
    }

    /// Builds the `StockConfirmed` event of a saga's applied confirm.
    pub fn stock_confirmed(saga_id: SagaId, items: &[StockItem]) -> Self {
        reservation_event(
            EVENT_STOCK_CONFIRMED,
            "reservation.confirmed",
            saga_id,
            items,
        )
    }

    /// Builds the `StockReleased` event of a saga's applied cancel.
    pub fn stock_released(saga_id: SagaId, items: &[StockItem]) -> Self {
        reservation_event(EVENT_STOCK_RELEASED, "reservation.released", saga_id, items)
    }
}

/// Storage of stock and reservations. Each of `reserve`, `confirm` and `release` runs in one
/// transaction that records the saga barrier, changes the stock, and inserts the event built
/// by the matching [`NewOutboxEvent`] constructor, all together or nothing. A repeated call
/// for the same saga returns the first result and changes nothing, following
/// [`crate::participant::StepBarriers`].
#[async_trait]
pub trait InventoryRepo: Send + Sync + 'static {
    /// Moves every item's quantity from available to reserved, all or none.
    ///
    /// # Errors
    ///
    /// [`ParticipantError::Rejected`] for an unknown SKU, too little available stock, or a
    /// saga whose reservation was already released; storage failures as
    /// [`ParticipantError::Unavailable`] or [`ParticipantError::Internal`].
    async fn reserve(&self, request: &ReserveStock) -> Result<Reservation, ParticipantError>;

    /// Takes the saga's reserved units out of stock.
    ///
    /// # Errors
    ///
    /// [`ParticipantError::Rejected`] when the saga has no applied reservation or released it.
    async fn confirm(&self, saga_id: SagaId) -> Result<(), ParticipantError>;

    /// Returns the saga's reserved units to available, or records a null compensation when
    /// there is no reservation.
    ///
    /// # Errors
    ///
    /// [`ParticipantError::Rejected`] when the reservation was already confirmed.
    async fn release(&self, saga_id: SagaId) -> Result<Released, ParticipantError>;

    /// Returns the stock of `sku`, or `None` when the SKU is unknown.
    async fn get_stock(&self, sku: &Sku) -> Result<Option<Stock>, RepoError>;

    /// Sets the available units of `sku`, creating it with nothing reserved when new.
    async fn set_stock(&self, sku: &Sku, available: i64) -> Result<Stock, RepoError>;
}

pub struct InventoryUseCase {
    repo: Arc<dyn InventoryRepo>,
}

impl InventoryUseCase {
    pub fn new(repo: Arc<dyn InventoryRepo>) -> Self {
        Self { repo }
    }

    /// Reserves the request's items for its saga. See [`InventoryRepo::reserve`].
    #[instrument(skip_all, fields(saga_id = %request.saga_id, items = request.items.len()))]
    pub async fn reserve_stock(
        &self,
        request: ReserveStock,
    ) -> Result<Reservation, ParticipantError> {
        let result = self.repo.reserve(&request).await;
        count("reserve", &result);
        answer_late("inventory::after_reserve").await;
        result
    }

    /// Confirms the saga's reservation. See [`InventoryRepo::confirm`].
    #[instrument(skip(self))]
    pub async fn confirm_stock(&self, saga_id: SagaId) -> Result<(), ParticipantError> {
        let result = self.repo.confirm(saga_id).await;
        count("confirm", &result);
        result
    }

    /// Releases the saga's reservation. See [`InventoryRepo::release`].
    #[instrument(skip(self))]
    pub async fn release_stock(&self, saga_id: SagaId) -> Result<Released, ParticipantError> {
        let result = self.repo.release(saga_id).await;
        count("release", &result);
        result
    }

    /// Returns the stock of `sku`.
    ///
    /// # Errors
    ///
    /// [`ParticipantError::NotFound`] for an unknown SKU.
    #[instrument(skip_all, fields(sku = %sku))]
    pub async fn get_stock(&self, sku: Sku) -> Result<Stock, ParticipantError> {
        self.repo
            .get_stock(&sku)
            .await?
            .ok_or_else(|| ParticipantError::NotFound(format!("SKU {:?} not found", sku.as_str())))
    }

    /// Sets the available units of `sku`; see [`parse_available`] for the limits.
    #[instrument(skip_all, fields(sku = %sku, available))]
    pub async fn set_stock(&self, sku: Sku, available: i64) -> Result<Stock, ParticipantError> {
        let available = parse_available(available)?;
        let stock = self.repo.set_stock(&sku, available).await?;
        debug!(reserved = stock.reserved, "stock set");
        Ok(stock)
    }
}

/// A fail point for crash tests: with the `failpoints` feature and `FAILPOINTS` set to
/// `NAME=return(MILLISECONDS)`, the reply waits that long after the change committed, as if
/// it were lost on the way. Does nothing otherwise.
async fn answer_late(name: &str) {
    #[cfg(feature = "failpoints")]
    if let Some(Some(millis)) = fail::eval(name, |argument| argument) {
        let millis = millis.parse().unwrap_or(0);
        tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
    }
    let _ = name;
}

/// Counts the outcome of one step call in `inventory_steps_total`.
fn count<T>(operation: &'static str, result: &Result<T, ParticipantError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(ParticipantError::Rejected(_)) => "rejected",
        Err(_) => "error",
    };
    metrics::counter!("inventory_steps_total", "operation" => operation, "outcome" => outcome)
        .increment(1);
    if let Err(ParticipantError::Rejected(message)) = result {
        debug!(operation, message, "step rejected");
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Mutex};

    use super::*;
    use crate::participant::{Decision, Outcome, Step, StepBarriers};

    fn item(index: usize, sku: &str, quantity: i64) -> StockItem {
        StockItem::parse(index, sku, quantity).expect("valid item")
    }

    #[test]
    fn item_rules_name_field() {
        let error = StockItem::parse(2, "sku", 0).unwrap_err();
        assert_eq!(error.field, "items[2].quantity");

        let error = StockItem::parse(0, "sku", MAX_QUANTITY + 1).unwrap_err();
        assert_eq!(error.field, "items[0].quantity");

        let error = StockItem::parse(1, "", 1).unwrap_err();
        assert_eq!(error.field, "items[1].sku");

        assert!(StockItem::parse(0, "sku", MAX_QUANTITY).is_ok());
    }

    #[test]
    fn reserve_rules_name_field() {
        let saga = SagaId::new();

        let error = ReserveStock::new(saga, vec![]).unwrap_err();
        assert_eq!(error.field, "items");

        let many = (0..=MAX_ITEMS)
            .map(|i| item(i, &format!("sku-{i}"), 1))
            .collect();
        let error = ReserveStock::new(saga, many).unwrap_err();
        assert_eq!(error.field, "items");

        let error = ReserveStock::new(saga, vec![item(0, "a", 1), item(1, "a", 2)]).unwrap_err();
        assert_eq!(error.field, "items[1].sku");
    }

    #[test]
    fn available_must_not_be_negative() {
        assert_eq!(parse_available(0), Ok(0));
        let error = parse_available(-1).unwrap_err();
        assert_eq!(error.field, "available");
        assert!(parse_available(MAX_AVAILABLE + 1).is_err());
    }

    #[test]
    fn events_carry_saga_and_items() {
        let saga = SagaId::new();
        let items = vec![item(0, "book", 2)];

        let reserved = NewOutboxEvent::stock_reserved(saga, &items);
        let confirmed = NewOutboxEvent::stock_confirmed(saga, &items);
        let released = NewOutboxEvent::stock_released(saga, &items);

        assert_eq!(reserved.routing_key, "reservation.reserved");
        assert_eq!(confirmed.routing_key, "reservation.confirmed");
        assert_eq!(released.routing_key, "reservation.released");
        assert_eq!(released.event_type, "StockReleased");
        assert_eq!(reserved.aggregate_type, "reservation");
        assert_eq!(reserved.aggregate_id, saga.to_string());
        assert_eq!(reserved.payload["event_id"], reserved.event_id.to_string());
        assert_eq!(reserved.payload["saga_id"], saga.to_string());
        assert_eq!(reserved.payload["items"][0]["sku"], "book");
        assert_eq!(reserved.payload["items"][0]["quantity"], 2);
    }

    /// Keeps stock and barriers in memory and applies the barrier rules as the SQL
    /// repository does, one call at a time.
    #[derive(Default)]
    struct MemoryInventory {
        state: Mutex<MemoryState>,
    }

    #[derive(Default)]
    struct MemoryState {
        stock: HashMap<String, (i64, i64)>,
        barriers: HashMap<SagaId, StepBarriers>,
        reservations: HashMap<SagaId, Vec<StockItem>>,
        events: Vec<NewOutboxEvent>,
    }

    #[async_trait]
    impl InventoryRepo for MemoryInventory {
        async fn reserve(&self, request: &ReserveStock) -> Result<Reservation, ParticipantError> {
            let mut state = self.state.lock().unwrap();
            let saga = request.saga_id;
            let barriers = state.barriers.entry(saga).or_default().clone();
            match barriers.tried {
                Some(Outcome::Applied) => {
                    let items = state.reservations[&saga].clone();
                    return Ok(Reservation {
                        saga_id: saga,
                        items,
                    });
                }
                Some(Outcome::Rejected(message)) => {
                    return Err(ParticipantError::Rejected(message));
                }
                _ => {}
            }
            let decision = barriers.decide_try(saga, Step::ReserveStock);
            let outcome = match decision {
                Decision::Reject(message) => Outcome::Rejected(message),
                _ => {
                    let short = request.items.iter().find(|item| {
                        state
                            .stock
                            .get(item.sku.as_str())
                            .is_none_or(|(available, _)| *available < item.quantity)
                    });
                    match short {
                        Some(item) => Outcome::Rejected(format!("SKU {} is short", item.sku)),
                        None => Outcome::Applied,
                    }
                }
            };
            state.barriers.get_mut(&saga).unwrap().tried = Some(outcome.clone());
            if let Outcome::Rejected(message) = outcome {
                return Err(ParticipantError::Rejected(message));
            }
            for item in &request.items {
                let entry = state.stock.get_mut(item.sku.as_str()).unwrap();
                entry.0 -= item.quantity;
                entry.1 += item.quantity;
            }
            state.reservations.insert(saga, request.items.clone());
            state
                .events
                .push(NewOutboxEvent::stock_reserved(saga, &request.items));
            Ok(Reservation {
                saga_id: saga,
                items: request.items.clone(),
            })
        }

        async fn confirm(&self, _saga_id: SagaId) -> Result<(), ParticipantError> {
            unimplemented!("not used by these tests")
        }

        async fn release(&self, saga_id: SagaId) -> Result<Released, ParticipantError> {
            let mut state = self.state.lock().unwrap();
            let barriers = state.barriers.entry(saga_id).or_default().clone();
            if let Some(outcome) = barriers.cancelled {
                return Ok(Released {
                    nothing_reserved: outcome == Outcome::Null,
                });
            }
            match barriers.decide_cancel(saga_id, Step::ReserveStock) {
                Decision::Reject(message) => Err(ParticipantError::Rejected(message)),
                Decision::NullCompensation => {
                    state.barriers.get_mut(&saga_id).unwrap().cancelled = Some(Outcome::Null);
                    Ok(Released {
                        nothing_reserved: true,
                    })
                }
                Decision::Apply => {
                    let items = state.reservations[&saga_id].clone();
                    for item in &items {
                        let entry = state.stock.get_mut(item.sku.as_str()).unwrap();
                        entry.0 += item.quantity;
                        entry.1 -= item.quantity;
                    }
                    state.barriers.get_mut(&saga_id).unwrap().cancelled = Some(Outcome::Applied);
                    state
                        .events
                        .push(NewOutboxEvent::stock_released(saga_id, &items));
                    Ok(Released {
                        nothing_reserved: false,
                    })
                }
            }
        }

        async fn get_stock(&self, sku: &Sku) -> Result<Option<Stock>, RepoError> {
            let state = self.state.lock().unwrap();
            Ok(state
                .stock
                .get(sku.as_str())
                .map(|(available, reserved)| Stock {
                    sku: sku.clone(),
                    available: *available,
                    reserved: *reserved,
                }))
        }

        async fn set_stock(&self, sku: &Sku, available: i64) -> Result<Stock, RepoError> {
            let mut state = self.state.lock().unwrap();
            let entry = state.stock.entry(sku.to_string()).or_insert((0, 0));
            entry.0 = available;
            Ok(Stock {
                sku: sku.clone(),
                available,
                reserved: entry.1,
            })
        }
    }

    fn usecase() -> (Arc<MemoryInventory>, InventoryUseCase) {
        let repo = Arc::new(MemoryInventory::default());
        (repo.clone(), InventoryUseCase::new(repo))
    }

    #[tokio::test]
    async fn repeated_reserve_applies_once() {
        let (repo, usecase) = usecase();
        usecase
            .set_stock(Sku::parse("book").unwrap(), 5)
            .await
            .unwrap();
        let request = ReserveStock::new(SagaId::new(), vec![item(0, "book", 2)]).unwrap();

        let first = usecase.reserve_stock(request.clone()).await.unwrap();
        let second = usecase.reserve_stock(request).await.unwrap();

        assert_eq!(first, second);
        let stock = usecase
            .get_stock(Sku::parse("book").unwrap())
            .await
            .unwrap();
        assert_eq!((stock.available, stock.reserved), (3, 2));
        assert_eq!(repo.state.lock().unwrap().events.len(), 1);
    }

    #[tokio::test]
    async fn release_before_reserve_blocks_it() {
        let (repo, usecase) = usecase();
        usecase
            .set_stock(Sku::parse("book").unwrap(), 5)
            .await
            .unwrap();
        let saga = SagaId::new();

        let released = usecase.release_stock(saga).await.unwrap();
        let request = ReserveStock::new(saga, vec![item(0, "book", 2)]).unwrap();
        let error = usecase.reserve_stock(request).await.unwrap_err();

        assert!(released.nothing_reserved);
        assert!(matches!(error, ParticipantError::Rejected(_)), "{error}");
        let stock = usecase
            .get_stock(Sku::parse("book").unwrap())
            .await
            .unwrap();
        assert_eq!((stock.available, stock.reserved), (5, 0));
        assert!(repo.state.lock().unwrap().events.is_empty());
    }

    #[tokio::test]
    async fn unknown_sku_is_not_found() {
        let (_repo, usecase) = usecase();

        let error = usecase
            .get_stock(Sku::parse("ghost").unwrap())
            .await
            .unwrap_err();

        assert!(matches!(error, ParticipantError::NotFound(_)), "{error}");
        assert!(error.to_string().contains("ghost"), "{error}");
    }

    #[tokio::test]
    async fn negative_stock_is_invalid() {
        let (_repo, usecase) = usecase();

        let error = usecase
            .set_stock(Sku::parse("book").unwrap(), -1)
            .await
            .unwrap_err();

        assert!(
            matches!(error, ParticipantError::Invalid(ref invalid) if invalid.field == "available"),
            "{error}"
        );
    }
}
