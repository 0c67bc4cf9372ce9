-- system's schema: one provider (tenant) today, but every top-level row carries provider_id for multi-tenancy later.
CREATE TABLE accounts (
    id BIGSERIAL PRIMARY KEY,
    provider_id BIGINT REFERENCES accounts(id),
    is_provider BOOLEAN NOT NULL DEFAULT FALSE,
    org_name TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'approved',
    provider_key TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO accounts (id, is_provider, org_name, provider_key)
VALUES (1, TRUE, 'Provider', md5(random()::text || clock_timestamp()::text));
SELECT setval('accounts_id_seq', 1);

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    username TEXT NOT NULL,
    email TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'admin',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO users (account_id, username, email) VALUES (1, 'admin', 'admin@provider.example');

CREATE TABLE access_tokens (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    scopes TEXT[] NOT NULL,
    permission TEXT NOT NULL,
    expires_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE services (
    id BIGSERIAL PRIMARY KEY,
    provider_id BIGINT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    system_name TEXT NOT NULL,
    description TEXT,
    state TEXT NOT NULL DEFAULT 'incomplete',
    backend_version TEXT NOT NULL DEFAULT '1',
    attrs JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (provider_id, system_name)
);

CREATE TABLE service_tokens (
    id BIGSERIAL PRIMARY KEY,
    service_id BIGINT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    value TEXT NOT NULL
);

-- Proxy settings are one JSON document validated in Rust: ~30 optional fields that are always read together.
CREATE TABLE proxies (
    service_id BIGINT PRIMARY KEY REFERENCES services(id) ON DELETE CASCADE,
    settings JSONB NOT NULL,
    policies_config JSONB NOT NULL DEFAULT '[]',
    oidc_configuration JSONB,
    lock_version BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE metrics (
    id BIGSERIAL PRIMARY KEY,
    service_id BIGINT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    parent_id BIGINT REFERENCES metrics(id) ON DELETE CASCADE,
    system_name TEXT NOT NULL,
    friendly_name TEXT NOT NULL,
    unit TEXT,
    description TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (service_id, system_name)
);

CREATE TABLE mapping_rules (
    id BIGSERIAL PRIMARY KEY,
    service_id BIGINT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    metric_id BIGINT NOT NULL REFERENCES metrics(id) ON DELETE CASCADE,
    http_method TEXT NOT NULL,
    pattern TEXT NOT NULL,
    delta BIGINT NOT NULL,
    position BIGINT NOT NULL,
    last BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE plans (
    id BIGSERIAL PRIMARY KEY,
    service_id BIGINT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    system_name TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'hidden',
    description TEXT,
    approval_required BOOLEAN NOT NULL DEFAULT FALSE,
    trial_period_days BIGINT,
    cost_per_month DOUBLE PRECISION NOT NULL DEFAULT 0,
    setup_fee DOUBLE PRECISION NOT NULL DEFAULT 0,
    is_default BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (service_id, system_name)
);

CREATE TABLE usage_limits (
    id BIGSERIAL PRIMARY KEY,
    plan_id BIGINT NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    metric_id BIGINT NOT NULL REFERENCES metrics(id) ON DELETE CASCADE,
    period TEXT NOT NULL,
    value BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (plan_id, metric_id, period)
);

CREATE TABLE applications (
    id BIGSERIAL PRIMARY KEY,
    provider_id BIGINT NOT NULL REFERENCES accounts(id),
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    service_id BIGINT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    plan_id BIGINT NOT NULL REFERENCES plans(id),
    state TEXT NOT NULL,
    user_key TEXT NOT NULL,
    application_id TEXT NOT NULL,
    name TEXT,
    description TEXT,
    redirect_url TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (provider_id, user_key),
    UNIQUE (provider_id, application_id)
);

CREATE TABLE application_keys (
    id BIGSERIAL PRIMARY KEY,
    application_id BIGINT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    value TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX application_keys_unique ON application_keys (application_id, lower(value));

CREATE TABLE referrer_filters (
    id BIGSERIAL PRIMARY KEY,
    application_id BIGINT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    value TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (application_id, value)
);

CREATE TABLE proxy_configs (
    id BIGSERIAL PRIMARY KEY,
    provider_id BIGINT NOT NULL REFERENCES accounts(id),
    service_id BIGINT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    environment TEXT NOT NULL,
    version BIGINT NOT NULL,
    content JSONB NOT NULL,
    hosts TEXT[] NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (service_id, environment, version)
);
CREATE INDEX proxy_configs_env ON proxy_configs (provider_id, environment, id);

-- Outgoing changes, written in the same transaction as the change; delivered in id order per target.
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    target TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    body JSONB,
    attempts INT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error TEXT,
    delivered_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX outbox_pending ON outbox (target, id) WHERE delivered_at IS NULL;
