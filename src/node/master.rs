//! Master: present on nodes with `role = "master"`; owns the cluster's heartbeat clock.
//! Supervised by NodeSupervisor.
//!
//! Every heartbeat interval it issues a numbered tick (NodeCloud's `heartbeat`). Membership
//! floods the tick to every node, and each node answers with its status, which carries its
//! replicated state (NodeCloud's `heartbeat-ack`). A node whose answers stop for
//! `failure_threshold` intervals is declared down by every node that hears of it.

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
