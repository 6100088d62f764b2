//! Listening sockets bound before a node starts: handed over in-process ([`Bound`], what the
//! test helpers use so that no test ever binds, releases and rebinds a port), or inherited
//! from the process that started nodecloud ([`Inherited`], systemd-style socket activation).
//!
//! A node takes its sockets from here at start and owns them from then on (its PeerListener
//! and ServiceListener, supervised by NodeSupervisor); whatever is not handed over is bound
//! from the configuration as before.
//!
//! Socket activation follows the systemd protocol: `LISTEN_FDS` sockets from fd 3 on, named by
//! the colon-separated `LISTEN_FDNAMES`. A socket named `NODE.peer` is node NODE's peer
//! listener, `NODE.service` its application (service) TCP listener, `NODE.api` its HTTP API and
//! `NODE.proxy` its HTTP proxy; when the process runs a single node, the bare names `peer`,
//! `service`, `api` and `proxy` mean that
//! node. `LISTEN_PID` may be absent (a parent cannot know its child's pid before it starts
//! it); when present it must be ours.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};

/// Sockets already bound for one node. A `None` is bound from the configuration at start.
#[derive(Debug, Default)]
pub struct Bound {
    /// Accepts peer links, in place of binding `listen`.
    pub peer: Option<TcpListener>,
    /// Accepts applications over TCP, in place of binding `service`.
    pub service: Option<TcpListener>,
    /// Serves the HTTP API, in place of binding `api` (see [`crate::api`]).
    pub api: Option<TcpListener>,
    /// Serves the HTTP proxy, in place of binding `proxy` (see [`crate::proxy`]).
    pub proxy: Option<TcpListener>,
}

impl Bound {
    /// The address the peer listener is bound to, if one was handed over.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Why the inherited sockets could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    #[error("LISTEN_FDNAMES names {names} sockets but LISTEN_FDS passes {fds}")]
    Count { names: usize, fds: usize },
    #[error("inherited socket {name:?} (fd {fd}) is not a listening TCP socket: {source}")]
    NotTcp {
        name: String,
        fd: usize,
        source: std::io::Error,
    },
    #[error("two inherited sockets are named {0:?}")]
    Duplicate(String),
    #[error("inherited socket {name:?} names no node of this process ({known})")]
    Unclaimed { name: String, known: String },
}

/// Listening sockets passed to this process by socket activation, by name.
#[derive(Debug, Default)]
pub struct Inherited {
    by_name: BTreeMap<String, TcpListener>,
}

impl Inherited {
    /// Take the sockets passed in the environment (none when `LISTEN_FDS` is unset) and
    /// clear the variables, so that processes we start do not inherit the claim.
    ///
    /// Call this first in `main`, before any thread starts: it changes the environment.
    ///
    /// # Errors
    /// [`InheritError`] if the names and sockets do not match or a socket is not TCP.
    pub fn from_env() -> Result<Inherited, InheritError> {
        let names = std::env::var("LISTEN_FDNAMES").ok();
        if names.is_some() {
            std::env::remove_var("LISTEN_FDNAMES");
        }
        // Reads LISTEN_FDS / LISTEN_PID and removes them; the fds are validated per take.
        let mut fds = listenfd::ListenFd::from_env();
        let names: Vec<String> = match names {
            Some(n) if fds.len() > 0 => n.split(':').map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        if names.len() != fds.len() {
            return Err(InheritError::Count {
                names: names.len(),
                fds: fds.len(),
            });
        }
        let mut by_name = BTreeMap::new();
        for (i, name) in names.into_iter().enumerate() {
            let listener = match fds.take_tcp_listener(i) {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(source) => {
                    return Err(InheritError::NotTcp {
                        name,
                        fd: 3 + i,
                        source,
                    })
                }
            };
            if by_name.contains_key(&name) {
                return Err(InheritError::Duplicate(name));
            }
            by_name.insert(name, listener);
        }
        Ok(Inherited { by_name })
    }

    /// Sockets passed some other way, by the same names as in `LISTEN_FDNAMES`.
    pub fn from_listeners(named: impl IntoIterator<Item = (String, TcpListener)>) -> Inherited {
        Inherited {
            by_name: named.into_iter().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Hand each node of `nodes` (the nodes this process runs) the sockets named for it.
    ///
    /// # Errors
    /// [`InheritError::Unclaimed`] when a socket names no node of `nodes`: a typo in a unit
    /// file would otherwise leave the node binding its configured address behind the
    /// operator's back.
    pub fn into_bound(mut self, nodes: &[String]) -> Result<BTreeMap<String, Bound>, InheritError> {
        let single = nodes.len() == 1;
        let mut out = BTreeMap::new();
        for node in nodes {
            let mut take = |kind: &str| {
                let named = self.by_name.remove(&format!("{node}.{kind}"));
                let taken = named.or_else(|| single.then(|| self.by_name.remove(kind)).flatten());
                if let Some(l) = &taken {
                    let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    tracing::info!(node = %node, "{kind} listener inherited (socket activation) on {addr}");
                }
                taken
            };
            let bound = Bound {
                peer: take("peer"),
                service: take("service"),
                api: take("api"),
                proxy: take("proxy"),
            };
            out.insert(node.clone(), bound);
        }
        if let Some(name) = self.by_name.keys().next() {
            return Err(InheritError::Unclaimed {
                name: name.clone(),
                known: nodes.join(", "),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn bare_names_belong_to_the_only_node_of_the_process() {
        let (peer, service) = (listener(), listener());
        let (p, s) = (peer.local_addr().unwrap(), service.local_addr().unwrap());
        let inherited =
            Inherited::from_listeners([("peer".to_owned(), peer), ("service".to_owned(), service)]);
        let mut bound = inherited.into_bound(&names(&["worker-1"])).unwrap();
        let b = bound.remove("worker-1").unwrap();
        assert_eq!(b.peer_addr(), Some(p));
        assert_eq!(b.service.unwrap().local_addr().unwrap(), s);
    }

    #[test]
    fn an_inherited_api_socket_goes_to_its_node() {
        let (a, b) = (listener(), listener());
        let a_addr = a.local_addr().unwrap();
        let inherited =
            Inherited::from_listeners([("m.api".to_owned(), a), ("w.peer".to_owned(), b)]);
        let bound = inherited.into_bound(&names(&["m", "w"])).unwrap();
        assert_eq!(
            bound["m"].api.as_ref().unwrap().local_addr().unwrap(),
            a_addr
        );
        assert!(bound["w"].api.is_none());
    }

    #[test]
    fn node_prefixed_names_pick_their_node_among_several() {
        let (a, b) = (listener(), listener());
        let b_addr = b.local_addr().unwrap();
        let inherited =
            Inherited::from_listeners([("m.peer".to_owned(), a), ("w.peer".to_owned(), b)]);
        let bound = inherited.into_bound(&names(&["m", "w", "x"])).unwrap();
        assert_eq!(bound["w"].peer_addr(), Some(b_addr));
        assert!(bound["w"].service.is_none());
        assert!(bound["x"].peer.is_none(), "x binds its configured address");
    }

    #[test]
    fn bare_names_are_refused_when_the_process_runs_several_nodes() {
        let inherited = Inherited::from_listeners([("peer".to_owned(), listener())]);
        let err = inherited.into_bound(&names(&["m", "w"])).unwrap_err();
        assert!(
            matches!(&err, InheritError::Unclaimed { name, .. } if name == "peer"),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "inherited socket \"peer\" names no node of this process (m, w)"
        );
    }

    #[test]
    fn no_activation_variables_mean_nothing_inherited() {
        // The test harness is not socket-activated.
        assert!(std::env::var_os("LISTEN_FDS").is_none());
        assert!(Inherited::from_env().unwrap().is_empty());
    }
}
