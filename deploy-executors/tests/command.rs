//! The `command` executor against the executor contract, with hooks that record what they were asked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use deploy_core::{EnvironmentName, EnvironmentTarget, Target};
use deploy_executors::CommandExecutor;
use serde_json::json;

/// The `command` executor with hooks that log each stage, one fresh target id per target the suite asks for.
struct CommandFixture {
    executor: CommandExecutor,
    log: std::path::PathBuf,
    next: std::sync::atomic::AtomicUsize,
}

impl CommandFixture {
    fn target(&self, id: &str, install: &str) -> Target {
        let record =
            format!("echo \"$DEPLOY_STAGE $DEPLOY_VERSION $DEPLOY_PREVIOUS_VERSION\" >> {}", self.log.display());
        let install = if install.is_empty() { record.clone() } else { install.to_owned() };
        let target: EnvironmentTarget = serde_json::from_value(json!({
            "id": id, "labels": {}, "executor": "command", "desired": null, "actual": null,
            "config": {"hooks": {"stop": record, "install": install, "start": record, "validate": "true"}, "timeout": "5s"}
        }))
        .unwrap();
        Target::of(&EnvironmentName::new("conf").unwrap(), &target)
    }
}

#[deploy_core::async_trait]
impl deploy_testkit::conformance::executor::ExecutorFixture for CommandFixture {
    fn executor(&self) -> &dyn deploy_core::Executor {
        &self.executor
    }
    async fn fresh_target(&self) -> Target {
        self.target(&format!("c-{}", self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst)), "")
    }
    async fn broken_target(&self) -> Option<Target> {
        Some(self.target("c-broken", "echo 'no such package' >&2; exit 3"))
    }
    fn steps(&self) -> Option<Vec<deploy_core::ImperativeStep>> {
        let step = |a: &str| deploy_core::ImperativeStep { action: a.into(), args: Default::default() };
        Some(vec![step("stop"), step("install"), step("start")])
    }
    fn fences(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn the_command_executor_passes_the_executor_conformance_suite() {
    let dir = deploy_testkit::fixtures::temp_dir("command-conformance");
    let fixture = CommandFixture {
        executor: CommandExecutor::new(dir.join("state")),
        log: dir.join("stages.log"),
        next: std::sync::atomic::AtomicUsize::new(0),
    };
    let report = deploy_testkit::conformance::executor::run_all(&fixture).await;
    report.assert_conforms();
    assert_eq!(report.not_applicable.len(), 1, "only the unreachable check does not apply: {report}");
    let stages = std::fs::read_to_string(&fixture.log).unwrap();
    let first: Vec<&str> = stages.lines().take(3).collect();
    assert_eq!(first, ["stop 1.0.0 ", "install 1.0.0 ", "start 1.0.0 "], "stages in order, with the version");
    assert!(stages.contains("install 2.0.0 1.0.0"), "the previous version is passed: {stages}");
}
