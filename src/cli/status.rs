//! `nodecloud status`: the members of the cluster as the attached node sees them, as a table
//! or as JSON. Exit status 0 when every member listed is up, 3 when some are down: a declared
//! node, or a pool member that died and is not forgotten yet (one that left with `bye` is not
//! listed). The view comes over the service protocol (`cluster` request), or with `--api` from
//! a node's HTTP API (`GET /api/v1/cluster`).

use serde_json::{json, Value};

use super::attach::Target;
use super::exit::CliError;
use crate::api::model::{ClusterDoc, MemberDoc};
use crate::api::ErrorBody;
use crate::wire::{ClusterView, MemberView};

/// One member as JSON: `name`, `role`, `state`, `incarnation`, `pid`, `version`, `uptime_s`,
/// `rss_bytes`, `cpus`, `load_1m`, `mem_free_bytes`, `mem_total_bytes`, `stats` (the custom
/// ones), `links`, `methods`, `http` (the HTTP backends it advertises). The replicated fields are null while the member is down.
pub fn member_json(m: &MemberView) -> Value {
    // The same document as the HTTP API's member (`GET /api/v1/nodes/{name}`): one shape.
    serde_json::to_value(MemberDoc::from(m)).unwrap_or(Value::Null)
}

/// The whole view as JSON: `cluster`, `topology`, `node` (who answered), `members`.
pub fn view_json(v: &ClusterView) -> Value {
    json!({
        "cluster": v.cluster,
        "topology": v.topology,
        "node": v.node,
        "members": v.members.iter().map(member_json).collect::<Vec<_>>(),
    })
}

/// The view as an aligned table with a summary line.
pub fn table(v: &ClusterView) -> String {
    let up = v.members.iter().filter(|m| m.state == "up").count();
    let mut rows = vec![[
        "NAME",
        "ROLE",
        "STATE",
        "INCARNATION",
        "UPTIME",
        "LOAD",
        "RSS",
        "LINKS",
        "METHODS",
        "HTTP",
    ]
    .map(str::to_owned)];
    for m in &v.members {
        let dash = || "-".to_owned();
        let s = m.stats.as_ref();
        let list = |l: &[String]| if l.is_empty() { dash() } else { l.join(",") };
        rows.push([
            m.name.clone(),
            m.role.clone(),
            m.state.clone(),
            m.incarnation
                .map(|u| u.to_string().chars().take(8).collect())
                .unwrap_or_else(dash),
            s.map(|s| duration(s.uptime_s)).unwrap_or_else(dash),
            s.map(|s| format!("{:.2}", s.load_avg[0]))
                .unwrap_or_else(dash),
            s.map(|s| bytes(s.rss_bytes)).unwrap_or_else(dash),
            list(&m.links),
            list(&m.methods),
            list(&m.http),
        ]);
    }
    let widths: Vec<usize> = (0..10)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!(
        "cluster {} ({}), seen from {}: {up} of {} up\n",
        v.cluster,
        v.topology,
        v.node,
        v.members.len()
    );
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn bytes(b: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    match b {
        0..MIB => format!("{} KiB", b / 1024),
        _ => format!("{:.1} MiB", b as f64 / MIB as f64),
    }
}

/// Print the view; `Err(Down)` (exit 3) when a member is down, after printing.
///
/// # Errors
/// [`CliError`]: attaching or asking failed, or some member is down.
pub async fn status(target: &Target, name: &str, as_json: bool) -> Result<(), CliError> {
    let client = target.connect(name).await?;
    let view = client
        .cluster()
        .await
        .map_err(|e| CliError::from_client(e, &target.node))?;
    client.close().await;
    report(&view, as_json)
}

/// The largest answer read from the API: a cluster document is a few KiB per member.
const MAX_API_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

/// How long `status --api` waits for the node to answer.
const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`status`] from a node's HTTP API at `base` (`http://HOST:PORT`), with the bearer token.
/// Blocking: call it outside an actor system.
///
/// # Errors
/// [`CliError`]: `Down` when the API cannot be reached or a member is down, `Usage` for a
/// refused token or a bad URL, `Failed` for an answer that is not a cluster document.
pub fn status_api(base: &str, token: Option<&str>, as_json: bool) -> Result<(), CliError> {
    if !base.starts_with("http://") {
        return Err(CliError::Usage(format!(
            "--api {base:?}: expected http://HOST:PORT (the node's `api` address)"
        )));
    }
    let url = format!("{}/api/v1/cluster", base.trim_end_matches('/'));
    let agent = ureq::AgentBuilder::new().timeout(API_TIMEOUT).build();
    let mut request = agent.get(&url);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let answer = match request.call() {
        Ok(answer) => answer,
        Err(ureq::Error::Status(status, answer)) => {
            let body: Option<ErrorBody> = read_json(answer).ok();
            let message = body
                .map(|b| format!("{}: {}", b.code, b.message))
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(match status {
                401 => CliError::Usage(format!(
                    "{url}: {message} (give the API token with --token-env VAR)"
                )),
                _ => CliError::Failed(format!("{url}: {message}")),
            });
        }
        Err(ureq::Error::Transport(e)) => {
            return Err(CliError::Down(format!(
                "cannot reach the API at {base}: {e} (is the node running, and is this its api address?)"
            )))
        }
    };
    let doc: ClusterDoc = read_json(answer)
        .map_err(|e| CliError::Failed(format!("{url}: not a cluster document: {e}")))?;
    report(&ClusterView::from(&doc), as_json)
}

fn read_json<T: serde::de::DeserializeOwned>(answer: ureq::Response) -> Result<T, String> {
    use std::io::Read;
    let reader = answer.into_reader().take(MAX_API_ANSWER_BYTES);
    serde_json::from_reader(reader).map_err(|e| e.to_string())
}

fn report(view: &ClusterView, as_json: bool) -> Result<(), CliError> {
    let view = view.clone();
    if as_json {
        println!("{}", view_json(&view));
    } else {
        print!("{}", table(&view));
    }
    let down: Vec<&str> = view
        .members
        .iter()
        .filter(|m| m.state != "up")
        .map(|m| m.name.as_str())
        .collect();
    match down.as_slice() {
        [] => Ok(()),
        names => Err(CliError::Down(format!("down: {}", names.join(", ")))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::NodeStats;

    fn view() -> ClusterView {
        let stats = NodeStats {
            pid: 42,
            uptime_s: 3725,
            rss_bytes: 12 * 1024 * 1024,
            load_avg: [0.5, 0.0, 0.0],
            ..NodeStats::default()
        };
        ClusterView {
            id: 1,
            cluster: "demo".into(),
            topology: "star".into(),
            node: "master".into(),
            members: vec![
                MemberView {
                    name: "master".into(),
                    role: "master".into(),
                    state: "up".into(),
                    incarnation: Some(uuid::Uuid::from_bytes([0xab; 16])),
                    stats: Some(stats),
                    links: vec!["worker-1".into()],
                    methods: vec![],
                    http: vec!["127.0.0.1:9001".into()],
                },
                MemberView {
                    name: "worker-1".into(),
                    role: "worker".into(),
                    state: "down".into(),
                    incarnation: None,
                    stats: None,
                    links: vec![],
                    methods: vec![],
                    http: vec![],
                },
            ],
        }
    }

    #[test]
    fn the_table_aligns_columns_and_dashes_what_a_down_member_lacks() {
        let t = table(&view());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "cluster demo (star), seen from master: 1 of 2 up");
        assert_eq!(
            lines[2],
            "master    master  up     abababab     1h02m   0.50  12.0 MiB  worker-1  -        127.0.0.1:9001"
        );
        assert_eq!(
            lines[3],
            "worker-1  worker  down   -            -       -     -         -         -        -"
        );
    }

    #[test]
    fn json_members_carry_null_state_while_down() {
        let v = view_json(&view());
        assert_eq!(v["members"][0]["pid"], 42);
        assert_eq!(v["members"][0]["load_1m"], 0.5);
        assert!(v["members"][1]["pid"].is_null());
        assert_eq!(v["members"][1]["state"], "down");
    }
}
