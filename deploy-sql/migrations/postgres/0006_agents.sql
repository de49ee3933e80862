-- deploy-sql schema, version 6: targets run by agents. One row per target: its assignment (numbered by generation) and
-- the agent's last report, as one document.
CREATE TABLE deploy_agents (
    environment TEXT NOT NULL,
    target TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (environment, target)
);
