//! The demo's service, on its own: `demo-app <port> <version>`, with `DEMO_APP_UNHEALTHY_VERSIONS=3.0,3.1` naming the
//! versions whose `/health` answers 503. `deployd demo` runs the same code as `deployd demo-app`.
//!
//! ```text
//! cargo run -p demo-app -- 18080 2.0 &
//! curl localhost:18080/health   # {"pid":...,"status":"ok","version":"2.0"}
//! ```

use anyhow::Context as _;
use deploy_server::demo_app::{DemoApp, serve};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().context("usage: demo-app <port> <version>")?.parse().context("the port")?;
    let version = args.next().context("usage: demo-app <port> <version>")?;
    let unhealthy_versions = std::env::var("DEMO_APP_UNHEALTHY_VERSIONS")
        .unwrap_or_default()
        .split(',')
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    let app = DemoApp { port, version, unhealthy_versions };
    println!("demo-app {} on http://127.0.0.1:{port}", app.version);
    serve(app, deploy_server::terminated()).await.with_context(|| format!("serving on port {port}"))
}
