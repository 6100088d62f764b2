//! The JSON documents of the HTTP API, built from the node's [`ClusterView`] (the same shape
//! `nodecloud status --json` prints), and read back by `nodecloud status --api`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::wire::{ClusterView, MemberView, NodeStats, StatValue};

/// `up` while the node is a member of this node's view, `down` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Up,
    Down,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Up => "up",
            MemberState::Down => "down",
        }
    }
}

/// The whole cluster as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterDoc {
    /// The cluster's name.
    pub name: String,
    /// `star`, `ring`, `master-ring-slave`, `mesh`, `tree` or `custom`.
    pub topology: String,
    /// The node that answered.
    pub node: String,
    /// Every configured node, in declared order; down ones included.
    pub members: Vec<MemberDoc>,
}

/// One configured node. The replicated fields are null while it is down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemberDoc {
    pub name: String,
    /// `master` or `worker`.
    pub role: String,
    pub state: MemberState,
    /// The running incarnation (a uuid, new at every start).
    pub incarnation: Option<String>,
    pub pid: Option<u32>,
    /// The nodecloud version the node runs.
    pub version: Option<String>,
    pub uptime_s: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub cpus: Option<u32>,
    /// The one-minute load average of the node's machine.
    pub load_1m: Option<f64>,
    pub mem_free_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    /// The fields the application adds (`NodeHandle::set_stat`): scalars by name.
    #[schema(value_type = Object)]
    pub stats: BTreeMap<String, Value>,
    /// Nodes it has a live link to.
    pub links: Vec<String>,
    /// Methods it serves, sorted.
    pub methods: Vec<String>,
    /// HTTP backends it advertises (`HOST:PORT`), sorted: where proxies forward requests.
    #[serde(default)]
    pub http: Vec<String>,
}

/// What this node's HTTP proxy counted (`GET /api/v1/proxy`): the dashboard's request rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProxyDoc {
    /// The node that answered.
    pub node: String,
    /// Where its proxy listens (`HOST:PORT`); null when it serves no proxy.
    pub listen: Option<String>,
    /// One entry per backend an up node advertises (or that still has requests in flight),
    /// by node then address.
    pub backends: Vec<BackendDoc>,
}

/// One backend as the proxy of the answering node sees it. The counters start at zero when
/// the node starts; a rate is the difference of two readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackendDoc {
    /// The node that advertises it.
    pub node: String,
    /// `HOST:PORT`.
    pub address: String,
    /// Requests sent to it (a retry counts again).
    pub requests: u64,
    /// Attempts that got no response from it (refused, broken, timed out).
    pub errors: u64,
    /// Requests waiting on it now.
    pub in_flight: u64,
}

/// A custom stat as JSON.
pub fn stat_json(v: &StatValue) -> Value {
    match v {
        StatValue::Bool(b) => Value::Bool(*b),
        StatValue::Int(i) => Value::from(*i),
        StatValue::Float(f) => Value::from(*f),
        StatValue::Text(t) => Value::String(t.clone()),
    }
}

/// A JSON value back as a custom stat; `None` for what stats cannot hold (arrays, objects, null).
fn json_stat(v: &Value) -> Option<StatValue> {
    match v {
        Value::Bool(b) => Some(StatValue::Bool(*b)),
        Value::Number(n) => n
            .as_i64()
            .map(StatValue::Int)
            .or_else(|| n.as_f64().map(StatValue::Float)),
        Value::String(s) => Some(StatValue::Text(s.clone())),
        _ => None,
    }
}

impl From<&MemberView> for MemberDoc {
    fn from(m: &MemberView) -> Self {
        let s = m.stats.as_ref();
        MemberDoc {
            name: m.name.clone(),
            role: m.role.clone(),
            state: if m.state == "up" {
                MemberState::Up
            } else {
                MemberState::Down
            },
            incarnation: m.incarnation.map(|u| u.to_string()),
            pid: s.map(|s| s.pid),
            version: s.map(|s| s.version.clone()),
            uptime_s: s.map(|s| s.uptime_s),
            rss_bytes: s.map(|s| s.rss_bytes),
            cpus: s.map(|s| s.cpus),
            load_1m: s.map(|s| s.load_avg[0]),
            mem_free_bytes: s.map(|s| s.free_mem_bytes),
            mem_total_bytes: s.map(|s| s.total_mem_bytes),
            stats: s
                .map(|s| {
                    s.extra
                        .iter()
                        .map(|(k, v)| (k.clone(), stat_json(v)))
                        .collect()
                })
                .unwrap_or_default(),
            links: m.links.clone(),
            methods: m.methods.clone(),
            http: m.http.clone(),
        }
    }
}

impl From<&ClusterView> for ClusterDoc {
    fn from(v: &ClusterView) -> Self {
        ClusterDoc {
            name: v.cluster.clone(),
            topology: v.topology.clone(),
            node: v.node.clone(),
            members: v.members.iter().map(MemberDoc::from).collect(),
        }
    }
}

impl From<&MemberDoc> for MemberView {
    /// Back to the service protocol's shape (what the `status` table prints); the load
    /// averages past the first minute are not in the document and read 0.
    fn from(m: &MemberDoc) -> Self {
        let stats = (m.state == MemberState::Up).then(|| NodeStats {
            pid: m.pid.unwrap_or_default(),
            version: m.version.clone().unwrap_or_default(),
            uptime_s: m.uptime_s.unwrap_or_default(),
            rss_bytes: m.rss_bytes.unwrap_or_default(),
            cpus: m.cpus.unwrap_or_default(),
            load_avg: [m.load_1m.unwrap_or_default(), 0.0, 0.0],
            free_mem_bytes: m.mem_free_bytes.unwrap_or_default(),
            total_mem_bytes: m.mem_total_bytes.unwrap_or_default(),
            extra: m
                .stats
                .iter()
                .filter_map(|(k, v)| json_stat(v).map(|v| (k.clone(), v)))
                .collect(),
        });
        MemberView {
            name: m.name.clone(),
            role: m.role.clone(),
            state: m.state.as_str().to_owned(),
            incarnation: m.incarnation.as_deref().and_then(|u| u.parse().ok()),
            stats,
            links: m.links.clone(),
            methods: m.methods.clone(),
            http: m.http.clone(),
        }
    }
}

impl From<&ClusterDoc> for ClusterView {
    fn from(d: &ClusterDoc) -> Self {
        ClusterView {
            id: 0,
            cluster: d.name.clone(),
            topology: d.topology.clone(),
            node: d.node.clone(),
            members: d.members.iter().map(MemberView::from).collect(),
        }
    }
}

/// `event: membership` of the stream: one node changed state or incarnation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MembershipChange {
    pub node: String,
    pub state: MemberState,
    pub incarnation: Option<String>,
}

/// `event: event` of the stream: an event on one of the topics asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamEvent {
    pub topic: String,
    /// The node that published it.
    pub from: String,
    /// The payload as JSON (null if it is CBOR that JSON cannot express).
    #[schema(value_type = AnyJson)]
    pub payload: Value,
}

/// `POST /api/v1/events/{topic}` answers with this (202).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub topic: String,
    /// The node it was sent to, or null when published to every node.
    pub to: Option<String>,
}

/// `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or for `/readyz` also `degraded`.
    pub status: String,
    /// The node serving this API.
    pub node: String,
}

/// Any JSON value: what a call answers or an event carries. In the OpenAPI document it is a
/// schema without a type (utoipa would say `object` for `serde_json::Value`, and a method may
/// answer `[]` or `3`).
pub struct AnyJson;

impl utoipa::PartialSchema for AnyJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
            .description(Some("Any JSON value"))
            .into()
    }
}

impl utoipa::ToSchema for AnyJson {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_member_survives_the_trip_to_json_and_back() {
        let stats = NodeStats {
            pid: 7,
            version: "0.1.0".into(),
            uptime_s: 12,
            rss_bytes: 1 << 20,
            cpus: 2,
            load_avg: [0.25, 0.0, 0.0],
            free_mem_bytes: 5,
            total_mem_bytes: 9,
            extra: BTreeMap::from([("queue".to_owned(), StatValue::Int(3))]),
        };
        let view = MemberView {
            name: "worker-1".into(),
            role: "worker".into(),
            state: "up".into(),
            incarnation: Some(uuid::Uuid::from_bytes([1; 16])),
            stats: Some(stats),
            links: vec!["master".into()],
            methods: vec!["echo".into()],
            http: vec!["127.0.0.1:9001".into()],
        };
        let doc = MemberDoc::from(&view);
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["state"], "up");
        assert_eq!(json["stats"]["queue"], 3);
        let back: MemberDoc = serde_json::from_value(json).unwrap();
        assert_eq!(MemberView::from(&back), view);
    }
}
