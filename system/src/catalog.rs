//! Metrics, methods and mapping rules of a service.

use crate::api::{collection, created, deleted, id, link, ok, Req};
use crate::db::{self, all, must, Bind, Tx};
use crate::error::{ApiError, ApiResult, Errors};
use crate::services::load;
use crate::{configs, outbox, AppState};
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Value};

pub async fn push_metric(tx: &mut Tx<'_>, sid: i64, mid: i64) -> ApiResult<()> {
    let (name, parent): (String, Option<i64>) =
        sqlx::query_as("SELECT system_name, parent_id FROM metrics WHERE id = $1")
            .bind(mid)
            .fetch_one(&mut **tx)
            .await?;
    let mut metric = json!({"name": name});
    if let Some(p) = parent {
        metric["parent_id"] = json!(p.to_string());
    }
    outbox::backend(
        tx,
        "PUT",
        format!("/internal/services/{sid}/metrics/{mid}"),
        Some(json!({"metric": metric})),
    )
    .await
}

fn render_metric(row: &Value) -> Value {
    let sid = row["service_id"].as_i64().unwrap_or(0);
    let mid = row["id"].as_i64().unwrap_or(0);
    let mut out = json!({
        "id": mid, "name": row["system_name"], "system_name": row["system_name"],
        "friendly_name": row["friendly_name"], "description": row["description"],
        "created_at": row["created_at"], "updated_at": row["updated_at"],
    });
    match row["parent_id"].as_i64() {
        Some(parent) => {
            out["parent_id"] = json!(parent);
            out["links"] = json!([
                link(
                    "parent",
                    format!("/admin/api/services/{sid}/metrics/{parent}")
                ),
                link(
                    "self",
                    format!("/admin/api/services/{sid}/metrics/{parent}/methods/{mid}")
                ),
            ]);
        }
        None => {
            out["unit"] = row["unit"].clone();
            out["links"] = json!([
                link("parent", format!("/admin/api/services/{sid}")),
                link("self", format!("/admin/api/services/{sid}/metrics/{mid}")),
            ]);
        }
    }
    out
}

async fn find_metric(
    conn: &mut sqlx::PgConnection,
    sid: i64,
    mid: i64,
    parent: Option<i64>,
) -> ApiResult<Value> {
    let row = must(
        conn,
        "SELECT to_jsonb(m) FROM metrics m WHERE id = $1 AND service_id = $2",
        &[Bind::I(mid), Bind::I(sid)],
    )
    .await?;
    if row["parent_id"].as_i64() != parent {
        return Err(ApiError::NotFound);
    }
    Ok(row)
}

pub async fn metrics_list(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let mut conn = state.db.pool().acquire().await?;
    load(&mut conn, &state, sid).await?;
    let rows = all(
        &mut conn,
        "SELECT to_jsonb(m) FROM metrics m WHERE service_id = $1 ORDER BY id",
        &[Bind::I(sid)],
    )
    .await?;
    Ok(collection(
        "metrics",
        "metric",
        rows.iter().map(render_metric).collect(),
    ))
}

pub async fn methods_list(
    State(state): State<AppState>,
    Path((sid, mid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (sid, mid) = (id(&sid)?, id(&mid)?);
    let mut conn = state.db.pool().acquire().await?;
    load(&mut conn, &state, sid).await?;
    find_metric(&mut conn, sid, mid, None).await?;
    let rows = all(
        &mut conn,
        "SELECT to_jsonb(m) FROM metrics m WHERE parent_id = $1 ORDER BY id",
        &[Bind::I(mid)],
    )
    .await?;
    Ok(collection(
        "methods",
        "method",
        rows.iter().map(render_metric).collect(),
    ))
}

pub async fn metric_show(
    State(state): State<AppState>,
    Path((sid, mid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let mut conn = state.db.pool().acquire().await?;
    let sid = id(&sid)?;
    load(&mut conn, &state, sid).await?;
    let row = must(
        &mut conn,
        "SELECT to_jsonb(m) FROM metrics m WHERE id = $1 AND service_id = $2",
        &[Bind::I(id(&mid)?), Bind::I(sid)],
    )
    .await?;
    Ok(ok("metric", render_metric(&row)))
}

pub async fn method_show(
    State(state): State<AppState>,
    Path((sid, pid, mid)): Path<(String, String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let mut conn = state.db.pool().acquire().await?;
    let sid = id(&sid)?;
    load(&mut conn, &state, sid).await?;
    let row = find_metric(&mut conn, sid, id(&mid)?, Some(id(&pid)?)).await?;
    Ok(ok("method", render_metric(&row)))
}

async fn create_metric(
    state: &AppState,
    sid: i64,
    parent: Option<i64>,
    req: &Req,
) -> ApiResult<Value> {
    let p = req.params.wrapped("metric")?;
    let mut tx = state.db.pool().begin().await?;
    load(&mut tx, state, sid).await?;
    let mut errors = Errors::default();
    if let Some(pid) = parent {
        let prow = find_metric(&mut tx, sid, pid, None).await?;
        if prow["system_name"] != "hits" {
            errors.add("parent_id", "You can only create methods under 'hits'");
        }
    }
    let friendly = p.str("friendly_name").filter(|s| !s.trim().is_empty());
    let unit = p.str("unit").filter(|s| !s.trim().is_empty());
    match &friendly {
        None => errors.add("friendly_name", "can't be blank"),
        Some(f) => {
            let taken: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM metrics WHERE service_id = $1 AND friendly_name = $2)")
                .bind(sid)
                .bind(f)
                .fetch_one(&mut *tx)
                .await?;
            if taken {
                errors.add("friendly_name", "has already been taken");
            }
        }
    }
    if parent.is_none() && unit.is_none() {
        errors.add("unit", "can't be blank");
    }
    let sn = p
        .str("system_name")
        .filter(|s| !s.is_empty())
        .or_else(|| friendly.as_deref().map(db::system_name_from))
        .unwrap_or_default();
    if friendly.is_some() || !sn.is_empty() {
        if !db::valid_system_name(&sn) {
            errors.add(
                "system_name",
                "invalid. Only ASCII letters, numbers, dashes and underscores are allowed.",
            );
        } else {
            let taken: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM metrics WHERE service_id = $1 AND system_name = $2)",
            )
            .bind(sid)
            .bind(&sn)
            .fetch_one(&mut *tx)
            .await?;
            if taken {
                errors.add("system_name", "has already been taken");
            }
        }
    }
    errors.check()?;
    let mid: i64 = sqlx::query_scalar(
        "INSERT INTO metrics (service_id, parent_id, system_name, friendly_name, unit, description) VALUES ($1,$2,$3,$4,$5,$6) RETURNING id",
    )
    .bind(sid)
    .bind(parent)
    .bind(&sn)
    .bind(&friendly)
    .bind(if parent.is_some() { None } else { unit })
    .bind(p.str("description"))
    .fetch_one(&mut *tx)
    .await?;
    push_metric(&mut tx, sid, mid).await?;
    let row = find_metric(&mut tx, sid, mid, parent).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(render_metric(&row))
}

pub async fn metric_create(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    Ok(created(
        "metric",
        create_metric(&state, id(&sid)?, None, &req).await?,
    ))
}

pub async fn method_create(
    State(state): State<AppState>,
    Path((sid, pid)): Path<(String, String)>,
    req: Req,
) -> ApiResult<Response> {
    Ok(created(
        "method",
        create_metric(&state, id(&sid)?, Some(id(&pid)?), &req).await?,
    ))
}

async fn update_metric(
    state: &AppState,
    sid: i64,
    mid: i64,
    parent: Option<i64>,
    req: &Req,
) -> ApiResult<Value> {
    let p = req.params.wrapped("metric")?;
    let mut tx = state.db.pool().begin().await?;
    load(&mut tx, state, sid).await?;
    let row = find_metric(&mut tx, sid, mid, parent).await?;
    let mut errors = Errors::default();
    let friendly = match p.opt_str("friendly_name") {
        Some(None) => {
            errors.add("friendly_name", "can't be blank");
            None
        }
        Some(Some(f)) => Some(f),
        None => row["friendly_name"].as_str().map(str::to_owned),
    };
    let unit = match p.opt_str("unit") {
        Some(u) => u,
        None => row["unit"].as_str().map(str::to_owned),
    };
    if parent.is_none() && unit.is_none() {
        errors.add("unit", "can't be blank");
    }
    errors.check()?;
    let description = p
        .opt_str("description")
        .unwrap_or_else(|| row["description"].as_str().map(str::to_owned));
    sqlx::query("UPDATE metrics SET friendly_name = $2, unit = $3, description = $4, updated_at = now() WHERE id = $1")
        .bind(mid)
        .bind(friendly)
        .bind(unit)
        .bind(description)
        .execute(&mut *tx)
        .await?;
    let row = find_metric(&mut tx, sid, mid, parent).await?;
    tx.commit().await?;
    Ok(render_metric(&row))
}

pub async fn metric_update(
    State(state): State<AppState>,
    Path((sid, mid)): Path<(String, String)>,
    req: Req,
) -> ApiResult<Response> {
    Ok(ok(
        "metric",
        update_metric(&state, id(&sid)?, id(&mid)?, None, &req).await?,
    ))
}

pub async fn method_update(
    State(state): State<AppState>,
    Path((sid, pid, mid)): Path<(String, String, String)>,
    req: Req,
) -> ApiResult<Response> {
    Ok(ok(
        "method",
        update_metric(&state, id(&sid)?, id(&mid)?, Some(id(&pid)?), &req).await?,
    ))
}

async fn delete_metric(
    state: &AppState,
    sid: i64,
    mid: i64,
    parent: Option<i64>,
) -> ApiResult<Response> {
    let mut tx = state.db.pool().begin().await?;
    load(&mut tx, state, sid).await?;
    let row = find_metric(&mut tx, sid, mid, parent).await?;
    if row["system_name"] == "hits" {
        return Err(ApiError::Refused(Errors::one(
            "base",
            "The Hits metric cannot be deleted",
        )));
    }
    sqlx::query("DELETE FROM metrics WHERE id = $1")
        .bind(mid)
        .execute(&mut *tx)
        .await?;
    outbox::backend(
        &mut tx,
        "DELETE",
        format!("/internal/services/{sid}/metrics/{mid}"),
        None,
    )
    .await?;
    configs::deploy_sandbox(&mut tx, state, sid).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(deleted())
}

pub async fn metric_delete(
    State(state): State<AppState>,
    Path((sid, mid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    delete_metric(&state, id(&sid)?, id(&mid)?, None).await
}

pub async fn method_delete(
    State(state): State<AppState>,
    Path((sid, pid, mid)): Path<(String, String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    delete_metric(&state, id(&sid)?, id(&mid)?, Some(id(&pid)?)).await
}

// ---------------------------------------------------------------------------------------------------------------
// Mapping rules

const METHODS: [&str; 7] = ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"];

/// Checks porta's pattern grammar; returns the messages for `pattern`.
pub fn pattern_errors(pattern: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !pattern.starts_with('/') {
        out.push("shouldn't be empty and must start with '/'");
        return out;
    }
    if pattern.chars().count() > 255 {
        out.push("is too long (maximum is 255 characters)");
    }
    let (path, query) = match pattern.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pattern, None),
    };
    let path = path.strip_suffix('$').unwrap_or(path);
    let mut vars: Vec<String> = Vec::new();
    let mut valid = scan(path, &mut vars, true);
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k.contains('{') {
                out.push("Can't use variables as keys in the querystring");
            }
            valid &= scan(k, &mut Vec::new(), false) && scan(v, &mut vars, false);
        }
    }
    let mut sorted = vars.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != vars.len() {
        out.push("Can't have repeated variable names");
    }
    if !valid {
        out.push("is invalid");
    }
    out
}

fn scan(s: &str, vars: &mut Vec<String>, allow_slash: bool) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            let Some(end) = chars[i..].iter().position(|&c| c == '}') else {
                return false;
            };
            let name: String = chars[i + 1..i + end].iter().collect();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            {
                return false;
            }
            vars.push(name);
            i += end + 1;
            continue;
        }
        if c == '%' {
            if i + 2 >= chars.len() {
                return false;
            }
            if !(chars[i + 1].is_ascii_hexdigit() && chars[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        let ok = c.is_ascii_alphanumeric()
            || "-._~:@&=+,!*'();".contains(c)
            || (allow_slash && c == '/');
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

fn render_rule(row: &Value) -> Value {
    let sid = row["service_id"].as_i64().unwrap_or(0);
    let rid = row["id"].as_i64().unwrap_or(0);
    json!({
        "id": rid, "metric_id": row["metric_id"], "pattern": row["pattern"], "http_method": row["http_method"],
        "delta": row["delta"], "position": row["position"], "last": row["last"],
        "created_at": row["created_at"], "updated_at": row["updated_at"],
        "links": [
            link("self", format!("/admin/api/services/{sid}/proxy/mapping_rules/{rid}")),
            link("service", format!("/admin/api/services/{sid}")),
            link("proxy", format!("/admin/api/services/{sid}/proxy")),
        ],
    })
}

pub async fn rules_list(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let mut conn = state.db.pool().acquire().await?;
    load(&mut conn, &state, sid).await?;
    let rows = all(
        &mut conn,
        "SELECT to_jsonb(r) FROM mapping_rules r WHERE service_id = $1 ORDER BY position, id",
        &[Bind::I(sid)],
    )
    .await?;
    Ok(collection(
        "mapping_rules",
        "mapping_rule",
        rows.iter().map(render_rule).collect(),
    ))
}

async fn find_rule(conn: &mut sqlx::PgConnection, sid: i64, rid: i64) -> ApiResult<Value> {
    must(
        conn,
        "SELECT to_jsonb(r) FROM mapping_rules r WHERE id = $1 AND service_id = $2",
        &[Bind::I(rid), Bind::I(sid)],
    )
    .await
}

pub async fn rule_show(
    State(state): State<AppState>,
    Path((sid, rid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let mut conn = state.db.pool().acquire().await?;
    load(&mut conn, &state, sid).await?;
    Ok(ok(
        "mapping_rule",
        render_rule(&find_rule(&mut conn, sid, id(&rid)?).await?),
    ))
}

/// Validates and writes a rule; `existing` is the current row on update.
async fn save_rule(
    state: &AppState,
    sid: i64,
    existing: Option<i64>,
    req: &Req,
) -> ApiResult<Value> {
    let p = req.params.wrapped("mapping_rule")?;
    let mut tx = state.db.pool().begin().await?;
    load(&mut tx, state, sid).await?;
    let current = match existing {
        Some(rid) => find_rule(&mut tx, sid, rid).await?,
        None => {
            json!({"http_method": null, "pattern": null, "delta": null, "metric_id": null, "position": null, "last": false})
        }
    };
    let mut errors = Errors::default();
    let http_method = p
        .str("http_method")
        .map(|m| m.to_ascii_uppercase())
        .or_else(|| current["http_method"].as_str().map(str::to_owned));
    match &http_method {
        None => errors.add("http_method", "can't be blank"),
        Some(m) if m.is_empty() => errors.add("http_method", "can't be blank"),
        Some(m) if !METHODS.contains(&m.as_str()) => {
            errors.add("http_method", "is not included in the list")
        }
        _ => {}
    }
    let pattern = p
        .str("pattern")
        .or_else(|| current["pattern"].as_str().map(str::to_owned));
    match &pattern {
        None => errors.add("pattern", "can't be blank"),
        Some(pt) if pt.is_empty() => errors.add("pattern", "can't be blank"),
        Some(pt) => {
            for e in pattern_errors(pt) {
                errors.add("pattern", e);
            }
        }
    }
    let delta = match p.int("delta") {
        Some(Ok(d)) => Some(d),
        Some(Err(())) => {
            errors.add("delta", "is not a number");
            None
        }
        None => current["delta"].as_i64(),
    };
    match delta {
        None if !errors.has("delta") => errors.add("delta", "can't be blank"),
        Some(d) if d <= 0 => errors.add("delta", "must be greater than 0"),
        _ => {}
    }
    let metric_id = match p.int("metric_id") {
        Some(Ok(m)) => Some(m),
        Some(Err(())) => return Err(ApiError::NotFound),
        None => current["metric_id"].as_i64(),
    };
    match metric_id {
        None => errors.add("metric_id", "can't be blank"),
        Some(m) => {
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM metrics WHERE id = $1 AND service_id = $2)",
            )
            .bind(m)
            .bind(sid)
            .fetch_one(&mut *tx)
            .await?;
            if !exists {
                return Err(ApiError::NotFound);
            }
        }
    }
    let last = p
        .bool("last")
        .unwrap_or(current["last"].as_bool().unwrap_or(false));
    let position = match p.int("position") {
        Some(Ok(pos)) => Some(pos),
        _ => current["position"].as_i64(),
    };
    errors.check()?;
    let position =
        match position {
            Some(p) => p,
            None => sqlx::query_scalar(
                "SELECT COALESCE(max(position), 0) + 1 FROM mapping_rules WHERE service_id = $1",
            )
            .bind(sid)
            .fetch_one(&mut *tx)
            .await?,
        };
    let rid: i64 = match existing {
        Some(rid) => sqlx::query_scalar(
            "UPDATE mapping_rules SET http_method=$2, pattern=$3, delta=$4, metric_id=$5, position=$6, last=$7, updated_at=now() WHERE id=$1 RETURNING id",
        )
        .bind(rid),
        None => sqlx::query_scalar(
            "INSERT INTO mapping_rules (service_id, http_method, pattern, delta, metric_id, position, last) VALUES ($1,$2,$3,$4,$5,$6,$7) RETURNING id",
        )
        .bind(sid),
    }
    .bind(http_method)
    .bind(pattern)
    .bind(delta)
    .bind(metric_id)
    .bind(position)
    .bind(last)
    .fetch_one(&mut *tx)
    .await?;
    configs::deploy_sandbox(&mut tx, state, sid).await?;
    let row = find_rule(&mut tx, sid, rid).await?;
    tx.commit().await?;
    Ok(render_rule(&row))
}

pub async fn rule_create(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    Ok(created(
        "mapping_rule",
        save_rule(&state, id(&sid)?, None, &req).await?,
    ))
}

pub async fn rule_update(
    State(state): State<AppState>,
    Path((sid, rid)): Path<(String, String)>,
    req: Req,
) -> ApiResult<Response> {
    Ok(ok(
        "mapping_rule",
        save_rule(&state, id(&sid)?, Some(id(&rid)?), &req).await?,
    ))
}

pub async fn rule_delete(
    State(state): State<AppState>,
    Path((sid, rid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let mut tx = state.db.pool().begin().await?;
    load(&mut tx, &state, sid).await?;
    find_rule(&mut tx, sid, id(&rid)?).await?;
    sqlx::query("DELETE FROM mapping_rules WHERE id = $1")
        .bind(id(&rid)?)
        .execute(&mut *tx)
        .await?;
    configs::deploy_sandbox(&mut tx, &state, sid).await?;
    tx.commit().await?;
    Ok(deleted())
}

#[cfg(test)]
mod tests {
    use super::pattern_errors;

    #[test]
    fn pattern_grammar() {
        assert!(pattern_errors("/").is_empty());
        assert!(pattern_errors("/foo/{id}.json?bar={x}").is_empty());
        assert!(pattern_errors("/foo$").is_empty());
        assert_eq!(
            pattern_errors("/a/{x}/{x}"),
            vec!["Can't have repeated variable names"]
        );
        assert!(
            pattern_errors("/a?{k}=1").contains(&"Can't use variables as keys in the querystring")
        );
        assert!(!pattern_errors("foo").is_empty());
        assert!(pattern_errors("/a b").contains(&"is invalid"));
    }
}
