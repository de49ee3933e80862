-- deploy-sql schema, version 8: an environment's protection rule (who must approve its deployments), as JSON; NULL
-- for an unprotected environment. Deployments keep a copy of the rule they were accepted under in their own header.
ALTER TABLE deploy_environments ADD COLUMN protection TEXT;
-- Until when a deployment may not be claimed: one waiting for approval, until the wait after its approval is over or
-- its approval expires (far in the future when neither may happen by itself). NULL: claimable at once.
ALTER TABLE deploy_deployments ADD COLUMN not_before BIGINT;
