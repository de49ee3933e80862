//! Request → spec, collecting every problem; spec → request, writing every default.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{
    Artifact, ArtifactRequest, CanaryStep, CanaryStepRequest, ConfigValue, CountOrPercent, DeploymentRequest,
    DeploymentSpec, ExecutionMode, FailurePolicy, FailureRequest, ImperativeStep, OnFailure, RolloutStrategy,
    StepRequest, StrategyRequest, TargetSelector, TargetsRequest, UnreachableAction, UnreachablePolicy,
    UnreachableRequest, ValidationErrors, VerifyPolicy, VerifyRequest, defaults, is_sensitive_key,
};
use crate::duration::HumanDuration;
use crate::names::{EnvironmentName, ServiceName, TargetId, Version};
use crate::secrets::SecretRef;

const MAX_MAP_ENTRIES: usize = 256;
const MAX_VALUE_LEN: usize = 8 * 1024;
const MAX_KEY_LEN: usize = 128;
const MAX_STEPS: usize = 64;
const MAX_CANARY_STEPS: usize = 20;
const MAX_TARGET_IDS: usize = 100_000;

/// How a request is held to the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rules {
    /// Every rule: what is submitted.
    Enforced,
    /// Only what it takes to build a spec: a document already accepted (a stored row, a server's answer) is read even
    /// when a later version tightened a rule it met when it was accepted.
    Recorded,
}

pub(super) fn validate(req: &DeploymentRequest, rules: Rules) -> Result<DeploymentSpec, ValidationErrors> {
    let mut errs = ValidationErrors::default();

    let environment = name(&mut errs, "environment", EnvironmentName::new(req.environment.as_str()));
    let service = name(&mut errs, "service", ServiceName::new(req.service.as_str()));
    let version = name(&mut errs, "version", Version::new(req.version.as_str()));
    // A version is shown everywhere a deployment is: a token pasted as one is refused like any inline secret.
    if let Some(kind) = crate::secrets::secret_shape(&req.version) {
        errs.push_secret("version", shaped_like(kind));
    }
    let artifact = req.artifact.as_ref().and_then(|a| artifact(&mut errs, a));
    let config = config(&mut errs, &req.config);
    let secrets = secrets(&mut errs, &req.secrets);
    let targets = targets(&mut errs, req.targets.as_ref());
    let strategy = strategy(&mut errs, req.strategy.as_ref());
    let verify = verify(&mut errs, req.verify.as_ref());
    let failure = failure(&mut errs, req.failure.as_ref());
    let on_unreachable = unreachable(&mut errs, req.on_unreachable.as_ref());
    let progress_deadline =
        duration(&mut errs, "progress_deadline", req.progress_deadline.as_deref(), defaults::PROGRESS_DEADLINE);
    let pause_deadline = req.pause_deadline.as_deref().map(|d| {
        let d = duration(&mut errs, "pause_deadline", Some(d), HumanDuration::ZERO);
        if d.is_zero() {
            errs.push("pause_deadline", "must be longer than zero");
        }
        d
    });
    let mode = mode(&mut errs, req.mode.as_deref(), req.steps.as_deref());
    labels(&mut errs, "labels", &req.labels);

    if progress_deadline.is_zero() {
        errs.push("progress_deadline", "must be longer than zero");
    }
    if let Some(v) = &verify
        && progress_deadline <= v.timeout
    {
        errs.push("progress_deadline", format!("must be longer than verify.timeout ({})", v.timeout));
    }

    match (environment, service, version, targets, strategy, verify, failure, on_unreachable, mode) {
        (
            Some(environment),
            Some(service),
            Some(version),
            Some(targets),
            Some(strategy),
            Some(verify),
            Some(failure),
            Some(on_unreachable),
            Some(mode),
        ) if errs.is_empty() || rules == Rules::Recorded => Ok(DeploymentSpec {
            environment,
            service,
            version,
            artifact,
            config,
            secrets,
            targets,
            strategy,
            verify,
            failure,
            on_unreachable,
            progress_deadline,
            pause_deadline,
            mode,
            labels: req.labels.clone(),
        }),
        _ => Err(errs),
    }
}

fn name<T>(errs: &mut ValidationErrors, field: &str, result: Result<T, crate::names::NameError>) -> Option<T> {
    result.map_err(|e| errs.push(field, e.rule())).ok()
}

fn duration(errs: &mut ValidationErrors, field: &str, value: Option<&str>, default: HumanDuration) -> HumanDuration {
    match value {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            errs.push(field, format!("{s:?} is not a duration: use an integer and a unit (ms, s, m, h, d) up to 30d"));
            default
        }),
    }
}

fn artifact(errs: &mut ValidationErrors, a: &ArtifactRequest) -> Option<Artifact> {
    let mut ok = true;
    if a.uri.trim().is_empty() || a.uri.len() > 2048 || a.uri.chars().any(char::is_whitespace) {
        errs.push("artifact.uri", "must be a URI without spaces, at most 2048 characters");
        ok = false;
    }
    if let Some(kind) = crate::secrets::secret_shape(&a.uri) {
        errs.push_secret("artifact.uri", shaped_like(kind));
        ok = false;
    }
    if let Some(d) = &a.digest {
        let valid = d.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if !valid {
            errs.push("artifact.digest", "must be \"sha256:\" followed by 64 lowercase hex digits");
            ok = false;
        }
    }
    ok.then(|| Artifact { uri: a.uri.clone(), digest: a.digest.clone() })
}

/// The message for a value that looks like a credential (never the value itself).
pub(crate) fn shaped_like(kind: &str) -> String {
    format!(
        "this value looks like {kind}; secrets are references like {{\"ref\": \"vault://path#key\"}}, never literals"
    )
}

fn key_ok(errs: &mut ValidationErrors, field: &str, key: &str) -> bool {
    let valid = (1..=MAX_KEY_LEN).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !valid {
        // The key is not echoed as a field path: it may hold anything (escape sequences among it).
        errs.push(field, format!("key {key:?}: keys are 1 to 128 letters, digits, '_', '-' or '.'"));
    }
    valid
}

fn reference(value: &Value) -> Option<Result<SecretRef, String>> {
    let obj = value.as_object()?;
    let r = obj.get("ref")?;
    if obj.len() != 1 {
        return Some(Err("a reference has exactly one field, \"ref\"".to_owned()));
    }
    Some(match r.as_str() {
        Some(s) => SecretRef::parse(s).map_err(|e| e.to_string()),
        None => Err("\"ref\" must be a string like \"env://NAME\"".to_owned()),
    })
}

fn config(errs: &mut ValidationErrors, config: &BTreeMap<String, Value>) -> BTreeMap<String, ConfigValue> {
    if config.len() > MAX_MAP_ENTRIES {
        errs.push("config", format!("at most {MAX_MAP_ENTRIES} keys"));
    }
    let mut out = BTreeMap::new();
    for (key, value) in config {
        let field = format!("config.{key}");
        if !key_ok(errs, "config", key) {
            continue;
        }
        match reference(value) {
            Some(Ok(r)) => {
                out.insert(key.clone(), ConfigValue::Secret(r));
            }
            Some(Err(msg)) => errs.push(field, msg),
            None if is_sensitive_key(key) => errs.push_secret(
                field,
                "this key names a secret, so its value must be a reference like {\"ref\": \"vault://path#key\"}, \
                 not a literal",
            ),
            None => match value {
                Value::String(s) if s.len() > MAX_VALUE_LEN => {
                    errs.push(field, format!("at most {MAX_VALUE_LEN} bytes"));
                }
                Value::String(s) if crate::secrets::secret_shape(s).is_some() => {
                    errs.push_secret(field, shaped_like(crate::secrets::secret_shape(s).unwrap_or("a secret")));
                }
                Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                    out.insert(key.clone(), ConfigValue::Literal(value.clone()));
                }
                _ => errs.push(field, "must be a string, a number, a boolean or a secret reference"),
            },
        }
    }
    out
}

fn secrets(errs: &mut ValidationErrors, secrets: &BTreeMap<String, Value>) -> BTreeMap<String, SecretRef> {
    if secrets.len() > MAX_MAP_ENTRIES {
        errs.push("secrets", format!("at most {MAX_MAP_ENTRIES} keys"));
    }
    let mut out = BTreeMap::new();
    for (key, value) in secrets {
        if !key_ok(errs, "secrets", key) {
            continue;
        }
        let field = format!("secrets.{key}");
        match reference(value) {
            Some(Ok(r)) => {
                out.insert(key.clone(), r);
            }
            Some(Err(msg)) => errs.push(field, msg),
            None => errs.push_secret(
                field,
                "secrets are references like {\"ref\": \"vault://path#key\"}; a literal value is refused",
            ),
        }
    }
    out
}

fn labels(errs: &mut ValidationErrors, field: &str, labels: &BTreeMap<String, String>) {
    if labels.len() > MAX_MAP_ENTRIES {
        errs.push(field, format!("at most {MAX_MAP_ENTRIES} labels"));
    }
    for (key, value) in labels {
        if !key_ok(errs, field, key) {
            continue;
        }
        if value.len() > 256 {
            errs.push(format!("{field}.{key}"), "label values are at most 256 bytes");
        } else if errs.check_text(&format!("{field}.{key}"), value, 256) && crate::secrets::is_sensitive_key(key) {
            errs.push_secret(
                format!("{field}.{key}"),
                "labels are stored and shown in clear; this key names a secret, pass it through \"secrets\" as a \
                 reference",
            );
        }
    }
}

fn targets(errs: &mut ValidationErrors, req: Option<&TargetsRequest>) -> Option<TargetSelector> {
    let Some(req) = req else { return Some(TargetSelector::All) };
    let given = usize::from(req.all.is_some()) + usize::from(req.ids.is_some()) + usize::from(req.labels.is_some());
    if given != 1 {
        errs.push("targets", "give exactly one of {\"all\": true}, {\"ids\": [...]} or {\"labels\": {...}}");
        return None;
    }
    if let Some(all) = req.all {
        if !all {
            errs.push("targets.all", "must be true; select fewer targets with \"ids\" or \"labels\"");
            return None;
        }
        return Some(TargetSelector::All);
    }
    if let Some(ids) = &req.ids {
        if ids.is_empty() || ids.len() > MAX_TARGET_IDS {
            errs.push("targets.ids", format!("give 1 to {MAX_TARGET_IDS} target ids"));
            return None;
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            match TargetId::new(id.as_str()) {
                Ok(t) if seen.insert(t.clone()) => out.push(t),
                Ok(_) => errs.push(format!("targets.ids[{i}]"), format!("{id:?} is listed twice")),
                Err(e) => errs.push(format!("targets.ids[{i}]"), e.rule()),
            }
        }
        return Some(TargetSelector::Ids(out));
    }
    let labels_req = req.labels.clone().unwrap_or_default();
    if labels_req.is_empty() {
        errs.push("targets.labels", "give at least one label; use {\"all\": true} for every target");
        return None;
    }
    labels(errs, "targets.labels", &labels_req);
    Some(TargetSelector::Labels(labels_req))
}

fn count_or_percent(errs: &mut ValidationErrors, field: &str, value: &Value, min: u32) -> Option<CountOrPercent> {
    let parsed = match value {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).map(CountOrPercent::Count),
        Value::String(s) => match s.trim().strip_suffix('%') {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= 100).map(CountOrPercent::Percent),
            None => s.trim().parse::<u32>().ok().map(CountOrPercent::Count),
        },
        _ => None,
    };
    let in_range = match parsed {
        Some(CountOrPercent::Count(n)) => n >= min,
        Some(CountOrPercent::Percent(p)) => u32::from(p) >= min,
        None => false,
    };
    if !in_range {
        errs.push(field, format!("must be a count (at least {min}) or a percentage like \"25%\" (at least {min}%)"));
        return None;
    }
    parsed
}

fn strategy(errs: &mut ValidationErrors, req: Option<&StrategyRequest>) -> Option<RolloutStrategy> {
    match req {
        None => Some(RolloutStrategy::Rolling { batch_size: defaults::BATCH_SIZE, pause: HumanDuration::ZERO }),
        Some(StrategyRequest::AllAtOnce) => Some(RolloutStrategy::AllAtOnce),
        Some(StrategyRequest::Rolling { batch_size, pause }) => {
            let batch_size = match batch_size {
                None => Some(defaults::BATCH_SIZE),
                Some(v) => count_or_percent(errs, "strategy.batch_size", v, 1),
            };
            let pause = duration(errs, "strategy.pause", pause.as_deref(), HumanDuration::ZERO);
            batch_size.map(|batch_size| RolloutStrategy::Rolling { batch_size, pause })
        }
        Some(StrategyRequest::Canary { steps }) => canary(errs, steps),
    }
}

fn canary(errs: &mut ValidationErrors, steps: &[CanaryStepRequest]) -> Option<RolloutStrategy> {
    if steps.is_empty() || steps.len() > MAX_CANARY_STEPS {
        errs.push("strategy.steps", format!("give 1 to {MAX_CANARY_STEPS} steps"));
        return None;
    }
    let mut out = Vec::with_capacity(steps.len());
    let mut previous = 0i64;
    let mut ok = true;
    for (i, step) in steps.iter().enumerate() {
        let field = format!("strategy.steps[{i}].percent");
        if !(1..=100).contains(&step.percent) {
            errs.push(field, "must be between 1 and 100");
            ok = false;
        } else if step.percent <= previous {
            errs.push(field, format!("must be greater than the previous step's {previous}"));
            ok = false;
        }
        previous = previous.max(step.percent);
        let verify_for = duration(
            errs,
            &format!("strategy.steps[{i}].verify_for"),
            step.verify_for.as_deref(),
            defaults::CANARY_VERIFY_FOR,
        );
        let until_promoted = match step.pause.as_deref() {
            None => false,
            Some("until_promoted") => {
                if previous == 100 {
                    errs.push(format!("strategy.steps[{i}].pause"), "the last step has nothing left to promote");
                    ok = false;
                }
                true
            }
            Some(_) => {
                errs.push(format!("strategy.steps[{i}].pause"), "the only pause is \"until_promoted\"");
                ok = false;
                false
            }
        };
        out.push(CanaryStep {
            percent: u8::try_from(step.percent.clamp(0, 100)).unwrap_or(100),
            verify_for,
            until_promoted,
        });
    }
    if previous != 100 {
        errs.push("strategy.steps", "the last step must reach 100 percent");
        ok = false;
    }
    ok.then_some(RolloutStrategy::Canary { steps: out })
}

fn verify(errs: &mut ValidationErrors, req: Option<&VerifyRequest>) -> Option<VerifyPolicy> {
    let empty = VerifyRequest::default();
    let req = req.unwrap_or(&empty);
    let before = errs.errors().len();
    let timeout = duration(errs, "verify.timeout", req.timeout.as_deref(), defaults::VERIFY_TIMEOUT);
    let interval = duration(errs, "verify.interval", req.interval.as_deref(), defaults::VERIFY_INTERVAL);
    let healthy_for = duration(errs, "verify.healthy_for", req.healthy_for.as_deref(), defaults::HEALTHY_FOR);
    if timeout.is_zero() {
        errs.push("verify.timeout", "must be longer than zero");
    }
    if interval.is_zero() {
        errs.push("verify.interval", "must be longer than zero");
    }
    if interval > timeout {
        errs.push("verify.interval", format!("must not exceed verify.timeout ({timeout})"));
    }
    if healthy_for >= timeout && !timeout.is_zero() {
        errs.push("verify.healthy_for", format!("must be shorter than verify.timeout ({timeout})"));
    }
    (errs.errors().len() == before).then_some(VerifyPolicy { timeout, interval, healthy_for })
}

fn failure(errs: &mut ValidationErrors, req: Option<&FailureRequest>) -> Option<FailurePolicy> {
    let empty = FailureRequest::default();
    let req = req.unwrap_or(&empty);
    let max_failed = match &req.max_failed {
        None => Some(defaults::MAX_FAILED),
        Some(v) => count_or_percent(errs, "failure.max_failed", v, 0),
    };
    let on_failure = match req.on_failure.as_deref() {
        None => Some(defaults::ON_FAILURE),
        Some("fail") => Some(OnFailure::Fail),
        Some("rollback") => Some(OnFailure::Rollback),
        Some(other) => {
            errs.push("failure.on_failure", format!("{other:?} is not one of \"fail\", \"rollback\""));
            None
        }
    };
    Some(FailurePolicy { max_failed: max_failed?, on_failure: on_failure? })
}

fn unreachable(errs: &mut ValidationErrors, req: Option<&UnreachableRequest>) -> Option<UnreachablePolicy> {
    let empty = UnreachableRequest::default();
    let req = req.unwrap_or(&empty);
    let wait = duration(errs, "on_unreachable.wait", req.wait.as_deref(), defaults::UNREACHABLE_WAIT);
    let then = match req.then.as_deref() {
        None => Some(defaults::UNREACHABLE_THEN),
        Some("continue") => Some(UnreachableAction::Continue),
        Some("fail") => Some(UnreachableAction::Fail),
        Some("rollback") => Some(UnreachableAction::Rollback),
        Some(other) => {
            errs.push("on_unreachable.then", format!("{other:?} is not one of \"continue\", \"fail\", \"rollback\""));
            None
        }
    };
    then.map(|then| UnreachablePolicy { wait, then })
}

fn mode(errs: &mut ValidationErrors, mode: Option<&str>, steps: Option<&[StepRequest]>) -> Option<ExecutionMode> {
    match (mode.unwrap_or("declarative"), steps) {
        ("declarative", None) => Some(ExecutionMode::Declarative),
        ("declarative", Some(_)) => {
            errs.push("steps", "steps are only allowed with \"mode\": \"imperative\"");
            None
        }
        ("imperative", None) => {
            errs.push("steps", "an imperative request needs at least one step");
            None
        }
        ("imperative", Some(steps)) => {
            if steps.is_empty() || steps.len() > MAX_STEPS {
                errs.push("steps", format!("give 1 to {MAX_STEPS} steps"));
                return None;
            }
            let mut ok = true;
            for (i, step) in steps.iter().enumerate() {
                let valid = (1..=64).contains(&step.action.len())
                    && step.action.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !valid {
                    errs.push(format!("steps[{i}].action"), "use 1 to 64 lowercase letters, digits or '_'");
                    ok = false;
                }
                if step.args.len() > MAX_MAP_ENTRIES {
                    errs.push(format!("steps[{i}].args"), format!("at most {MAX_MAP_ENTRIES} arguments"));
                    ok = false;
                }
                for (key, value) in &step.args {
                    if is_sensitive_key(key) {
                        errs.push_secret(
                            format!("steps[{i}].args.{key}"),
                            "step arguments are stored in clear; pass secrets through \"secrets\" as references",
                        );
                        ok = false;
                    } else if value.len() > MAX_VALUE_LEN {
                        errs.push(format!("steps[{i}].args.{key}"), format!("at most {MAX_VALUE_LEN} bytes"));
                        ok = false;
                    } else if let Some(kind) = crate::secrets::secret_shape(value) {
                        errs.push_secret(format!("steps[{i}].args.{key}"), shaped_like(kind));
                        ok = false;
                    }
                }
            }
            ok.then(|| ExecutionMode::Imperative {
                steps: steps
                    .iter()
                    .map(|s| ImperativeStep { action: s.action.clone(), args: s.args.clone() })
                    .collect(),
            })
        }
        (other, _) => {
            errs.push("mode", format!("{other:?} is not one of \"declarative\", \"imperative\""));
            None
        }
    }
}

fn count_value(c: CountOrPercent) -> Value {
    match c {
        CountOrPercent::Count(n) => Value::from(n),
        CountOrPercent::Percent(p) => Value::String(format!("{p}%")),
    }
}

pub(super) fn to_request(spec: &DeploymentSpec) -> DeploymentRequest {
    let config = spec.config.iter().map(|(k, v)| (k.clone(), v.to_request())).collect();
    let secrets = spec.secrets.iter().map(|(k, r)| (k.clone(), r.to_request())).collect();
    let targets = match &spec.targets {
        TargetSelector::All => TargetsRequest { all: Some(true), ..TargetsRequest::default() },
        TargetSelector::Ids(ids) => {
            TargetsRequest { ids: Some(ids.iter().map(|i| i.to_string()).collect()), ..TargetsRequest::default() }
        }
        TargetSelector::Labels(l) => TargetsRequest { labels: Some(l.clone()), ..TargetsRequest::default() },
    };
    let strategy = match &spec.strategy {
        RolloutStrategy::AllAtOnce => StrategyRequest::AllAtOnce,
        RolloutStrategy::Rolling { batch_size, pause } => {
            StrategyRequest::Rolling { batch_size: Some(count_value(*batch_size)), pause: Some(pause.to_string()) }
        }
        RolloutStrategy::Canary { steps } => StrategyRequest::Canary {
            steps: steps
                .iter()
                .map(|s| CanaryStepRequest {
                    percent: i64::from(s.percent),
                    verify_for: Some(s.verify_for.to_string()),
                    pause: s.until_promoted.then(|| "until_promoted".to_owned()),
                })
                .collect(),
        },
    };
    let (mode, steps) = match &spec.mode {
        ExecutionMode::Declarative => ("declarative", None),
        ExecutionMode::Imperative { steps } => (
            "imperative",
            Some(steps.iter().map(|s| StepRequest { action: s.action.clone(), args: s.args.clone() }).collect()),
        ),
    };
    DeploymentRequest {
        environment: spec.environment.to_string(),
        service: spec.service.to_string(),
        version: spec.version.to_string(),
        artifact: spec.artifact.as_ref().map(|a| ArtifactRequest { uri: a.uri.clone(), digest: a.digest.clone() }),
        config,
        secrets,
        targets: Some(targets),
        strategy: Some(strategy),
        verify: Some(VerifyRequest {
            timeout: Some(spec.verify.timeout.to_string()),
            interval: Some(spec.verify.interval.to_string()),
            healthy_for: Some(spec.verify.healthy_for.to_string()),
        }),
        failure: Some(FailureRequest {
            max_failed: Some(count_value(spec.failure.max_failed)),
            on_failure: Some(
                match spec.failure.on_failure {
                    OnFailure::Fail => "fail",
                    OnFailure::Rollback => "rollback",
                }
                .to_owned(),
            ),
        }),
        on_unreachable: Some(UnreachableRequest {
            wait: Some(spec.on_unreachable.wait.to_string()),
            then: Some(
                match spec.on_unreachable.then {
                    UnreachableAction::Continue => "continue",
                    UnreachableAction::Fail => "fail",
                    UnreachableAction::Rollback => "rollback",
                }
                .to_owned(),
            ),
        }),
        progress_deadline: Some(spec.progress_deadline.to_string()),
        pause_deadline: spec.pause_deadline.map(|d| d.to_string()),
        mode: Some(mode.to_owned()),
        steps,
        labels: spec.labels.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(body: Value, expect_fields: &[&str]) {
        let req: DeploymentRequest = serde_json::from_value(body).unwrap();
        match req.validate() {
            Ok(_) => assert!(expect_fields.is_empty(), "expected errors on {expect_fields:?}, got none"),
            Err(errs) => {
                let got: Vec<&str> = errs.errors().iter().map(|e| e.field.as_str()).collect();
                assert_eq!(got, expect_fields, "{errs}");
            }
        }
    }

    #[test]
    fn minimal_request_gets_documented_defaults() {
        let req: DeploymentRequest =
            serde_json::from_value(json!({"environment": "prod", "service": "checkout", "version": "2.0.1"})).unwrap();
        let spec = req.validate().unwrap();
        assert_eq!(spec.targets(), &TargetSelector::All);
        assert_eq!(
            spec.strategy(),
            &RolloutStrategy::Rolling { batch_size: CountOrPercent::Percent(25), pause: HumanDuration::ZERO }
        );
        assert_eq!(spec.failure().on_failure, OnFailure::Rollback);
        assert_eq!(spec.failure().max_failed, CountOrPercent::Count(0));
        assert_eq!(spec.on_unreachable().then, UnreachableAction::Fail);
        assert_eq!(spec.progress_deadline(), HumanDuration::from_secs(600));
        assert_eq!(spec.mode(), &ExecutionMode::Declarative);
    }

    #[test]
    fn the_api_example_is_valid_and_round_trips() {
        let body = json!({
            "environment": "prod", "service": "checkout", "version": "2.0.1",
            "artifact": {"uri": "https://artifacts.example/checkout-2.0.1.tar.gz",
                         "digest": format!("sha256:{}", "a".repeat(64))},
            "config": {"LOG_LEVEL": "info"},
            "secrets": {"DB_PASSWORD": {"ref": "vault://kv/checkout/db#password"}},
            "targets": {"all": true},
            "strategy": {"type": "rolling", "batch_size": "25%", "pause": "0s"},
            "verify": {"timeout": "60s", "interval": "1s", "healthy_for": "3s"},
            "failure": {"max_failed": "0", "on_failure": "rollback"},
            "on_unreachable": {"wait": "30s", "then": "rollback"},
            "progress_deadline": "10m",
            "mode": "declarative",
            "labels": {"ticket": "OPS-123"}
        });
        let spec: DeploymentSpec = serde_json::from_value(body).unwrap();
        let again: DeploymentSpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(spec, again);
        assert_eq!(spec.fingerprint(), again.fingerprint());
    }

    #[test]
    fn omitted_defaults_and_written_defaults_have_one_fingerprint() {
        let short: DeploymentSpec =
            serde_json::from_value(json!({"environment": "prod", "service": "checkout", "version": "2.0.1"})).unwrap();
        let long: DeploymentSpec = serde_json::from_value(json!({
            "version": "2.0.1", "service": "checkout", "environment": "prod",
            "strategy": {"type": "rolling", "batch_size": "25%"}, "targets": {"all": true}
        }))
        .unwrap();
        assert_eq!(short.fingerprint(), long.fingerprint());
        assert_ne!(short.fingerprint(), short.with_version(Version::new("2.0.2").unwrap()).fingerprint());
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        check(
            json!({
                "environment": "Prod!", "service": "", "version": "1 0",
                "strategy": {"type": "rolling", "batch_size": "0%", "pause": "soon"},
                "verify": {"timeout": "5s", "healthy_for": "10s"},
                "failure": {"max_failed": "-1", "on_failure": "panic"},
                "on_unreachable": {"then": "ignore"},
                "mode": "sideways"
            }),
            &[
                "environment",
                "service",
                "version",
                "strategy.batch_size",
                "strategy.pause",
                "verify.healthy_for",
                "failure.max_failed",
                "failure.on_failure",
                "on_unreachable.then",
                "mode",
            ],
        );
    }

    #[test]
    fn strategy_arithmetic_is_checked() {
        let base = |strategy: Value| json!({"environment": "e", "service": "s", "version": "1", "strategy": strategy});
        check(base(json!({"type": "rolling", "batch_size": 2})), &[]);
        check(base(json!({"type": "rolling", "batch_size": "101%"})), &["strategy.batch_size"]);
        check(base(json!({"type": "rolling", "batch_size": 0})), &["strategy.batch_size"]);
        check(base(json!({"type": "canary", "steps": [{"percent": 10}, {"percent": 100}]})), &[]);
        check(
            base(json!({"type": "canary", "steps": [{"percent": 50}, {"percent": 10}, {"percent": 100}]})),
            &["strategy.steps[1].percent"],
        );
        check(base(json!({"type": "canary", "steps": [{"percent": 10}]})), &["strategy.steps"]);
        check(base(json!({"type": "canary", "steps": []})), &["strategy.steps"]);
    }

    #[test]
    fn inline_secrets_are_refused_and_marked() {
        let body = json!({
            "environment": "e", "service": "s", "version": "1",
            "config": {"DB_PASSWORD": "hunter2", "githubToken": "ghp_x", "LOG_LEVEL": "info",
                       "API_KEY": {"ref": "env://API_KEY"}, "private-key": "-----BEGIN"},
            "secrets": {"DB": "hunter2", "OK": {"ref": "vault://kv/a#b"}, "BAD_REF": {"ref": "nope"}}
        });
        let req: DeploymentRequest = serde_json::from_value(body).unwrap();
        let errs = req.validate().unwrap_err();
        assert!(errs.has_hardcoded_secret());
        let secret_fields: Vec<&str> =
            errs.errors().iter().filter(|e| e.hardcoded_secret).map(|e| e.field.as_str()).collect();
        assert_eq!(secret_fields, ["config.DB_PASSWORD", "config.githubToken", "config.private-key", "secrets.DB"]);
        assert!(errs.has_field("secrets.BAD_REF"));
        assert!(!errs.to_string().contains("hunter2"), "messages never echo a secret value");
    }

    #[test]
    fn imperative_mode_needs_steps_and_declarative_refuses_them() {
        let base = json!({"environment": "e", "service": "s", "version": "1"});
        let with = |extra: Value| {
            let mut b = base.clone();
            b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            b
        };
        check(with(json!({"mode": "imperative", "steps": [{"action": "stop"}, {"action": "start"}]})), &[]);
        check(with(json!({"mode": "imperative"})), &["steps"]);
        check(with(json!({"steps": [{"action": "stop"}]})), &["steps"]);
        check(with(json!({"mode": "imperative", "steps": [{"action": "Stop Now"}]})), &["steps[0].action"]);
    }

    #[test]
    fn selectors_and_deadlines() {
        let base = |extra: Value| {
            let mut b = json!({"environment": "e", "service": "s", "version": "1"});
            b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            b
        };
        check(base(json!({"targets": {"ids": ["a", "b"]}})), &[]);
        check(base(json!({"targets": {"ids": ["a", "a"]}})), &["targets.ids[1]"]);
        check(base(json!({"targets": {"all": true, "ids": ["a"]}})), &["targets"]);
        check(base(json!({"targets": {"labels": {}}})), &["targets.labels"]);
        check(base(json!({"progress_deadline": "30s"})), &["progress_deadline"]);
        check(base(json!({"artifact": {"uri": "x", "digest": "md5:abc"}})), &["artifact.digest"]);
    }

    /// Documents read tolerantly: a field this version does not know is ignored, and what it knows is kept. (The API
    /// refuses unknown fields in what it is sent: `deploy-server`'s `a_submission_with_an_unknown_field_is_refused_...`.)
    #[test]
    fn unknown_fields_are_ignored_when_reading_and_known_ones_kept() {
        let r: DeploymentRequest =
            serde_json::from_value(json!({"environment": "e", "service": "s", "version": "1", "verison": "2",
                   "strategy": {"type": "rolling", "batch_size": 2, "surge": 1}}))
            .unwrap();
        assert_eq!(r.version, "1");
        assert_eq!(r.strategy, Some(StrategyRequest::Rolling { batch_size: Some(json!(2)), pause: None }));
        // A field of another strategy is an error, not an unknown field: it would change what the request means.
        let mixed = serde_json::from_value::<DeploymentRequest>(
            json!({"environment": "e", "service": "s", "version": "1", "strategy": {"type": "all_at_once", "batch_size": 1}}),
        );
        assert!(mixed.unwrap_err().to_string().contains("`batch_size` does not apply to the `all_at_once` strategy"));
    }

    #[test]
    fn sensitive_key_names() {
        for k in ["DB_PASSWORD", "password", "apiKey", "API-KEY", "x_secret_y", "TOKEN", "ssh_private_key", "PASSWD"] {
            assert!(is_sensitive_key(k), "{k}");
        }
        for k in ["LOG_LEVEL", "PORT", "TOKE", "KEY"] {
            assert!(!is_sensitive_key(k), "{k}");
        }
    }
}
