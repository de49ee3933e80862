//! Runs one rolling deployment over 10,000 targets, for profilers (`perf record`, `valgrind --tool=callgrind`).

fn main() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(|e| e.to_string())?;
    for _ in 0..5 {
        let (_store, orchestrator) = rt.block_on(deploy_benches::prepared(10_000))?;
        let driven = rt.block_on(orchestrator.run_until_idle()).map_err(|e| e.to_string())?;
        if driven != 1 {
            return Err(format!("expected one deployment, drove {driven}"));
        }
    }
    Ok(())
}
