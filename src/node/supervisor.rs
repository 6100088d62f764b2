//! NodeSupervisor: the root of one node's actor tree. It owns the children's addresses (the
//! system actors run under `actix::Supervisor`, see `supervision`), and runs the node's
//! shutdown: on request or on an escalation it closes every link with a `bye`, waits (bounded)
//! for them to go, and halts the node's task set, which stops every actor on it.

use std::sync::Arc;

use actix::prelude::*;

use super::calls::Calls;
use super::event_bus::EventBus;
use super::listener::PeerListener;
use super::master::Master;
use super::membership::Membership;
use super::router::{CloseAll, Router};
use super::runtime::NodeRuntime;
use super::service_listener::{CloseServices, ServiceListener};
use super::shared::NodeShared;
use super::stats::Stats;
use super::upstream::Upstream;

/// The node's children. Holding every address keeps the supervised ones alive: an
/// `actix::Supervisor` restarts its actor only while someone holds its address.
#[allow(dead_code)]
pub struct Children {
    pub stats: Addr<Stats>,
    pub bus: Addr<EventBus>,
    pub calls: Addr<Calls>,
    pub membership: Addr<Membership>,
    pub router: Addr<Router>,
    pub master: Option<Addr<Master>>,
    pub listener: Addr<PeerListener>,
    pub services: Option<Addr<ServiceListener>>,
    pub upstreams: Vec<Addr<Upstream>>,
}

pub struct NodeSupervisor {
    shared: Arc<NodeShared>,
    children: Children,
    runtime: NodeRuntime,
    stopping: bool,
}

impl NodeSupervisor {
    pub fn new(shared: Arc<NodeShared>, children: Children, runtime: NodeRuntime) -> Self {
        NodeSupervisor {
            shared,
            children,
            runtime,
            stopping: false,
        }
    }
}

/// Shut the node down: resolves when its links are closed and its task set is halting.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Actor for NodeSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // An escalation (restart intensity exceeded) fires `shared.shutdown`.
        let shared = self.shared.clone();
        ctx.spawn(
            async move { shared.stop_requested().await }
                .into_actor(self)
                .map(|_, _, ctx: &mut Context<Self>| ctx.notify(Shutdown)),
        );
    }
}

impl Handler<Shutdown> for NodeSupervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        if !self.stopping {
            tracing::info!(node = %self.shared.name(), "shutting down");
        }
        self.stopping = true;
        for up in &self.children.upstreams {
            up.do_send(StopActor);
        }
        self.children.listener.do_send(StopAccepting);
        if let Some(services) = &self.children.services {
            services.do_send(CloseServices("node shutting down".into()));
        }
        let close = self
            .children
            .router
            .send(CloseAll("node shutting down".into()));
        Box::pin(
            async move {
                let _ = close.await;
            }
            .into_actor(self)
            .map(|_, act, _| act.runtime.halt()),
        )
    }
}

/// Stop an actor that is not restarted by a Supervisor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopActor;

impl Handler<StopActor> for Upstream {
    type Result = ();
    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Accept no more connections (the node is shutting down). Not a stop: a supervised actor
/// that stops is restarted; halting the node's task set ends it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAccepting;

impl Handler<StopAccepting> for PeerListener {
    type Result = ();
    fn handle(&mut self, _: StopAccepting, _: &mut Context<Self>) {
        self.stop_accepting();
    }
}

/// Forward a [`Crash`](super::faults::Crash) to one child (the `faults` feature).
#[cfg(feature = "faults")]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectPanic(pub super::faults::SystemActor);

#[cfg(feature = "faults")]
impl Handler<InjectPanic> for NodeSupervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, InjectPanic(actor): InjectPanic, _: &mut Context<Self>) -> Self::Result {
        use super::faults::{Crash, SystemActor};
        let c = &self.children;
        // Answered once the handler ran (and panicked under its guard).
        let crashed: Recipient<Crash> = match actor {
            SystemActor::Calls => c.calls.clone().recipient(),
            SystemActor::EventBus => c.bus.clone().recipient(),
            SystemActor::Membership => c.membership.clone().recipient(),
            SystemActor::PeerListener => c.listener.clone().recipient(),
            SystemActor::Router => c.router.clone().recipient(),
            SystemActor::ServiceListener => match &c.services {
                Some(s) => s.clone().recipient(),
                None => return Box::pin(async {}),
            },
            SystemActor::Stats => c.stats.clone().recipient(),
        };
        Box::pin(async move {
            let _ = crashed.send(Crash).await;
        })
    }
}
