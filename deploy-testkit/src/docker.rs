//! A Docker Engine for tests: where it is, whether it answers, and images made without a registry.
//!
//! The engine is `DEPLOY_TEST_DOCKER_HOST` (`unix:///path`), else the local default socket. A test that finds none
//! says so on stderr and passes without running; with `DEPLOY_TEST_REQUIRE_DOCKER=1` (as `.ci/run` sets) a missing
//! engine is a failure instead. Images are `docker import`ed from a static busybox (`/usr/bin/busybox` of Debian's
//! `busybox-static`), so nothing is pulled.
#![allow(clippy::panic, clippy::expect_used)] // Test support: a broken engine is a failed test.

use std::path::Path;
use std::process::Command;

/// The engine address tests use.
#[must_use]
pub fn host() -> String {
    std::env::var("DEPLOY_TEST_DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned())
}

/// The engine's address when it answers. When it does not: `None` after saying on stderr that `test` was skipped, or
/// a panic when `DEPLOY_TEST_REQUIRE_DOCKER=1`.
#[must_use]
pub fn engine_or_skip(test: &str) -> Option<String> {
    let host = host();
    let answers = docker(&host).args(["version", "--format", "{{.Server.Version}}"]).output();
    match answers {
        Ok(out) if out.status.success() => Some(host),
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                Err(e) => format!("the docker command: {e}"),
            };
            if std::env::var("DEPLOY_TEST_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
                panic!(
                    "{test}: a Docker engine is required (DEPLOY_TEST_REQUIRE_DOCKER=1) but {host} does not answer: {why}"
                );
            }
            eprintln!("SKIPPED {test}: no Docker engine at {host} ({why}); set DEPLOY_TEST_DOCKER_HOST to run it");
            None
        }
    }
}

/// The `docker` command aimed at `host`.
#[must_use]
pub fn docker(host: &str) -> Command {
    let mut cmd = Command::new("docker");
    cmd.arg("-H").arg(host);
    cmd
}

/// How a test image's web server behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Web {
    /// Serves `GET /health` as `{"version": "<version>"}` on port 8080.
    Healthy,
    /// Serves port 8080, but `/health` is 404.
    Unhealthy,
    /// Exits with status 3 at once.
    Crashes,
}

/// Makes the image `repo:version` (once; it is kept) whose web server behaves as `web`.
///
/// # Panics
/// When the engine refuses, or `/usr/bin/busybox` is missing.
pub fn web_image(host: &str, repo: &str, version: &str, web: Web) -> String {
    let tag = format!("{repo}:{version}");
    if docker(host).args(["image", "inspect", &tag]).output().is_ok_and(|o| o.status.success()) {
        return tag;
    }
    let busybox = Path::new("/usr/bin/busybox");
    assert!(busybox.exists(), "test images need a static busybox at /usr/bin/busybox (Debian's busybox-static)");
    let dir = crate::fixtures::temp_dir("docker-image");
    let root = dir.join("rootfs");
    for sub in ["bin", "www", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).expect("image dirs");
    }
    std::fs::copy(busybox, root.join("bin/busybox")).expect("busybox");
    for applet in ["sh", "httpd", "wget", "sleep", "cat", "env"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet link");
    }
    if web != Web::Unhealthy {
        std::fs::write(root.join("www/health"), format!("{{\"version\": \"{version}\"}}")).expect("health file");
    }
    std::fs::write(root.join("www/index.html"), format!("version {version}\n")).expect("index");
    let cmd = match web {
        Web::Healthy | Web::Unhealthy => r#"CMD ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]"#,
        Web::Crashes => r#"CMD ["/bin/sh", "-c", "exit 3"]"#,
    };
    let tar = Command::new("tar").arg("-C").arg(&root).args(["-cf", "-", "."]).output().expect("tar");
    assert!(tar.status.success(), "tar: {}", String::from_utf8_lossy(&tar.stderr));
    let mut import = docker(host)
        .args(["import", "-c", cmd, "-c", "ENV PATH=/bin", "-", &tag])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker import");
    {
        use std::io::Write as _;
        import.stdin.take().expect("stdin").write_all(&tar.stdout).expect("image tarball");
    }
    let out = import.wait_with_output().expect("docker import");
    assert!(out.status.success(), "docker import {tag}: {}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
    tag
}

/// Removes every container deployd made for `environment` (by its label).
pub fn remove_environment(host: &str, environment: &str) {
    let filter = format!("label=dev.deployd.environment={environment}");
    let Ok(out) = docker(host).args(["ps", "-aq", "--filter", &filter]).output() else { return };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
    if !ids.is_empty() {
        let _ = docker(host).args(["rm", "-f"]).args(&ids).output();
    }
}

/// What `docker inspect` says of a container, as JSON (`None` when there is no such container).
#[must_use]
pub fn inspect(host: &str, name: &str) -> Option<serde_json::Value> {
    let out = docker(host).args(["inspect", name]).output().ok().filter(|o| o.status.success())?;
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    all.get(0).cloned()
}

/// The engine's address when it answers and is a Swarm manager; otherwise as [`engine_or_skip`]. A single-node Swarm
/// is made only on an engine named by `DEPLOY_TEST_DOCKER_HOST` (one kept for tests, as `.ci/run`'s): a developer's
/// own engine is never turned into a Swarm manager by a test.
#[must_use]
pub fn swarm_or_skip(test: &str) -> Option<String> {
    let host = engine_or_skip(test)?;
    let state = || {
        docker(&host)
            .args(["info", "--format", "{{.Swarm.LocalNodeState}}"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let dedicated = std::env::var("DEPLOY_TEST_DOCKER_HOST").is_ok();
    if state() != "active" && dedicated {
        let _ = docker(&host).args(["swarm", "init", "--advertise-addr", "127.0.0.1"]).output();
    }
    if state() == "active" {
        return Some(host);
    }
    if std::env::var("DEPLOY_TEST_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
        panic!("{test}: a Swarm manager is required (DEPLOY_TEST_REQUIRE_DOCKER=1) but {host} is not one");
    }
    eprintln!(
        "SKIPPED {test}: the Docker engine at {host} is not a Swarm manager (tests make one only of an engine named by \
         DEPLOY_TEST_DOCKER_HOST)"
    );
    None
}

/// Removes every Swarm service deployd made for `environment` (by its label).
pub fn remove_services(host: &str, environment: &str) {
    let filter = format!("label=dev.deployd.environment={environment}");
    let Ok(out) = docker(host).args(["service", "ls", "-q", "--filter", &filter]).output() else { return };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
    if !ids.is_empty() {
        let _ = docker(host).args(["service", "rm"]).args(&ids).output();
    }
}
