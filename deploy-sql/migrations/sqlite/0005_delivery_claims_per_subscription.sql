-- deploy-sql schema, version 5: webhook deliveries are claimed per subscription (a few at a time each, so one dead
-- receiver cannot take every slot): the oldest due of a subscription, and those it has in flight, by index.
CREATE INDEX deploy_deliveries_subscription_due ON deploy_deliveries (subscription_id, pending, due, id);
CREATE INDEX deploy_deliveries_subscription_hidden ON deploy_deliveries (subscription_id, pending, hidden_until);
