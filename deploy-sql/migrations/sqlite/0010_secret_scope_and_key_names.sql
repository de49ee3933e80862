-- deploy-sql schema, version 10: an environment's secret scope (the references its deployments may resolve), as JSON;
-- NULL for none. API key names become a column with a unique index: a name is an identity, and two replicas creating
-- the same name at once must not both succeed. Keys that already share a name (possible before this version) keep
-- working: every one but the oldest is renamed `<name>#<id>`, which no new key can be called.
ALTER TABLE deploy_environments ADD COLUMN secret_scope TEXT;
ALTER TABLE deploy_api_keys ADD COLUMN name TEXT;
UPDATE deploy_api_keys SET name = json_extract(doc, '$.name');
UPDATE deploy_api_keys SET name = name || '#' || id
    WHERE id NOT IN (SELECT MIN(id) FROM deploy_api_keys GROUP BY name);
UPDATE deploy_api_keys SET doc = json_set(doc, '$.name', name) WHERE json_extract(doc, '$.name') <> name;
CREATE UNIQUE INDEX deploy_api_keys_name ON deploy_api_keys (name);
