//! `proptest` strategies: valid requests, fleets and fault scripts.

use std::time::Duration;

use deploy_core::DeploymentRequest;
use deploy_core::spec::{CanaryStepRequest, FailureRequest, StrategyRequest, UnreachableRequest, VerifyRequest};
use proptest::prelude::*;

use crate::scripted::Fault;

/// A fleet: target ids `t-0 .. t-(n-1)` with their running version (or nothing), `n` in `sizes`.
pub fn fleet(sizes: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<(String, Option<String>)>> {
    prop::collection::vec(prop::option::weighted(0.8, Just("1.0".to_owned())), sizes)
        .prop_map(|versions| versions.into_iter().enumerate().map(|(i, v)| (format!("t-{i}"), v)).collect())
}

/// A rollout strategy in request form.
pub fn strategy() -> impl Strategy<Value = StrategyRequest> {
    prop_oneof![
        Just(StrategyRequest::AllAtOnce),
        (1u32..5).prop_map(|n| StrategyRequest::Rolling { batch_size: Some(n.into()), pause: Some("1s".into()) }),
        (1u8..=100).prop_map(|p| StrategyRequest::Rolling { batch_size: Some(format!("{p}%").into()), pause: None }),
        (1i64..50).prop_map(|first| StrategyRequest::Canary {
            steps: vec![
                CanaryStepRequest { percent: first, verify_for: Some("2s".into()), pause: None },
                CanaryStepRequest { percent: 100, verify_for: None, pause: None },
            ],
        }),
    ]
}

/// A valid request for `environment` with a random strategy and failure and unreachable policies.
pub fn request(environment: &str) -> impl Strategy<Value = DeploymentRequest> {
    let environment = environment.to_owned();
    (
        strategy(),
        prop_oneof![Just("0".to_owned()), Just("1".to_owned()), Just("50%".to_owned())],
        prop::bool::ANY,
        prop_oneof![Just("continue"), Just("fail"), Just("rollback")],
        prop_oneof![Just("2.0"), Just("1.0")],
    )
        .prop_map(move |(strategy, max_failed, rollback, then, version)| DeploymentRequest {
            environment: environment.clone(),
            service: "svc".into(),
            version: version.into(),
            strategy: Some(strategy),
            verify: Some(VerifyRequest {
                timeout: Some("5s".into()),
                interval: Some("500ms".into()),
                healthy_for: Some("1s".into()),
            }),
            failure: Some(FailureRequest {
                max_failed: Some(max_failed.into()),
                on_failure: Some(if rollback { "rollback" } else { "fail" }.into()),
            }),
            on_unreachable: Some(UnreachableRequest { wait: Some("3s".into()), then: Some(then.into()) }),
            progress_deadline: Some("2m".into()),
            ..DeploymentRequest::default()
        })
}

/// A fault, any kind the scripted executor knows (hangs included: the progress deadline must end them).
pub fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::FailPermanently),
        (1u32..4).prop_map(Fault::FailTimes),
        Just(Fault::Unhealthy),
        (1u64..4).prop_map(|s| Fault::UnhealthyAfter(Duration::from_secs(s))),
        Just(Fault::Unreachable),
        (1u32..6).prop_map(Fault::UnreachableTimes),
        (1u64..5).prop_map(|s| Fault::Slow(Duration::from_secs(s))),
        Just(Fault::Hang),
        Just(Fault::CrashAfterApply),
    ]
}

/// Faults for some of `targets` targets: `(target index, fault)`.
pub fn fault_script(targets: usize) -> impl Strategy<Value = Vec<(usize, Fault)>> {
    prop::collection::vec((0..targets.max(1), fault()), 0..=targets.min(4))
}
