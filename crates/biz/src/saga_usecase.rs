//! `OrderSagaUseCase`: places an order through the saga create order -> reserve stock ->
//! freeze balance -> confirm stock, payment and order, and undoes what ran, in reverse, when a
//! forward step fails. The saga row is saved after every call, so any process can resume a
//! saga that its owner left behind.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use tokio::sync::{Notify, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, error, info, info_span, instrument, warn};

use crate::{
    error::{OrderError, RepoError, ValidationError},
    order::{CreateOrder, Order, OrderId, OrderStatus},
    outbox::NewOutboxEvent,
    ports::{
        CallError, CallErrorKind, InventoryClient, OrderChange, OrderRepo, PaymentClient, SagaRepo,
    },
    saga::{Saga, SagaState, StepName, StepOutcome},
    saga_id::SagaId,
};

/// The saga's error after CancelOrder stopped it.
pub const CANCELLED_BY_CLIENT: &str = "cancelled by the client";

/// Settings of the saga: call timeouts, deadlines, retry budgets and the lease.
#[derive(Clone, Debug)]
pub struct SagaSettings {
    /// Identifies this process in `locked_by`.
    pub owner: String,
    pub call_timeout: Duration,
    pub step_deadline: Duration,
    /// Calls per confirmation or compensation before the saga ends `FAILED`.
    pub max_attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub lease: Duration,
    /// Maximum wait a caller may request.
    pub max_wait: Duration,
}

/// A validated PlaceOrder request.
#[derive(Clone, Debug)]
pub struct PlaceOrder {
    pub order: CreateOrder,
    /// How long the caller waits for the saga to end, at most [`SagaSettings::max_wait`].
    pub wait: Duration,
}

/// Reason a driver stopped before the saga ended. The saga row keeps its last saved state, so
/// a worker takes the saga over when the lease ends.
#[derive(Debug)]
enum Halt {
    /// Another owner took the saga, or the row changed under us.
    LeaseLost,
    /// The process is shutting down, and the lease was released.
    Shutdown,
    Storage(RepoError),
    /// A test fail point stopped the driver as if the process had died here.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    Crash,
}

impl From<RepoError> for Halt {
    fn from(error: RepoError) -> Self {
        Self::Storage(error)
    }
}

/// The end of a forward step.
enum StepEnd {
    Done,
    GaveUp(String),
}

/// Handles to a saga driven in this process, for its waiters and for CancelOrder.
struct Progress {
    /// Wakes callers waiting on the saga.
    state: watch::Sender<SagaState>,
    /// Cuts a backoff short when CancelOrder requests compensation.
    cancel: Arc<Notify>,
}

pub struct OrderSagaUseCase {
    orders: Arc<dyn OrderRepo>,
    sagas: Arc<dyn SagaRepo>,
    inventory: Arc<dyn InventoryClient>,
    payment: Arc<dyn PaymentClient>,
    settings: SagaSettings,
    /// The sagas this process drives.
    progress: Mutex<HashMap<SagaId, Progress>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl OrderSagaUseCase {
    pub fn new(
        orders: Arc<dyn OrderRepo>,
        sagas: Arc<dyn SagaRepo>,
        inventory: Arc<dyn InventoryClient>,
        payment: Arc<dyn PaymentClient>,
        settings: SagaSettings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            orders,
            sagas,
            inventory,
            payment,
            settings,
            progress: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            shutdown,
        })
    }

    /// Creates the pending order with its saga, starts the saga, and waits up to
    /// `request.wait` for it to end. Returns the order and saga as they are then.
    ///
    /// # Errors
    ///
    /// - [`OrderError::Invalid`] for a total of 0 or above what the payment service takes, and
    ///   for a wait above [`SagaSettings::max_wait`].
    /// - [`OrderError::RequestIdReused`] when the `request_id` belongs to other content.
    /// - [`OrderError::FailedPrecondition`] when it belongs to an order made by CreateOrder.
    /// - Storage failures as for [`crate::OrderUseCase::create_order`].
    #[instrument(skip_all, fields(request_id = %request.order.request_id, order_id, saga_id))]
    pub async fn place_order(
        self: &Arc<Self>,
        request: PlaceOrder,
    ) -> Result<(Order, Saga), OrderError> {
        let create = request.order;
        if create.total_amount == 0 {
            return Err(ValidationError::new(
                "items",
                "the total amount is 0; PlaceOrder needs an amount to pay, use CreateOrder for free orders",
            )
            .into());
        }
        if create.total_amount > crate::payment::MAX_AMOUNT {
            return Err(ValidationError::new(
                "items",
                format!(
                    "the total amount is {}; the payment service takes at most {}",
                    create.total_amount,
                    crate::payment::MAX_AMOUNT
                ),
            )
            .into());
        }
        let wait = self.checked_wait(request.wait)?;

        let saga_id = match self.orders.find_by_request_id(&create.request_id).await? {
            Some(existing) => self.replayed_saga(&existing, &create).await?,
            None => {
                let order = Order::place(create.clone(), Utc::now());
                let event = NewOutboxEvent::order_created(&order);
                let saga = Saga::start(order.id, order.created_at);
                let span = tracing::Span::current();
                span.record("order_id", tracing::field::display(order.id));
                span.record("saga_id", tracing::field::display(saga.id));
                let started = self
                    .sagas
                    .start(
                        &order,
                        &event,
                        &saga,
                        &self.settings.owner,
                        self.settings.lease,
                    )
                    .await;
                match started {
                    Ok(()) => {
                        metrics::counter!("orders_created_total").increment(1);
                        metrics::counter!("sagas_started_total").increment(1);
                        debug!("saga started");
                        let id = saga.id;
                        self.spawn(saga);
                        id
                    }
                    // A concurrent request with the same key won: follow its saga.
                    Err(RepoError::Duplicate(_)) => {
                        let existing = self
                            .orders
                            .find_by_request_id(&create.request_id)
                            .await?
                            .ok_or_else(|| {
                                OrderError::Internal(
                                    "duplicate request_id but no order found".into(),
                                )
                            })?;
                        self.replayed_saga(&existing, &create).await?
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        };

        let saga = self.wait_for(saga_id, wait).await?;
        let order = self
            .orders
            .get(saga.order_id)
            .await?
            .ok_or(OrderError::NotFound(saga.order_id))?;
        Ok((order, saga))
    }

    /// Checks a caller's `wait_timeout` against [`SagaSettings::max_wait`].
    fn checked_wait(&self, wait: Duration) -> Result<Duration, ValidationError> {
        if wait > self.settings.max_wait {
            return Err(ValidationError::new(
                "wait_timeout",
                format!(
                    "is {wait:?}; the maximum is {:?}, after which the call returns and GetSaga shows the rest",
                    self.settings.max_wait
                ),
            ));
        }
        Ok(wait)
    }

    async fn replayed_saga(
        &self,
        existing: &Order,
        request: &CreateOrder,
    ) -> Result<SagaId, OrderError> {
        if !existing.matches_request(request) {
            return Err(OrderError::RequestIdReused(request.request_id.to_string()));
        }
        match self.sagas.find_by_order(existing.id).await? {
            Some(saga) => Ok(saga.id),
            None => Err(OrderError::FailedPrecondition(format!(
                "request_id {:?} belongs to order {}, which CreateOrder made without a saga; send a new request_id to place an order",
                request.request_id.as_str(),
                existing.id
            ))),
        }
    }

    /// Returns the saga `id`.
    ///
    /// # Errors
    ///
    /// [`OrderError::SagaNotFound`] when there is none.
    pub async fn get_saga(&self, id: SagaId) -> Result<Saga, OrderError> {
        self.sagas
            .get(id)
            .await?
            .ok_or(OrderError::SagaNotFound(id))
    }

    /// Returns the saga of order `order_id`.
    ///
    /// # Errors
    ///
    /// [`OrderError::NotFound`] when there is no such order, [`OrderError::NoSaga`] when
    /// CreateOrder made it.
    pub async fn get_saga_of_order(&self, order_id: OrderId) -> Result<Saga, OrderError> {
        if let Some(saga) = self.sagas.find_by_order(order_id).await? {
            return Ok(saga);
        }
        match self.orders.get(order_id).await? {
            Some(_) => Err(OrderError::NoSaga(order_id)),
            None => Err(OrderError::NotFound(order_id)),
        }
    }

    /// Gives a `FAILED` saga a fresh retry budget and drives it again from the step that
    /// failed, in the background. Returns the saga as it is then. A saga that is running or
    /// compensating is returned unchanged.
    ///
    /// # Errors
    ///
    /// [`OrderError::FailedPrecondition`] for a saga that succeeded or compensated.
    #[instrument(skip_all, fields(saga_id = %id))]
    pub async fn resume_saga(self: &Arc<Self>, id: SagaId) -> Result<Saga, OrderError> {
        let mut saga = self.get_saga(id).await?;
        match saga.state {
            SagaState::Running | SagaState::Compensating => return Ok(saga),
            SagaState::Succeeded | SagaState::Compensated => {
                return Err(OrderError::FailedPrecondition(format!(
                    "saga {id} is {}; only a FAILED saga can be resumed",
                    saga.state
                )));
            }
            SagaState::Failed => {}
        }
        saga.reopen();
        saga.updated_at = Utc::now();
        if !self
            .sagas
            .reopen(&saga, &self.settings.owner, self.settings.lease)
            .await?
        {
            // A concurrent call resumed it first.
            return self.get_saga(id).await;
        }
        saga.version += 1;
        info!(saga_id = %id, state = %saga.state, "saga resumed by an operator");
        self.spawn(saga.clone());
        Ok(saga)
    }

    /// Marks a confirmed order paid, with its `OrderPaid` event. Paying a paid order returns
    /// it unchanged.
    ///
    /// # Errors
    ///
    /// [`OrderError::FailedPrecondition`] for an order that is not confirmed.
    #[instrument(skip_all, fields(order_id = %id))]
    pub async fn pay_order(&self, id: OrderId) -> Result<Order, OrderError> {
        let order = self.orders.get(id).await?.ok_or(OrderError::NotFound(id))?;
        match order.status {
            OrderStatus::Paid => Ok(order),
            OrderStatus::Confirmed => {
                let change =
                    OrderChange::new(&order, OrderStatus::Confirmed, OrderStatus::Paid, None);
                self.orders.change_status(&change).await?;
                // Whether this call or a concurrent one paid it, the order is paid now.
                self.orders.get(id).await?.ok_or(OrderError::NotFound(id))
            }
            status => Err(OrderError::FailedPrecondition(format!(
                "order {id} is {}; only a CONFIRMED order can be paid",
                status.as_str()
            ))),
        }
    }

    /// Cancels a pending order with its `OrderCancelled` event. When the order has a saga, the
    /// saga undoes its steps first: this call requests it, waits up to `wait` for it to end,
    /// and returns the order and saga as they are then, so a saga still compensating leaves
    /// the order `PENDING`. Cancelling a cancelled order returns it unchanged.
    ///
    /// # Errors
    ///
    /// [`OrderError::FailedPrecondition`] for a confirmed or paid order, when the saga
    /// confirmed the order before the cancel reached it, and when the saga failed; an invalid
    /// `wait` as for [`Self::place_order`].
    #[instrument(skip_all, fields(order_id = %id))]
    pub async fn cancel_order(
        &self,
        id: OrderId,
        reason: &str,
        wait: Duration,
    ) -> Result<(Order, Option<Saga>), OrderError> {
        let wait = self.checked_wait(wait)?;
        let order = self.orders.get(id).await?.ok_or(OrderError::NotFound(id))?;
        let saga = self.sagas.find_by_order(id).await?;
        match order.status {
            OrderStatus::Cancelled => return Ok((order, saga)),
            OrderStatus::Pending => {}
            status => {
                return Err(OrderError::FailedPrecondition(format!(
                    "order {id} is {}; only a PENDING order can be cancelled",
                    status.as_str()
                )));
            }
        }
        let Some(saga) = saga else {
            let reason = (!reason.is_empty()).then_some(reason);
            let change =
                OrderChange::new(&order, OrderStatus::Pending, OrderStatus::Cancelled, reason);
            self.orders.change_status(&change).await?;
            return Ok((self.cancelled(id).await?, None));
        };
        if saga.state == SagaState::Running {
            self.sagas.request_cancel(saga.id).await?;
            // A driver in this process stops its backoff at once; one elsewhere reads the
            // flag before its next call.
            if let Some(progress) = self
                .progress
                .lock()
                .expect("progress map lock")
                .get(&saga.id)
            {
                progress.cancel.notify_one();
            }
        }
        let saga = self.wait_for(saga.id, wait).await?;
        match saga.state {
            SagaState::Succeeded => Err(OrderError::FailedPrecondition(format!(
                "saga {} confirmed order {id} before the cancel reached it; the order stays CONFIRMED",
                saga.id
            ))),
            SagaState::Failed => Err(OrderError::FailedPrecondition(format!(
                "saga {} of order {id} FAILED: {}; fix the cause, then call ResumeSaga",
                saga.id,
                saga.error.as_deref().unwrap_or("see GetSaga")
            ))),
            // Compensated, or still under way: the order is as the saga left it.
            _ => {
                let order = self.orders.get(id).await?.ok_or(OrderError::NotFound(id))?;
                Ok((order, Some(saga)))
            }
        }
    }

    async fn cancelled(&self, id: OrderId) -> Result<Order, OrderError> {
        let order = self.orders.get(id).await?.ok_or(OrderError::NotFound(id))?;
        match order.status {
            OrderStatus::Cancelled => Ok(order),
            status => Err(OrderError::FailedPrecondition(format!(
                "order {id} became {} before the cancel took effect",
                status.as_str()
            ))),
        }
    }

    /// Leases sagas whose owner is gone and drives them in the background, keeping at most
    /// `limit` running in this process. Returns how many it took.
    ///
    /// # Errors
    ///
    /// Storage failures of the claim.
    pub async fn resume_stalled(self: &Arc<Self>, limit: u32) -> Result<usize, RepoError> {
        let running = u32::try_from(self.tasks.len()).unwrap_or(u32::MAX);
        let room = limit.saturating_sub(running);
        if room == 0 || self.shutdown.is_cancelled() {
            return Ok(0);
        }
        let sagas = self
            .sagas
            .claim_stalled(&self.settings.owner, room, self.settings.lease)
            .await?;
        let count = sagas.len();
        for saga in sagas {
            info!(saga_id = %saga.id, state = %saga.state, step = %saga.current_step(), "resuming saga");
            metrics::counter!("sagas_resumed_total").increment(1);
            self.spawn(saga);
        }
        Ok(count)
    }

    /// Waits up to `grace` for the drivers to stop after the shutdown token fired. Each stops
    /// at its next save or backoff and releases its lease.
    pub async fn shut_down(&self, grace: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                running = self.tasks.len(),
                "sagas still running at shutdown; workers resume them after their lease"
            );
        }
    }

    fn spawn(self: &Arc<Self>, saga: Saga) {
        let progress = Progress {
            state: watch::channel(saga.state).0,
            cancel: Arc::new(Notify::new()),
        };
        self.progress
            .lock()
            .expect("progress map lock")
            .insert(saga.id, progress);
        let this = Arc::clone(self);
        let span = info_span!("saga", saga_id = %saga.id, order_id = %saga.order_id);
        self.tasks.spawn(
            async move {
                let id = saga.id;
                this.drive(saga).await;
                this.progress.lock().expect("progress map lock").remove(&id);
            }
            .instrument(span),
        );
    }

    /// Reads the saga until it is final or `wait` has passed. For a saga this process drives,
    /// the waiter sleeps until the driver reports a final state, then reads the saga once.
    /// Other sagas are read again every 200 ms.
    async fn wait_for(&self, id: SagaId, wait: Duration) -> Result<Saga, OrderError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let saga = self.get_saga(id).await?;
            if saga.state.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(saga);
            }
            let receiver = self
                .progress
                .lock()
                .expect("progress map lock")
                .get(&id)
                .map(|progress| progress.state.subscribe());
            match receiver {
                Some(mut receiver) => {
                    // Ends early, with an error, when the driver stops without a final
                    // state, and the next pass then polls.
                    // The guard that `wait_for` returns must not live across an await.
                    let ended = async {
                        let _ = receiver.wait_for(SagaState::is_final).await.is_ok();
                    };
                    tokio::select! {
                        () = ended => {}
                        () = tokio::time::sleep_until(deadline) => {}
                        () = self.shutdown.cancelled() => return self.get_saga(id).await,
                    }
                }
                None => {
                    let poll = tokio::time::sleep_until(
                        deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                    );
                    tokio::select! {
                        () = poll => {}
                        () = self.shutdown.cancelled() => return self.get_saga(id).await,
                    }
                }
            }
        }
    }

    async fn drive(self: &Arc<Self>, mut saga: Saga) {
        match self.run(&mut saga).await {
            Ok(()) => {
                metrics::counter!("sagas_finished_total", "state" => saga.state.as_str())
                    .increment(1);
                info!(state = %saga.state, error = saga.error.as_deref().unwrap_or(""), "saga ended");
            }
            Err(Halt::LeaseLost) => {
                warn!("saga taken over by another process; this one stops driving it")
            }
            Err(Halt::Shutdown) => {
                // Every path to here may hold the lease, so it is released once here.
                match self.sagas.release(saga.id, &self.settings.owner).await {
                    Ok(()) => info!("saga left for a worker at shutdown"),
                    Err(error) => {
                        warn!(error = %error, "failed to release the saga's lease at shutdown; a worker resumes it once the lease passes")
                    }
                }
            }
            Err(Halt::Crash) => warn!("saga driver stopped by a fail point"),
            Err(Halt::Storage(error)) => {
                error!(error = %error, "saga stopped on a storage failure; a worker resumes it after its lease");
            }
        }
    }

    async fn run(&self, saga: &mut Saga) -> Result<(), Halt> {
        let order = self.orders.get(saga.order_id).await?.ok_or_else(|| {
            Halt::Storage(RepoError::Other(
                format!("order {} of saga {} is missing", saga.order_id, saga.id).into(),
            ))
        })?;
        loop {
            match saga.state {
                SagaState::Running => self.run_forward(saga, &order).await?,
                SagaState::Compensating => self.run_compensation(saga, &order).await?,
                _ => return Ok(()),
            }
        }
    }

    async fn run_forward(&self, saga: &mut Saga, order: &Order) -> Result<(), Halt> {
        for name in [StepName::ReserveStock, StepName::FreezeBalance] {
            if saga.succeeded(name) {
                continue;
            }
            self.checkpoint(name)?;
            if self.cancel_requested(saga).await? {
                saga.compensate(CANCELLED_BY_CLIENT.into(), Utc::now());
                return self.save(saga, None).await;
            }
            if let StepEnd::GaveUp(reason) = self.forward_step(saga, order, name).await? {
                saga.compensate(reason, Utc::now());
                return self.save(saga, None).await;
            }
        }
        if saga.step(StepName::ConfirmStock).is_none() && self.cancel_requested(saga).await? {
            saga.compensate(CANCELLED_BY_CLIENT.into(), Utc::now());
            return self.save(saga, None).await;
        }
        for name in [StepName::ConfirmStock, StepName::ConfirmPayment] {
            if saga.succeeded(name) {
                continue;
            }
            self.checkpoint(name)?;
            if let Err(reason) = self.settling_step(saga, order, name).await? {
                error!(error = %reason, "saga failed while confirming; resume it with ResumeSaga once the cause is fixed");
                saga.fail(reason);
                return self.save(saga, None).await;
            }
        }
        self.checkpoint(StepName::ConfirmOrder)?;
        let now = Utc::now();
        saga.finish(StepName::ConfirmOrder, SagaState::Succeeded, now);
        let change = OrderChange::new(order, OrderStatus::Pending, OrderStatus::Confirmed, None);
        self.save(saga, Some(&change)).await
    }

    async fn run_compensation(&self, saga: &mut Saga, order: &Order) -> Result<(), Halt> {
        info!(
            reason = saga.error.as_deref().unwrap_or(""),
            "saga compensating"
        );
        let mut failures = Vec::new();
        for (forward, undo) in [
            (StepName::FreezeBalance, StepName::UnfreezeBalance),
            (StepName::ReserveStock, StepName::ReleaseStock),
        ] {
            if !saga.needs_compensation(forward) || saga.succeeded(undo) {
                continue;
            }
            self.checkpoint(undo)?;
            // One compensation that fails does not stop the others: each undoes a different
            // participant's step.
            if let Err(reason) = self.settling_step(saga, order, undo).await? {
                failures.push(reason);
            }
        }
        if !failures.is_empty() {
            saga.fail_compensation(&failures.join("; "));
            error!(
                error = saga.error.as_deref().unwrap_or(""),
                "saga failed while compensating; resume it with ResumeSaga once the cause is fixed"
            );
            return self.save(saga, None).await;
        }
        self.checkpoint(StepName::CancelOrder)?;
        let now = Utc::now();
        saga.finish(StepName::CancelOrder, SagaState::Compensated, now);
        let change = OrderChange::new(
            order,
            OrderStatus::Pending,
            OrderStatus::Cancelled,
            saga.error.as_deref(),
        );
        self.save(saga, Some(&change)).await
    }

    /// Runs a forward step until the participant accepts it, rejects it, or its deadline
    /// passes. Transient failures and calls that timed out are repeated with backoff.
    async fn forward_step(
        &self,
        saga: &mut Saga,
        order: &Order,
        name: StepName,
    ) -> Result<StepEnd, Halt> {
        let now = Utc::now();
        let deadline = saga
            .step(name)
            .filter(|step| step.outcome == StepOutcome::Pending)
            .and(saga.deadline)
            .unwrap_or_else(|| now + self.settings.step_deadline);
        saga.begin_step(name, Some(deadline), now);
        self.save(saga, None).await?;
        loop {
            // A cancel takes effect before the next call and wins over the deadline.
            if saga.attempts(name) > 0 && self.cancel_requested(saga).await? {
                return Ok(StepEnd::GaveUp(CANCELLED_BY_CLIENT.into()));
            }
            let remaining = (deadline - Utc::now()).to_std().unwrap_or_default();
            if remaining.is_zero() {
                let last = saga
                    .step(name)
                    .and_then(|step| step.last_error.clone())
                    .unwrap_or_default();
                return Ok(StepEnd::GaveUp(format!(
                    "{name} did not succeed within its deadline: {last}"
                )));
            }
            let result = self
                .call(
                    saga.id,
                    order,
                    name,
                    remaining.min(self.settings.call_timeout),
                )
                .await;
            record_call(name, &result);
            match result {
                Ok(()) => {
                    saga.record_attempt(name, None);
                    saga.finish_step(name, StepOutcome::Succeeded, Utc::now());
                    self.save(saga, None).await?;
                    return Ok(StepEnd::Done);
                }
                Err(error) => {
                    saga.record_attempt(name, Some(error.message.clone()));
                    match error.kind {
                        CallErrorKind::Rejected | CallErrorKind::NonRetryable => {
                            saga.finish_step(name, StepOutcome::Rejected, Utc::now());
                            return Ok(StepEnd::GaveUp(format!(
                                "{name} was rejected: {}",
                                error.message
                            )));
                        }
                        CallErrorKind::Transient | CallErrorKind::Unknown => {
                            warn!(step = %name, attempts = saga.attempts(name), error = %error.message, "participant call failed; retrying until the step's deadline");
                            self.save(saga, None).await?;
                            let remaining = (deadline - Utc::now()).to_std().unwrap_or_default();
                            self.back_off(saga.id, saga.attempts(name), remaining)
                                .await?;
                        }
                    }
                }
            }
        }
    }

    /// Runs a step that must not be abandoned halfway (a confirmation or a compensation)
    /// until it succeeds or its retry budget is spent. `Err` carries the reason to fail the
    /// saga with.
    async fn settling_step(
        &self,
        saga: &mut Saga,
        order: &Order,
        name: StepName,
    ) -> Result<Result<(), String>, Halt> {
        saga.begin_step(name, None, Utc::now());
        self.save(saga, None).await?;
        loop {
            let attempts = saga.attempts(name);
            if attempts >= self.settings.max_attempts {
                let last = saga
                    .step(name)
                    .and_then(|step| step.last_error.clone())
                    .unwrap_or_default();
                saga.finish_step(name, StepOutcome::Failed, Utc::now());
                return Ok(Err(format!(
                    "{name} failed {attempts} times; last error: {last}"
                )));
            }
            let result = self
                .call(saga.id, order, name, self.settings.call_timeout)
                .await;
            record_call(name, &result);
            match result {
                Ok(()) => {
                    saga.record_attempt(name, None);
                    saga.finish_step(name, StepOutcome::Succeeded, Utc::now());
                    self.save(saga, None).await?;
                    return Ok(Ok(()));
                }
                Err(error) => {
                    saga.record_attempt(name, Some(error.message.clone()));
                    match error.kind {
                        CallErrorKind::Rejected | CallErrorKind::NonRetryable => {
                            saga.finish_step(name, StepOutcome::Failed, Utc::now());
                            return Ok(Err(format!("{name} was rejected: {}", error.message)));
                        }
                        CallErrorKind::Transient | CallErrorKind::Unknown => {
                            warn!(step = %name, attempts = saga.attempts(name), error = %error.message, "participant call failed; retrying");
                            self.save(saga, None).await?;
                            self.back_off(saga.id, saga.attempts(name), self.settings.backoff_max)
                                .await?;
                        }
                    }
                }
            }
        }
    }

    async fn call(
        &self,
        saga: SagaId,
        order: &Order,
        name: StepName,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let (user, amount) = (&order.user_id, order.total_amount);
        match name {
            StepName::ReserveStock => self.inventory.reserve(saga, &order.items, timeout).await,
            StepName::ConfirmStock => self.inventory.confirm(saga, &order.items, timeout).await,
            StepName::ReleaseStock => self.inventory.release(saga, &order.items, timeout).await,
            StepName::FreezeBalance => self.payment.freeze(saga, user, amount, timeout).await,
            StepName::ConfirmPayment => self.payment.confirm(saga, user, amount, timeout).await,
            StepName::UnfreezeBalance => self.payment.unfreeze(saga, user, amount, timeout).await,
            StepName::CreateOrder | StepName::ConfirmOrder | StepName::CancelOrder => Ok(()),
        }
    }

    /// Sleeps before the next call: exponential with jitter, at most `limit`. A cancel of the
    /// saga cuts the sleep short, and so does shutdown, which stops the driver.
    async fn back_off(
        &self,
        saga: SagaId,
        failed_attempts: u32,
        limit: Duration,
    ) -> Result<(), Halt> {
        let delay = ExponentialBuilder::new()
            .with_min_delay(self.settings.backoff_min)
            .with_max_delay(self.settings.backoff_max)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(failed_attempts.saturating_sub(1) as usize)
            .unwrap_or(self.settings.backoff_max)
            .min(limit);
        let cancel = self
            .progress
            .lock()
            .expect("progress map lock")
            .get(&saga)
            .map(|progress| Arc::clone(&progress.cancel));
        let cancelled = async {
            match cancel {
                Some(cancel) => cancel.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = cancelled => Ok(()),
            () = self.shutdown.cancelled() => Err(Halt::Shutdown),
        }
    }

    async fn cancel_requested(&self, saga: &mut Saga) -> Result<bool, Halt> {
        if !saga.cancel_requested {
            saga.cancel_requested = self
                .sagas
                .get(saga.id)
                .await?
                .is_some_and(|stored| stored.cancel_requested);
        }
        Ok(saga.cancel_requested)
    }

    /// Saves the saga and wakes its waiters. During shutdown it saves nothing but a final
    /// state, and the driver releases the lease.
    async fn save(&self, saga: &mut Saga, change: Option<&OrderChange>) -> Result<(), Halt> {
        if self.shutdown.is_cancelled() && change.is_none() && !saga.state.is_final() {
            return Err(Halt::Shutdown);
        }
        saga.updated_at = Utc::now();
        if !self
            .sagas
            .save(saga, &self.settings.owner, self.settings.lease, change)
            .await?
        {
            return Err(Halt::LeaseLost);
        }
        saga.version += 1;
        if let Some(progress) = self
            .progress
            .lock()
            .expect("progress map lock")
            .get(&saga.id)
        {
            progress.state.send_replace(saga.state);
        }
        Ok(())
    }

    /// Checks the fail point before `step`. With the `failpoints` feature and `FAILPOINTS` set to
    /// `saga::before::STEP=return`, the driver stops here without releasing its lease, as if
    /// the process had died. Tests use it to kill a server at a known step boundary.
    fn checkpoint(&self, step: StepName) -> Result<(), Halt> {
        #[cfg(feature = "failpoints")]
        {
            let name = format!("saga::before::{step}");
            if fail::eval(&name, |_| ()).is_some() {
                return Err(Halt::Crash);
            }
        }
        let _ = step;
        Ok(())
    }
}

fn record_call(step: StepName, result: &Result<(), CallError>) {
    let outcome = match result {
        Ok(()) => "ok",
        Err(error) => match error.kind {
            CallErrorKind::Rejected => "rejected",
            CallErrorKind::Transient => "transient",
            CallErrorKind::Unknown => "unknown",
            CallErrorKind::NonRetryable => "non_retryable",
        },
    };
    metrics::counter!("saga_calls_total", "step" => step.as_str(), "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use async_trait::async_trait;

    use super::*;
    use crate::{
        order::{Currency, OrderItem, OrderPage, PageQuery, RequestId, UserId},
        ports::CallError,
    };

    #[derive(Default)]
    struct MemoryOrders {
        orders: Mutex<Vec<Order>>,
        events: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl OrderRepo for MemoryOrders {
        async fn create_with_event(&self, _: &Order, _: &NewOutboxEvent) -> Result<(), RepoError> {
            unimplemented!("sagas create orders through SagaRepo::start")
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

        async fn find_by_request_id(&self, id: &RequestId) -> Result<Option<Order>, RepoError> {
            Ok(self
                .orders
                .lock()
                .unwrap()
                .iter()
                .find(|o| &o.request_id == id)
                .cloned())
        }

        async fn list(&self, _: &PageQuery) -> Result<OrderPage, RepoError> {
            unimplemented!("not used by these tests")
        }

        async fn change_status(&self, change: &OrderChange) -> Result<bool, RepoError> {
            let mut orders = self.orders.lock().unwrap();
            let Some(order) = orders
                .iter_mut()
                .find(|o| o.id == change.order_id && o.status == change.from)
            else {
                return Ok(false);
            };
            order.status = change.to;
            self.events
                .lock()
                .unwrap()
                .push(change.event.event_type.clone());
            Ok(true)
        }
    }

    struct MemorySagas {
        orders: Arc<MemoryOrders>,
        sagas: Mutex<Vec<Saga>>,
    }

    #[async_trait]
    impl SagaRepo for MemorySagas {
        async fn start(
            &self,
            order: &Order,
            event: &NewOutboxEvent,
            saga: &Saga,
            _: &str,
            _: Duration,
        ) -> Result<(), RepoError> {
            self.orders.orders.lock().unwrap().push(order.clone());
            self.orders
                .events
                .lock()
                .unwrap()
                .push(event.event_type.clone());
            self.sagas.lock().unwrap().push(saga.clone());
            Ok(())
        }

        async fn save(
            &self,
            saga: &Saga,
            _: &str,
            _: Duration,
            change: Option<&OrderChange>,
        ) -> Result<bool, RepoError> {
            if let Some(change) = change {
                assert!(
                    self.orders.change_status(change).await?,
                    "order change applies"
                );
            }
            let mut sagas = self.sagas.lock().unwrap();
            let stored = sagas
                .iter_mut()
                .find(|s| s.id == saga.id)
                .expect("saga stored");
            if stored.version != saga.version {
                return Ok(false);
            }
            let cancel_requested = stored.cancel_requested;
            *stored = saga.clone();
            stored.version += 1;
            stored.cancel_requested |= cancel_requested;
            Ok(true)
        }

        async fn get(&self, id: SagaId) -> Result<Option<Saga>, RepoError> {
            Ok(self
                .sagas
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.id == id)
                .cloned())
        }

        async fn find_by_order(&self, order_id: OrderId) -> Result<Option<Saga>, RepoError> {
            Ok(self
                .sagas
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.order_id == order_id)
                .cloned())
        }

        async fn request_cancel(&self, id: SagaId) -> Result<bool, RepoError> {
            let mut sagas = self.sagas.lock().unwrap();
            let saga = sagas.iter_mut().find(|s| s.id == id).expect("saga stored");
            saga.cancel_requested = saga.state == SagaState::Running;
            Ok(saga.cancel_requested)
        }

        async fn claim_stalled(
            &self,
            _: &str,
            _: u32,
            _: Duration,
        ) -> Result<Vec<Saga>, RepoError> {
            Ok(Vec::new())
        }

        async fn reopen(&self, saga: &Saga, _: &str, _: Duration) -> Result<bool, RepoError> {
            let mut sagas = self.sagas.lock().unwrap();
            let stored = sagas
                .iter_mut()
                .find(|s| s.id == saga.id)
                .expect("saga stored");
            if stored.version != saga.version || stored.state != SagaState::Failed {
                return Ok(false);
            }
            *stored = saga.clone();
            stored.version += 1;
            Ok(true)
        }

        async fn release(&self, _: SagaId, _: &str) -> Result<(), RepoError> {
            Ok(())
        }
    }

    /// Fake participants: each operation returns the next result of its script, or `Ok` when
    /// the script is empty.
    #[derive(Default)]
    struct Participants {
        scripts: Mutex<HashMap<&'static str, VecDeque<Result<(), CallError>>>>,
        calls: Mutex<Vec<&'static str>>,
    }

    impl Participants {
        fn script(&self, operation: &'static str, answers: Vec<Result<(), CallError>>) {
            self.scripts
                .lock()
                .unwrap()
                .insert(operation, answers.into());
        }

        fn answer(&self, operation: &'static str) -> Result<(), CallError> {
            self.calls.lock().unwrap().push(operation);
            let mut scripts = self.scripts.lock().unwrap();
            let script = scripts.entry(operation).or_default();
            if script.len() > 1 {
                script.pop_front().unwrap()
            } else {
                script.front().cloned().unwrap_or(Ok(()))
            }
        }

        fn calls(&self) -> Vec<&'static str> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl InventoryClient for Participants {
        async fn reserve(&self, _: SagaId, _: &[OrderItem], _: Duration) -> Result<(), CallError> {
            self.answer("reserve")
        }
        async fn confirm(&self, _: SagaId, _: &[OrderItem], _: Duration) -> Result<(), CallError> {
            self.answer("confirm_stock")
        }
        async fn release(&self, _: SagaId, _: &[OrderItem], _: Duration) -> Result<(), CallError> {
            self.answer("release")
        }
    }

    #[async_trait]
    impl PaymentClient for Participants {
        async fn freeze(
            &self,
            _: SagaId,
            _: &UserId,
            _: i64,
            _: Duration,
        ) -> Result<(), CallError> {
            self.answer("freeze")
        }
        async fn confirm(
            &self,
            _: SagaId,
            _: &UserId,
            _: i64,
            _: Duration,
        ) -> Result<(), CallError> {
            self.answer("confirm_payment")
        }
        async fn unfreeze(
            &self,
            _: SagaId,
            _: &UserId,
            _: i64,
            _: Duration,
        ) -> Result<(), CallError> {
            self.answer("unfreeze")
        }
    }

    fn error(kind: CallErrorKind) -> Result<(), CallError> {
        Err(CallError {
            kind,
            message: format!("{kind:?}"),
        })
    }

    struct Harness {
        sagas: Arc<OrderSagaUseCase>,
        orders: Arc<MemoryOrders>,
        participants: Arc<Participants>,
    }

    fn harness() -> Harness {
        let orders = Arc::new(MemoryOrders::default());
        let participants = Arc::new(Participants::default());
        let repo = Arc::new(MemorySagas {
            orders: Arc::clone(&orders),
            sagas: Mutex::new(Vec::new()),
        });
        let sagas = OrderSagaUseCase::new(
            orders.clone(),
            repo,
            participants.clone(),
            participants.clone(),
            SagaSettings {
                owner: "test".into(),
                call_timeout: Duration::from_millis(50),
                step_deadline: Duration::from_millis(200),
                max_attempts: 3,
                backoff_min: Duration::from_millis(1),
                backoff_max: Duration::from_millis(5),
                lease: Duration::from_secs(30),
                max_wait: Duration::from_secs(10),
            },
            CancellationToken::new(),
        );
        Harness {
            sagas,
            orders,
            participants,
        }
    }

    fn request(request_id: &str) -> PlaceOrder {
        PlaceOrder {
            order: CreateOrder::new(
                RequestId::parse(request_id).unwrap(),
                UserId::parse("alice").unwrap(),
                Currency::parse("EUR").unwrap(),
                vec![OrderItem::parse(0, "sku-1", 2, 500).unwrap()],
            )
            .unwrap(),
            wait: Duration::from_secs(10),
        }
    }

    fn events(harness: &Harness) -> Vec<String> {
        harness.orders.events.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn every_step_succeeds() {
        let harness = harness();

        let (order, saga) = harness.sagas.place_order(request("r-1")).await.unwrap();

        assert_eq!(saga.state, SagaState::Succeeded);
        assert_eq!(order.status, OrderStatus::Confirmed);
        assert_eq!(
            harness.participants.calls(),
            ["reserve", "freeze", "confirm_stock", "confirm_payment"]
        );
        assert_eq!(events(&harness), ["OrderCreated", "OrderConfirmed"]);
        let names: Vec<_> = saga.steps.iter().map(|step| step.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "create_order",
                "reserve_stock",
                "freeze_balance",
                "confirm_stock",
                "confirm_payment",
                "confirm_order"
            ]
        );
    }

    #[tokio::test]
    async fn rejected_freeze_releases_stock_only() {
        let harness = harness();
        harness
            .participants
            .script("freeze", vec![error(CallErrorKind::Rejected)]);

        let (order, saga) = harness.sagas.place_order(request("r-1")).await.unwrap();

        assert_eq!(saga.state, SagaState::Compensated);
        assert_eq!(order.status, OrderStatus::Cancelled);
        assert_eq!(
            harness.participants.calls(),
            ["reserve", "freeze", "release"]
        );
        assert!(saga.error.unwrap().contains("freeze_balance was rejected"));
        assert_eq!(events(&harness), ["OrderCreated", "OrderCancelled"]);
    }

    #[tokio::test]
    async fn transient_failures_are_retried() {
        let harness = harness();
        harness.participants.script(
            "reserve",
            vec![
                error(CallErrorKind::Transient),
                error(CallErrorKind::Unknown),
                Ok(()),
            ],
        );

        let (_, saga) = harness.sagas.place_order(request("r-1")).await.unwrap();

        assert_eq!(saga.state, SagaState::Succeeded);
        assert_eq!(saga.step(StepName::ReserveStock).unwrap().attempts, 3);
    }

    #[tokio::test]
    async fn unanswered_step_is_compensated_after_its_deadline() {
        let harness = harness();
        harness
            .participants
            .script("reserve", vec![error(CallErrorKind::Unknown)]);

        let (order, saga) = harness.sagas.place_order(request("r-1")).await.unwrap();

        assert_eq!(saga.state, SagaState::Compensated);
        assert_eq!(order.status, OrderStatus::Cancelled);
        let calls = harness.participants.calls();
        assert_eq!(calls.last(), Some(&"release"), "{calls:?}");
        assert!(!calls.contains(&"freeze"));
    }

    #[tokio::test]
    async fn invalid_request_compensates_without_retry() {
        let harness = harness();
        harness
            .participants
            .script("reserve", vec![error(CallErrorKind::NonRetryable)]);

        let (_, saga) = harness.sagas.place_order(request("r-1")).await.unwrap();

        assert_eq!(saga.state, SagaState::Compensated);
        assert_eq!(harness.participants.calls(), ["reserve"]);
    }

    #[tokio::test]
    async fn compensation_that_keeps_failing_ends_failed() {
        let harness = harness();
        harness
            .participants
            .script("freeze", vec![error(CallErrorKind::Rejected)]);
        harness
            .participants
            .script("release", vec![error(CallErrorKind::Transient)]);

        let (order, saga) = harness.sagas.place_order(request("r-1")).await.unwrap();

        assert_eq!(saga.state, SagaState::Failed);
        assert_eq!(order.status, OrderStatus::Pending);
        let releases = harness
            .participants
            .calls()
            .iter()
            .filter(|c| **c == "release")
            .count();
        assert_eq!(releases, 3, "max_attempts calls, then no more");
        let error = saga.error.unwrap();
        assert!(error.contains("release_stock failed 3 times"), "{error}");
        assert!(error.contains("freeze_balance was rejected"), "{error}");
    }

    #[tokio::test]
    async fn failed_compensation_still_runs_the_others() {
        let harness = harness();
        harness
            .participants
            .script("freeze", vec![error(CallErrorKind::Unknown)]);
        harness
            .participants
            .script("unfreeze", vec![error(CallErrorKind::Transient)]);

        let (order, saga) = harness.sagas.place_order(request("r-1")).await.unwrap();

        assert_eq!(saga.state, SagaState::Failed);
        assert_eq!(order.status, OrderStatus::Pending);
        assert!(saga.succeeded(StepName::ReleaseStock), "{saga:?}");
        assert!(harness.participants.calls().contains(&"release"));
    }

    #[tokio::test]
    async fn resumed_saga_finishes_its_compensation() {
        let harness = harness();
        harness
            .participants
            .script("freeze", vec![error(CallErrorKind::Rejected)]);
        harness
            .participants
            .script("release", vec![error(CallErrorKind::Transient)]);
        let (order, failed) = harness.sagas.place_order(request("r-1")).await.unwrap();
        assert_eq!(failed.state, SagaState::Failed);
        harness.participants.script("release", vec![Ok(())]);

        let resumed = harness.sagas.resume_saga(failed.id).await.unwrap();
        assert_eq!(resumed.state, SagaState::Compensating);
        let saga = harness
            .sagas
            .wait_for(failed.id, Duration::from_secs(10))
            .await
            .unwrap();

        assert_eq!(saga.state, SagaState::Compensated, "{saga:?}");
        let cancelled = harness.orders.get(order.id).await.unwrap().unwrap();
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        assert!(
            saga.error
                .unwrap()
                .starts_with("freeze_balance was rejected")
        );
        let error = harness.sagas.resume_saga(failed.id).await.unwrap_err();
        assert!(
            matches!(error, OrderError::FailedPrecondition(_)),
            "{error}"
        );
    }

    #[tokio::test]
    async fn repeated_request_returns_the_first_saga() {
        let harness = harness();

        let (first_order, first) = harness.sagas.place_order(request("r-1")).await.unwrap();
        let (order, saga) = harness.sagas.place_order(request("r-1")).await.unwrap();

        assert_eq!((order.id, saga.id), (first_order.id, first.id));
        assert_eq!(harness.participants.calls().len(), 4, "no second saga ran");
    }

    #[tokio::test]
    async fn confirmed_order_can_be_paid_once() {
        let harness = harness();
        let (order, _) = harness.sagas.place_order(request("r-1")).await.unwrap();

        let paid = harness.sagas.pay_order(order.id).await.unwrap();
        let again = harness.sagas.pay_order(order.id).await.unwrap();

        assert_eq!(
            (paid.status, again.status),
            (OrderStatus::Paid, OrderStatus::Paid)
        );
        assert_eq!(
            events(&harness),
            ["OrderCreated", "OrderConfirmed", "OrderPaid"]
        );
        let error = harness
            .sagas
            .cancel_order(order.id, "", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(
            matches!(error, OrderError::FailedPrecondition(_)),
            "{error}"
        );
    }
}
