//! Conformance suites: tables of checks that any implementation of the core traits can run in its own tests.
//!
//! Each check is a `pub async fn` that can be called alone, and panics with what was expected when the contract is
//! violated. Each suite lists its checks in one table (`CHECKS`) so none can be forgotten, and its `run_all` runs
//! every check of the table in turn, catching the panic of each and a check that does not finish, and returns a
//! [`Report`] of every violation rather than stopping at the first.
//!
//! ```no_run
//! # async fn t() {
//! let store = deploy_testkit::MemoryStore::new();
//! deploy_testkit::conformance::store::run_all(&store).await.assert_conforms();
//! # }
//! ```

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

pub mod executor;
pub mod store;

/// What a check made of its subject: checked, or not applicable to it (an executor without imperative steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    /// The check ran and every assertion held.
    Checked,
    /// The check does not apply to this subject, and why.
    NotApplicable(&'static str),
}

/// One check of a suite: its name and the function that runs it against a subject of type `S`.
pub struct Check<S: ?Sized> {
    /// The name of the check (the name of its function).
    pub name: &'static str,
    /// Runs the check; panics on a violation.
    pub run: for<'a> fn(&'a S) -> BoxFuture<'a, Ran>,
}

impl<S: ?Sized> fmt::Debug for Check<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A violation of a contract: which check found it and what it expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The check.
    pub check: &'static str,
    /// What was expected and what happened.
    pub message: String,
}

/// What a suite found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "a report is only useful once asserted or inspected"]
pub struct Report {
    /// The checks that ran and held.
    pub passed: Vec<&'static str>,
    /// The checks that did not apply, and why.
    pub not_applicable: Vec<(&'static str, &'static str)>,
    /// Every violation found, one per failing check.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether `check` reported a violation.
    #[must_use]
    pub fn violated(&self, check: &str) -> bool {
        self.violations.iter().any(|v| v.check == check)
    }

    /// Panics, listing every violation, unless there are none.
    ///
    /// # Panics
    /// When the subject violated the contract.
    #[allow(clippy::panic)]
    pub fn assert_conforms(&self) {
        if !self.violations.is_empty() {
            panic!("{self}");
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} check(s) passed, {} not applicable, {} violation(s)",
            self.passed.len(),
            self.not_applicable.len(),
            self.violations.len()
        )?;
        for v in &self.violations {
            writeln!(f, "- {}: {}", v.check, v.message)?;
        }
        Ok(())
    }
}

/// How long one check may take before it counts as a violation (it hung). Generous: real executors start processes.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs every check of `checks` against `subject`, one after the other, and reports every violation.
pub async fn run_table<S: ?Sized + Sync>(checks: &[Check<S>], subject: &S) -> Report {
    let mut report = Report::default();
    for check in checks {
        let run = AssertUnwindSafe((check.run)(subject)).catch_unwind();
        match tokio::time::timeout(CHECK_TIMEOUT, run).await {
            Ok(Ok(Ran::Checked)) => report.passed.push(check.name),
            Ok(Ok(Ran::NotApplicable(why))) => report.not_applicable.push((check.name, why)),
            Ok(Err(panic)) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panicked".to_owned());
                report.violations.push(Violation { check: check.name, message });
            }
            Err(_) => report.violations.push(Violation {
                check: check.name,
                message: format!("did not finish within {}s", CHECK_TIMEOUT.as_secs()),
            }),
        }
    }
    report
}

/// Builds a suite's table from the names of its check functions.
macro_rules! table {
    ($table:ident: $subject:ty; $($name:ident),* $(,)?) => {
        /// Checks of this suite, in the order they run.
        pub const $table: &[$crate::conformance::Check<$subject>] = &[
            $($crate::conformance::Check { name: stringify!($name), run: |s| Box::pin($name(s)) }),*
        ];
    };
}
pub(crate) use table;
