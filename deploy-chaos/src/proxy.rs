//! A TCP relay between a replica and PostgreSQL that the suite can cut: a network partition, seen from the replica.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Relays `127.0.0.1:<port>` to an upstream address. While cut, packets go nowhere, as when a link drops them: relayed
/// connections stop carrying bytes but stay open, and new ones are accepted and then left silent. Every connection
/// the cut caught is closed when the link heals (its session is gone); new ones are relayed again.
#[derive(Debug)]
pub struct Partition {
    /// Where the replica connects.
    pub addr: SocketAddr,
    /// `true` while cut.
    state: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Waits until the link is healed.
async fn healed(state: &mut watch::Receiver<bool>) {
    let _ = state.wait_for(|cut| !*cut).await;
}

impl Partition {
    /// A relay to `upstream`, not cut.
    pub async fn to(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = watch::Sender::new(false);
        let watcher = state.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = watcher.clone();
                tokio::spawn(async move {
                    let cut_now = *state.borrow_and_update();
                    if cut_now {
                        // Accepted into silence; closed once the link is back.
                        healed(&mut state).await;
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    let was_cut = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        r = state.wait_for(|cut| *cut) => r.is_ok(),
                    };
                    if was_cut {
                        // Both ends stay open and silent until the link heals.
                        healed(&mut state).await;
                    }
                    drop((client, server));
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// Cuts the link.
    pub fn cut(&self) {
        self.state.send_replace(true);
    }

    /// Lets bytes through again (the connections the cut caught are closed).
    pub fn heal(&self) {
        self.state.send_replace(false);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}
