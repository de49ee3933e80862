-- deploy-sql schema, version 9: an environment's deploy windows and freeze periods (its schedule), as JSON; NULL for
-- none. Server-wide settings, one JSON document per name: the global freeze lives under 'freeze'.
ALTER TABLE deploy_environments ADD COLUMN schedule TEXT;
CREATE TABLE deploy_settings (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
