//! Master: present on nodes with `role = "master"`; owns the cluster's heartbeat clock.
//! Supervised by NodeSupervisor.
//!
//! Every heartbeat interval it issues a numbered tick (NodeCloud's `heartbeat`). Membership
//! floods the tick to every node; nothing answers it. Liveness comes from the links (a node is
//! up while it is reachable over links both ends report) and the replicated state travels as
//! deltas when it changes (docs/PROTOCOL.md §7.2); a link the tick crosses is not quiet, so it
//! needs no ping of its own.

use std::sync::Arc;

use actix::prelude::*;

use super::membership::{HeartbeatReceived, Membership};
use super::shared::NodeShared;
use crate::wire::Heartbeat;

pub struct Master {
    shared: Arc<NodeShared>,
    membership: Addr<Membership>,
    n: u64,
}

impl Master {
    pub fn new(shared: Arc<NodeShared>, membership: Addr<Membership>) -> Self {
        Master {
            shared,
            membership,
            n: 0,
        }
    }

    fn tick(&mut self) {
        self.n += 1;
        self.membership.do_send(HeartbeatReceived {
            via: self.shared.name().to_owned(),
            heartbeat: Heartbeat {
                master: self.shared.name().to_owned(),
                incarnation: self.shared.incarnation,
                n: self.n,
            },
        });
    }
}

impl Actor for Master {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.shared.heartbeat_interval(), |act, _| act.tick());
    }
}

impl actix::Supervised for Master {}
