//! `OutboxAdminService`: the `order.v1.OutboxAdmin` gRPC handlers for operators.

use std::sync::Arc;

use api::order::v1::{self as pb, outbox_admin_server::OutboxAdmin as OutboxAdminApi};
use biz::{
    OutboxAdminError, OutboxAdminUseCase, OutboxRecord, OutboxStatus, ValidationError, error::quote,
};
use chrono::Utc;
use tonic::{Request, Response, Status};
use tracing::{error, instrument};
use uuid::Uuid;

use crate::{convert::timestamp, error::invalid_argument, order::page_size};

pub struct OutboxAdminService {
    admin: Arc<OutboxAdminUseCase>,
}

impl OutboxAdminService {
    pub fn new(admin: Arc<OutboxAdminUseCase>) -> Self {
        Self { admin }
    }
}

/// Maps an [`OutboxAdminError`] to a status, logging storage failures once.
fn status_from(error: OutboxAdminError) -> Status {
    match error {
        OutboxAdminError::Invalid(invalid) => invalid_argument(invalid),
        OutboxAdminError::NotFound(_) => Status::not_found(error.to_string()),
        OutboxAdminError::NotDead { .. } => Status::failed_precondition(error.to_string()),
        OutboxAdminError::Unavailable(ref source) => {
            error!(error = %source, "database unavailable");
            Status::unavailable(error.to_string())
        }
        OutboxAdminError::Internal(ref source) => {
            error!(error = %source, "database operation failed");
            Status::internal("internal error")
        }
    }
}

fn status_to_pb(status: OutboxStatus) -> pb::OutboxEventStatus {
    match status {
        OutboxStatus::Pending => pb::OutboxEventStatus::Pending,
        OutboxStatus::Sent => pb::OutboxEventStatus::Sent,
        OutboxStatus::Failed => pb::OutboxEventStatus::Failed,
        OutboxStatus::Dead => pb::OutboxEventStatus::Dead,
    }
}

fn record_to_pb(record: OutboxRecord) -> pb::OutboxEvent {
    pb::OutboxEvent {
        id: record.id,
        event_id: record.event_id.to_string(),
        aggregate_type: record.aggregate_type,
        aggregate_id: record.aggregate_id,
        event_type: record.event_type,
        status: status_to_pb(record.status) as i32,
        retry_count: i32::try_from(record.retry_count).unwrap_or(i32::MAX),
        last_error: record.last_error.unwrap_or_default(),
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
    }
}

fn page_from(request: &pb::ListDeadEventsRequest) -> Result<(Option<i64>, u32), ValidationError> {
    let limit = page_size(request.page_size)?;
    if request.page_token.is_empty() {
        return Ok((None, limit));
    }
    let after = request.page_token.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ValidationError::new(
            "page_token",
            "is not a token from a previous ListDeadEvents response; send it unchanged or leave it empty",
        )
    })?;
    Ok((Some(after), limit))
}

#[tonic::async_trait]
impl OutboxAdminApi for OutboxAdminService {
    #[instrument(skip_all, fields(rpc = "ListDeadEvents"))]
    async fn list_dead_events(
        &self,
        request: Request<pb::ListDeadEventsRequest>,
    ) -> Result<Response<pb::ListDeadEventsResponse>, Status> {
        let (after, limit) = page_from(request.get_ref()).map_err(invalid_argument)?;
        let page = self
            .admin
            .list_dead(after, limit)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pb::ListDeadEventsResponse {
            events: page.events.into_iter().map(record_to_pb).collect(),
            next_page_token: page.next_after.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    #[instrument(skip_all, fields(rpc = "RedriveEvent"))]
    async fn redrive_event(
        &self,
        request: Request<pb::RedriveEventRequest>,
    ) -> Result<Response<pb::RedriveEventResponse>, Status> {
        let value = request.into_inner().event_id;
        let event_id = Uuid::parse_str(&value).map_err(|_| {
            invalid_argument(if value.is_empty() {
                ValidationError::new("event_id", "must not be empty")
            } else {
                ValidationError::new("event_id", format!("{} is not a UUID", quote(&value)))
            })
        })?;
        let record = self.admin.redrive(event_id).await.map_err(status_from)?;
        Ok(Response::new(pb::RedriveEventResponse {
            event: Some(record_to_pb(record)),
        }))
    }

    #[instrument(skip_all, fields(rpc = "RedriveDeadEvents"))]
    async fn redrive_dead_events(
        &self,
        _request: Request<pb::RedriveDeadEventsRequest>,
    ) -> Result<Response<pb::RedriveDeadEventsResponse>, Status> {
        let redriven = self.admin.redrive_all().await.map_err(status_from)?;
        Ok(Response::new(pb::RedriveDeadEventsResponse {
            redriven: i64::try_from(redriven).unwrap_or(i64::MAX),
        }))
    }

    #[instrument(skip_all, fields(rpc = "GetOutboxStats"))]
    async fn get_outbox_stats(
        &self,
        _request: Request<pb::GetOutboxStatsRequest>,
    ) -> Result<Response<pb::GetOutboxStatsResponse>, Status> {
        let stats = self.admin.stats().await.map_err(status_from)?;
        let count = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let oldest_unsent_age = stats.oldest_unsent_at.map(|created_at| {
            let age = (Utc::now() - created_at).max(chrono::TimeDelta::zero());
            prost_types::Duration {
                seconds: age.num_seconds(),
                nanos: age.subsec_nanos(),
            }
        });
        Ok(Response::new(pb::GetOutboxStatsResponse {
            pending: count(stats.pending),
            failed: count(stats.failed),
            dead: count(stats.dead),
            sent: count(stats.sent),
            oldest_unsent_age,
        }))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::order::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

    fn list_request(page_size: i32, page_token: &str) -> pb::ListDeadEventsRequest {
        pb::ListDeadEventsRequest {
            page_size,
            page_token: page_token.into(),
        }
    }

    #[test]
    fn dead_event_paging_rules() {
        assert_eq!(
            page_from(&list_request(0, "")).unwrap(),
            (None, DEFAULT_PAGE_SIZE)
        );
        assert_eq!(
            page_from(&list_request(500, "42")).unwrap(),
            (Some(42), MAX_PAGE_SIZE)
        );
        assert_eq!(
            page_from(&list_request(-1, "")).unwrap_err().field,
            "page_size"
        );
        assert_eq!(
            page_from(&list_request(5, "abc")).unwrap_err().field,
            "page_token"
        );
        assert_eq!(
            page_from(&list_request(5, "-3")).unwrap_err().field,
            "page_token"
        );
    }

    #[test]
    fn admin_errors_map_to_codes() {
        let event_id = Uuid::new_v4();
        let cases = [
            (OutboxAdminError::NotFound(event_id), Code::NotFound),
            (
                OutboxAdminError::NotDead {
                    event_id,
                    status: OutboxStatus::Sent,
                },
                Code::FailedPrecondition,
            ),
            (
                OutboxAdminError::Unavailable("down".into()),
                Code::Unavailable,
            ),
            (OutboxAdminError::Internal("broken".into()), Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(status_from(error).code(), code);
        }
    }
}
