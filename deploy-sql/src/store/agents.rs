//! The agents' slots: `AgentStore`, with assignments fenced by the deployment's lease.

use super::*;

#[async_trait]
impl AgentStore for SqlStore {
    async fn agent_slot(
        &self,
        environment: &EnvironmentName,
        target: &deploy_core::TargetId,
    ) -> Result<Option<deploy_core::AgentSlot>, StoreError> {
        let row = sqlx::query("SELECT doc FROM deploy_agents WHERE environment = $1 AND target = $2")
            .bind(environment.to_string())
            .bind(target.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| from_json("agent", &get::<String>(&r, "doc")?)).transpose()
    }

    async fn assign_agent(
        &self,
        environment: &EnvironmentName,
        target: &deploy_core::TargetId,
        desired: deploy_core::DesiredState,
        deployment: DeploymentId,
        fencing_token: u64,
        now: Timestamp,
    ) -> Result<deploy_core::AgentSlot, StoreError> {
        let change = crate::group::AgentChange {
            environment: environment.clone(),
            target: target.clone(),
            change: crate::group::AgentUpdate::Assign(desired, deployment, fencing_token, now),
        };
        self.agent_grouped(change).await
    }

    async fn record_agent_report(
        &self,
        environment: &EnvironmentName,
        target: &deploy_core::TargetId,
        report: deploy_core::AgentReport,
        now: Timestamp,
    ) -> Result<deploy_core::AgentSlot, StoreError> {
        let change = crate::group::AgentChange {
            environment: environment.clone(),
            target: target.clone(),
            change: crate::group::AgentUpdate::Report(report, now),
        };
        self.agent_grouped(change).await
    }
}
