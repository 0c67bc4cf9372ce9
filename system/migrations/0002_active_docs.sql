-- ActiveDocs specs (porta's api_docs_services): an OpenAPI document per provider, optionally tied to a service.
CREATE TABLE api_docs_services (
    id BIGSERIAL PRIMARY KEY,
    provider_id BIGINT NOT NULL REFERENCES accounts(id),
    service_id BIGINT REFERENCES services(id) ON DELETE SET NULL,
    name TEXT NOT NULL,
    system_name TEXT NOT NULL,
    description TEXT,
    published BOOLEAN NOT NULL DEFAULT FALSE,
    skip_swagger_validations BOOLEAN NOT NULL DEFAULT FALSE,
    body TEXT NOT NULL,
    base_path TEXT,
    swagger_version TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (provider_id, system_name)
);
CREATE INDEX api_docs_services_service ON api_docs_services (service_id);
