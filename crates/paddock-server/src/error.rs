//! The API's error: a status, a machine-readable code and a message,
//! rendered as `{"error": {"code": "...", "message": "..."}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use paddock_sandbox::{Death, ErrorKind, SandboxError};

/// An error answered to a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code (`quota_exceeded`, `not_found`, ...).
    pub code: &'static str,
    /// What happened, for a human.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 410.
    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GONE, "gone", message)
    }
    /// 413.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }
    /// 429.
    pub fn quota(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message)
    }
    /// 503 for a full server.
    pub fn capacity(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "capacity", message)
    }
    /// 503 for a server going away or a pool that is busy.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
    /// 500.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }

    /// Maps a sandbox error (the sandbox's death is handled by the caller,
    /// which also removes it from the registry).
    pub fn from_sandbox(e: &SandboxError) -> ApiError {
        let msg = e.to_string();
        match e {
            SandboxError::Agent(a) => {
                let (status, code) = match a.kind {
                    ErrorKind::InvalidRequest => (StatusCode::BAD_REQUEST, "bad_request"),
                    ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
                    ErrorKind::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
                    ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
                    ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                    ErrorKind::UnknownLanguage => (StatusCode::BAD_REQUEST, "unknown_language"),
                    ErrorKind::ContextDied => (StatusCode::CONFLICT, "context_died"),
                    ErrorKind::ProgramNotFound => (StatusCode::BAD_REQUEST, "program_not_found"),
                    ErrorKind::NotExecutable => (StatusCode::BAD_REQUEST, "not_executable"),
                    ErrorKind::Io => (StatusCode::INTERNAL_SERVER_ERROR, "io"),
                    ErrorKind::Cancelled => (StatusCode::CONFLICT, "cancelled"),
                };
                ApiError::new(status, code, msg)
            }
            SandboxError::ContextDied { .. } => {
                ApiError::new(StatusCode::CONFLICT, "context_died", msg)
            }
            SandboxError::Dead(Death::SetupFailed(_)) | SandboxError::Jail(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "create_failed", msg)
            }
            SandboxError::Dead(_) | SandboxError::ChannelClosed => ApiError::gone(msg),
            SandboxError::Unresponsive(_) => ApiError::unavailable("unresponsive", msg),
            SandboxError::Protocol(_) | SandboxError::Io(_) => ApiError::internal(msg),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        r.extensions_mut().insert(ErrorCode(self.code));
        r
    }
}

/// Marks a response as an API error of this code (for the metrics).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// The code used for a status when the error did not come from us (an
/// extractor's rejection, a panic).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        408 => "timeout",
        409 => "conflict",
        410 => "gone",
        411 => "length_required",
        413 => "too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        429 => "quota_exceeded",
        503 => "unavailable",
        _ if status.is_server_error() => "internal",
        _ => "error",
    }
}
