-- deploy-sql schema, version 1 (PostgreSQL). Times are Unix milliseconds, documents are JSON text.
CREATE TABLE deploy_environments (
    name TEXT PRIMARY KEY,
    revision BIGINT NOT NULL,
    concurrency TEXT NOT NULL,
    require_if_match BIGINT NOT NULL
);
CREATE TABLE deploy_environment_targets (
    environment TEXT NOT NULL,
    id TEXT NOT NULL,
    idx BIGINT NOT NULL,
    definition TEXT NOT NULL,
    desired TEXT,
    actual TEXT,
    PRIMARY KEY (environment, id)
);
CREATE TABLE deploy_deployments (
    id TEXT PRIMARY KEY,
    environment TEXT NOT NULL,
    revision BIGINT NOT NULL,
    service TEXT NOT NULL,
    status TEXT NOT NULL,
    terminal BIGINT NOT NULL,
    header TEXT NOT NULL,
    lease_owner TEXT,
    lease_token BIGINT NOT NULL,
    lease_expires BIGINT
);
CREATE INDEX deploy_deployments_queue ON deploy_deployments (environment, terminal, revision);
CREATE INDEX deploy_deployments_open ON deploy_deployments (terminal, revision);
CREATE TABLE deploy_deployment_targets (
    deployment_id TEXT NOT NULL,
    idx BIGINT NOT NULL,
    target_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (deployment_id, idx)
);
CREATE TABLE deploy_events (
    deployment_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);
CREATE TABLE deploy_idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE deploy_webhooks (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    secret TEXT NOT NULL
);
CREATE TABLE deploy_deliveries (
    id TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    pending BIGINT NOT NULL,
    due BIGINT,
    hidden_until BIGINT
);
CREATE INDEX deploy_deliveries_due ON deploy_deliveries (pending, due);
CREATE INDEX deploy_deliveries_subscription ON deploy_deliveries (subscription_id, id);
