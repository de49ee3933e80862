-- deploy-sql schema, version 11: quotas per submitter. A deployment's submitter (its header's `created_by`) becomes a
-- generated column, indexed with `terminal` for the count of a submitter's open deployments. The bytes a submitter
-- stored are kept as running totals per step of time (`bucket`: the first 7 hex digits of the deployment's UUIDv7 id,
-- 2^20 ms, about 17.5 minutes), added by a trigger on every new deployment, so an acceptance sums at most a window's
-- steps, never a submitter's whole history.
ALTER TABLE deploy_deployments ADD COLUMN submitter TEXT GENERATED ALWAYS AS (json_extract(header, '$.created_by')) VIRTUAL;
CREATE INDEX deploy_deployments_submitter_open ON deploy_deployments (submitter, terminal);
CREATE TABLE deploy_submitter_bytes (
    submitter TEXT NOT NULL,
    bucket TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    PRIMARY KEY (submitter, bucket)
);
INSERT INTO deploy_submitter_bytes (submitter, bucket, bytes)
    SELECT COALESCE(submitter, ''), substr(id, 1, 7), SUM(octet_length(header)) FROM deploy_deployments
    GROUP BY COALESCE(submitter, ''), substr(id, 1, 7);
CREATE TRIGGER deploy_deployments_count_bytes AFTER INSERT ON deploy_deployments
BEGIN
    INSERT INTO deploy_submitter_bytes (submitter, bucket, bytes)
        VALUES (COALESCE(json_extract(NEW.header, '$.created_by'), ''), substr(NEW.id, 1, 7), octet_length(NEW.header))
        ON CONFLICT (submitter, bucket) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
