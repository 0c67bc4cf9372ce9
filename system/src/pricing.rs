//! Pricing rules of application plans: per-metric cost bands (`min`..`max` at `cost_per_unit`). Billing data only,
//! so nothing is pushed to backend.

use crate::api::{collection, created, deleted, id, link, Req};
use crate::db::{all, must, Bind};
use crate::error::{ApiResult, Errors};
use crate::plans::{find_plan, plan_and_metric};
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Value};

const RULE_SQL: &str =
    "SELECT to_jsonb(r) || jsonb_build_object('cost_per_unit', r.cost_per_unit::float8, \
     'service_id', p.service_id) FROM pricing_rules r JOIN plans p ON p.id = r.plan_id";

fn render(row: &Value) -> Value {
    let (sid, pid, mid) = (&row["service_id"], &row["plan_id"], &row["metric_id"]);
    json!({
        "id": row["id"], "metric_id": mid, "cost_per_unit": row["cost_per_unit"], "min": row["min"],
        "max": row["max"], "created_at": row["created_at"], "updated_at": row["updated_at"],
        "links": [
            link("metric", format!("/admin/api/services/{sid}/metrics/{mid}")),
            link("plan", format!("/admin/api/services/{sid}/application_plans/{pid}")),
        ],
    })
}

pub async fn list_of_plan(
    State(state): State<AppState>,
    Path(pid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let pid = id(&pid)?;
    let mut conn = state.db.pool().acquire().await?;
    find_plan(&mut conn, &state, pid).await?;
    let rows = all(
        &mut conn,
        &format!("{RULE_SQL} WHERE r.plan_id = $1 ORDER BY r.id"),
        &[Bind::I(pid)],
    )
    .await?;
    Ok(collection(
        "pricing_rules",
        "pricing_rule",
        rows.iter().map(render).collect(),
    ))
}

pub async fn list_of_metric(
    State(state): State<AppState>,
    Path((pid, mid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (pid, mid) = (id(&pid)?, id(&mid)?);
    let mut conn = state.db.pool().acquire().await?;
    plan_and_metric(&mut conn, &state, pid, mid).await?;
    let rows = all(
        &mut conn,
        &format!("{RULE_SQL} WHERE r.plan_id = $1 AND r.metric_id = $2 ORDER BY r.id"),
        &[Bind::I(pid), Bind::I(mid)],
    )
    .await?;
    Ok(collection(
        "pricing_rules",
        "pricing_rule",
        rows.iter().map(render).collect(),
    ))
}

/// Ruby's `String#to_i`: the leading integer, 0 when there is none.
fn to_i(s: &str) -> i64 {
    let s = s.trim();
    let (sign, digits) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let digits: String = digits.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<i64>().map(|v| sign * v).unwrap_or(0)
}

/// `min`: Rails' `numericality: { only_integer: true, greater_than_or_equal_to: 1 }` on the raw value.
fn parse_min(raw: Option<String>, errors: &mut Errors) -> i64 {
    let Some(raw) = raw.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()) else {
        errors.add("min", "is not a number");
        return 0;
    };
    match raw.parse::<i64>() {
        Ok(v) if v >= 1 => v,
        Ok(v) => {
            errors.add("min", "must be greater than or equal to 1");
            v
        }
        Err(_) if raw.parse::<f64>().is_ok_and(f64::is_finite) => {
            errors.add("min", "must be an integer");
            0
        }
        Err(_) => {
            errors.add("min", "is not a number");
            0
        }
    }
}

/// `cost_per_unit`: a number, cast to 4 decimals, whose text must match `\A\d+\.?\d{0,4}\z` (so not negative).
fn parse_cost(raw: Option<Option<String>>, errors: &mut Errors) -> f64 {
    const FORMAT: &str = "maximum decimals is 4.";
    match raw {
        // Absent: the column default.
        None => 0.0,
        Some(None) => {
            errors.add("cost_per_unit", "is not a number");
            errors.add("cost_per_unit", FORMAT);
            0.0
        }
        Some(Some(s)) => match s.trim().parse::<f64>() {
            // NUMERIC(20,4) holds 16 integer digits; larger values would fail at the database.
            Ok(v) if v.is_finite() && v >= 1e16 => {
                errors.add("cost_per_unit", "must be less than 10000000000000000");
                0.0
            }
            Ok(v) if v.is_finite() && v >= 0.0 => (v * 10_000.0).round() / 10_000.0,
            Ok(v) if v.is_finite() => {
                errors.add("cost_per_unit", FORMAT);
                v
            }
            _ => {
                errors.add("cost_per_unit", "is not a number");
                errors.add("cost_per_unit", FORMAT);
                0.0
            }
        },
    }
}

pub async fn create(
    State(state): State<AppState>,
    Path((pid, mid)): Path<(String, String)>,
    req: Req,
) -> ApiResult<Response> {
    let (pid, mid) = (id(&pid)?, id(&mid)?);
    let p = req.params.wrapped("pricing_rule")?;
    let mut tx = state.db.pool().begin().await?;
    plan_and_metric(&mut tx, &state, pid, mid).await?;
    let mut errors = Errors::default();
    let min = parse_min(p.str("min"), &mut errors);
    let max = p
        .str("max")
        .filter(|s| !s.trim().is_empty())
        .map(|s| to_i(&s));
    let cost = parse_cost(p.opt_str("cost_per_unit"), &mut errors);
    if !errors.has("min") {
        // Bands of one plan and metric may not overlap; a missing max is infinity.
        let overlap: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pricing_rules WHERE plan_id = $1 AND metric_id = $2 \
             AND min <= COALESCE($4, 9223372036854775807) AND COALESCE(max, 9223372036854775807) >= $3)",
        )
        .bind(pid)
        .bind(mid)
        .bind(min)
        .bind(max)
        .fetch_one(&mut *tx)
        .await?;
        if overlap {
            errors.add(
                "min",
                "The 'From' value must be greater than the 'To' values of other existing rules",
            );
        }
        if max.is_some_and(|m| m < min) {
            errors.add("max", "'To' value cannot be less than your 'From' value");
        }
    }
    errors.check()?;
    let rid: i64 = sqlx::query_scalar(
        "INSERT INTO pricing_rules (plan_id, metric_id, min, max, cost_per_unit) VALUES ($1, $2, $3, $4, $5::numeric) \
         RETURNING id",
    )
    .bind(pid)
    .bind(mid)
    .bind(min)
    .bind(max)
    .bind(cost)
    .fetch_one(&mut *tx)
    .await?;
    let row = must(
        &mut tx,
        &format!("{RULE_SQL} WHERE r.id = $1"),
        &[Bind::I(rid)],
    )
    .await?;
    tx.commit().await?;
    Ok(created("pricing_rule", render(&row)))
}

pub async fn destroy(
    State(state): State<AppState>,
    Path((pid, mid, rid)): Path<(String, String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (pid, mid, rid) = (id(&pid)?, id(&mid)?, id(&rid)?);
    let mut conn = state.db.pool().acquire().await?;
    plan_and_metric(&mut conn, &state, pid, mid).await?;
    let gone =
        sqlx::query("DELETE FROM pricing_rules WHERE id = $1 AND plan_id = $2 AND metric_id = $3")
            .bind(rid)
            .bind(pid)
            .bind(mid)
            .execute(&mut *conn)
            .await?;
    if gone.rows_affected() == 0 {
        return Err(crate::error::ApiError::NotFound);
    }
    Ok(deleted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_cast_as_rails_does() {
        let mut e = Errors::default();
        assert_eq!(parse_min(Some("3".into()), &mut e), 3);
        assert!(e.is_empty());
        parse_min(Some("1.5".into()), &mut e);
        parse_min(Some("0".into()), &mut e);
        assert_eq!(
            e.0["min"],
            vec!["must be an integer", "must be greater than or equal to 1"]
        );
        let mut e = Errors::default();
        assert_eq!(parse_cost(Some(Some("0.123456".into())), &mut e), 0.1235);
        assert_eq!(parse_cost(None, &mut e), 0.0);
        assert!(e.is_empty());
        parse_cost(Some(Some("-1".into())), &mut e);
        assert_eq!(e.0["cost_per_unit"], vec!["maximum decimals is 4."]);
        let mut e = Errors::default();
        parse_cost(Some(Some("1e300".into())), &mut e);
        assert_eq!(
            e.0["cost_per_unit"],
            vec!["must be less than 10000000000000000"]
        );
        assert_eq!(to_i("12abc"), 12);
        assert_eq!(to_i("abc"), 0);
    }
}
