//! A tiny HTTP service that answers every request with its node's name: the backend of the
//! proxy bounce (README "Proxy bounce"). One runs beside each worker.
//!
//! ```text
//! cargo run --example web_backend -- --node worker-1 --listen 127.0.0.1:9001
//! cargo run --example web_backend -- --node worker-1 --listen 127.0.0.1:9011 --register config/star.toml
//! ```
//! The first form serves the address the worker's `http` names in the configuration. The
//! second also attaches to the worker through the service protocol (docs/PROTOCOL.md §12) and
//! registers the address with `http_backend`, so the worker advertises it without any `http`
//! in the file, until this process exits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use nodecloud::config::Config;
use nodecloud::service::Client;

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let node = arg("--node").unwrap_or_else(|| "worker-1".into());
    let listen: SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // Kept for as long as the process runs: the node advertises the backend while attached.
    let _attached = match arg("--register") {
        Some(path) => {
            let config = Arc::new(Config::load(path.as_ref())?);
            let client = Client::connect_via(&config, &node, "web_backend").await?;
            client.http_backend(&listen.to_string()).await?;
            client.sync().await?;
            println!("registered {listen} as an HTTP backend of {node}");
            Some(client)
        }
        None => None,
    };
    println!("web_backend of {node} on http://{listen}/");
    let body = Bytes::from(format!("hello from {node}\n"));
    loop {
        let (stream, _) = listener.accept().await?;
        let body = body.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
