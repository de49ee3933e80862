//! Deploy with the typed client and follow the rollout live:
//!
//! ```text
//! DEPLOY_URL=http://127.0.0.1:8080 DEPLOY_TOKEN=dk_... cargo run -p deploy-client --example deploy -- prod checkout 2.0.1
//! ```
//!
//! Safe to run twice: the second run with the same idempotency key (`<service>-<version>`) is answered with the
//! deployment the first created.

use futures::StreamExt as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(environment), Some(service), Some(version)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: deploy <environment> <service> <version>".into());
    };
    let url = std::env::var("DEPLOY_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let mut builder = deploy_client::Client::builder(url);
    if let Ok(token) = std::env::var("DEPLOY_TOKEN") {
        builder = builder.token(token);
    }
    let client = builder.build()?;
    let key = deploy_client::IdempotencyKey::new(format!("{service}-{version}"))?;
    let spec =
        deploy_core::DeploymentSpec::builder(environment.parse()?, service.parse()?, version.parse()?).build()?;
    let options = deploy_client::SubmitOptions { idempotency_key: Some(key), if_match: None };
    let submitted = match client.submit_spec(&spec, options).await {
        Ok(s) => s,
        Err(deploy_client::Error::Problem(p)) => return Err(format!("refused: {p}").into()),
        Err(e) => return Err(e.into()),
    };
    let id = submitted.deployment.id();
    println!("{id} {}", if submitted.replayed { "(already submitted)" } else { "accepted" });
    let mut events = std::pin::pin!(client.watch(id, 0));
    while let Some(event) = events.next().await {
        let event = event?;
        println!("{:>3} {:<24} {}", event.seq, event.event_type.as_str(), event.message);
    }
    let done = client.get_deployment(id).await?;
    println!("{} is {}", done.id(), done.status());
    Ok(())
}
