//! A custom actor that subscribes to typed events, run against `config/star.toml`.
//!
//! ```text
//! cargo run --example custom_actor            # or: -- --config path/to/topology.toml
//! ```
//! It starts every node of the file in this process, puts a `Thermostat` actor on the last
//! node, and has the other nodes publish temperatures. The thermostat receives
//! `Delivery<Temperature>` — the same message whether the reading came from its own node or
//! over a link — and answers the hottest sender with a targeted `Command`. It exits once every
//! reading arrived (or fails after 10 s).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use nodecloud::{cluster, config::Config, testing, Delivery, Event, NodeHandle};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A sensor reading, published to every node.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Temperature {
    celsius: f32,
}
impl Event for Temperature {
    const TOPIC: &'static str = "sensor.temperature";
}

/// An order sent to one node.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Command {
    action: String,
}
impl Event for Command {
    const TOPIC: &'static str = "hvac.command";
}

/// Subscribes in `started`, so a restart (after a panic) subscribes again.
struct Thermostat {
    node: NodeHandle,
    done: mpsc::UnboundedSender<String>,
    threshold: f32,
}

impl Actor for Thermostat {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.node
            .subscribe::<Temperature>(ctx.address().recipient());
    }
}

impl Handler<Delivery<Temperature>> for Thermostat {
    type Result = ();

    fn handle(&mut self, d: Delivery<Temperature>, _: &mut Context<Self>) {
        println!(
            "{}: {:.1} °C from {}",
            self.node.name(),
            d.event.celsius,
            d.from
        );
        if d.event.celsius > self.threshold {
            let order = Command {
                action: "cool down".into(),
            };
            if let Err(e) = self.node.send_to(&d.from, &order) {
                eprintln!("cannot answer {}: {e}", d.from);
            }
        }
        let _ = self.done.send(d.from.name);
    }
}

/// Prints the commands a node receives.
struct Hvac {
    name: String,
    done: mpsc::UnboundedSender<String>,
}

impl Actor for Hvac {
    type Context = Context<Self>;
}

impl Handler<Delivery<Command>> for Hvac {
    type Result = ();

    fn handle(&mut self, d: Delivery<Command>, _: &mut Context<Self>) {
        println!(
            "{}: command {:?} from {}",
            self.name, d.event.action, d.from
        );
        let _ = self.done.send(self.name.clone());
    }
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .skip_while(|a| a != "--config")
        .nth(1)
        .unwrap_or_else(|| "config/star.toml".into());
    let config = Arc::new(Config::load(path.as_ref())?);
    let nodes = cluster::start(config, None).await?;
    testing::wait_converged(&nodes, Duration::from_secs(10)).await?;

    let (readings_tx, mut readings) = mpsc::unbounded_channel();
    let (commands_tx, mut commands) = mpsc::unbounded_channel();
    let (home, sensors) = nodes.split_last().ok_or("the topology has no nodes")?;
    let node = home.clone();
    home.supervise("thermostat", move || Thermostat {
        node: node.clone(),
        done: readings_tx.clone(),
        threshold: 25.0,
    })
    .await;
    for sensor in sensors {
        let hvac = Hvac {
            name: sensor.name().to_owned(),
            done: commands_tx.clone(),
        }
        .start();
        sensor.subscribe::<Command>(hvac.recipient());
    }

    // One reading from every node, the thermostat's own included; the hot ones get an order.
    for (i, n) in nodes.iter().enumerate() {
        n.publish(&Temperature {
            celsius: 20.0 + 3.0 * i as f32,
        })?;
    }
    let hot = nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| 20.0 + 3.0 * *i as f32 > 25.0 && n.name() != home.name())
        .count();
    let wait = async {
        for _ in 0..nodes.len() {
            readings.recv().await;
        }
        for _ in 0..hot {
            commands.recv().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| "not every event arrived within 10 s")?;
    println!("{} readings and {hot} commands delivered", nodes.len());
    cluster::stop(&nodes).await;
    Ok(())
}
