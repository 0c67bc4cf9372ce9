-- backend's configuration (pushed by system through /internal) and its usage counters.
CREATE TABLE services (
    id TEXT PRIMARY KEY,
    provider_key TEXT NOT NULL,
    backend_version TEXT,
    referrer_filters_required BOOLEAN NOT NULL DEFAULT FALSE,
    state TEXT NOT NULL DEFAULT 'active'
);
CREATE INDEX services_provider_key ON services (provider_key);
-- One default service per provider key: the first saved, or the last saved with default_service=true.
CREATE TABLE provider_defaults (
    provider_key TEXT PRIMARY KEY,
    service_id TEXT NOT NULL
);
CREATE TABLE service_tokens (
    token TEXT NOT NULL,
    service_id TEXT NOT NULL,
    PRIMARY KEY (token, service_id)
);
CREATE TABLE applications (
    service_id TEXT NOT NULL,
    id TEXT NOT NULL,
    state TEXT NOT NULL,
    plan_id TEXT,
    plan_name TEXT,
    redirect_url TEXT,
    PRIMARY KEY (service_id, id)
);
CREATE TABLE user_keys (
    service_id TEXT NOT NULL,
    user_key TEXT NOT NULL,
    app_id TEXT NOT NULL,
    PRIMARY KEY (service_id, user_key)
);
CREATE TABLE application_keys (
    service_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (service_id, app_id, value)
);
CREATE TABLE referrer_filters (
    service_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (service_id, app_id, value)
);
CREATE TABLE metrics (
    service_id TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    parent_id TEXT,
    PRIMARY KEY (service_id, id)
);
CREATE TABLE usage_limits (
    service_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    metric_id TEXT NOT NULL,
    period TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (service_id, plan_id, metric_id, period)
);
-- Application counters per metric and calendar period instance (eternity starts at the epoch).
CREATE TABLE counters (
    service_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    metric_id TEXT NOT NULL,
    period TEXT NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (service_id, app_id, metric_id, period, period_start)
);
CREATE TABLE integration_errors (
    id BIGSERIAL PRIMARY KEY,
    service_id TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    context_info JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX integration_errors_service ON integration_errors (service_id, id DESC);
