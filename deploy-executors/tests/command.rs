//! The `command` executor against the executor contract, with hooks that record what they were asked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use deploy_core::{EnvironmentName, EnvironmentTarget, Target, Version};
use deploy_executors::CommandExecutor;
use serde_json::json;

#[tokio::test]
async fn the_command_executor_passes_the_executor_conformance_suite() {
    let dir = deploy_testkit::fixtures::temp_dir("command-conformance");
    let log = dir.join("stages.log");
    let record = format!("echo \"$DEPLOY_STAGE $DEPLOY_VERSION $DEPLOY_PREVIOUS_VERSION\" >> {}", log.display());
    let target: EnvironmentTarget = serde_json::from_value(json!({
        "id": "c-1", "labels": {}, "executor": "command", "desired": null, "actual": null,
        "config": {"hooks": {"stop": record, "install": record, "start": record, "validate": "true"}, "timeout": "5s"}
    }))
    .unwrap();
    let target = Target::of(&EnvironmentName::new("conf").unwrap(), &target);
    let executor = CommandExecutor::new(dir.join("state"));
    let (v1, v2) = (Version::new("1.0").unwrap(), Version::new("2.0").unwrap());
    deploy_testkit::conformance::executor::run_all(&executor, &target, &v1, &v2, Duration::from_secs(10)).await;
    let stages = std::fs::read_to_string(&log).unwrap();
    let first: Vec<&str> = stages.lines().take(3).collect();
    assert_eq!(first, ["stop 1.0 ", "install 1.0 ", "start 1.0 "], "stages in order, with the version");
    assert!(stages.contains("install 2.0 1.0"), "the previous version is passed: {stages}");
}
