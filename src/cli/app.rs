//! `sub`, `pub` and `call`: short-lived applications attached to one node's service
//! listener, with JSON on the command line and CBOR on the wire.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use super::attach::Target;
use super::exit::CliError;
use crate::service::{Client, Incoming};
use crate::wire::json;

/// The largest body `-` or `--file` reads: the largest frame a cluster may allow.
pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// Where a command's JSON body comes from.
#[derive(clap::Args, Debug, Clone)]
pub struct Body {
    /// The JSON value; `-` reads it from stdin. Without it (and without --file) the value is
    /// `null`.
    #[arg(value_name = "JSON")]
    pub json: Option<String>,
    /// Read the JSON value from this file.
    #[arg(long, short = 'f', value_name = "FILE", conflicts_with = "json")]
    pub file: Option<PathBuf>,
}

impl Body {
    /// The body as CBOR.
    ///
    /// # Errors
    /// [`CliError::Usage`]: unreadable, too large, or not JSON.
    pub fn to_cbor(&self) -> Result<Bytes, CliError> {
        let (text, from) = match (&self.json, &self.file) {
            (_, Some(path)) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| CliError::Usage(format!("--file {}: {e}", path.display())))?;
                (read_bounded(file, &path.display().to_string())?, "the file")
            }
            (Some(dash), None) if dash == "-" => {
                (read_bounded(std::io::stdin().lock(), "stdin")?, "stdin")
            }
            (Some(text), None) => (text.clone(), "the argument"),
            (None, None) => ("null".to_owned(), "the default"),
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{from} is not JSON: {e}")))?;
        json::json_to_cbor(&value).map_err(|e| CliError::Usage(e.to_string()))
    }
}

fn read_bounded(source: impl Read, name: &str) -> Result<String, CliError> {
    let mut text = String::new();
    source
        .take(MAX_BODY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| CliError::Usage(format!("cannot read {name}: {e}")))?;
    if text.len() as u64 > MAX_BODY_BYTES {
        return Err(CliError::Usage(format!(
            "{name} holds more than {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(text)
}

/// A refusal already queued after a round trip, if any. Events that came first are kept
/// in `early` so none is lost.
fn refusal(client: &mut Client, early: &mut Vec<Incoming>) -> Option<CliError> {
    while let Some(item) = client.try_next() {
        match item {
            Incoming::Refused { code, message, .. } => {
                return Some(CliError::from_code(&code, &message))
            }
            Incoming::Closed(why) => return Some(closed(why)),
            other => early.push(other),
        }
    }
    None
}

/// The node went away mid-command: down, like a node that does not answer.
fn closed(e: impl std::fmt::Display) -> CliError {
    CliError::Down(format!("the connection to the node broke: {e}"))
}

/// Print each event of `topic` (a pattern may hold wildcards) as one JSON line; say
/// `subscribed to TOPIC` on stderr once the node has confirmed.
///
/// # Errors
/// [`CliError`].
pub async fn sub(
    target: &Target,
    name: &str,
    topic: &str,
    count: Option<u64>,
) -> Result<(), CliError> {
    let mut client = target.connect(name).await?;
    client.subscribe(topic).await.map_err(closed)?;
    // The node handles frames in order: once it answers a later ping, the subscription is
    // in place, or its refusal is already queued.
    client.sync().await.map_err(closed)?;
    let mut early = Vec::new();
    if let Some(e) = refusal(&mut client, &mut early) {
        return Err(e);
    }
    eprintln!("subscribed to {topic}");
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    let stop = crate::cluster::signal();
    tokio::pin!(stop);
    let mut early = early.into_iter();
    while count.is_none_or(|n| printed < n) {
        let item = match early.next() {
            Some(item) => Some(item),
            None => tokio::select! {
                item = client.next() => item,
                () = &mut stop => break,
            },
        };
        match item {
            Some(Incoming::Event {
                topic,
                from,
                payload,
                ..
            }) => {
                let payload = json::cbor_to_json(&payload)
                    .unwrap_or_else(|e| serde_json::json!({"$undecodable": e.to_string()}));
                let line = serde_json::json!({"topic": topic, "from": from, "payload": payload});
                // A closed stdout (`| head`) ends the command quietly.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    break;
                }
                printed += 1;
            }
            Some(Incoming::Refused { code, message, .. }) => {
                return Err(CliError::from_code(&code, &message))
            }
            // Nothing is implemented here, so no request comes.
            Some(Incoming::Request { .. }) => {}
            Some(Incoming::Closed(why)) => return Err(closed(why)),
            None => return Err(closed("the node closed the connection")),
        }
    }
    client.close().await;
    Ok(())
}

/// Publish one event, to every node or to `to`; return once the node has taken it.
///
/// # Errors
/// [`CliError`]: a refusal is reported with its code (`target_down`, `unknown_node`,
/// `too_large`, …).
pub async fn publish(
    target: &Target,
    name: &str,
    topic: &str,
    payload: Bytes,
    to: Option<&str>,
) -> Result<(), CliError> {
    let mut client = target.connect(name).await?;
    client
        .publish_raw(topic, payload, to)
        .await
        .map_err(|e| CliError::from_client(e, &target.node))?;
    client.sync().await.map_err(closed)?;
    if let Some(e) = refusal(&mut client, &mut Vec::new()) {
        return Err(e);
    }
    client.close().await;
    Ok(())
}

/// Call `method` and print the JSON response on stdout.
///
/// # Errors
/// [`CliError`]: a call error is reported with its code.
pub async fn call(
    target: &Target,
    name: &str,
    method: &str,
    payload: Bytes,
    to: Option<&str>,
    timeout: Option<Duration>,
) -> Result<(), CliError> {
    let client = target.connect(name).await?;
    let result = client
        .call_raw(method, to, timeout, payload)
        .await
        .map_err(|e| CliError::from_call(&e))?;
    let reply = json::cbor_to_json(&result)
        .map_err(|e| CliError::Failed(format!("bad_payload: the reply is not CBOR: {e}")))?;
    println!("{reply}");
    client.close().await;
    Ok(())
}
