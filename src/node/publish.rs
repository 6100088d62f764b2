//! Publishing from this node: encode an event once, plan the links it leaves on and whether
//! this node's own subscribers take it, then send it without waiting (nothing sent if any link
//! is full) or waiting for room. Used by [`NodeHandle`](super::NodeHandle) for typed events and
//! by ServiceSession for applications' encoded payloads. Not an actor: it runs on the caller.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;

use super::event_bus::{Deliver, EventBus};
use super::router::RouteTable;
use super::session::LinkHandle;
use super::shared::NodeShared;
use super::PublishError;
use crate::event::Event;
use crate::link::QueueError;
use crate::topic::check_topic;
use crate::wire::{EncodedMessage, Envelope};

/// An event planned for sending.
pub(crate) struct Outgoing {
    /// The snapshot the event was planned on; sending walks its links again.
    table: Arc<RouteTable>,
    target: Option<String>,
    /// `None` when no link takes the event.
    frame: Option<EncodedMessage>,
    /// `Some` when this node's subscribers take it too. Boxed: an envelope is most of an
    /// `Outgoing`'s size, an `Outgoing` is moved several times per event, and one as large as
    /// an envelope was moved by a `memcpy` call each time.
    local: Option<Box<Envelope>>,
}

/// Plan a typed event: its payload is encoded into a reused scratch buffer, so nothing is
/// allocated per event but the frame (and the local envelope, when there are local
/// subscribers).
pub(crate) fn prepare<E: Event>(
    shared: &Arc<NodeShared>,
    event: &E,
    target: Option<String>,
) -> Result<Outgoing, PublishError> {
    // Checked at compile time, once per event type: the hot path pays nothing.
    if !const { check_topic(E::TOPIC).is_ok() } {
        if let Err(reason) = check_topic(E::TOPIC) {
            return Err(PublishError::BadTopic {
                topic: E::TOPIC.to_owned(),
                reason,
            });
        }
    }
    let id = shared.next_event_id();
    let table = shared.routes.load();
    let (frame, local) = EncodedMessage::with_payload(event, |payload| {
        plan(
            shared,
            &table,
            id,
            E::TOPIC,
            target.as_deref(),
            payload,
            |s, to| match to {
                None => s.next_broadcast_seq_static(E::TOPIC),
                Some(_) => s.next_event_seq(E::TOPIC, to),
            },
        )
    })??;
    Ok(Outgoing {
        table,
        target,
        frame,
        local,
    })
}

/// Plan an event whose payload is already encoded (an application's). The caller checked
/// the topic (`check_topic`).
pub(crate) fn prepare_raw(
    shared: &Arc<NodeShared>,
    topic: &str,
    target: Option<String>,
    payload: &[u8],
) -> Result<Outgoing, PublishError> {
    let id = shared.next_event_id();
    let table = shared.routes.load();
    let (frame, local) = plan(
        shared,
        &table,
        id,
        topic,
        target.as_deref(),
        payload,
        |s, to| s.next_event_seq(topic, to),
    )?;
    Ok(Outgoing {
        table,
        target,
        frame,
        local,
    })
}

type Planned = (Option<EncodedMessage>, Option<Box<Envelope>>);

/// `number` gives the event its `seq` (typed events look their stream up by the address of
/// their static topic).
fn plan(
    s: &NodeShared,
    table: &RouteTable,
    id: u64,
    topic: &str,
    to: Option<&str>,
    payload: &[u8],
    number: impl FnOnce(&NodeShared, Option<&str>) -> u64,
) -> Result<Planned, PublishError> {
    let linked = table.own_links_for(to).next().is_some();
    let here = table.is_local_for(to);
    if let Some(t) = to {
        if !here && !linked {
            return Err(if s.config.admits(t) {
                PublishError::TargetDown(t.to_owned())
            } else {
                PublishError::UnknownNode(t.to_owned())
            });
        }
    }
    // Numbered only once the event is known to go somewhere: its stream has no holes at the
    // origin but for events a full link refused (`Full`, `BusFull`).
    let seq = if linked || here { number(s, to) } else { 0 };
    s.metrics.events_published.fetch_add(1, Ordering::Relaxed);
    let frame = if linked {
        let f = EncodedMessage::event(id, seq, topic, s.name(), s.incarnation, to, s.ttl, payload);
        let max = s.config.cluster.max_frame_bytes;
        if f.len() + 16 > max {
            return Err(PublishError::TooLarge { len: f.len(), max });
        }
        Some(f)
    } else {
        None
    };
    let local = (here && s.local_topics.contains(topic)).then(|| {
        Box::new(Envelope {
            id,
            seq,
            topic: Arc::from(topic),
            origin: s.name_shared.clone(),
            origin_incarnation: s.incarnation,
            target: to.map(str::to_owned),
            ttl: s.ttl,
            payload: Bytes::copy_from_slice(payload),
        })
    });
    Ok((frame, local))
}

/// Send without waiting. Room is checked on every link first, so a full link means nothing
/// was sent.
pub(crate) fn send_now(bus: &Addr<EventBus>, out: Outgoing) -> Result<(), PublishError> {
    send_or_return(bus, out).map_err(|(e, _)| e)
}

/// As [`send_now`], handing the event back when nothing was sent, to be sent with
/// [`send_wait`] under the same number.
pub(crate) fn send_or_return(
    bus: &Addr<EventBus>,
    mut out: Outgoing,
) -> Result<(), (PublishError, Option<Box<Outgoing>>)> {
    // Checked with the plan borrowed (no reference count touched per event); the event is
    // handed back whole when something is full.
    let refused = {
        let mut links = out.table.own_links_for(out.target.as_deref()).peekable();
        match (links.next(), links.peek().is_none(), &out.local) {
            // The usual case, one link and no local subscriber: one attempt, no separate check.
            (Some(link), true, None) => {
                let Some(frame) = out.frame.take() else {
                    return Ok(());
                };
                match link.tx.try_push(frame) {
                    Ok(()) => {
                        link.counters.events_out.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err((e, frame)) => {
                        out.frame = Some(frame);
                        Some(link_refusal(e, link))
                    }
                }
            }
            _ => out.frame.as_ref().and_then(|frame| {
                out.table
                    .own_links_for(out.target.as_deref())
                    .find_map(|link| {
                        link.tx
                            .has_room(frame.len())
                            .err()
                            .map(|e| link_refusal(e, link))
                    })
            }),
        }
    };
    if let Some(e) = refused {
        return Err((e, Some(Box::new(out))));
    }
    if let Some(env) = out.local.take() {
        match bus.try_send(Deliver(vec![*env], None)) {
            Ok(()) => {}
            Err(SendError::Full(Deliver(mut envs, _))) => {
                out.local = envs.pop().map(Box::new);
                return Err((PublishError::BusFull, Some(Box::new(out))));
            }
            Err(SendError::Closed(_)) => return Err((PublishError::Stopped, None)),
        }
    }
    let mut frame = out.frame;
    let mut sends = out.table.own_links_for(out.target.as_deref()).peekable();
    while let Some(link) = sends.next() {
        // The last link takes the frame itself, the others a reference-counted clone.
        let f = if sends.peek().is_some() {
            frame.clone()
        } else {
            frame.take()
        };
        let Some(f) = f else { break };
        link.tx.push_checked(f);
        link.counters.events_out.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn link_refusal(e: QueueError, link: &LinkHandle) -> PublishError {
    match e {
        QueueError::Full => PublishError::Full(link.peer.clone()),
        QueueError::Closed => PublishError::TargetDown(link.peer.clone()),
    }
}

/// Send, waiting for room on each link and on the bus (backpressure).
pub(crate) async fn send_wait(bus: &Addr<EventBus>, out: Outgoing) -> Result<(), PublishError> {
    let mut frame = out.frame;
    let mut links = out.table.own_links_for(out.target.as_deref()).peekable();
    while let Some(link) = links.next() {
        let f = if links.peek().is_some() {
            frame.clone()
        } else {
            frame.take()
        };
        let Some(f) = f else { break };
        // The synchronous attempt first: it skips the wait's future when there is room.
        let sent = match link.tx.try_push(f) {
            Ok(()) => true,
            Err((QueueError::Full, f)) => link.tx.push(f).await.is_ok(),
            Err((QueueError::Closed, _)) => false,
        };
        if sent {
            link.counters.events_out.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(env) = out.local {
        bus.send(Deliver(vec![*env], None))
            .await
            .map_err(|_| PublishError::Stopped)?;
    }
    Ok(())
}
