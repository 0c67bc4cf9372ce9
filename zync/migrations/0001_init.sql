-- zync's schema, shared with zync-que, which works the job queue stored here.
--
-- Rows for tenants, services, applications, proxies and providers use system's own ids as primary keys, as zync
-- does. `jobs` holds one row per entity (kind, entity_id): a burst of notifications for one entity bumps `version`
-- on that one row, so the worker syncs it once; the row stays after success and doubles as the sync state shown
-- by the visibility endpoint.

CREATE TABLE tenants (
    id           BIGINT PRIMARY KEY,
    endpoint     TEXT NOT NULL,
    access_token TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE services (
    id         BIGINT PRIMARY KEY,
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE applications (
    id         BIGINT PRIMARY KEY,
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    service_id BIGINT NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX applications_service_idx ON applications (service_id);

CREATE TABLE proxies (
    id         BIGINT PRIMARY KEY,
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    service_id BIGINT NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE providers (
    id         BIGINT PRIMARY KEY,
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every notification as received (the whole body), for audit and debugging.
CREATE TABLE notifications (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    record_type TEXT NOT NULL,
    record_id   BIGINT NOT NULL,
    event_id    TEXT,
    data        JSONB NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- kind: 'application' (entity = application id) or 'proxy' (entity = service id).
-- status: 'pending' (to run at run_at) or 'done' (last run succeeded and nothing newer arrived).
-- locked_until: the lease of the worker running it; a crashed worker's job is taken again once it passes.
-- pending_since: when the oldest notification not yet synced arrived (notification-to-IdP latency).
CREATE TABLE jobs (
    id              BIGSERIAL PRIMARY KEY,
    kind            TEXT NOT NULL,
    entity_id       BIGINT NOT NULL,
    tenant_id       BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    status          TEXT NOT NULL DEFAULT 'pending',
    version         BIGINT NOT NULL DEFAULT 1,
    run_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_until    TIMESTAMPTZ,
    attempts        INT NOT NULL DEFAULT 0,
    pending_since   TIMESTAMPTZ DEFAULT now(),
    last_attempt_at TIMESTAMPTZ,
    last_success_at TIMESTAMPTZ,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (kind, entity_id),
    CHECK (status IN ('pending', 'done'))
);
CREATE INDEX jobs_due_idx ON jobs (run_at) WHERE status = 'pending';

-- The OIDC issuer zync-que last saw on each service's proxy; a change re-syncs the service's applications.
-- `endpoint` carries the issuer's credentials in its userinfo: it is never shown or logged.
CREATE TABLE service_issuers (
    service_id  BIGINT PRIMARY KEY REFERENCES services (id) ON DELETE CASCADE,
    issuer_type TEXT,
    endpoint    TEXT,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Where each application's OAuth client was last pushed, so a deleted application (system answers 404) or one
-- whose service left OIDC or changed issuer can be removed from the right IdP.
CREATE TABLE clients (
    application_id BIGINT PRIMARY KEY,
    service_id     BIGINT NOT NULL,
    client_id      TEXT NOT NULL,
    issuer_type    TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    -- SHA-256 of what was last pushed: an identical push shortly after is skipped (bursts of notifications).
    digest         TEXT,
    synced_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
