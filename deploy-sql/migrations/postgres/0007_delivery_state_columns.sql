-- deploy-sql schema, version 7: a webhook delivery's state lives in columns of its own, so recording an outcome
-- changes a few columns instead of rewriting the document (which holds the payload); the document keeps what never
-- changes. A claim now also moves the delivery's due time to the end of its lease, so the oldest due deliveries are
-- found by index alone: claims made by an older binary get the same treatment here.
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
