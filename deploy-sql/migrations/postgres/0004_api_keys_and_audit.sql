-- deploy-sql schema, version 4: API keys (digests only) and the audit log.
CREATE TABLE deploy_api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL
);
CREATE TABLE deploy_audit (
    id TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    environment TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX deploy_audit_actor ON deploy_audit (actor, id);
CREATE INDEX deploy_audit_environment ON deploy_audit (environment, id);
