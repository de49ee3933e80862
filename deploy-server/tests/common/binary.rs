//! The `deployd` binary as a child process, for tests that need a real process (signals, limits, its own logs).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// Starts `cmd` (a `deployd serve ...`) with its standard output piped, and returns the child with the base URL of its
/// "listening on" line; the rest of its output is drained. The child is killed when dropped.
pub(crate) async fn listening(mut cmd: Command) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).kill_on_drop(true).spawn().expect("deployd starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut base = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some((_, addr)) = line.split_once("listening on ") {
            base = Some(addr.split_whitespace().next().unwrap().to_owned());
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base.expect("deployd listens"))
}
