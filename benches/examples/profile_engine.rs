//! Runs rolling deployments (`ROUNDS` times over `N` targets, default 5 and 10,000: `profile_engine ROUNDS N`), for profilers (`perf record`, `valgrind --tool=callgrind`).

fn main() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(|e| e.to_string())?;
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let n: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    for _ in 0..rounds {
        let (_store, orchestrator) = rt.block_on(deploy_benches::prepared(n))?;
        let driven = rt.block_on(orchestrator.run_until_idle()).map_err(|e| e.to_string())?;
        if driven != 1 {
            return Err(format!("expected one deployment, drove {driven}"));
        }
    }
    Ok(())
}
