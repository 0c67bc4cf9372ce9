//! zync's one error type: client errors carry safe messages in zync's wire shapes; database errors become an
//! opaque 500, logged once.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No usable `Authorization` header.
    #[error("authentication required")]
    Unauthenticated,
    /// A token was sent but it is not the configured one.
    #[error("wrong token")]
    Forbidden,
    /// The body is not JSON, or lacks a key the request cannot do without.
    #[error("{0}")]
    BadRequest(String),
    /// zync's `{"errors":{field:[messages]}}`; 422 is also what tells system to send a missing dependency first.
    #[error("validation failed on {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The notification names a tenant zync has never been told about.
    #[error("{0}")]
    UnknownTenant(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl ApiError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                [
                    (header::WWW_AUTHENTICATE, "Token realm=\"Application\""),
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                ],
                "HTTP Token: Access denied.\n",
            )
                .into_response(),
            Self::Forbidden => (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "HTTP Token: Access denied.\n",
            )
                .into_response(),
            Self::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                Json(json!({"status": 400, "error": "Bad Request", "message": message})),
            )
                .into_response(),
            Self::Invalid { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"errors": {field: [message]}})),
            )
                .into_response(),
            Self::UnknownTenant(message) => (
                StatusCode::NOT_FOUND,
                Json(json!({"status": 404, "error": "Not Found", "message": message})),
            )
                .into_response(),
            Self::Db(err) => {
                if platform::db::is_unavailable(&err) {
                    tracing::warn!(error = %err, "database unavailable");
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, platform::db::RETRY_AFTER_SECONDS)],
                        Json(json!({"status": 503, "error": "Service Unavailable"})),
                    )
                        .into_response();
                }
                tracing::error!(error = %err, "database error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"status": 500, "error": "Internal Server Error"})),
                )
                    .into_response()
            }
        }
    }
}
