//! How panics are contained (see DESIGN.md, "Panics").
//!
//! actix does not restart an actor whose handler panicked: the actor's task dies, its address
//! goes dead and its mailbox is lost. nodecloud uses two patterns:
//!
//! * **System actors** run under [`actix::Supervisor`] and wrap the handlers that touch peer
//!   input in [`guard`]: a panic is caught, logged, and turned into `ctx.stop()`, so the
//!   Supervisor restarts the actor with the same address and mailbox.
//! * **User actors** are started by [`supervise`]: the actor's future runs as its own task and
//!   a panic ends that task; the supervisor loop sees it and starts a fresh actor from the
//!   factory (a new address; the actor re-subscribes in `started`).
//!
//! Both count restarts in a [`RestartBudget`] (5 in 10 s); past it they escalate: the node is
//! reported degraded and shut down cleanly instead of restarting forever.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Addr, AsyncContext, Context};

use tokio::sync::oneshot;

use super::shared::NodeShared;

pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(10);

/// At most `MAX_RESTARTS` restarts within any `RESTART_WINDOW`.
#[derive(Debug, Default)]
pub struct RestartBudget {
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// Record a restart; false when the budget is exhausted.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() <= MAX_RESTARTS
    }
}

/// Run one handler body; a panic inside it stops the actor (for its Supervisor to restart)
/// instead of killing its task. Returns `None` if it panicked.
pub fn guard<A, R>(
    actor: &'static str,
    ctx: &mut Context<A>,
    body: impl FnOnce(&mut Context<A>) -> R,
) -> Option<R>
where
    A: Actor<Context = Context<A>>,
{
    match catch_unwind(AssertUnwindSafe(|| body(ctx))) {
        Ok(r) => Some(r),
        Err(panic) => {
            tracing::error!(
                actor,
                reason = panic_message(&panic),
                "handler panicked; restarting the actor"
            );
            ctx.stop();
            None
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Log panics through tracing, without capturing a backtrace (a captured backtrace costs
/// ~1.4 ms per panic; a crash loop must not become a CPU sink). Call once per process.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info.payload();
        let reason = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if tracing::dispatcher::has_been_set() {
            tracing::error!(%location, %reason, "panic");
        } else {
            eprintln!("panic at {location}: {reason}");
        }
    }));
}

/// A user actor kept alive by its node: [`Supervised::addr`] is the current incarnation.
pub struct Supervised<A: Actor> {
    current: Arc<Mutex<Option<Addr<A>>>>,
}

impl<A: Actor> Clone for Supervised<A> {
    fn clone(&self) -> Self {
        Supervised {
            current: self.current.clone(),
        }
    }
}

impl<A: Actor<Context = Context<A>>> Supervised<A> {
    /// The address of the running actor (it changes after a restart); `None` once the actor
    /// stopped for good.
    pub fn addr(&self) -> Option<Addr<A>> {
        self.current.lock().ok().and_then(|g| g.clone())
    }

    pub(crate) fn stopped() -> Self {
        Supervised {
            current: Arc::new(Mutex::new(None)),
        }
    }
}

/// Start `factory()` on the current arbiter and restart it whenever a handler panics, within
/// the restart budget. An actor that stops by itself is not restarted.
///
/// `started` fires once the first incarnation's `Actor::started` has run (so whatever it
/// subscribes to is in place); it is dropped unfired if the actor never gets that far.
pub(crate) fn supervise<A, F>(
    shared: Arc<NodeShared>,
    name: String,
    factory: F,
    started: oneshot::Sender<()>,
) -> Supervised<A>
where
    A: Actor<Context = Context<A>>,
    F: Fn() -> A + 'static,
{
    let current = Arc::new(Mutex::new(None));
    let start = |current: &Arc<Mutex<Option<Addr<A>>>>,
                 factory: &F,
                 started: Option<oneshot::Sender<()>>| {
        let mut ctx = Context::<A>::new();
        if let Ok(mut slot) = current.lock() {
            *slot = Some(ctx.address());
        }
        if let Some(tx) = started {
            // Items spawned on a context run only after `Actor::started` returned.
            ctx.spawn(actix::fut::wrap_future(async move {
                let _ = tx.send(());
            }));
        }
        actix_rt::spawn(ctx.into_future(factory()))
    };
    let mut task = start(&current, &factory, Some(started));
    let handle = Supervised {
        current: current.clone(),
    };
    actix_rt::spawn(async move {
        let mut budget = RestartBudget::default();
        loop {
            match task.await {
                Err(e) if e.is_panic() => {
                    if !budget.allow() {
                        shared.escalate(&name);
                        break;
                    }
                    tracing::warn!(node = %shared.name(), actor = %name, "user actor panicked; restarting it");
                    task = start(&current, &factory, None);
                }
                _ => break,
            }
        }
        if let Ok(mut slot) = current.lock() {
            *slot = None;
        }
    });
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_five_restarts_then_refuses() {
        let mut b = RestartBudget::default();
        for _ in 0..MAX_RESTARTS {
            assert!(b.allow());
        }
        assert!(!b.allow());
    }
}
