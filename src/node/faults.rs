//! Fault injection for nodecloud's own tests (the `faults` feature, never on in a build for
//! users): a panic inside a handler of a system actor, to show that its `actix::Supervisor`
//! restarts it and that what it owned survives the restart. No actor of its own: the
//! NodeSupervisor forwards [`Crash`] to the child named.

use actix::prelude::*;

use super::calls::Calls;
use super::event_bus::EventBus;
use super::listener::PeerListener;
use super::membership::Membership;
use super::router::Router;
use super::service_listener::ServiceListener;
use super::stats::Stats;
use super::supervision::guard;

/// A system actor of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemActor {
    Calls,
    EventBus,
    Membership,
    PeerListener,
    Router,
    ServiceListener,
    Stats,
}

/// Panic inside a handler of the actor that receives it (under its panic guard).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

macro_rules! crashes {
    ($($actor:ty => $name:literal),* $(,)?) => {$(
        impl Handler<Crash> for $actor {
            type Result = ();

            fn handle(&mut self, _: Crash, ctx: &mut Context<Self>) {
                guard($name, ctx, |_| panic!("fault injected into {}", $name));
            }
        }
    )*};
}

crashes! {
    Calls => "calls",
    EventBus => "event_bus",
    Membership => "membership",
    PeerListener => "peer_listener",
    Router => "router",
    ServiceListener => "service_listener",
    Stats => "stats",
}
