//! Two applications attached to a cluster through the service listener, with the Rust client
//! `nodecloud::service::Client` (any language can do the same: docs/PROTOCOL.md §12).
//!
//! ```text
//! cargo run --example service_app            # or: -- --config path/to/topology.toml
//! ```
//! It starts every node of `config/star.toml` in this process. A "thermometer" application
//! attaches to worker-2, implements `thermo.read` and listens for `hvac.command`; a "panel"
//! application attaches to worker-1, calls `thermo.read` on whichever node implements it
//! (the call travels worker-1 → master → worker-2 → thermometer and back), and sends a
//! command to worker-2. It exits once the command arrived (or fails after 10 s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nodecloud::service::{Client, Incoming};
use nodecloud::wire::{decode_payload, encode_payload};
use nodecloud::{cluster, config::Config, testing, CallError, CallTarget, Request};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct Read {
    room: String,
}
#[derive(Serialize, Deserialize, Debug)]
struct Reading {
    celsius: f32,
}
impl Request for Read {
    const METHOD: &'static str = "thermo.read";
    type Response = Reading;
}

#[derive(Serialize, Deserialize, Debug)]
struct Command {
    action: String,
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let path = std::env::args()
        .skip_while(|a| a != "--config")
        .nth(1)
        .unwrap_or_else(|| "config/star.toml".into());
    let config = Arc::new(Config::load(path.as_ref())?);
    let nodes = cluster::start(config.clone(), None).await?;
    testing::wait_converged(&nodes, Duration::from_secs(10)).await?;

    // The thermometer: serves reads, prints commands.
    let mut thermometer = Client::connect_via(&config, "worker-2", "thermometer").await?;
    thermometer.implement(Read::METHOD).await?;
    thermometer.subscribe("hvac.command").await?;
    thermometer.sync().await?;
    let serving = tokio::spawn(async move {
        while let Some(item) = thermometer.next().await {
            match item {
                Incoming::Request {
                    id, from, payload, ..
                } => {
                    let read: Read = decode_payload(&payload)?;
                    println!("thermometer: {from} asks for the {}", read.room);
                    let reading = encode_payload(&Reading { celsius: 21.5 })?;
                    thermometer.respond(id, Ok(reading)).await?;
                }
                Incoming::Event { from, payload, .. } => {
                    let cmd: Command = decode_payload(&payload)?;
                    println!("thermometer: command {:?} from {from}", cmd.action);
                    return Ok(());
                }
                other => println!("thermometer: {other:?}"),
            }
        }
        Err::<(), Box<dyn std::error::Error + Send + Sync>>("the node closed the connection".into())
    });

    // The panel: reads the temperature wherever it is served, then orders.
    let panel = Client::connect_via(&config, "worker-1", "panel").await?;
    let request = Read {
        room: "kitchen".into(),
    };
    let started = Instant::now();
    let reading = loop {
        // Other nodes learn of a method with its node's next heartbeat status.
        match panel.call(CallTarget::Any, &request, None).await {
            Err(CallError::NoImplementer(_)) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other?,
        }
    };
    println!("panel: the kitchen is at {:.1} °C", reading.celsius);
    let order = Command {
        action: "heat".into(),
    };
    panel
        .publish("hvac.command", &order, Some("worker-2"))
        .await?;

    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .map_err(|_| "the command did not arrive within 10 s")???;
    panel.close().await;
    cluster::stop(&nodes).await;
    Ok(())
}
