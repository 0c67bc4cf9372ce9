//! Read-only placeholders for porta's API-as-a-Product objects. This system has no Backend API objects (a service
//! carries its own `api_backend`), so the lists are empty. Tools that enumerate them, such as the toolbox's product
//! copy and export, then work on products without backends. Creating backends is not implemented (404).

use crate::api::{id, Req};
use crate::error::ApiResult;
use crate::services::load;
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// `GET /admin/api/backend_apis.json`: `{"backend_apis": []}`.
pub async fn backend_apis(State(_state): State<AppState>, _req: Req) -> ApiResult<Response> {
    Ok(Json(json!({"backend_apis": []})).into_response())
}

/// `GET /admin/api/services/{id}/backend_usages.json`: porta renders this collection as a bare array.
pub async fn backend_usages(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let mut conn = state.db.pool().acquire().await?;
    load(&mut conn, &state, id(&sid)?).await?;
    Ok(Json(json!([])).into_response())
}
