//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the schemas below. The
//! document is committed as `deploy-server/openapi.json`; a test fails when the two drift, and another checks that
//! every field the server serializes is described here.

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::routes;
use crate::webhooks::api as webhooks;

/// An RFC 9457 problem.
#[derive(ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDoc {
    /// `/problems/<slug>`; `GET` it for a description.
    #[schema(rename = "type", example = "/problems/validation")]
    pub type_uri: String,
    /// The kind's title.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened.
    pub detail: String,
    /// Field errors of validation problems.
    pub errors: Option<Vec<FieldErrorDoc>>,
}

/// One problem with one field.
#[derive(ToSchema)]
#[schema(as = FieldError)]
pub struct FieldErrorDoc {
    /// The field, as a path (`strategy.batch_size`).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Set when the problem is a secret written in clear.
    pub hardcoded_secret: Option<bool>,
}

/// `queue`, `reject` or `supersede`.
#[derive(ToSchema)]
#[schema(as = ConcurrencyPolicy)]
#[allow(dead_code)]
pub enum ConcurrencyDoc {
    /// Runs after the active one.
    #[schema(rename = "queue")]
    Queue,
    /// Refused while another is queued or active.
    #[schema(rename = "reject")]
    Reject,
    /// Replaces older ones.
    #[schema(rename = "supersede")]
    Supersede,
}

/// A target as an environment defines it.
#[derive(ToSchema)]
#[schema(as = TargetDefinition)]
pub struct TargetDefinitionDoc {
    /// Unique within the environment.
    pub id: String,
    /// Labels that selectors match.
    pub labels: Option<BTreeMap<String, String>>,
    /// The executor kind (`sim`, `process`, ...).
    pub executor: String,
    /// Executor-specific configuration.
    pub config: Option<Value>,
}

/// The body of `PUT /v1/environments/{env}`.
#[derive(ToSchema)]
#[schema(as = EnvironmentSpec)]
pub struct EnvironmentSpecDoc {
    /// The concurrency policy (default `queue`).
    pub concurrency: Option<ConcurrencyDoc>,
    /// Whether submissions must carry `If-Match`.
    pub require_if_match: Option<bool>,
    /// The targets.
    pub targets: Option<Vec<TargetDefinitionDoc>>,
    /// Who must approve a deployment here before it starts (admins only may set it; audited as
    /// `environment.put`). Absent: nobody.
    pub protection: Option<ProtectionDoc>,
    /// When deployments may start here: deploy windows and freeze periods. Absent: any time.
    pub schedule: Option<ScheduleDoc>,
    /// The secret references deployments here may resolve, beside deployd's `--global-secret-scope`. Absent: none.
    /// Only an admin of every environment may widen it; an admin of this environment may keep or narrow it.
    pub secret_scope: Option<SecretScopeDoc>,
}

/// Which secret references an environment may resolve.
#[derive(ToSchema)]
#[schema(as = SecretScope)]
pub struct SecretScopeDoc {
    /// Exact references (`vault://kv/staging/db#password`) or prefixes ending in `*` (`env://DEPLOY_SECRET_STAGING_*`);
    /// at most 100. A reference with a `.` or `..` path segment, a backslash or a `%` is never in scope.
    pub allow: Vec<String>,
}

/// What a deployment asked a target to run.
#[derive(ToSchema)]
#[schema(as = DesiredState)]
pub struct DesiredDoc {
    /// The service.
    pub service: String,
    /// The version.
    pub version: String,
    /// The artifact.
    pub artifact: Option<Value>,
    /// Configuration.
    pub config: Option<Value>,
    /// Secret references.
    pub secrets: Option<Value>,
}

/// What was last observed on a target.
#[derive(ToSchema)]
#[schema(as = ActualState)]
pub struct ActualDoc {
    /// The running version.
    pub version: Option<String>,
    /// `healthy`, `unhealthy` or `unknown`.
    pub health: String,
    /// When it was observed (RFC 3339).
    pub observed_at: String,
}

/// A target of an environment.
#[derive(ToSchema)]
#[schema(as = EnvironmentTarget)]
pub struct EnvironmentTargetDoc {
    /// Its id.
    pub id: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The executor kind.
    pub executor: String,
    /// Executor-specific configuration.
    pub config: Option<Value>,
    /// Null until a deployment targets it.
    pub desired: Option<DesiredDoc>,
    /// Null before the first observation.
    pub actual: Option<ActualDoc>,
}

/// An environment.
#[derive(ToSchema)]
#[schema(as = Environment)]
pub struct EnvironmentDoc {
    /// Its name.
    pub name: String,
    /// Bumped by every change and accepted deployment; the `ETag`.
    pub revision: u64,
    /// The concurrency policy.
    pub concurrency: ConcurrencyDoc,
    /// Whether submissions must carry `If-Match`.
    pub require_if_match: bool,
    /// The deployment running now.
    pub active_deployment: Option<String>,
    /// Deployments waiting, in order.
    pub queued: Vec<String>,
    /// The targets, at most `--targets-per-response` of them (500 by default); page the rest from
    /// `GET /v1/environments/{env}/targets?cursor=<targets_next_cursor>`.
    pub targets: Vec<EnvironmentTargetDoc>,
    /// How many targets it has.
    pub targets_total: u64,
    /// Where the rest of `targets` starts, when they are not all here: the `cursor` of `.../targets`.
    pub targets_next_cursor: Option<String>,
    /// Who must approve a deployment here before it starts.
    pub protection: Option<ProtectionDoc>,
    /// When deployments may start here.
    pub schedule: Option<ScheduleDoc>,
    /// The secret references deployments here may resolve, beside deployd's global scope.
    pub secret_scope: Option<SecretScopeDoc>,
}

/// A page of environments.
#[derive(ToSchema)]
#[schema(as = EnvironmentList)]
pub struct EnvironmentListDoc {
    /// The environments.
    pub items: Vec<EnvironmentDoc>,
    /// The cursor of the next page.
    pub next_cursor: Option<String>,
}

/// The body of `POST /v1/deployments`. Only `environment`, `service` and `version` are required.
#[derive(ToSchema)]
#[schema(as = DeploymentRequest)]
pub struct DeploymentRequestDoc {
    /// The environment.
    pub environment: String,
    /// The service.
    pub service: String,
    /// The version.
    pub version: String,
    /// `{"uri": "...", "digest": "sha256:..."}`.
    pub artifact: Option<Value>,
    /// Plain configuration; names that say password/secret/token/api_key/private_key are refused with literal values.
    pub config: Option<BTreeMap<String, Value>>,
    /// Secret references, `{"ref": "vault://..."}`; literal values are refused (422 `hardcoded-secret`).
    pub secrets: Option<BTreeMap<String, Value>>,
    /// `{"all": true}`, `{"ids": [...]}` or `{"labels": {...}}`.
    pub targets: Option<Value>,
    /// `{"type": "all_at_once"}`, `{"type": "rolling", "batch_size": N or "P%", "pause": d}` or `{"type": "canary",
    /// "steps": [{"percent": 10, "verify_for": "30s", "pause": "until_promoted"}, {"percent": 100}]}`; a step with
    /// `"pause": "until_promoted"` waits after it until the deployment is promoted.
    pub strategy: Option<Value>,
    /// `{"timeout": "60s", "interval": "1s", "healthy_for": "3s"}`.
    pub verify: Option<Value>,
    /// `{"max_failed": "0", "on_failure": "rollback" | "fail"}`.
    pub failure: Option<Value>,
    /// `{"wait": "30s", "then": "fail" | "continue" | "rollback"}`.
    pub on_unreachable: Option<Value>,
    /// Fail when nothing progressed for this long (`"10m"`). Time spent paused does not count.
    pub progress_deadline: Option<String>,
    /// Abort the deployment when it stays paused (by an operator, or a canary step waiting to be promoted) this long
    /// (`"24h"`); default: no limit.
    pub pause_deadline: Option<String>,
    /// `declarative` (default) or `imperative`.
    pub mode: Option<String>,
    /// Imperative steps, `[{"action": "stop"}, ...]`.
    pub steps: Option<Vec<Value>>,
    /// Free-form labels.
    pub labels: Option<BTreeMap<String, String>>,
}

/// One target's progress within a deployment.
#[derive(ToSchema)]
#[schema(as = TargetProgress)]
pub struct TargetProgressDoc {
    /// The target.
    pub id: String,
    /// The version it ran before.
    pub from_version: Option<String>,
    /// The version this deployment brings.
    pub to_version: String,
    /// `pending`, `in_progress`, `verifying`, `succeeded`, `failed`, `unreachable`, `skipped`, `rolled_back`,
    /// `cancelled`.
    pub status: String,
    /// Executor calls made.
    pub attempts: u32,
    /// The last error.
    pub error: Option<String>,
    /// When this entry changed (RFC 3339).
    pub updated_at: String,
    /// What a rollback restores.
    pub previous: Option<DesiredDoc>,
}

/// Counts of targets per status.
#[derive(ToSchema)]
#[schema(as = Summary)]
pub struct SummaryDoc {
    /// All targets.
    pub total: u64,
    /// Not started.
    pub pending: u64,
    /// Being applied or verified.
    pub in_progress: u64,
    /// Done.
    pub succeeded: u64,
    /// Already ran the version.
    pub skipped: u64,
    /// Failed.
    pub failed: u64,
    /// Could not be reached.
    pub unreachable: u64,
    /// Returned to their previous version.
    pub rolled_back: u64,
    /// Never attempted.
    pub cancelled: u64,
}

/// A deployment.
#[derive(ToSchema)]
#[schema(as = Deployment)]
pub struct DeploymentDoc {
    /// UUIDv7.
    pub id: String,
    /// The environment.
    pub environment: String,
    /// The service.
    pub service: String,
    /// The version.
    pub version: String,
    /// Its status (the values are listed from the server's own enum).
    pub status: String,
    /// Why, in a sentence.
    pub status_reason: Option<String>,
    /// The request with its defaults, secrets as references.
    pub spec: Value,
    /// Who submitted it (`key:ci-bot`, `jwt:svc-a`).
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
    /// When a target last progressed (RFC 3339).
    pub progress_at: Option<String>,
    /// Every target's state, at most `--targets-per-response` of them (500 by default); page the rest from
    /// `GET /v1/deployments/{id}/targets?cursor=<targets_next_cursor>`. `summary` always counts all.
    pub targets: Vec<TargetProgressDoc>,
    /// How many targets it has.
    pub targets_total: u64,
    /// Where the rest of `targets` starts, when they are not all here: the `cursor` of `.../targets`.
    pub targets_next_cursor: Option<String>,
    /// Counts per status.
    pub summary: SummaryDoc,
    /// The deployment this one rolls back.
    pub rollback_of: Option<String>,
    /// The deployment that replaced this one.
    pub superseded_by: Option<String>,
    /// Whether a cancel was asked for.
    pub cancel_requested: bool,
    /// The deployment whose failed targets this one retries.
    pub retry_of: Option<String>,
    /// For a deployment to a protected environment: the rule it was accepted under.
    pub protection: Option<ProtectionDoc>,
    /// The approvers' decisions, in order (absent when none).
    pub approvals: Option<Vec<ApprovalDoc>>,
    /// When its approvals met the rule (RFC 3339).
    pub approved_at: Option<String>,
    /// The operator requests standing on it (absent when none).
    pub controls: Option<ControlsDoc>,
    /// While `paused` at a canary step that waits to be promoted: that step, numbered from 1.
    pub awaiting_promotion: Option<u32>,
    /// While `paused`: since when (RFC 3339).
    pub paused_at: Option<String>,
    /// While `queued` and held by windows or a freeze: until when nobody looks at it again (RFC 3339).
    pub held_until: Option<String>,
    /// The record's revision; the `ETag`.
    pub revision: u64,
}

/// One release in an environment's history: a deployment that started there.
#[derive(ToSchema)]
#[schema(as = Release)]
pub struct ReleaseDoc {
    /// The deployment.
    pub deployment_id: String,
    /// The service.
    pub service: String,
    /// The version it deployed.
    pub version: String,
    /// Its status now (`queued`, `in_progress`, `succeeded`, ...), terminal once it ended.
    pub status: String,
    /// Who submitted it (`key:ci-bot`).
    pub submitted_by: String,
    /// When it was accepted (RFC 3339).
    pub created_at: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339), if it has.
    pub finished_at: Option<String>,
    /// From start to end in milliseconds, once it ended.
    pub duration_ms: Option<u64>,
    /// The deployment it rolled back, for a rollback.
    pub rollback_of: Option<String>,
    /// Who approved it, in order (absent when nobody had to).
    pub approved_by: Option<Vec<String>>,
    /// The deployment whose failed targets it retried, for a retry.
    pub retry_of: Option<String>,
}

/// An approver's decision, as `POST /v1/deployments/{id}/approvals` takes it.
#[derive(ToSchema)]
#[schema(as = Decision)]
pub struct DecisionDoc {
    /// `approve` or `reject`.
    pub decision: String,
    /// Why (at most 1000 characters; nothing shaped like a secret). Recorded and shown to every reader.
    pub comment: Option<String>,
}

/// One approver's decision, as a deployment records it.
#[derive(ToSchema)]
#[schema(as = Approval)]
pub struct ApprovalDoc {
    /// Who decided (`key:alice`).
    pub by: String,
    /// `approve` or `reject`.
    pub decision: String,
    /// Why, if they said.
    pub comment: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

/// An environment's deploy windows and freeze periods. Deployments start only inside a window (when any is given) and
/// never inside a freeze; one that may not start stays `queued`, held with a reason that says until when.
#[derive(ToSchema)]
#[schema(as = Schedule)]
pub struct ScheduleDoc {
    /// Allowed windows.
    pub windows: Option<Vec<PeriodDoc>>,
    /// Freeze periods.
    pub freezes: Option<Vec<PeriodDoc>>,
}

/// A recurring period: it opens at each occurrence of `cron` on the local clock of `timezone`, and lasts `duration`.
#[derive(ToSchema)]
#[schema(as = Period)]
pub struct PeriodDoc {
    /// A cron pattern, `minute hour day-of-month month day-of-week` (`0 9 * * 1-5`).
    pub cron: String,
    /// How long it lasts (`8h`).
    pub duration: String,
    /// An IANA time zone (`Europe/Berlin`); default `UTC`. Daylight-saving changes move the opening in UTC.
    pub timezone: Option<String>,
    /// Why, shown in the reason of a deployment it holds.
    pub reason: Option<String>,
}

/// The global freeze.
#[derive(ToSchema)]
#[schema(as = Freeze)]
pub struct FreezeDoc {
    /// Whether a global freeze holds now.
    pub frozen: bool,
    /// Why.
    pub reason: Option<String>,
    /// Who froze (`key:oncall`).
    pub by: Option<String>,
    /// Since when (RFC 3339).
    pub since: Option<String>,
    /// When it lifts by itself (RFC 3339); absent: when lifted.
    pub until: Option<String>,
}

/// The body of `PUT /v1/freeze`.
#[derive(ToSchema)]
#[schema(as = FreezeRequest)]
pub struct FreezeRequestDoc {
    /// Why (required; shown in every held deployment's reason).
    pub reason: String,
    /// When it lifts by itself (RFC 3339, in the future); absent: when lifted with `DELETE /v1/freeze`.
    pub until: Option<String>,
}

/// The body of `POST /v1/deployments/{id}/override`.
#[derive(ToSchema)]
#[schema(as = Override)]
pub struct OverrideDoc {
    /// Why (required; recorded in the `deployment.overridden` event).
    pub reason: String,
}

/// An environment's protection rule.
#[derive(ToSchema)]
#[schema(as = Protection)]
pub struct ProtectionDoc {
    /// How many distinct approvers must approve (1 to 10).
    pub required_approvals: u32,
    /// Who may approve: principal ids (`key:alice`, `jwt:release-manager`) and roles (`role:approver`,
    /// `role:admin`); empty: anyone with the `approve` permission (the `approver` or `admin` role).
    pub approvers: Option<Vec<String>>,
    /// Whoever submitted a deployment may not approve it (default true).
    pub prevent_self_approval: Option<bool>,
    /// After the last approval, wait this long before the deployment may start (`"10m"`).
    pub wait: Option<String>,
    /// Cancel a deployment nobody approved within this long of its submission (`"24h"`).
    pub expires_after: Option<String>,
}

/// The operator requests standing on a deployment.
#[derive(ToSchema)]
#[schema(as = Controls)]
pub struct ControlsDoc {
    /// An operator asked to pause and has not asked to resume since.
    pub pause_requested: Option<bool>,
    /// Canary steps up to this one (from 1) were promoted.
    pub promoted_through: Option<u32>,
    /// Every remaining canary step is skipped.
    pub promote_full: Option<bool>,
    /// An abort was asked for; `rollback` as asked (absent: the failure policy decides).
    pub abort: Option<AbortDoc>,
}

/// The optional body of `promote`.
#[derive(ToSchema)]
#[schema(as = Promote)]
pub struct PromoteDoc {
    /// Skip every remaining canary step and pause: the rest of the targets go in one batch. Default false: release
    /// the step that waits to be promoted.
    pub full: Option<bool>,
}

/// The optional body of `abort`.
#[derive(ToSchema)]
#[schema(as = Abort)]
pub struct AbortDoc {
    /// Roll changed targets back (`true`) or leave them (`false`); absent: as the deployment's failure policy says.
    pub rollback: Option<bool>,
}

/// The body of an environment's rollback: which release to return to.
#[derive(ToSchema)]
#[schema(as = EnvironmentRollback)]
pub struct EnvironmentRollbackDoc {
    /// `previous` (the newest release that succeeded with another version than the last one), a deployment id, or a
    /// version.
    pub to: String,
}

/// A page of an environment's releases, newest first.
#[derive(ToSchema)]
#[schema(as = ReleaseList)]
pub struct ReleaseListDoc {
    /// The releases.
    pub items: Vec<ReleaseDoc>,
    /// The cursor of the next page.
    pub next_cursor: Option<String>,
}

/// A page of an environment's targets, in their order.
#[derive(ToSchema)]
#[schema(as = EnvironmentTargetList)]
pub struct EnvironmentTargetListDoc {
    /// The targets.
    pub items: Vec<EnvironmentTargetDoc>,
    /// The cursor of the next page.
    pub next_cursor: Option<String>,
}

/// A page of a deployment's targets, in rollout order.
#[derive(ToSchema)]
#[schema(as = TargetProgressList)]
pub struct TargetProgressListDoc {
    /// The targets.
    pub items: Vec<TargetProgressDoc>,
    /// The cursor of the next page.
    pub next_cursor: Option<String>,
}

/// A page of deployments, newest first.
#[derive(ToSchema)]
#[schema(as = DeploymentList)]
pub struct DeploymentListDoc {
    /// The deployments.
    pub items: Vec<DeploymentDoc>,
    /// The cursor of the next page.
    pub next_cursor: Option<String>,
}

/// An event.
#[derive(ToSchema)]
#[schema(as = Event)]
pub struct EventDoc {
    /// Position from 1, without gaps; the SSE `id`.
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// The SSE `event`: a status change (`deployment.queued`, `.started`, `.succeeded`, `.degraded`, `.failed`,
    /// `.rolling_back`, `.rolled_back`, `.cancelled`, `.superseded`, `.awaiting_approval`, `.rejected`, `.paused`),
    /// a decision (`deployment.approved`, `.promoted`, `.resumed`, `.requested` for pause, resume and abort,
    /// `.overridden`), a hold (`environment.frozen`), or `target.updated`.
    #[schema(rename = "type")]
    pub event_type: String,
    /// The deployment.
    pub deployment_id: String,
    /// The target, for `target.updated`.
    pub target_id: Option<String>,
    /// The new status.
    pub status: String,
    /// For people.
    pub message: String,
}

/// Events after `after`.
#[derive(ToSchema)]
#[schema(as = EventList)]
pub struct EventListDoc {
    /// The events, oldest first.
    pub items: Vec<EventDoc>,
    /// Pass as `after` for the next page.
    pub next_after: u64,
}

/// The body of `POST /v1/api-keys`.
#[derive(ToSchema)]
#[schema(as = NewApiKey)]
pub struct NewApiKeyDoc {
    /// A name; the principal is `key:<name>`.
    pub name: String,
    /// Its role (`viewer`, `deployer`, `approver`, `admin` or `agent`).
    pub role: String,
    /// Environment patterns (default `["*"]`; an agent key names exactly one environment).
    pub environments: Option<Vec<String>>,
    /// For an `agent` key (and only for one): the target it is bound to.
    pub target: Option<String>,
    /// The person the key belongs to: a JWT whose subject (or `--jwt-identity-claim`) is this person is the same
    /// approver, and submitter, as the key.
    pub owner: Option<String>,
}

/// An API key, without the key.
#[derive(ToSchema)]
#[schema(as = ApiKey)]
pub struct ApiKeyDoc {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Its environment patterns.
    pub environments: Vec<String>,
    /// Who created it.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// The key itself (`dk_...`): only in the answer to its creation.
    pub key: Option<String>,
    /// For an agent's key: the target it is bound to.
    pub target: Option<String>,
    /// The person the key belongs to.
    pub owner: Option<String>,
}

/// API keys.
#[derive(ToSchema)]
#[schema(as = ApiKeyList)]
pub struct ApiKeyListDoc {
    /// The keys, newest first.
    pub items: Vec<ApiKeyDoc>,
    /// Always null: every key is listed.
    pub next_cursor: Option<String>,
}

/// The body of `POST /v1/webhooks`.
#[derive(ToSchema)]
#[schema(as = NewWebhook)]
pub struct NewWebhookDoc {
    /// Where deliveries go (`http` or `https`).
    pub url: String,
    /// Event types or patterns (`deployment.*`, `target.updated`, `*`; default `["*"]`).
    pub events: Option<Vec<String>>,
    /// Environment patterns (default: every environment).
    pub environments: Option<Vec<String>>,
}

/// A webhook subscription.
#[derive(ToSchema)]
#[schema(as = Webhook)]
pub struct WebhookDoc {
    /// Its id.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// Event types or patterns.
    pub events: Vec<String>,
    /// Environment patterns; empty means every environment.
    pub environments: Vec<String>,
    /// Whether deliveries are made.
    pub active: bool,
    /// Why it was disabled (a 410 from the receiver).
    pub disabled_reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// The signing secret (`whsec_...`): only in the answer to its creation.
    pub secret: Option<String>,
}

/// Webhook subscriptions.
#[derive(ToSchema)]
#[schema(as = WebhookList)]
pub struct WebhookListDoc {
    /// The subscriptions, newest first.
    pub items: Vec<WebhookDoc>,
    /// Always null: every subscription is listed.
    pub next_cursor: Option<String>,
}

/// One delivery of an event to a subscription.
#[derive(ToSchema)]
#[schema(as = Delivery)]
pub struct DeliveryDoc {
    /// Its id, the `webhook-id` header of every attempt.
    pub id: String,
    /// The event type.
    pub event_type: String,
    /// The deployment it reports.
    pub deployment_id: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made (since the last redelivery).
    pub attempts: u32,
    /// The HTTP status of the last answer.
    pub last_status_code: Option<u16>,
    /// RFC 3339: when the next attempt is due.
    pub next_attempt_at: Option<String>,
    /// RFC 3339: when a 2xx was received.
    pub delivered_at: Option<String>,
}

/// A page of deliveries, newest first.
#[derive(ToSchema)]
#[schema(as = DeliveryList)]
pub struct DeliveryListDoc {
    /// The deliveries.
    pub items: Vec<DeliveryDoc>,
    /// The cursor of the next page.
    pub next_cursor: Option<String>,
}

/// What an agent reports about its target (`PUT /v1/agents/{env}/{target}/report`); also its heartbeat.
#[derive(ToSchema)]
#[schema(as = AgentReport)]
pub struct AgentReportDoc {
    /// The generation the agent last applied (0 before any).
    pub generation: u64,
    /// The version running now.
    pub version: Option<String>,
    /// `healthy`, `unhealthy` or `unknown`.
    pub health: String,
    /// What applying printed (at most 64 KiB).
    pub output: Option<String>,
    /// Why applying that generation failed.
    pub error: Option<String>,
}

/// A target run by an agent: its assignment and the agent's last report.
#[derive(ToSchema)]
#[schema(as = AgentSlot)]
pub struct AgentSlotDoc {
    /// The environment.
    pub environment: String,
    /// The target.
    pub target: String,
    /// Bumped by every new assignment (the `ETag`).
    pub generation: u64,
    /// What the agent should run (secrets as references), as a deployment's target's `desired`.
    pub desired: Option<DesiredDoc>,
    /// The deployment that asked for it.
    pub deployment: Option<String>,
    /// RFC 3339.
    pub assigned_at: Option<String>,
    /// The agent's last report.
    pub report: Option<AgentReportDoc>,
    /// RFC 3339: when the agent last reported.
    pub last_seen: Option<String>,
}

/// One mutating call.
#[derive(ToSchema)]
#[schema(as = AuditEntry)]
pub struct AuditEntryDoc {
    /// RFC 3339.
    pub at: String,
    /// Who (`key:ci-bot`, `jwt:svc-a`, `anonymous`).
    pub actor: String,
    /// What (`deployment.submit`, ...).
    pub action: String,
    /// On what (`deployments/<id>`).
    pub resource: String,
    /// The environment concerned.
    pub environment: Option<String>,
    /// The request's `X-Request-Id`.
    pub request_id: String,
    /// `success` or the problem slug.
    pub outcome: String,
}

/// A page of the audit log, newest first.
#[derive(ToSchema)]
#[schema(as = AuditList)]
pub struct AuditListDoc {
    /// The entries.
    pub items: Vec<AuditEntryDoc>,
    /// The cursor of the next page.
    pub next_cursor: Option<String>,
}

/// A problem type's description (`GET /problems/<slug>`).
#[derive(ToSchema)]
#[schema(as = ProblemType)]
pub struct ProblemTypeDoc {
    /// `/problems/<slug>`.
    #[schema(rename = "type")]
    pub type_uri: String,
    /// Its title.
    pub title: String,
    /// Its usual status.
    pub status: u16,
    /// What it means and what to do.
    pub description: String,
}

/// `{"status": "ok"}`.
#[derive(ToSchema)]
#[schema(as = Status)]
pub struct StatusDoc {
    /// `ok` or `ready`.
    pub status: String,
}

/// The problems every authenticated endpoint may answer: 401, 403, 429 and 503.
pub struct CommonProblems;

impl utoipa::IntoResponses for CommonProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[
            (401, "No or invalid credentials (`WWW-Authenticate` says which)"),
            (403, "The role or environments do not allow this"),
            (429, "Rate limited (`Retry-After`)"),
            (503, "Temporarily unavailable"),
        ])
    }
}

/// The problems of endpoints that take a body: 413 and 415.
pub struct BodyProblems;

impl utoipa::IntoResponses for BodyProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[(413, "Body over 1 MiB"), (415, "Body not application/json")])
    }
}

fn problems(list: &[(u16, &str)]) -> BTreeMap<String, RefOr<Response>> {
    list.iter()
        .map(|(status, description)| {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
            let response =
                ResponseBuilder::new().description(*description).content("application/problem+json", content);
            (status.to_string(), RefOr::T(response.build()))
        })
        .collect()
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (`dk_...`) or a JWT (HS256 or EdDSA)"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Deployment API", version = "1", description = "API-based deployment: submit, observe, cancel and roll back deployments."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    paths(
        routes::put_environment, routes::get_environment, routes::list_environments, routes::history,
        routes::environment_targets, routes::deployment_targets,
        routes::rollback_environment,
        routes::submit, routes::list_deployments, routes::get_deployment, routes::events, routes::cancel,
        routes::rollback, routes::pause, routes::resume, routes::promote, routes::abort, routes::retry, routes::approvals, routes::override_schedule,
        routes::get_freeze, routes::put_freeze, routes::delete_freeze,
        routes::create_key, routes::list_keys, routes::delete_key, routes::audit,
        webhooks::create_webhook, webhooks::list_webhooks, webhooks::get_webhook, webhooks::delete_webhook,
        webhooks::list_deliveries, webhooks::redeliver, crate::agents::assignment, crate::agents::report,
        routes::healthz, routes::readyz, routes::metrics, routes::openapi, routes::problem,
    ),
    components(schemas(
        ProblemDoc, FieldErrorDoc, EnvironmentSpecDoc, EnvironmentDoc, EnvironmentListDoc, DeploymentRequestDoc,
        DeploymentDoc, DeploymentListDoc, ReleaseDoc, ReleaseListDoc, EnvironmentRollbackDoc, PromoteDoc, AbortDoc, ControlsDoc, DecisionDoc, ApprovalDoc, ProtectionDoc, ScheduleDoc, SecretScopeDoc, PeriodDoc, FreezeDoc, FreezeRequestDoc, OverrideDoc, EventDoc, EventListDoc, NewApiKeyDoc, ApiKeyDoc, ApiKeyListDoc,
        AuditEntryDoc, AuditListDoc, ProblemTypeDoc, StatusDoc, NewWebhookDoc, WebhookDoc, WebhookListDoc,
        DeliveryDoc, DeliveryListDoc, AgentReportDoc, AgentSlotDoc, EnvironmentTargetListDoc, TargetProgressListDoc,
    )),
)]
struct ApiDoc;

/// The OpenAPI document, as pretty JSON. The values of every status, role and event type are listed from core's own
/// enums, so the document cannot fall behind them.
#[must_use]
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    let names = |v: &[&str]| v.iter().map(|s| Value::from(*s)).collect::<Vec<_>>();
    let deployment = names(&deploy_core::DeploymentStatus::ALL.map(deploy_core::DeploymentStatus::as_str));
    let target = names(&deploy_core::TargetStatus::ALL.map(deploy_core::TargetStatus::as_str));
    let event_status: Vec<&str> = deploy_core::DeploymentStatus::ALL
        .map(deploy_core::DeploymentStatus::as_str)
        .into_iter()
        .chain(deploy_core::TargetStatus::ALL.map(deploy_core::TargetStatus::as_str))
        .fold(Vec::new(), |mut all, s| {
            if !all.contains(&s) {
                all.push(s);
            }
            all
        });
    let roles = names(&deploy_core::Role::ALL.map(deploy_core::Role::as_str));
    let events = names(&deploy_core::EventType::ALL.map(deploy_core::EventType::as_str));
    let deliveries = names(&deploy_core::DeliveryStatus::ALL.map(deploy_core::DeliveryStatus::as_str));
    for (schema, property, values) in [
        ("Deployment", "status", deployment.clone()),
        ("Release", "status", deployment),
        ("TargetProgress", "status", target),
        ("Event", "status", names(&event_status)),
        ("Event", "type", events.clone()),
        ("Delivery", "event_type", events),
        ("Delivery", "status", deliveries),
        ("NewApiKey", "role", roles.clone()),
        ("ApiKey", "role", roles),
    ] {
        let schema = doc.components.as_mut().and_then(|c| c.schemas.get_mut(schema));
        if let Some(RefOr::T(Schema::Object(object))) = schema
            && let Some(RefOr::T(Schema::Object(field))) = object.properties.get_mut(property)
        {
            field.enum_values = Some(values);
        }
    }
    doc.to_pretty_json().unwrap_or_default()
}
