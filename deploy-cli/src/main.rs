//! `deployctl`: the command line of the Deployment API.
//!
//! Exit codes: 0 succeeded (or any command without a deployment outcome), 2 degraded, 3 failed or rolled back,
//! 4 cancelled or superseded, 1 usage, transport or server errors.

mod args;
mod render;
mod run;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are not errors; every usage error is 1 (2 means "degraded" here).
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{}", render::terminal(&render::error(&e)));
            ExitCode::from(1)
        }
    }
}
