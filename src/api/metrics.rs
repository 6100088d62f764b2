//! `GET /metrics`: the node's counters in the Prometheus text format, read at scrape time
//! (the node keeps plain atomics; nothing here runs on its hot paths). Families are built
//! by hand as `prometheus` models so counters that live elsewhere (per-link counters, the
//! node's `Metrics`) are exported as they are, then written by the crate's `TextEncoder`.

use actix_web::{web, HttpResponse};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use super::{ApiError, ApiState, Authorized, ErrorBody};
use crate::node::{NodeHandle, PROXY_LATENCY_BUCKETS_S};

/// The node's metrics (needs the token like the rest of the API).
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
              (status = 401, description = "No or wrong token", body = ErrorBody)))]
pub async fn metrics(_: Authorized, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    // A family without samples (no links yet) is not valid in the text format: left out.
    let families: Vec<MetricFamily> = gather(&state.node)
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    let encoder = TextEncoder::new();
    let mut out = Vec::new();
    encoder
        .encode(&families, &mut out)
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type(encoder.format_type())
        .body(out))
}

/// Every family, for one scrape.
pub fn gather(node: &NodeHandle) -> Vec<MetricFamily> {
    let m = node.metrics();
    let view = node.cluster_view();
    let links = node.link_stats();
    let mut f = Vec::new();

    let up: Vec<Metric> = view
        .members
        .iter()
        .map(|member| {
            gauge(
                &[("node", &member.name), ("role", &member.role)],
                if member.state == "up" { 1.0 } else { 0.0 },
            )
        })
        .collect();
    let members_up = view.members.iter().filter(|m| m.state == "up").count();
    f.push(family(
        "nodecloud_members_up",
        "Configured nodes this node sees up (itself included).",
        MetricType::GAUGE,
        vec![gauge(&[], members_up as f64)],
    ));
    f.push(family(
        "nodecloud_member_up",
        "1 while the configured node is up, as this node sees it; 0 while down.",
        MetricType::GAUGE,
        up,
    ));

    let mut events = Vec::new();
    let mut frames = Vec::new();
    let mut bytes = Vec::new();
    let mut frames_out = Vec::new();
    let mut bytes_out = Vec::new();
    let mut frames_in = Vec::new();
    let mut bytes_in = Vec::new();
    for l in &links {
        frames_out.push(counter(&[("peer", &l.peer)], l.frames_out));
        bytes_out.push(counter(&[("peer", &l.peer)], l.bytes_out));
        frames_in.push(counter(&[("peer", &l.peer)], l.frames_in));
        bytes_in.push(counter(&[("peer", &l.peer)], l.bytes_in));
        events.push(counter(
            &[("peer", &l.peer), ("direction", "in")],
            l.events_in,
        ));
        events.push(counter(
            &[("peer", &l.peer), ("direction", "out")],
            l.events_out,
        ));
        frames.push(gauge(&[("peer", &l.peer)], l.queued_frames as f64));
        bytes.push(gauge(&[("peer", &l.peer)], l.queued_bytes as f64));
    }
    f.push(family(
        "nodecloud_link_frames_sent_total",
        "Frames of every kind sent per live link (counted since its connection started).",
        MetricType::COUNTER,
        frames_out,
    ));
    f.push(family(
        "nodecloud_link_bytes_sent_total",
        "Bytes of the frames sent per live link, length prefixes not included.",
        MetricType::COUNTER,
        bytes_out,
    ));
    f.push(family(
        "nodecloud_link_frames_received_total",
        "Frames of every kind received per live link (counted since its connection started).",
        MetricType::COUNTER,
        frames_in,
    ));
    f.push(family(
        "nodecloud_link_bytes_received_total",
        "Bytes of the frames received per live link, length prefixes included.",
        MetricType::COUNTER,
        bytes_in,
    ));
    f.push(family(
        "nodecloud_link_event_frames_total",
        "Event frames per live link and direction (counted since the link came up).",
        MetricType::COUNTER,
        events,
    ));
    f.push(family(
        "nodecloud_link_queue_frames",
        "Frames waiting in a live link's write queue.",
        MetricType::GAUGE,
        frames,
    ));
    f.push(family(
        "nodecloud_link_queue_bytes",
        "Bytes waiting in a live link's write queue.",
        MetricType::GAUGE,
        bytes,
    ));
    f.push(family(
        "nodecloud_links_up",
        "Live peer links of this node.",
        MetricType::GAUGE,
        vec![gauge(&[], links.len() as f64)],
    ));
    f.push(family(
        "nodecloud_links_established_total",
        "Peer links established, dialled or accepted.",
        MetricType::COUNTER,
        vec![counter(&[], m.links_established)],
    ));
    f.push(family(
        "nodecloud_link_reconnects_total",
        "Peer links established to a peer this node had a link to before.",
        MetricType::COUNTER,
        vec![counter(&[], m.reconnects)],
    ));
    f.push(family(
        "nodecloud_frames_dropped_total",
        "Frames dropped instead of delivered, by reason.",
        MetricType::COUNTER,
        vec![
            counter(&[("reason", "undecodable")], m.events_undecodable),
            counter(
                &[("reason", "application_drop_oldest")],
                m.app_deliveries_dropped,
            ),
        ],
    ));
    f.push(family(
        "nodecloud_handshakes_refused_total",
        "Connections refused before becoming a peer link or an application session, by reason.",
        MetricType::COUNTER,
        m.refused
            .iter()
            .map(|(reason, n)| counter(&[("reason", reason)], *n))
            .collect(),
    ));
    f.push(family(
        "nodecloud_replication_total",
        "Membership replication: digests and deltas sent and received, records by outcome, own stats set, ticks forwarded, live-graph recomputes.",
        MetricType::COUNTER,
        m.replication
            .iter()
            .map(|(kind, n)| counter(&[("kind", kind)], *n))
            .collect(),
    ));
    f.push(family(
        "nodecloud_applications_attached",
        "Applications attached to this node's service listener.",
        MetricType::GAUGE,
        vec![gauge(&[], m.applications as f64)],
    ));
    f.push(family(
        "nodecloud_applications_closed_slow_total",
        "Applications closed for reading their deliveries too slowly.",
        MetricType::COUNTER,
        vec![counter(&[], m.apps_closed_slow)],
    ));
    f.push(family(
        "nodecloud_events_total",
        "Events published by this node, delivered to its local subscribers, and relayed for others.",
        MetricType::COUNTER,
        vec![
            counter(&[("kind", "published")], m.events_published),
            counter(&[("kind", "delivered")], m.events_delivered),
            counter(&[("kind", "relayed")], m.events_relayed),
        ],
    ));
    f.push(family(
        "nodecloud_calls_total",
        "Calls made from this node, by outcome (ok or the call error code).",
        MetricType::COUNTER,
        m.calls
            .iter()
            .map(|(outcome, n)| counter(&[("outcome", outcome)], *n))
            .collect(),
    ));
    let mut h = Histogram::default();
    h.set_sample_count(m.call_latency_count);
    h.set_sample_sum(m.call_latency_sum_s);
    h.set_bucket(
        m.call_latency_buckets
            .iter()
            .filter(|(bound, _)| bound.is_finite())
            .map(|(bound, n)| {
                let mut b = Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(*n);
                b
            })
            .collect(),
    );
    let mut metric = Metric::default();
    metric.set_histogram(h);
    f.push(family(
        "nodecloud_call_duration_seconds",
        "How long calls made from this node took, whatever their outcome.",
        MetricType::HISTOGRAM,
        vec![metric],
    ));
    proxy_families(node, &mut f);
    f
}

/// The HTTP proxy's families, one sample per backend (labels `node`, `backend`); empty when
/// the node serves no proxy.
fn proxy_families(node: &NodeHandle, f: &mut Vec<MetricFamily>) {
    let backends = node.proxy_counters();
    let (mut requests, mut errors, mut in_flight, mut latency) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (name, addr, c) in &backends {
        let l = [("node", name.as_str()), ("backend", addr.as_str())];
        requests.push(counter(&l, c.requests));
        errors.push(counter(&l, c.errors));
        in_flight.push(gauge(&l, c.in_flight as f64));
        let mut h = Histogram::default();
        let mut cumulative = 0;
        let mut buckets = Vec::new();
        for (bound, n) in PROXY_LATENCY_BUCKETS_S.iter().zip(&c.latency_buckets) {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        h.set_bucket(buckets);
        h.set_sample_count(c.latency_buckets.iter().sum());
        h.set_sample_sum(c.latency_sum_s);
        let mut metric = Metric::from_label(labels(&l));
        metric.set_histogram(h);
        latency.push(metric);
    }
    f.push(family(
        "nodecloud_proxy_requests_total",
        "Requests the HTTP proxy sent to each backend (a retry counts again).",
        MetricType::COUNTER,
        requests,
    ));
    f.push(family(
        "nodecloud_proxy_errors_total",
        "Requests to each backend that got no response (refused, broken, timed out).",
        MetricType::COUNTER,
        errors,
    ));
    f.push(family(
        "nodecloud_proxy_in_flight",
        "Requests the HTTP proxy has waiting on each backend now.",
        MetricType::GAUGE,
        in_flight,
    ));
    f.push(family(
        "nodecloud_proxy_response_seconds",
        "Time until each backend's response head, for the requests it answered.",
        MetricType::HISTOGRAM,
        latency,
    ));
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}
