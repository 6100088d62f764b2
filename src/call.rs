//! The typed surface of calls (request/response): what user code sees instead of bytes.
//!
//! A [`Request`] is a serde type that names its method and its response type. An actor that
//! implements it handles [`Invocation<R>`], an ordinary actix message; a caller gets
//! `Result<R::Response, CallError>` from [`NodeHandle::call`](crate::NodeHandle::call).
//! Method names are the contract between languages: a Python application that implements
//! `py.add` serves a Rust caller whose request type says `METHOD = "py.add"`, and the other
//! way round.

use std::time::Duration;

use actix::Message;
use serde::{de::DeserializeOwned, Serialize};

use crate::event::NodeId;
use crate::wire::Failure;

/// A typed request with a cluster-wide method name.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize, Debug)]
/// struct Add { a: i64, b: i64 }
/// #[derive(Serialize, Deserialize, Debug)]
/// struct Sum { sum: i64 }
/// impl nodecloud::Request for Add {
///     const METHOD: &'static str = "math.add";
///     type Response = Sum;
/// }
/// ```
pub trait Request: Serialize + DeserializeOwned + Send + 'static {
    /// The method this request calls; every implementer of this type serves it.
    const METHOD: &'static str;
    /// What the implementer answers.
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// A call delivered to its implementer: an ordinary actix message, the same whether the
/// caller is on this node, on another node, or an application. Answer `Err(message)` to fail
/// the call with [`CallError::Remote`].
#[derive(Debug)]
pub struct Invocation<R> {
    /// The node the call was made on.
    pub from: NodeId,
    pub request: R,
}

impl<R: Request> Message for Invocation<R> {
    type Result = Result<R::Response, String>;
}

/// Which node serves a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallTarget {
    /// Any node that implements the method: the least loaded, ties taken in turn.
    Any,
    /// This node, by configured name.
    Node(String),
}

impl From<&str> for CallTarget {
    fn from(name: &str) -> Self {
        CallTarget::Node(name.to_owned())
    }
}

impl From<String> for CallTarget {
    fn from(name: String) -> Self {
        CallTarget::Node(name)
    }
}

impl From<&NodeId> for CallTarget {
    fn from(id: &NodeId) -> Self {
        CallTarget::Node(id.name.clone())
    }
}

/// Why a call failed. Each variant has a stable wire code ([`CallError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no live node implements {0}")]
    NoImplementer(String),
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("{0} is down")]
    TargetDown(String),
    #[error("no node is named {0:?} in the configuration")]
    UnknownNode(String),
    #[error("the implementer failed: {0}")]
    Remote(String),
    #[error("payload does not decode: {0}")]
    BadPayload(String),
    #[error("the implementer went away before answering: {0}")]
    ImplementerGone(String),
    #[error("too many calls in flight: {0}")]
    Busy(String),
    #[error("the node is shutting down")]
    Stopped,
    #[error("the response does not fit in a frame: {0}")]
    TooLarge(String),
}

impl CallError {
    /// The code on the wire (`outcome.error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            CallError::NoImplementer(_) => "no_implementer",
            CallError::Timeout(_) => "timeout",
            CallError::TargetDown(_) => "target_down",
            CallError::UnknownNode(_) => "unknown_node",
            CallError::Remote(_) => "remote_error",
            CallError::BadPayload(_) => "bad_payload",
            CallError::ImplementerGone(_) => "implementer_gone",
            CallError::Busy(_) => "busy",
            CallError::Stopped => "stopped",
            CallError::TooLarge(_) => "too_large",
        }
    }

    /// The failure as it travels: the code, and as message the variant's detail (the method,
    /// the node, the implementer's own message), or the whole sentence for the others.
    pub fn to_failure(&self) -> Failure {
        let message = match self {
            CallError::NoImplementer(m)
            | CallError::TargetDown(m)
            | CallError::UnknownNode(m)
            | CallError::Remote(m)
            | CallError::BadPayload(m)
            | CallError::ImplementerGone(m)
            | CallError::Busy(m)
            | CallError::TooLarge(m) => m.clone(),
            CallError::Timeout(_) | CallError::Stopped => self.to_string(),
        };
        Failure::new(self.code(), message)
    }

    /// Read a failure off the wire. An unknown code (a newer or foreign implementation) is
    /// kept as a remote error that names it.
    pub fn from_failure(f: Failure) -> Self {
        match f.code.as_str() {
            "no_implementer" => CallError::NoImplementer(f.message),
            "timeout" => CallError::Timeout(Duration::from_millis(first_number(&f.message))),
            "target_down" => CallError::TargetDown(f.message),
            "unknown_node" => CallError::UnknownNode(f.message),
            "remote_error" => CallError::Remote(f.message),
            "bad_payload" => CallError::BadPayload(f.message),
            "implementer_gone" => CallError::ImplementerGone(f.message),
            "busy" => CallError::Busy(f.message),
            "stopped" => CallError::Stopped,
            "too_large" => CallError::TooLarge(f.message),
            other => CallError::Remote(format!("{other}: {}", f.message)),
        }
    }
}

/// The first run of digits in `text` ("no answer within 250 ms" → 250), 0 if none.
fn first_number(text: &str) -> u64 {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_error_survives_the_wire() {
        let all = [
            CallError::NoImplementer("m".into()),
            CallError::Timeout(Duration::from_millis(250)),
            CallError::TargetDown("w1".into()),
            CallError::UnknownNode("zz".into()),
            CallError::Remote("boom".into()),
            CallError::BadPayload("x".into()),
            CallError::ImplementerGone("app".into()),
            CallError::Busy("4096".into()),
            CallError::Stopped,
        ];
        for e in all {
            assert_eq!(CallError::from_failure(e.to_failure()), e);
        }
    }

    #[test]
    fn an_unknown_failure_code_becomes_a_remote_error_naming_it() {
        let e = CallError::from_failure(Failure::new("teapot", "short and stout"));
        assert_eq!(e, CallError::Remote("teapot: short and stout".into()));
    }
}
