//! A TCP proxy between the client and `deployd` that loses answers or cuts connections on purpose.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to connections.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// The first connection's answer is read from the server and thrown away, and the connection closed: the server
    /// did the work, the client never hears of it.
    LoseFirstAnswer,
    /// Every connection is closed after this many bytes of answer.
    CutAfter(usize),
}

pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Proxy {
    pub(crate) async fn start(upstream: SocketAddr, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(relay(client, upstream, fault, n));
            }
        });
        Self { addr, connections }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, fault: Fault, n: usize) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upward = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let limit = match fault {
        Fault::LoseFirstAnswer if n == 0 => Some(0),
        Fault::LoseFirstAnswer => None,
        Fault::CutAfter(bytes) => Some(bytes),
    };
    let mut buf = vec![0u8; 4096];
    let mut sent = 0usize;
    while let Ok(read) = server_read.read(&mut buf).await {
        if read == 0 {
            break;
        }
        match limit {
            Some(0) => break, // the server answered; the client never hears it
            Some(max) => {
                let take = read.min(max - sent);
                if client_write.write_all(&buf[..take]).await.is_err() {
                    break;
                }
                sent += take;
                if sent >= max {
                    break;
                }
            }
            None => {
                if client_write.write_all(&buf[..read]).await.is_err() {
                    break;
                }
            }
        }
    }
    upward.abort();
}
