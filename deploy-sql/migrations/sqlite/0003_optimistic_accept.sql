-- Version 3 (SQLite): acceptance in one autocommitted statement. Inserting into this view bumps the environment's
-- revision only if it is still the one the caller read (and no webhook subscription exists, since deliveries need the
-- locking path), aborts the whole statement otherwise, and writes the deployment, its queued event, its targets and
-- its idempotency key.
CREATE VIEW deploy_accept AS
    SELECT '' AS id, '' AS environment, 0 AS read_revision, 0 AS revision, '' AS service, '' AS status,
           '' AS header, '' AS event, '' AS targets, '' AS key_scope, '' AS key_name, '' AS key_fingerprint,
           0 AS key_expires
    WHERE 0;
CREATE TRIGGER deploy_accept_insert INSTEAD OF INSERT ON deploy_accept
BEGIN
    UPDATE deploy_environments SET revision = revision + 1
        WHERE name = NEW.environment AND revision = NEW.read_revision AND NOT EXISTS (SELECT 1 FROM deploy_webhooks);
    SELECT RAISE(ABORT, 'deploy: environment changed') WHERE changes() = 0;
    INSERT INTO deploy_deployments (id, environment, revision, service, status, terminal, header, lease_owner,
                                    lease_token, lease_expires)
        VALUES (NEW.id, NEW.environment, NEW.revision, NEW.service, NEW.status, 0, NEW.header, NULL, 0, NULL);
    INSERT INTO deploy_events (deployment_id, seq, doc) VALUES (NEW.id, 1, NEW.event);
    INSERT INTO deploy_deployment_targets (deployment_id, idx, target_id, doc)
        SELECT NEW.id, CAST(j.key AS INTEGER), json_extract(j.value, '$.id'), j.value FROM json_each(NEW.targets) AS j;
    INSERT INTO deploy_idempotency_keys (scope, key, fingerprint, deployment_id, expires)
        SELECT NEW.key_scope, NEW.key_name, NEW.key_fingerprint, NEW.id, NEW.key_expires WHERE NEW.key_scope <> '';
END;
