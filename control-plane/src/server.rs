//! The HTTPS server: a TLS accept loop in front of the axum application, in the shape of
//! mini-redis' `server::run` — it takes its listener and a shutdown future, so tests bind port 0
//! and run many servers in parallel. Shutdown stops accepting, marks the server not ready, and
//! gives open connections a grace period to finish their requests.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::store::Store;
use crate::tls::PeerCertificate;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish once shutdown begins.
const GRACE_PERIOD: Duration = Duration::from_secs(10);

/// Serves `state` over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let ready = state.ready.clone();
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
    let board = state.jobs.clone();
    let app = api::router(state);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
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
            let service = TowerToHyperService::new(app.map_request(
                move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    if let Some(cert) = &peer_cert {
                        req.extensions_mut().insert(cert.clone());
                    }
                    req
                },
            ));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    ready.store(false, Ordering::Relaxed);
    drop(listener);
    board.close();
    let _ = stop_sync.send(true);
    if let Some(task) = sync {
        let _ = task.await;
    }
    let _ = scheduler.await;
    tracing::info!("shutting down: no new connections, waiting for open requests");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(GRACE_PERIOD) => tracing::warn!("grace period over; closing remaining connections"),
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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Creates the data directory (owner-only) if needed and opens the state store.
pub fn open_store(settings: &Settings) -> Result<Store, StartError> {
    create_private_dir(&settings.data_dir)?;
    Ok(Store::open(&settings.data_dir)?)
}

pub fn create_private_dir(path: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StartError::DataDir {
            path: path.to_path_buf(),
            source,
        })
}

/// Everything `serve` needs, prepared and checked before the first connection is accepted.
pub async fn start(
    settings: &Settings,
) -> Result<(TcpListener, Arc<rustls::ServerConfig>, AppState), StartError> {
    let store = open_store(settings)?;
    start_with(settings, store).await
}

/// [`start`] with a store the caller already opened (tests keep a handle to seed the catalog).
pub async fn start_with(
    settings: &Settings,
    store: Store,
) -> Result<(TcpListener, Arc<rustls::ServerConfig>, AppState), StartError> {
    let (cert, key) = match &settings.tls {
        Some(pair) => pair.clone(),
        None => crate::tls::ensure_self_signed(&settings.data_dir)?,
    };
    let secrets = crate::secrets::SecretKey::load_or_create(&settings.data_dir)?;
    let ca = crate::pki::Ca::load_or_create(&settings.data_dir, &secrets)?;
    let (tls, fingerprint) = crate::tls::server_config(&cert, &key, Some(ca.cert_der()))?;
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
    state.jobs = Arc::new(crate::scheduler::Board::new(settings.jobs));
    state.pki = Some(Arc::new(crate::api::agents::Pki {
        ca,
        cert_days: settings.agent_cert_days,
    }));
    Ok((listener, tls, state))
}
