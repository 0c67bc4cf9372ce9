//! Users of developer accounts (`/admin/api/accounts/{id}/users`): list, create, update, delete, and the role and
//! state actions. Passwords are accepted as porta accepts them but not stored: nothing here signs users in.

use crate::api::{collection, created, deleted, id, link, ok, Req};
use crate::apps::find_account;
use crate::db::{all, must, Bind};
use crate::error::{ApiError, ApiResult, Errors};
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Value};

fn render(row: &Value) -> Value {
    let (uid, aid) = (&row["id"], &row["account_id"]);
    json!({
        "id": uid, "created_at": row["created_at"], "updated_at": row["updated_at"], "account_id": aid,
        "state": row["state"], "role": row["role"], "username": row["username"], "email": row["email"],
        "links": [
            link("self", format!("/admin/api/accounts/{aid}/users/{uid}")),
            link("account", format!("/admin/api/accounts/{aid}")),
        ],
    })
}

async fn find(conn: &mut sqlx::PgConnection, aid: i64, uid: i64) -> ApiResult<Value> {
    must(
        conn,
        "SELECT to_jsonb(u) FROM users u WHERE u.id = $1 AND u.account_id = $2",
        &[Bind::I(uid), Bind::I(aid)],
    )
    .await
}

/// Username and email rules shared with signup; `except` is the user being updated.
pub async fn validate(
    conn: &mut sqlx::PgConnection,
    provider_id: i64,
    username: &str,
    email: &str,
    except: Option<i64>,
    errors: &mut Errors,
) -> ApiResult<()> {
    if username.trim().is_empty() {
        errors.add("username", "can't be blank");
    } else if username.chars().count() < 3 {
        errors.add("username", "is too short (minimum is 3 characters)");
    } else if username.chars().count() > 40 {
        errors.add("username", "is too long (maximum is 40 characters)");
    }
    if email.trim().is_empty() {
        errors.add("email", "can't be blank");
    } else if !email
        .split_once('@')
        .is_some_and(|(u, d)| !u.is_empty() && d.contains('.') && !email.contains(' '))
    {
        errors.add("email", "should look like an email address");
    }
    for (field, value) in [("username", username), ("email", email)] {
        if value.trim().is_empty() {
            continue;
        }
        let taken: bool = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM users u JOIN accounts a ON a.id = u.account_id \
             WHERE a.provider_id = $1 AND lower(u.{field}) = lower($2) AND u.id <> $3)"
        ))
        .bind(provider_id)
        .bind(value)
        .bind(except.unwrap_or(0))
        .fetch_one(&mut *conn)
        .await?;
        if taken {
            errors.add(field, "has already been taken");
        }
    }
    Ok(())
}

pub async fn list(
    State(state): State<AppState>,
    Path(aid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let aid = id(&aid)?;
    let mut conn = state.db.pool().acquire().await?;
    find_account(&mut conn, &state, aid).await?;
    let filter = |k: &str| {
        req.params
            .str(k)
            .filter(|s| !s.is_empty())
            .unwrap_or_default()
    };
    let rows = all(
        &mut conn,
        "SELECT to_jsonb(u) FROM users u WHERE u.account_id = $1 AND ($2 = '' OR u.state = $2) \
         AND ($3 = '' OR u.role = $3) ORDER BY u.id",
        &[
            Bind::I(aid),
            Bind::S(filter("state")),
            Bind::S(filter("role")),
        ],
    )
    .await?;
    Ok(collection(
        "users",
        "user",
        rows.iter().map(render).collect(),
    ))
}

pub async fn show(
    State(state): State<AppState>,
    Path((aid, uid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (aid, uid) = (id(&aid)?, id(&uid)?);
    let mut conn = state.db.pool().acquire().await?;
    find_account(&mut conn, &state, aid).await?;
    Ok(ok("user", render(&find(&mut conn, aid, uid).await?)))
}

/// A user created by the provider starts `pending` with the `member` role, as in porta.
pub async fn create(
    State(state): State<AppState>,
    Path(aid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let aid = id(&aid)?;
    let p = req.params.wrapped("user")?;
    let mut tx = state.db.pool().begin().await?;
    find_account(&mut tx, &state, aid).await?;
    let username = p.str("username").unwrap_or_default();
    let email = p.str("email").unwrap_or_default();
    let mut errors = Errors::default();
    validate(
        &mut tx,
        state.provider_id,
        &username,
        &email,
        None,
        &mut errors,
    )
    .await?;
    errors.check()?;
    let uid: i64 = sqlx::query_scalar(
        "INSERT INTO users (account_id, username, email, role, state) VALUES ($1, $2, $3, 'member', 'pending') RETURNING id",
    )
    .bind(aid)
    .bind(&username)
    .bind(&email)
    .fetch_one(&mut *tx)
    .await?;
    let row = find(&mut tx, aid, uid).await?;
    tx.commit().await?;
    Ok(created("user", render(&row)))
}

pub async fn update(
    State(state): State<AppState>,
    Path((aid, uid)): Path<(String, String)>,
    req: Req,
) -> ApiResult<Response> {
    let (aid, uid) = (id(&aid)?, id(&uid)?);
    let p = req.params.wrapped("user")?;
    let mut tx = state.db.pool().begin().await?;
    find_account(&mut tx, &state, aid).await?;
    let current = find(&mut tx, aid, uid).await?;
    let pick = |k: &str| {
        p.str(k)
            .unwrap_or_else(|| current[k].as_str().unwrap_or_default().to_owned())
    };
    let (username, email) = (pick("username"), pick("email"));
    let mut errors = Errors::default();
    validate(
        &mut tx,
        state.provider_id,
        &username,
        &email,
        Some(uid),
        &mut errors,
    )
    .await?;
    errors.check()?;
    sqlx::query("UPDATE users SET username = $2, email = $3, updated_at = now() WHERE id = $1")
        .bind(uid)
        .bind(&username)
        .bind(&email)
        .execute(&mut *tx)
        .await?;
    let row = find(&mut tx, aid, uid).await?;
    tx.commit().await?;
    Ok(ok("user", render(&row)))
}

async fn is_last_admin(conn: &mut sqlx::PgConnection, aid: i64, user: &Value) -> ApiResult<bool> {
    if user["role"] != "admin" {
        return Ok(false);
    }
    let admins: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE account_id = $1 AND role = 'admin'")
            .bind(aid)
            .fetch_one(&mut *conn)
            .await?;
    Ok(admins <= 1)
}

pub async fn destroy(
    State(state): State<AppState>,
    Path((aid, uid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (aid, uid) = (id(&aid)?, id(&uid)?);
    let mut tx = state.db.pool().begin().await?;
    find_account(&mut tx, &state, aid).await?;
    let user = find(&mut tx, aid, uid).await?;
    if is_last_admin(&mut tx, aid, &user).await? {
        return Err(ApiError::Refused(Errors::one(
            "base",
            "Can't delete last admin",
        )));
    }
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(uid)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(deleted())
}

/// `PUT …/users/{id}/{activate|suspend|unsuspend|admin|member}.json`.
pub async fn action(
    State(state): State<AppState>,
    Path((aid, uid, action)): Path<(String, String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (aid, uid) = (id(&aid)?, id(&uid)?);
    let mut tx = state.db.pool().begin().await?;
    find_account(&mut tx, &state, aid).await?;
    let user = find(&mut tx, aid, uid).await?;
    let current = user["state"].as_str().unwrap_or_default();
    let (column, value, allowed_from): (&str, &str, &[&str]) = match action.as_str() {
        "activate" => ("state", "active", &["pending"]),
        "suspend" => ("state", "suspended", &["pending", "active"]),
        "unsuspend" => ("state", "active", &["suspended"]),
        "admin" => ("role", "admin", &["pending", "active", "suspended"]),
        "member" => ("role", "member", &["pending", "active", "suspended"]),
        _ => return Err(ApiError::NotFound),
    };
    if !allowed_from.contains(&current) {
        let msg = format!("cannot transition via \"{action}\"");
        return Err(ApiError::Invalid(Errors::one("state", &msg)));
    }
    sqlx::query(&format!(
        "UPDATE users SET {column} = $2, updated_at = now() WHERE id = $1"
    ))
    .bind(uid)
    .bind(value)
    .execute(&mut *tx)
    .await?;
    let row = find(&mut tx, aid, uid).await?;
    tx.commit().await?;
    Ok(ok("user", render(&row)))
}
