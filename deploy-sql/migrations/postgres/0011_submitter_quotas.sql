-- deploy-sql schema, version 11: quotas per submitter. A deployment's submitter (its header's `created_by`) becomes a
-- generated column with indexes for the two counts an acceptance makes: its open deployments, and the bytes of those
-- accepted since a point in time (ids are UUIDv7, so an id range is a time range). Adding a stored generated column
-- rewrites the table once.
ALTER TABLE deploy_deployments ADD COLUMN submitter TEXT GENERATED ALWAYS AS (CAST(header AS jsonb) ->> 'created_by') STORED;
CREATE INDEX deploy_deployments_submitter_open ON deploy_deployments (submitter, terminal);
CREATE INDEX deploy_deployments_submitter_id ON deploy_deployments (submitter, id);
