//! The HTTP API a node serves when its configuration says `api = "ADDR"`: the cluster as JSON,
//! events and calls from HTTP clients, a Server-Sent-Events stream, Prometheus `/metrics` and
//! the OpenAPI document (routes in [`app`]).
//!
//! It is not part of the actor tree: it reads what the node already publishes (the membership
//! watch, the replicated stats, the counters in `node::Metrics`) and acts through the
//! [`NodeHandle`], so the runtime does not depend on this module. [`start`] runs actix-web on
//! the node's thread, in the node's actix System; the server lives in a task of the node's
//! task set, so it stops (listener closed, connections dropped) when the node stops.
//!
//! The dashboard page (`/`, `/dashboard.js`, `/dashboard.css`, see `dashboard`) loads without
//! the token and then asks for it. Authentication: with a token configured (`api_token*` in
//! `[cluster]`), every other route but `/healthz` and `/readyz` wants `Authorization: Bearer TOKEN`, compared in constant time;
//! without one, configuration validation allows only a loopback `api` address.

mod dashboard;
mod error;
mod metrics;
pub mod model;
mod openapi;
mod routes;
mod stream;
#[cfg(test)]
mod tests;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, App, FromRequest, HttpRequest, HttpServer};
use subtle::ConstantTimeEq;

pub use error::{ApiError, ErrorBody};
pub use openapi::ApiDoc;

use crate::config::Secret;
use crate::node::NodeHandle;

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a stopping server lets requests in flight finish.
const SHUTDOWN_GRACE_S: u64 = 1;

/// What every handler reads.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) node: NodeHandle,
    token: Option<Arc<Secret>>,
    /// Request bodies are bounded by the cluster's frame size: nothing larger could travel.
    pub(crate) max_body_bytes: usize,
}

impl ApiState {
    /// The state for `node`, with the token of its configuration.
    pub fn new(node: NodeHandle) -> Self {
        let config = node.config();
        ApiState {
            token: config.cluster.api_token.clone().map(Arc::new),
            max_body_bytes: config.cluster.max_frame_bytes,
            node,
        }
    }

    /// Whether `req` carries the token (always true when none is configured).
    fn authorized(&self, req: &HttpRequest) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        // Constant time in the token's content; only its length can be learned.
        bool::from(given.ct_eq(token.as_bytes()))
    }
}

/// Extracting this proves the request carries the bearer token: protected handlers take it
/// as an argument, so an unprotected route is visible in its signature.
pub struct Authorized;

impl FromRequest for Authorized {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let ok = req
            .app_data::<web::Data<ApiState>>()
            .is_some_and(|s| s.authorized(req));
        std::future::ready(if ok {
            Ok(Authorized)
        } else {
            Err(ApiError::Unauthorized)
        })
    }
}

/// The routes, for a server or a socket-free test (`actix_web::test::init_service`).
pub fn app(
    state: ApiState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(state))
        // Malformed query strings answer in the API's JSON error shape too.
        .app_data(
            web::QueryConfig::default()
                .error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()),
        )
        .route("/", web::get().to(dashboard::index))
        .route("/dashboard.js", web::get().to(dashboard::script))
        .route("/dashboard.css", web::get().to(dashboard::style))
        .route("/healthz", web::get().to(routes::healthz))
        .route("/readyz", web::get().to(routes::readyz))
        .route("/metrics", web::get().to(metrics::metrics))
        .service(
            web::scope("/api/v1")
                .route("/cluster", web::get().to(routes::cluster))
                .route("/nodes/{name}", web::get().to(routes::node))
                .route("/proxy", web::get().to(routes::proxy))
                .route("/events/{topic}", web::post().to(routes::publish))
                .route("/calls/{method}", web::post().to(routes::call))
                .route("/stream", web::get().to(stream::stream))
                .route("/openapi.json", web::get().to(openapi::document)),
        )
        .default_service(web::to(routes::not_found))
}

/// A running API server. Dropping it leaves the server running: it stops with its node.
#[derive(Debug, Clone)]
pub struct ApiServer {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl ApiServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving now (requests in flight get a short grace).
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

/// Why the API did not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("cannot serve the HTTP API on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the node stopped before the HTTP API started")]
    ArbiterGone,
}

/// Serve the API of `node` on `listener` (already bound), on the node's thread. The server
/// stops when the node stops.
///
/// # Errors
/// [`ApiStartError`] when the listener cannot be served or the node is gone.
pub async fn start(node: &NodeHandle, listener: TcpListener) -> Result<ApiServer, ApiStartError> {
    let addr = listener
        .local_addr()
        .map_err(|source| ApiStartError::Listen {
            addr: "?".into(),
            source,
        })?;
    let listen_error = |source| ApiStartError::Listen {
        addr: addr.to_string(),
        source,
    };
    listener.set_nonblocking(true).map_err(listen_error)?;
    let state = ApiState::new(node.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = node.spawn(async move {
        match serve(listener, state) {
            Ok(server) => {
                let _ = tx.send(Ok(server.handle()));
                // Runs as long as the node: when the node stops, this task is
                // dropped, and with it the server (its acceptor and workers stop).
                if let Err(e) = server.await {
                    tracing::warn!("HTTP API on {addr} stopped: {e}");
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    if !spawned {
        return Err(ApiStartError::ArbiterGone);
    }
    let handle = rx
        .await
        .map_err(|_| ApiStartError::ArbiterGone)?
        .map_err(listen_error)?;
    tracing::info!(node = %node.name(), api = %addr, "HTTP API serving");
    Ok(ApiServer { addr, handle })
}

/// The server on `listener`; run it by polling the result.
fn serve(listener: TcpListener, state: ApiState) -> std::io::Result<actix_web::dev::Server> {
    Ok(HttpServer::new(move || app(state.clone()))
        .workers(1)
        .max_connections(MAX_CONNECTIONS)
        .shutdown_timeout(SHUTDOWN_GRACE_S)
        // The process's signals belong to the node runner, which stops nodes on them.
        .disable_signals()
        .listen(listener)?
        .run())
}

/// Bind the configured `api` address of `node` (or take `listener`) and [`start`] there; `None`
/// when the node has no API.
///
/// # Errors
/// As [`start`], or when the address cannot be bound.
pub async fn start_configured(
    node: &NodeHandle,
    listener: Option<TcpListener>,
) -> Result<Option<ApiServer>, ApiStartError> {
    let Some(addr) = node.config().node(node.name()).and_then(|n| n.api) else {
        return Ok(None);
    };
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(addr).map_err(|source| ApiStartError::Listen {
            addr: addr.to_string(),
            source,
        })?,
    };
    start(node, listener).await.map(Some)
}
