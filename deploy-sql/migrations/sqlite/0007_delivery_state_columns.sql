-- deploy-sql schema, version 7: a webhook delivery's state lives in columns of its own, so recording an outcome
-- changes a few columns instead of rewriting the document (which holds the payload); the document keeps what never
-- changes. A claim now also moves the delivery's due time to the end of its lease, so the oldest due deliveries are
-- found by index alone: claims made by an older binary get the same treatment here.
ALTER TABLE deploy_deliveries ADD COLUMN status TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE deploy_deliveries ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deploy_deliveries ADD COLUMN last_status_code BIGINT;
ALTER TABLE deploy_deliveries ADD COLUMN next_at TEXT;
ALTER TABLE deploy_deliveries ADD COLUMN delivered_at TEXT;
UPDATE deploy_deliveries SET
    status = json_extract(doc, '$.status'),
    attempts = json_extract(doc, '$.attempts'),
    last_status_code = json_extract(doc, '$.last_status_code'),
    next_at = json_extract(doc, '$.next_attempt_at'),
    delivered_at = json_extract(doc, '$.delivered_at');
UPDATE deploy_deliveries SET due = hidden_until WHERE pending = 1 AND hidden_until IS NOT NULL AND hidden_until > due;
