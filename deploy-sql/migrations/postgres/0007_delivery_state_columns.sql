-- deploy-sql schema, version 7: a webhook delivery's state lives in columns of its own, and the document written
-- when it was queued (what never changes, the payload among it) in a table of its own, so claims and outcomes
-- rewrite small rows and never the document. A claim now also moves the delivery's due time to the end of its lease,
-- so the oldest due deliveries are found by index alone: claims made by an older binary get the same treatment here.
CREATE TABLE deploy_delivery_docs (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
INSERT INTO deploy_delivery_docs (id, doc) SELECT id, doc FROM deploy_deliveries;
ALTER TABLE deploy_deliveries
    ADD COLUMN status TEXT NOT NULL DEFAULT 'pending',
    ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN last_status_code BIGINT,
    ADD COLUMN next_at TEXT,
    ADD COLUMN delivered_at TEXT;
UPDATE deploy_deliveries SET
    status = doc::json->>'status',
    attempts = (doc::json->>'attempts')::bigint,
    last_status_code = (doc::json->>'last_status_code')::bigint,
    next_at = doc::json->>'next_attempt_at',
    delivered_at = doc::json->>'delivered_at';
UPDATE deploy_deliveries SET due = hidden_until WHERE pending = 1 AND hidden_until IS NOT NULL AND hidden_until > due;
ALTER TABLE deploy_deliveries DROP COLUMN doc;
-- Only pending deliveries are ever looked up by due time or claim: partial indexes, so a finished delivery leaves them
-- (one delete instead of a move per index) and they stay as small as the backlog.
DROP INDEX deploy_deliveries_due;
DROP INDEX deploy_deliveries_subscription_due;
DROP INDEX deploy_deliveries_subscription_hidden;
CREATE INDEX deploy_deliveries_due ON deploy_deliveries (due) WHERE pending = 1;
CREATE INDEX deploy_deliveries_subscription_due ON deploy_deliveries (subscription_id, due, id) WHERE pending = 1;
CREATE INDEX deploy_deliveries_subscription_hidden ON deploy_deliveries (subscription_id, hidden_until) WHERE pending = 1;
