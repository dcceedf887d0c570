//! Translation of business errors into gRPC statuses.

use biz::{OrderError, ValidationError};
use tonic::Status;
use tracing::error;

/// Maps an [`OrderError`] to the status a client can act on. Storage failures are logged here,
/// once, because no layer above this one logs them.
pub fn status_from(error: OrderError) -> Status {
    match error {
        OrderError::Invalid(invalid) => invalid_argument(invalid),
        OrderError::NotFound(_) | OrderError::SagaNotFound(_) | OrderError::NoSaga(_) => {
            Status::not_found(error.to_string())
        }
        OrderError::FailedPrecondition(_) => Status::failed_precondition(error.to_string()),
        OrderError::RequestIdReused(_) => Status::already_exists(error.to_string()),
        OrderError::Unavailable(ref source) => {
            error!(error = %source, "database unavailable");
            Status::unavailable(error.to_string())
        }
        OrderError::Internal(ref source) => {
            error!(error = %source, "database operation failed");
            Status::internal("internal error")
        }
    }
}

pub(crate) fn invalid_argument(error: ValidationError) -> Status {
    Status::invalid_argument(error.to_string())
}

#[cfg(test)]
mod tests {
    use biz::OrderId;
    use tonic::Code;

    use super::*;

    #[test]
    fn errors_map_to_codes() {
        let cases = [
            (
                OrderError::Invalid(ValidationError::new("currency", "bad")),
                Code::InvalidArgument,
            ),
            (OrderError::NotFound(OrderId::new()), Code::NotFound),
            (
                OrderError::RequestIdReused("r-1".into()),
                Code::AlreadyExists,
            ),
            (OrderError::Unavailable("down".into()), Code::Unavailable),
            (OrderError::Internal("broken".into()), Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(status_from(error).code(), code);
        }
    }

    #[test]
    fn invalid_argument_names_field() {
        let status = status_from(OrderError::Invalid(ValidationError::new(
            "items[0].quantity",
            "must be at least 1",
        )));

        assert_eq!(status.message(), "items[0].quantity: must be at least 1");
    }

    #[test]
    fn internal_error_hides_details() {
        let status = status_from(OrderError::Internal("password=hunter2".into()));

        assert_eq!(status.message(), "internal error");
    }
}
