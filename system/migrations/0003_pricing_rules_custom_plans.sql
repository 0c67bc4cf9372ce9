-- Pricing rules of application plans (billing data only; apisonator never sees them).
CREATE TABLE pricing_rules (
    id BIGSERIAL PRIMARY KEY,
    plan_id BIGINT NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    metric_id BIGINT NOT NULL REFERENCES metrics(id) ON DELETE CASCADE,
    min BIGINT NOT NULL,
    max BIGINT,
    cost_per_unit NUMERIC(20, 4) NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX pricing_rules_plan_metric ON pricing_rules (plan_id, metric_id);

-- A customized plan (application `customize_plan`) is a copy of its original, used by one application.
ALTER TABLE plans ADD COLUMN original_id BIGINT REFERENCES plans(id);
