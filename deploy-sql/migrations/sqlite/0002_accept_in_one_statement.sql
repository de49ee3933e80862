-- Version 2 (SQLite): a new deployment, its queued event and its targets in one statement. SQLite has no
-- data-modifying CTEs, so an INSTEAD OF trigger on a view does the three inserts, the targets from a JSON array.
CREATE VIEW deploy_new_deployments AS
    SELECT '' AS id, '' AS environment, 0 AS revision, '' AS service, '' AS status, '' AS header, '' AS event,
           '' AS targets
    WHERE 0;
CREATE TRIGGER deploy_new_deployment INSTEAD OF INSERT ON deploy_new_deployments
BEGIN
    INSERT INTO deploy_deployments (id, environment, revision, service, status, terminal, header, lease_owner,
                                    lease_token, lease_expires)
        VALUES (NEW.id, NEW.environment, NEW.revision, NEW.service, NEW.status, 0, NEW.header, NULL, 0, NULL);
    INSERT INTO deploy_events (deployment_id, seq, doc) VALUES (NEW.id, 1, NEW.event);
    INSERT INTO deploy_deployment_targets (deployment_id, idx, target_id, doc)
        SELECT NEW.id, CAST(j.key AS INTEGER), json_extract(j.value, '$.id'), j.value FROM json_each(NEW.targets) AS j;
END;
