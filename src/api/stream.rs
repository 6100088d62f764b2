//! `GET /api/v1/stream`: Server-Sent Events for dashboards and scripts.
//!
//! On connect: `event: cluster` (the whole [`ClusterDoc`]), one `event: membership` per
//! configured node, and `event: stats`. Then `event: membership` on every change of a node's
//! state or incarnation (followed by `event: cluster`, since links change with it),
//! `event: stats` once per heartbeat interval (every member's replicated state), and
//! `event: event` for each event on the topics asked for (`?topics=a,b.*`).
//!
//! One task per client feeds a queue of [`CLIENT_QUEUE_FRAMES`] frames; a client that lets it
//! fill is dropped (its response ends), so a slow reader never makes the node buffer without
//! bound, and never slows the event bus (its event feed is a bounded channel too).

use std::collections::BTreeMap;
use std::convert::Infallible;

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa::IntoParams;

use super::model::{ClusterDoc, MemberDoc, MemberState, MembershipChange, StreamEvent};
use super::{ApiError, ApiState, Authorized, ErrorBody};
use crate::node::{NodeHandle, RawEvent};
use crate::wire::json::cbor_to_json;

/// Frames queued for one client before it counts as too slow and is dropped.
pub const CLIENT_QUEUE_FRAMES: usize = 256;

/// Events queued between the bus and one client's task.
const EVENT_QUEUE: usize = 256;

/// Topics one client may ask for.
pub const MAX_STREAM_TOPICS: usize = 32;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Comma-separated topics or patterns (`sensor.*`) whose events to include.
    topics: Option<String>,
}

/// A live feed of membership, stats and events, as `text/event-stream`.
#[utoipa::path(get, path = "/api/v1/stream", tag = "stream", params(StreamQuery),
    responses((status = 200, description = "Server-Sent Events: `cluster`, `membership`, `stats`, `event`",
               content_type = "text/event-stream", body = String),
              (status = 400, description = "A bad topic pattern, or too many", body = ErrorBody),
              (status = 401, description = "No or wrong token", body = ErrorBody)))]
pub async fn stream(
    _: Authorized,
    state: web::Data<ApiState>,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let topics: Vec<String> = query
        .topics
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if topics.len() > MAX_STREAM_TOPICS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_STREAM_TOPICS} topics per stream"
        )));
    }
    for t in &topics {
        crate::topic::check_pattern(t)
            .map_err(|why| ApiError::BadRequest(format!("topic {t:?} {why}")))?;
    }
    let node = state.node.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(CLIENT_QUEUE_FRAMES);
    let (events_tx, events_rx) = mpsc::channel::<RawEvent>(EVENT_QUEUE);
    let mut subscriptions = Vec::with_capacity(topics.len());
    for t in &topics {
        match node.subscribe_channel(t, events_tx.clone()) {
            Ok(id) => subscriptions.push(id),
            Err(why) => return Err(ApiError::BadRequest(format!("topic {t:?} {why}"))),
        }
    }
    drop(events_tx);
    let feed = Feed {
        node: node.clone(),
        tx,
        last: BTreeMap::new(),
        shape: Vec::new(),
    };
    actix_web::rt::spawn(async move {
        feed.run(events_rx, !topics.is_empty()).await;
        for id in subscriptions {
            node.unsubscribe(id);
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, Infallible>(frame), rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        // Proxies that buffer would hold the stream back.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// One client's feeder: what it last told the client of each node, and its queue.
struct Feed {
    node: NodeHandle,
    tx: mpsc::Sender<Bytes>,
    /// Node name → (state, incarnation) as last sent.
    last: BTreeMap<String, (MemberState, Option<String>)>,
    /// The links and methods of every member as last sent in `event: cluster`: the view
    /// changes with every replicated stat, the drawing only when these do.
    shape: Vec<(Vec<String>, Vec<String>)>,
}

/// Why feeding stopped.
enum Stop {
    /// The client's queue is full (it reads too slowly) or it went away.
    Client,
}

impl Feed {
    async fn run(mut self, mut events: mpsc::Receiver<RawEvent>, with_events: bool) {
        let mut view = self.node.membership();
        let mut ticks = tokio::time::interval(self.node.config().cluster.heartbeat_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let doc = self.doc();
        if self.initial(&doc).is_err() {
            return;
        }
        ticks.tick().await;
        loop {
            let sent = tokio::select! {
                () = self.tx.closed() => return,
                changed = view.changed() => match changed {
                    Ok(()) => self.membership(),
                    // The node is gone: end the stream.
                    Err(_) => return,
                },
                _ = ticks.tick() => self.stats(&self.doc()),
                event = events.recv(), if with_events => match event {
                    Some(e) => self.event(e),
                    // The bus dropped the feed: it fell behind.
                    None => Err(Stop::Client),
                },
            };
            if sent.is_err() {
                tracing::debug!(node = %self.node.name(), "HTTP API: dropping a slow event-stream client");
                return;
            }
        }
    }

    fn doc(&self) -> ClusterDoc {
        ClusterDoc::from(&self.node.cluster_view())
    }

    fn initial(&mut self, doc: &ClusterDoc) -> Result<(), Stop> {
        self.shape = shape_of(doc);
        self.send("cluster", doc)?;
        for m in &doc.members {
            let change = change_of(m);
            self.last
                .insert(m.name.clone(), (change.state, change.incarnation.clone()));
            self.send("membership", &change)?;
        }
        self.stats(doc)
    }

    /// Tell what changed since the last membership events, then the whole document if a
    /// member's state, links or methods changed.
    fn membership(&mut self) -> Result<(), Stop> {
        let doc = self.doc();
        let mut changed = false;
        for m in &doc.members {
            let change = change_of(m);
            let now = (change.state, change.incarnation.clone());
            if self.last.get(&m.name) != Some(&now) {
                self.last.insert(m.name.clone(), now);
                self.send("membership", &change)?;
                changed = true;
            }
        }
        let shape = shape_of(&doc);
        if changed || shape != self.shape {
            self.shape = shape;
            self.send("cluster", &doc)?;
        }
        Ok(())
    }

    fn stats(&mut self, doc: &ClusterDoc) -> Result<(), Stop> {
        #[derive(serde::Serialize)]
        struct Stats<'a> {
            members: &'a [MemberDoc],
        }
        self.send(
            "stats",
            &Stats {
                members: &doc.members,
            },
        )
    }

    fn event(&mut self, e: RawEvent) -> Result<(), Stop> {
        let event = StreamEvent {
            payload: cbor_to_json(&e.payload).unwrap_or(serde_json::Value::Null),
            topic: e.topic,
            from: e.from.name,
        };
        self.send("event", &event)
    }

    /// Queue one SSE frame; a full queue drops the client.
    fn send(&mut self, kind: &str, data: &impl serde::Serialize) -> Result<(), Stop> {
        let Ok(json) = serde_json::to_string(data) else {
            return Ok(());
        };
        // JSON text has no raw newlines, so one `data:` line carries it.
        let frame = format!("event: {kind}\ndata: {json}\n\n");
        self.tx
            .try_send(Bytes::from(frame))
            .map_err(|_| Stop::Client)
    }
}

fn shape_of(doc: &ClusterDoc) -> Vec<(Vec<String>, Vec<String>)> {
    doc.members
        .iter()
        .map(|m| (m.links.clone(), m.methods.clone()))
        .collect()
}

fn change_of(m: &MemberDoc) -> MembershipChange {
    MembershipChange {
        node: m.name.clone(),
        state: m.state,
        incarnation: m.incarnation.clone(),
    }
}
