//! The command line's one table of outcomes: every failure is a [`CliError`], and its kind
//! decides the exit status, so `pub` and `call` (and every later command) agree.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the operation failed at run time (a call error, a refused publish; a node refused as `duplicate_node`) |
//! | 2 | usage or configuration: bad arguments, a config error, a wrong key or cluster name, a node the cluster does not have |
//! | 3 | down: the node to attach to, or the target, is not reachable now, or went away |

use std::process::ExitCode;

use crate::call::CallError;
use crate::service::ClientError;
use crate::wire::HandshakeError;

/// Why a command failed. `Display` is the line printed after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or configuration (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The operation failed (exit 1).
    #[error("{0}")]
    Failed(String),
    /// Whatever was addressed is down or unreachable (exit 3).
    #[error("{0}")]
    Down(String),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_status(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Down(_) => 3,
        }
    }

    /// Print `error: …` on stderr and give the exit status.
    pub fn report(&self) -> ExitCode {
        eprintln!("error: {self}");
        ExitCode::from(self.exit_status())
    }

    /// A failure named by one of the protocol's codes (call outcomes, `refused` codes): the
    /// same code means the same status, whichever command met it.
    pub fn from_code(code: &str, message: &str) -> CliError {
        let line = format!("{code}: {message}");
        match code {
            // `stopped`: the node is shutting down, or the link to it broke.
            "target_down" | "stopped" => CliError::Down(line),
            "unknown_node" | "bad_topic" | "bad_method" => CliError::Usage(line),
            _ => CliError::Failed(line),
        }
    }

    /// A failed call.
    pub fn from_call(e: &CallError) -> CliError {
        CliError::from_code(e.code(), &e.to_string())
    }

    /// A failure to attach to `node` (its name, or the address given) at `endpoint`.
    pub fn from_client(e: ClientError, node: &str) -> CliError {
        match e {
            ClientError::Connect { endpoint, source } => {
                let whom = match node == endpoint {
                    true => endpoint,
                    false => format!("node {node} at {endpoint}"),
                };
                CliError::Down(format!(
                    "cannot reach {whom}: {source} \
                     (is the node running, and is this its service address?)"
                ))
            }
            ClientError::Handshake(h) => from_handshake(h, node),
            ClientError::NoEndpoint { .. } | ClientError::UnknownNode(_) => {
                CliError::Usage(e.to_string())
            }
            ClientError::Encode(_) => CliError::Usage(e.to_string()),
            ClientError::TooLarge { .. } => CliError::Failed(format!("too_large: {e}")),
            ClientError::Closed(_) => CliError::Down(format!("node {node}: {e}")),
            ClientError::Refused(_) => CliError::Failed(format!("node {node}: {e}")),
            ClientError::Tls { .. } => CliError::Down(format!("node {node}: {e}")),
            ClientError::TlsSetup(_) | ClientError::TlsOnUnix(_) => CliError::Usage(e.to_string()),
        }
    }
}

fn from_handshake(h: HandshakeError, node: &str) -> CliError {
    match h {
        HandshakeError::AuthFailed => CliError::Usage(format!(
            "node {node} refused the service key (auth_failed): check --key-env/--key-file, \
             NODECLOUD_KEY or the file's service_key"
        )),
        HandshakeError::Cluster { .. } | HandshakeError::Version { .. } => {
            CliError::Usage(format!("node {node}: {h}"))
        }
        HandshakeError::Refused { ref code, .. } if code == "not_admitted" => CliError::Usage(
            format!("node {node}: {h} (is this a peer port? attach to the node's service port)"),
        ),
        HandshakeError::Refused { ref code, .. } if code == "tls_required" => {
            CliError::Usage(format!(
                "node {node}: {h} (attach with --tls-ca FILE, or a --config with [cluster.tls])"
            ))
        }
        HandshakeError::Refused { ref code, .. } if code == "busy" => {
            CliError::Failed(format!("node {node}: {h}"))
        }
        HandshakeError::Timeout(_) | HandshakeError::Closed => {
            CliError::Down(format!("node {node}: {h} (is this its service address?)"))
        }
        _ => CliError::Failed(format!("node {node}: {h}")),
    }
}

impl From<crate::config::ConfigError> for CliError {
    fn from(e: crate::config::ConfigError) -> Self {
        CliError::Usage(e.to_string())
    }
}
