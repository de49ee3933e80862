//! The connection layer under the API: a bounded number of connections (in total and per client address), a deadline
//! for a request's head, optional TLS whose files are reloaded when they change, and the client's address handed to
//! the router (for the per-address rate limit).
//!
//! `axum::serve` has none of the limits, and an unauthenticated client could hold every connection open with a
//! request that never finishes its headers (slowloris): here such a connection is closed after
//! [`ListenConfig::header_read_timeout`], and connections past the caps are closed at once, so one address cannot take
//! all of them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::metrics::Metrics;

/// Limits of the connection layer.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// A connection whose request head is not complete by then is closed (also the TLS handshake's deadline).
    pub header_read_timeout: Duration,
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_connections_per_ip: usize,
    /// TLS, when set.
    pub tls: Option<TlsFiles>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_ip: 512,
            tls: None,
        }
    }
}

/// The PEM files of the server's TLS identity, and optionally the CA that client certificates must chain to.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Client certificates (agents') are verified against this CA when presented.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate from `client_ca`.
    pub require_client_cert: bool,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

impl TlsFiles {
    fn stamp(&self) -> Vec<Option<SystemTime>> {
        let mut files = vec![&self.cert, &self.key];
        files.extend(self.client_ca.as_ref());
        files.iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
    }

    /// Reads the files into an acceptor.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that is missing or unusable.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| TlsError(format!("cannot read {}: {e}", p.display())));
        let cert_pem = read(&self.cert)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError(format!("{}: {e}", self.cert.display())))?;
        if certs.is_empty() {
            return Err(TlsError(format!("{} holds no certificate", self.cert.display())));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key)?)
            .map_err(|e| TlsError(format!("{}: no usable private key: {e}", self.key.display())))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                    let c = c.map_err(|e| TlsError(format!("{}: {e}", ca.display())))?;
                    roots.add(c).map_err(|e| TlsError(format!("{}: {e}", ca.display())))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError(e.to_string()))?)
            }
        };
        let mut config =
            builder.with_single_cert(certs, key).map_err(|e| TlsError(format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// The current acceptor, replaced when the files change (checked at most once a second, on accept).
struct Reloading {
    files: TlsFiles,
    current: RwLock<(TlsAcceptor, Vec<Option<SystemTime>>)>,
    checked: Mutex<std::time::Instant>,
}

impl Reloading {
    fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let stamp = files.stamp();
        let acceptor = files.acceptor()?;
        Ok(Self { files, current: RwLock::new((acceptor, stamp)), checked: Mutex::new(std::time::Instant::now()) })
    }

    fn acceptor(&self) -> TlsAcceptor {
        let due = {
            let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
            let due = checked.elapsed() >= Duration::from_secs(1);
            if due {
                *checked = std::time::Instant::now();
            }
            due
        };
        if due {
            let stamp = self.files.stamp();
            let changed = self.current.read().unwrap_or_else(PoisonError::into_inner).1 != stamp;
            if changed {
                match self.files.acceptor() {
                    Ok(acceptor) => {
                        tracing::info!("TLS certificate or key changed: reloaded");
                        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (acceptor, stamp);
                    }
                    // Half-written files (a renewal in progress): keep serving the old identity, look again later.
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but cannot be loaded; keeping the old ones")
                    }
                }
            }
        }
        self.current.read().unwrap_or_else(PoisonError::into_inner).0.clone()
    }
}

/// Open connections, in total and per address.
#[derive(Default)]
struct Slots {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A connection's place, given back when it closes.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.total = slots.total.saturating_sub(1);
        if let Some(n) = slots.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                slots.per_ip.remove(&self.ip);
            }
        }
    }
}

fn take_slot(slots: &Arc<Mutex<Slots>>, ip: IpAddr, config: &ListenConfig) -> Option<Slot> {
    let mut s = slots.lock().unwrap_or_else(PoisonError::into_inner);
    let mine = s.per_ip.get(&ip).copied().unwrap_or(0);
    if s.total >= config.max_connections || mine >= config.max_connections_per_ip {
        return None;
    }
    s.total += 1;
    s.per_ip.insert(ip, mine + 1);
    Some(Slot { slots: Arc::clone(slots), ip })
}

/// A bound listener, ready to serve.
pub(crate) struct Listener {
    listener: TcpListener,
    config: ListenConfig,
    tls: Option<Arc<Reloading>>,
}

impl Listener {
    /// Checks the TLS files before anything is served.
    pub(crate) fn new(listener: TcpListener, config: ListenConfig) -> Result<Self, TlsError> {
        let tls = config.tls.clone().map(Reloading::new).transpose()?.map(Arc::new);
        Ok(Self { listener, config, tls })
    }

    /// Serves `app` until `shutdown` fires, then lets open requests finish (at most `drain`).
    pub(crate) async fn serve(
        self,
        app: Router,
        metrics: Arc<Metrics>,
        mut shutdown: deploy_core::ShutdownSignal,
        drain: Duration,
    ) {
        let slots = Arc::new(Mutex::new(Slots::default()));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                () = shutdown.fired() => break,
            };
            // Reap finished connection tasks as we go.
            while connections.try_join_next().is_some() {}
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = take_slot(&slots, peer.ip(), &self.config) else {
                metrics.rejected("connection_limit");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let tls = self.tls.as_ref().map(|t| t.acceptor());
            let (app, stop, timeout, metrics) =
                (app.clone(), shutdown.clone(), self.config.header_read_timeout, Arc::clone(&metrics));
            connections.spawn(async move {
                let _slot = slot;
                match tls {
                    None => serve_connection(stream, peer, app, stop, timeout).await,
                    Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(tls, peer, app, stop, timeout).await,
                        Ok(Err(e)) => {
                            metrics.rejected("tls_handshake");
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => metrics.rejected("tls_handshake_timeout"),
                    },
                }
            });
        }
        drop(self.listener);
        let _ = tokio::time::timeout(drain, async { while connections.join_next().await.is_some() {} }).await;
        connections.abort_all();
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    mut stop: deploy_core::ShutdownSignal,
    header_read_timeout: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request.map(axum::body::Body::new))
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        }
        () = stop.fired() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
