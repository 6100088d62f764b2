//! Where a node's actors run: a task set of the node's own ([`tokio::task::LocalSet`]) on an
//! arbiter, either a new one the node owns (the default) or one shared with other nodes of the
//! process ([`Host::Shared`]).
//!
//! Every actor, timer and task of the node is spawned inside its set (actix spawns with
//! `spawn_local`, which lands in the set being polled), so stopping the node is dropping the
//! set: every actor on it ends at once, as when an arbiter stops, while the arbiter itself runs
//! on for the other nodes it hosts. A node on an arbiter of its own stops that arbiter too.
//!
//! Created by `Node::start_hosted`; halted by the `NodeSupervisor` at the end of a shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix::{Arbiter, ArbiterHandle};
use tokio::sync::{mpsc, Notify};
use tokio::task::LocalSet;

/// Where a node runs.
#[derive(Clone, Default)]
pub enum Host {
    /// A new arbiter (thread) of the node's own, stopped with the node.
    #[default]
    OwnArbiter,
    /// An arbiter shared with other nodes of this process: many nodes in one process need
    /// not cost a thread each. The node's actors stop with the node; the arbiter runs on.
    Shared(ArbiterHandle),
}

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A handle on one node's task set: spawn into it, halt it. Cheap to clone.
#[derive(Clone)]
pub struct NodeRuntime {
    jobs: mpsc::UnboundedSender<Job>,
    halt: Arc<Notify>,
    arbiter: ArbiterHandle,
}

impl NodeRuntime {
    /// Open a task set for one node on `host`; `None` if the arbiter has stopped.
    pub fn open(host: Host) -> Option<NodeRuntime> {
        let (arbiter, owned) = match host {
            Host::OwnArbiter => (Arbiter::new().handle(), true),
            Host::Shared(arbiter) => (arbiter, false),
        };
        // Fed by this process's own calls (start-up, `NodeHandle::spawn`), never by a peer.
        let (jobs, incoming) = mpsc::unbounded_channel::<Job>();
        let halt = Arc::new(Notify::new());
        let halted = halt.clone();
        // The set is not `Send`: it is made on the arbiter's thread, in a task of its own.
        let opened = arbiter.spawn_fn(move || {
            actix_rt::spawn(run(incoming, halted, owned));
        });
        if !opened {
            if owned {
                arbiter.stop();
            }
            return None;
        }
        Some(NodeRuntime {
            jobs,
            halt,
            arbiter,
        })
    }

    /// Run `fut` in the node's task set, until it ends or the node stops. False once the node
    /// has stopped.
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) -> bool {
        self.jobs.send(Box::pin(fut)).is_ok()
    }

    /// Drop the node's task set (and stop its arbiter if it owns one). Idempotent.
    pub fn halt(&self) {
        // `notify_one` keeps a permit if the set is between polls, so the halt is not lost.
        self.halt.notify_one();
    }

    /// The arbiter the node runs on.
    pub fn arbiter(&self) -> &ArbiterHandle {
        &self.arbiter
    }
}

/// The node's task set: spawns what it is sent until halted, then drops every task in it.
async fn run(mut incoming: mpsc::UnboundedReceiver<Job>, halted: Arc<Notify>, owned: bool) {
    let set = LocalSet::new();
    set.run_until(async move {
        loop {
            tokio::select! {
                job = incoming.recv() => match job {
                    Some(job) => {
                        tokio::task::spawn_local(job);
                    }
                    // Every handle is gone: nothing can spawn or halt any more, and what
                    // runs keeps running until it ends.
                    None => std::future::pending::<()>().await,
                },
                () = halted.notified() => break,
            }
        }
    })
    .await;
    // Dropping the set drops every actor and task of the node.
    drop(set);
    if owned {
        Arbiter::current().stop();
    }
}
