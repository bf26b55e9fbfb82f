//! The HTTPS server: a TLS accept loop in front of the axum application, in the shape of
//! mini-redis' `server::run` — it takes its listener and a shutdown future, so tests bind port 0
//! and run many servers in parallel. Shutdown stops accepting, marks the server not ready, and
//! gives open connections a grace period to finish their requests.
//!
//! Slow and numerous clients are bounded here (`HttpSettings`): at most `max_connections` open
//! connections (further clients wait in the kernel's listen queue, so the ones being served stay
//! fast), a deadline for the TLS handshake, for each request's header (which is also how long an
//! idle kept-alive connection may stay) and for each request's body.
//!
//! Closing: when a connection ends with request data still unread (an early 401 or 413 while the
//! client is still uploading), closing the socket at once would make the kernel answer the unread
//! data with a reset, which can destroy the answer before the client reads it. So every
//! connection ends with a lingering close: our side is shut (TLS close_notify, then FIN), and
//! what the client still sends is read and thrown away — up to [`LINGER_BYTES`] for at most
//! [`LINGER_TIME`] — until it closes too.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api;
use crate::config::{HttpSettings, Settings};
use crate::metrics::Metrics;
use crate::ratelimit::{Limiter, PeerAddr};
use crate::state::AppState;
use crate::store::Store;
use crate::timed_body::TimedBody;
use crate::tls::PeerCertificate;

/// How long in-flight requests get to finish once shutdown begins.
const GRACE_PERIOD: Duration = Duration::from_secs(10);
/// At most this long reading and dropping what a client still sends after our last answer.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// At most this much of it.
pub const LINGER_BYTES: usize = 64 << 20;

/// The bound listening socket and the connection settings `serve` applies to it.
pub struct Listener {
    tcp: TcpListener,
    http: HttpSettings,
}

impl Listener {
    pub fn new(tcp: TcpListener, http: HttpSettings) -> Self {
        Listener { tcp, http }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Serves `state` over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: Listener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) {
    let Listener {
        tcp: listener,
        http,
    } = listener;
    let http = Arc::new(http);
    let acceptor = TlsAcceptor::from(tls);
    let ready = state.ready.clone();
    let metrics = state.metrics.clone();
    // The backup-storage sync runs beside the server and stops with it.
    let (stop_sync, sync_stopped) = tokio::sync::watch::channel(false);
    let scheduler_stopped = sync_stopped.clone();
    let sync = state.storage_sync.map(|period| {
        tokio::spawn(crate::proxmox::run_sync(
            state.store.clone(),
            state.secrets.clone(),
            period,
            sync_stopped,
        ))
    });
    // So does the scheduler (due policies become jobs, lost jobs are failed and retried).
    let scheduler = tokio::spawn(crate::scheduler::run(
        state.store.clone(),
        state.jobs.clone(),
        scheduler_stopped,
    ));
    let limiter = Arc::new(Limiter::new(&http.limits, metrics.clone()));
    let forget = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                limiter.forget_idle();
            }
        })
    };
    let board = state.jobs.clone();
    let app = api::router(state)
        .layer(axum::middleware::from_fn_with_state(
            limiter,
            crate::ratelimit::limit,
        ))
        .layer(axum::middleware::from_fn(crate::request_id::assign));
    let max = http.max_connections.min(Semaphore::MAX_PERMITS) as u32;
    let permits = Arc::new(Semaphore::new(max as usize));
    let (stop_connections, connections_stop) = tokio::sync::watch::channel(false);
    let mut warned_full: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        if permits.available_permits() == 0
            && warned_full.is_none_or(|t| t.elapsed() > Duration::from_secs(60))
        {
            tracing::warn!(
                max_connections = max,
                "the connection limit is reached; new clients wait until a connection closes"
            );
            warned_full = Some(tokio::time::Instant::now());
        }
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        tokio::spawn(connection(
            Open::new(permit, metrics.clone()),
            tcp,
            peer,
            acceptor.clone(),
            app.clone(),
            http.clone(),
            connections_stop.clone(),
        ));
    }
    ready.store(false, Ordering::Relaxed);
    drop(listener);
    forget.abort();
    board.close();
    let _ = stop_sync.send(true);
    if let Some(task) = sync {
        let _ = task.await;
    }
    let _ = scheduler.await;
    tracing::info!("shutting down: no new connections, waiting for open requests");
    let _ = stop_connections.send(true);
    tokio::select! {
        _ = permits.acquire_many(max) => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(GRACE_PERIOD) => tracing::warn!("grace period over; closing remaining connections"),
    }
}

/// One open connection: holds its slot under the cap and counts itself in the metrics.
struct Open {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.connection(1);
        Open {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.connection(-1);
    }
}

async fn connection(
    open: Open,
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: axum::Router,
    http: Arc<HttpSettings>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(http.tls_handshake_timeout, acceptor.accept(tcp)).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            open.metrics.cut_off("tls_handshake");
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    // The verified client certificate (agents) travels with every request of this
    // connection; people's connections carry none.
    let peer_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| PeerCertificate {
            fingerprint: crate::tls::fingerprint(cert).into(),
        });
    let body_timeout = http.body_read_timeout;
    let body_metrics = open.metrics.clone();
    let service = TowerToHyperService::new(app.map_request(
        move |mut req: axum::http::Request<hyper::body::Incoming>| {
            if let Some(cert) = &peer_cert {
                req.extensions_mut().insert(cert.clone());
            }
            req.extensions_mut().insert(PeerAddr(peer));
            let metrics = body_metrics.clone();
            req.map(|body| axum::body::Body::new(TimedBody::new(body, body_timeout, metrics)))
        },
    ));
    let mut conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(http.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            done = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break done,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    match result {
        Ok(()) => linger(conn.into_parts().io.into_inner()).await,
        Err(e) => {
            if e.is_timeout() {
                open.metrics.cut_off("header");
            }
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Ends a connection whose answers are all written: shut our side, then drain what the client
/// still sends (see the module documentation).
async fn linger(mut tls: tokio_rustls::server::TlsStream<TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    if !matches!(
        tokio::time::timeout_at(deadline, tls.shutdown()).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // What follows is the client's upload or its own close_notify: no need to decrypt it.
    let (mut tcp, _) = tls.into_inner();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = LINGER_BYTES;
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
        left = match left.checked_sub(n) {
            Some(l) => l,
            None => break,
        };
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Permissions(#[from] crate::files::PermissionError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Creates the data directory (owner-only) if needed, makes what is in it private, and opens
/// the state store.
pub fn open_store(settings: &Settings) -> Result<Store, StartError> {
    create_private_dir(&settings.data_dir)?;
    crate::files::make_private(&settings.data_dir)?;
    Ok(Store::open(&settings.data_dir)?)
}

/// Creates the data directory owner-only, naming it in the error.
pub fn create_private_dir(path: &std::path::Path) -> Result<(), StartError> {
    crate::files::create_private_dir(path).map_err(|source| StartError::DataDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Everything `serve` needs, prepared and checked before the first connection is accepted.
pub async fn start(
    settings: &Settings,
) -> Result<(Listener, Arc<rustls::ServerConfig>, AppState), StartError> {
    let store = open_store(settings)?;
    start_with(settings, store).await
}

/// [`start`] with a store the caller already opened (tests keep a handle to seed the catalog).
pub async fn start_with(
    settings: &Settings,
    store: Store,
) -> Result<(Listener, Arc<rustls::ServerConfig>, AppState), StartError> {
    let (cert, key) = match &settings.tls {
        Some(pair) => pair.clone(),
        None => crate::tls::ensure_self_signed(&settings.data_dir)?,
    };
    let secrets = crate::secrets::SecretKey::load_or_create(&settings.data_dir)?;
    let ca = crate::pki::Ca::load_or_create(&settings.data_dir, &secrets)?;
    let (tls, fingerprint) = crate::tls::server_config(&cert, &key, Some(ca.cert_der()))?;
    // Every file of the data directory exists now (the store's, the key, the CA, TLS).
    crate::files::make_private(&settings.data_dir)?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.listen,
            source,
        })?;
    tracing::info!(
        listen = %listener.local_addr().map_or(settings.listen, |a| a),
        data_dir = %settings.data_dir.display(),
        cert = %cert.display(),
        sha256 = %fingerprint,
        agent_ca_sha256 = %ca.fingerprint(),
        "control plane listening (HTTPS); agents enrol with --ca-fingerprint sha256:<sha256>"
    );
    let mut state = AppState::new(store, secrets, settings.max_body_bytes);
    state.storage_sync = Some(settings.storage_sync);
    state.jobs = Arc::new(crate::jobs::Board::new(settings.jobs));
    state.pki = Some(Arc::new(crate::pki::AgentCa {
        ca,
        cert_days: settings.agent_cert_days,
    }));
    Ok((Listener::new(listener, settings.http.clone()), tls, state))
}
