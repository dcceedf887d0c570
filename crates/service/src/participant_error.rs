//! Translation of participant errors into gRPC statuses.

use biz::participant::ParticipantError;
use tonic::Status;
use tracing::error;

use crate::error::invalid_argument;

/// Maps a [`ParticipantError`] to the status a caller can act on: FAILED_PRECONDITION signals
/// the orchestrator to compensate rather than retry. Storage failures are logged here, once,
/// because no layer above this one logs them.
pub fn participant_status(error: ParticipantError) -> Status {
    match error {
        ParticipantError::Invalid(invalid) => invalid_argument(invalid),
        ParticipantError::NotFound(message) => Status::not_found(message),
        ParticipantError::Rejected(message) => Status::failed_precondition(message),
        ParticipantError::Unavailable(ref source) => {
            error!(error = %source, "database unavailable");
            Status::unavailable(error.to_string())
        }
        ParticipantError::Internal(ref source) => {
            error!(error = %source, "database operation failed");
            Status::internal("internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use biz::ValidationError;
    use tonic::Code;

    use super::*;

    #[test]
    fn errors_map_to_codes() {
        let cases = [
            (
                ParticipantError::Invalid(ValidationError::new("amount", "bad")),
                Code::InvalidArgument,
            ),
            (ParticipantError::NotFound("gone".into()), Code::NotFound),
            (
                ParticipantError::Rejected("short".into()),
                Code::FailedPrecondition,
            ),
            (
                ParticipantError::Unavailable("down".into()),
                Code::Unavailable,
            ),
            (ParticipantError::Internal("broken".into()), Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(participant_status(error).code(), code);
        }
    }

    #[test]
    fn rejection_keeps_message() {
        let status = participant_status(ParticipantError::Rejected("SKU \"pen\" is short".into()));

        assert_eq!(status.message(), "SKU \"pen\" is short");
    }

    #[test]
    fn internal_error_hides_details() {
        let status = participant_status(ParticipantError::Internal("password=hunter2".into()));

        assert_eq!(status.message(), "internal error");
    }
}
