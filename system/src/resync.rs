//! Re-pushes everything backend must know (services, tokens, metrics, limits, applications, keys, referrer
//! filters) through the outbox: for recovery and for a fresh backend. Every write is an idempotent PUT/POST.

use crate::error::ApiResult;
use crate::{apps, catalog, outbox, services, AppState};
use serde_json::json;

/// Queues the full state in one transaction; returns how many rows were queued.
pub async fn enqueue_all(state: &AppState) -> ApiResult<i64> {
    let mut tx = state.db.pool().begin().await?;
    let before: i64 = sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM outbox")
        .fetch_one(&mut *tx)
        .await?;
    let sids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM services WHERE provider_id = $1 AND state <> 'deleted' ORDER BY id",
    )
    .bind(state.provider_id)
    .fetch_all(&mut *tx)
    .await?;
    for sid in sids {
        services::push_service(&mut tx, state, sid).await?;
        let tokens: Vec<String> =
            sqlx::query_scalar("SELECT value FROM service_tokens WHERE service_id = $1")
                .bind(sid)
                .fetch_all(&mut *tx)
                .await?;
        for token in tokens {
            let body = json!({"service_tokens": {token: {"service_id": sid.to_string()}}});
            outbox::backend(
                &mut tx,
                "POST",
                "/internal/service_tokens/".into(),
                Some(body),
            )
            .await?;
        }
        let metrics: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM metrics WHERE service_id = $1 ORDER BY parent_id NULLS FIRST, id",
        )
        .bind(sid)
        .fetch_all(&mut *tx)
        .await?;
        for mid in metrics {
            catalog::push_metric(&mut tx, sid, mid).await?;
        }
        let limits: Vec<(i64, i64, String, i64)> = sqlx::query_as(
            "SELECT l.plan_id, l.metric_id, l.period, l.value FROM usage_limits l JOIN plans p ON p.id = l.plan_id WHERE p.service_id = $1 ORDER BY l.id",
        )
        .bind(sid)
        .fetch_all(&mut *tx)
        .await?;
        for (pid, mid, period, value) in limits {
            let body = json!({"usagelimit": {period.clone(): value}});
            outbox::backend(
                &mut tx,
                "PUT",
                format!("/internal/services/{sid}/plans/{pid}/usagelimits/{mid}/{period}"),
                Some(body),
            )
            .await?;
        }
        let app_rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, application_id FROM applications WHERE service_id = $1 ORDER BY id",
        )
        .bind(sid)
        .fetch_all(&mut *tx)
        .await?;
        for (app, app_id) in app_rows {
            apps::push_app(&mut tx, app, None).await?;
            let keys: Vec<String> = sqlx::query_scalar(
                "SELECT value FROM application_keys WHERE application_id = $1 ORDER BY id",
            )
            .bind(app)
            .fetch_all(&mut *tx)
            .await?;
            for k in keys {
                let body = json!({"application_key": {"value": k}});
                outbox::backend(
                    &mut tx,
                    "POST",
                    format!(
                        "/internal/services/{sid}/applications/{}/keys/",
                        apps::enc(&app_id)
                    ),
                    Some(body),
                )
                .await?;
            }
            let filters: Vec<String> = sqlx::query_scalar(
                "SELECT value FROM referrer_filters WHERE application_id = $1 ORDER BY id",
            )
            .bind(app)
            .fetch_all(&mut *tx)
            .await?;
            for f in filters {
                outbox::backend(
                    &mut tx,
                    "POST",
                    apps::filter_path(sid, &app_id, None),
                    Some(json!({"referrer_filter": f})),
                )
                .await?;
            }
        }
    }
    let after: i64 = sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM outbox")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(after - before)
}

/// `system resync-backend`: queues the full re-push and exits; running system instances deliver it.
pub async fn command(config: crate::Config, _ctx: platform::Context) -> anyhow::Result<()> {
    let db = platform::db::Database::connect(&config.db, &crate::MIGRATOR).await?;
    let state = AppState::new(db.clone(), &config);
    let queued = enqueue_all(&state)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(queued, "backend re-push queued");
    db.close().await;
    Ok(())
}
