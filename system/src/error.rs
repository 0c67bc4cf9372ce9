//! The service's one error type, rendered with porta's status codes and bodies.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Attribute → messages, as Rails' `errors` hash (messages without the attribute name).
#[derive(Debug, Default, Clone)]
pub struct Errors(pub BTreeMap<String, Vec<String>>);

impl Errors {
    pub fn add(&mut self, attr: &str, msg: impl Into<String>) {
        let msg = msg.into();
        let list = self.0.entry(attr.to_owned()).or_default();
        if !list.contains(&msg) {
            list.push(msg);
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn has(&self, attr: &str) -> bool {
        self.0.contains_key(attr)
    }
    /// `Ok` when nothing was recorded, else the 422 error.
    pub fn check(self) -> Result<(), ApiError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self))
        }
    }
    pub fn one(attr: &str, msg: &str) -> Self {
        let mut e = Self::default();
        e.add(attr, msg);
        e
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    #[error("access denied")]
    AccessDenied,
    #[error("insufficient permissions")]
    Permission,
    #[error("validation failed")]
    Invalid(Errors),
    /// A refused DELETE: porta answers 403 with the errors hash.
    #[error("delete refused")]
    Refused(Errors),
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 422 with a plain-text body (porta's `Wrong type for parameter`).
    #[error("unprocessable: {0}")]
    PlainUnprocessable(String),
    #[error("custom error")]
    Custom(StatusCode, Value),
    #[error("payload too large")]
    TooLarge,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NotFound => {
                (StatusCode::NOT_FOUND, Json(json!({"status": "Not found"}))).into_response()
            }
            ApiError::AccessDenied => (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "Access denied"})),
            )
                .into_response(),
            ApiError::Permission => (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "Your access token does not have the correct permissions"})),
            )
                .into_response(),
            ApiError::Invalid(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"errors": e.0})),
            )
                .into_response(),
            ApiError::Refused(e) => {
                (StatusCode::FORBIDDEN, Json(json!({"errors": e.0}))).into_response()
            }
            ApiError::BadRequest(msg) => (StatusCode::BAD_REQUEST, msg).into_response(),
            ApiError::PlainUnprocessable(msg) => {
                (StatusCode::UNPROCESSABLE_ENTITY, msg).into_response()
            }
            ApiError::Custom(status, body) => (status, Json(body)).into_response(),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({"error": "Request body too large"})),
            )
                .into_response(),
            ApiError::Db(err) => {
                if let sqlx::Error::Database(db) = &err {
                    if db.code().as_deref() == Some("23505") {
                        return StatusCode::CONFLICT.into_response();
                    }
                }
                if platform::db::is_unavailable(&err) {
                    tracing::warn!(error = %err, "database unavailable");
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, platform::db::RETRY_AFTER_SECONDS)],
                        Json(json!({"error": "Service temporarily unavailable"})),
                    )
                        .into_response();
                }
                tracing::error!(error = %err, "database error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": "Internal server error"})),
                )
                    .into_response()
            }
            ApiError::Internal(msg) => {
                tracing::error!(error = %msg, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": "Internal server error"})),
                )
                    .into_response()
            }
        }
    }
}
