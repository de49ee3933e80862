//! Human output: tables, a deployment's summary, errors, and the exit code of an outcome.

use std::fmt::Write as _;

use deploy_client::Error;
use deploy_core::{Deployment, DeploymentStatus, Environment, Timestamp};

use crate::run::CliError;

/// The exit code of a deployment's outcome: 0 succeeded (or not finished), 2 degraded, 3 failed or rolled back,
/// 4 cancelled, superseded or rejected.
pub(crate) fn exit_code(status: DeploymentStatus) -> u8 {
    match status {
        DeploymentStatus::Degraded => 2,
        DeploymentStatus::Failed | DeploymentStatus::RolledBack => 3,
        DeploymentStatus::Cancelled | DeploymentStatus::Superseded | DeploymentStatus::Rejected => 4,
        _ => 0,
    }
}

/// An error as a person should read it: the problem's title and detail, not a debug dump.
pub(crate) fn error(e: &CliError) -> String {
    match e {
        CliError::Usage(m) => format!("error: {m}"),
        CliError::Client { source, url } => match source {
            Error::Problem(p) => {
                let mut out = format!("error: {}", p.title);
                if let Some(d) = &p.detail {
                    let _ = write!(out, ": {d}");
                }
                for f in &p.errors {
                    let _ = write!(out, "\n  {}: {}", f.field, f.message);
                }
                if let Some(id) = &p.request_id {
                    let _ = write!(out, "\n  (HTTP {}, request id {id})", p.status);
                }
                out
            }
            Error::Transport(t) => {
                let mut out = format!("error: cannot reach the server at {url}");
                let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(t);
                let mut last = String::new();
                while let Some(c) = cause {
                    last = c.to_string();
                    cause = c.source();
                }
                if !last.is_empty() {
                    let _ = write!(out, ": {last}");
                }
                out
            }
            Error::Timeout(_) => format!("error: the request to {url} timed out"),
            Error::WaitTimedOut(d) => {
                let mut out = format!("error: deployment {} was still {} when --timeout passed", d.id(), d.status());
                // A deployment waiting for approval waits for people: say for whom.
                if d.status() == DeploymentStatus::AwaitingApproval
                    && let Some(rule) = d.protection()
                {
                    let who = if rule.approvers.is_empty() {
                        "anyone with the approve permission on its environment".to_owned()
                    } else {
                        rule.approvers.join(", ")
                    };
                    let _ = write!(
                        out,
                        "\n  it awaits approval: {} of {} so far; approvers: {who} (deployctl approve {})",
                        d.approved_by().count(),
                        rule.required_approvals,
                        d.id()
                    );
                }
                out
            }
            other => format!("error: {other}"),
        },
    }
}

/// `text` safe to put on a terminal as one cell or field: every control character (line breaks included) and
/// direction override written as an escape (`\u{1b}`), so nothing a server sends can move the cursor, clear the
/// screen or forge a line.
pub(crate) fn clean(text: &str) -> String {
    escape(text, deploy_core::is_unprintable)
}

/// `text` safe to put on a terminal as lines: like [`clean`], but line breaks and tabs stay (what a hook printed).
pub(crate) fn terminal(text: &str) -> String {
    escape(text, |c| deploy_core::is_unprintable(c) && c != '\n' && c != '\t')
}

fn escape(text: &str, unsafe_char: impl Fn(char) -> bool) -> String {
    if !text.chars().any(&unsafe_char) {
        return text.to_owned();
    }
    text.chars().map(|c| if unsafe_char(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// A value that serializes as a word (`queue`, `healthy`), as that word.
pub(crate) fn word<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

/// RFC 3339, to the second.
pub(crate) fn time(t: Timestamp) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Columns aligned, two spaces apart, the header in capitals.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(clean(cell).chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ");
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(header.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(|cell| clean(cell)).collect()));
    }
    out
}

/// A deployment: what, where, its outcome, and every target.
pub(crate) fn deployment(d: &Deployment) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Deployment {}: {} {} to {}", d.id(), d.service(), d.version(), d.environment());
    let _ = write!(out, "Status:     {}", d.status());
    if let Some(reason) = d.status_reason() {
        let _ = write!(out, " ({reason})");
    }
    out.push('\n');
    let _ = writeln!(out, "Created:    {} by {}", time(d.created_at()), d.created_by());
    if let Some(f) = d.finished_at() {
        let _ = writeln!(out, "Finished:   {}", time(f));
    }
    if let Some(r) = d.rollback_of() {
        let _ = writeln!(out, "Rolls back: {r}");
    }
    if let Some(r) = d.retry_of() {
        let _ = writeln!(out, "Retries:    {r}");
    }
    if let Some(rule) = d.protection() {
        let approvers: Vec<&str> = d.approved_by().collect();
        let who = if approvers.is_empty() { String::new() } else { format!(" by {}", approvers.join(", ")) };
        let _ = writeln!(out, "Approvals:  {} of {}{who}", approvers.len(), rule.required_approvals);
    }
    if let Some(step) = d.awaiting_promotion() {
        let _ = writeln!(out, "Waiting:    canary step {step} waits to be promoted (deployctl promote {})", d.id());
    }
    if let Some(s) = d.superseded_by() {
        let _ = writeln!(out, "Superseded by: {s}");
    }
    let s = d.summary();
    let _ = writeln!(
        out,
        "Targets:    {} total, {} succeeded, {} failed, {} unreachable, {} rolled back, {} cancelled, {} pending",
        s.total,
        s.succeeded,
        s.failed,
        s.unreachable,
        s.rolled_back,
        s.cancelled,
        s.pending + s.in_progress
    );
    out.push('\n');
    let rows: Vec<Vec<String>> = d
        .targets()
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.from_version.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
                t.to_version.to_string(),
                t.status.to_string(),
                t.attempts.to_string(),
                t.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(&["target", "from", "to", "status", "attempts", "error"], &rows));
    out
}

/// Deployments, one line each.
pub(crate) fn deployments(items: &[Deployment]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            let s = d.summary();
            vec![
                d.id().to_string(),
                d.environment().to_string(),
                d.service().to_string(),
                d.version().to_string(),
                d.status().to_string(),
                format!("{}/{}", s.succeeded, s.total),
                time(d.created_at()),
            ]
        })
        .collect();
    table(&["id", "environment", "service", "version", "status", "succeeded", "created"], &rows)
}

/// An environment and its targets.
pub(crate) fn environment(e: &Environment) -> String {
    let mut out = format!("Environment {} (revision {}, concurrency {})\n", e.name, e.revision, word(&e.concurrency));
    if let Some(a) = &e.active_deployment {
        let _ = writeln!(out, "Active:     {a}");
    }
    if !e.queued.is_empty() {
        let _ =
            writeln!(out, "Queued:     {}", e.queued.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = e
        .targets
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.executor.to_string(),
                t.desired.as_ref().map_or_else(|| "-".to_owned(), |d| d.version.to_string()),
                t.actual.as_ref().and_then(|a| a.version.as_ref()).map_or_else(|| "-".to_owned(), ToString::to_string),
                t.actual.as_ref().map_or_else(|| "-".to_owned(), |a| word(&a.health)),
            ]
        })
        .collect();
    out.push_str(&table(&["target", "executor", "desired", "actual", "health"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_trim_the_last() {
        let t = table(&["id", "status"], &[vec!["a".into(), "ok".into()], vec!["longer".into(), "failed".into()]]);
        assert_eq!(t, "ID      STATUS\na       ok\nlonger  failed");
    }

    #[test]
    fn outcomes_map_to_the_documented_exit_codes() {
        use DeploymentStatus as S;
        let codes: Vec<u8> =
            [S::Succeeded, S::Degraded, S::Failed, S::RolledBack, S::Cancelled, S::Superseded, S::InProgress]
                .into_iter()
                .map(exit_code)
                .collect();
        assert_eq!(codes, [0, 2, 3, 3, 4, 4, 0]);
    }
}
