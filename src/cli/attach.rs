//! How an application command finds its node, the way `nats` does: either `--address`
//! (`HOST:PORT` or a Unix socket path) with `--cluster` and the service key, and no topology
//! file or peer secret; or `--config FILE [--via NODE]`. Unset options fall back to
//! `NODECLOUD_ADDRESS`, `NODECLOUD_CLUSTER` and `NODECLOUD_KEY`.
//!
//! TLS: `--tls-ca FILE` (or `NODECLOUD_TLS_CA`) attaches inside TLS, verifying the node
//! against that CA and the host of the address; with `--config`, a file with `[cluster.tls]`
//! (and `service_tls` not false) does the same with its `ca`, unless `--tls-ca` names another.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::exit::CliError;
use crate::config::Config;
use crate::service::{Client, Endpoint};

/// The longest a command waits to connect and authenticate.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);
/// The frame limit assumed without a topology file (the default `max_frame_bytes`).
const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// Where and how to attach (the connection options every application command takes).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Attach {
    /// The node's service address: HOST:PORT, [IPv6]:PORT or a Unix socket path
    /// [env: NODECLOUD_ADDRESS].
    #[arg(long, short = 'a', value_name = "ADDR", conflicts_with_all = ["config", "via"])]
    pub address: Option<String>,
    /// The cluster's name, with --address [env: NODECLOUD_CLUSTER].
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Read the service key from this environment variable [default: NODECLOUD_KEY].
    #[arg(long, value_name = "VAR", conflicts_with = "key_file")]
    pub key_env: Option<String>,
    /// Read the service key from this file (a final newline is not part of it).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// A topology file: the node's service address and the service key come from it.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// With --config: the node to attach to (may be left out when only one node of the file
    /// accepts applications).
    #[arg(long, value_name = "NODE")]
    pub via: Option<String>,
    /// The name this application attaches under [default: cli-PID].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Attach inside TLS, trusting node certificates issued by this CA (PEM)
    /// [env: NODECLOUD_TLS_CA]; with --config, the file's `[cluster.tls]` says so itself.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

/// Everything needed to connect, resolved from options, files and the environment.
#[derive(Debug)]
pub struct Target {
    pub endpoint: Endpoint,
    /// The node as the user named it (for messages).
    pub node: String,
    pub cluster: String,
    pub key: Vec<u8>,
    pub max_frame_bytes: usize,
    /// Attach inside TLS (a TCP endpoint only).
    pub tls: Option<crate::tls::ClientTls>,
}

impl Attach {
    /// Resolve the options against `env` (a lookup of environment variables).
    ///
    /// # Errors
    /// [`CliError::Usage`] naming what is missing or wrong.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Target, CliError> {
        if let Some(path) = &self.config {
            return self.read_config(path, env);
        }
        let Some(address) = self.address.clone().or_else(|| env("NODECLOUD_ADDRESS")) else {
            return Err(CliError::Usage(
                "say which node to attach to: --address HOST:PORT (or NODECLOUD_ADDRESS), \
                 or --config FILE [--via NODE]"
                    .into(),
            ));
        };
        let endpoint =
            Endpoint::parse(&address).map_err(|e| CliError::Usage(format!("--address: {e}")))?;
        let cluster = self
            .cluster
            .clone()
            .or_else(|| env("NODECLOUD_CLUSTER"))
            .ok_or_else(|| {
                CliError::Usage(
                    "--address needs the cluster's name: --cluster NAME (or NODECLOUD_CLUSTER)"
                        .into(),
                )
            })?;
        let key = self.key(env)?.ok_or_else(|| {
            CliError::Usage(
                "--address needs the service key: --key-file FILE, --key-env VAR, or \
                 NODECLOUD_KEY"
                    .into(),
            )
        })?;
        let tls = self.tls(None, &endpoint, env)?;
        Ok(Target {
            node: address,
            endpoint,
            cluster,
            key,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            tls,
        })
    }

    fn read_config(
        &self,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Target, CliError> {
        if self.cluster.is_some() {
            return Err(CliError::Usage(
                "--cluster goes with --address; with --config the file names the cluster".into(),
            ));
        }
        let cfg = Config::load_for_application(path)?;
        let serving =
            |n: &&crate::config::NodeConfig| n.service.is_some() || n.service_socket.is_some();
        let node = match &self.via {
            Some(name) => cfg.node(name).ok_or_else(|| {
                let known: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
                CliError::Usage(format!(
                    "{}: no node named {name:?}; expected one of: {}",
                    path.display(),
                    known.join(", ")
                ))
            })?,
            None => {
                let mut candidates = cfg.nodes.iter().filter(serving);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => only,
                    (None, _) => {
                        return Err(CliError::Usage(format!(
                            "{}: no node accepts applications (none has `service` or \
                             `service_socket`)",
                            path.display()
                        )))
                    }
                    (Some(_), Some(_)) => {
                        let names: Vec<&str> = cfg
                            .nodes
                            .iter()
                            .filter(serving)
                            .map(|n| n.name.as_str())
                            .collect();
                        return Err(CliError::Usage(format!(
                            "{}: several nodes accept applications; choose one with --via: {}",
                            path.display(),
                            names.join(", ")
                        )));
                    }
                }
            }
        };
        let endpoint = match (&node.service, &node.service_socket) {
            (Some(a), _) => Endpoint::Tcp(*a),
            (None, Some(p)) => Endpoint::Unix(p.clone()),
            (None, None) => {
                return Err(CliError::Usage(format!(
                    "{}: node {} does not accept applications: give it `service = \
                     \"HOST:PORT\"` or `service_socket = \"PATH\"`",
                    path.display(),
                    node.name
                )))
            }
        };
        let key = match self.key(env)? {
            Some(k) => k,
            None => cfg
                .cluster
                .service_key
                .as_ref()
                .unwrap_or(&cfg.cluster.secret)
                .as_bytes()
                .to_vec(),
        };
        let tls = self.tls(cfg.cluster.tls.as_ref(), &endpoint, env)?;
        Ok(Target {
            endpoint,
            node: node.name.clone(),
            cluster: cfg.cluster.name.clone(),
            key,
            max_frame_bytes: cfg.cluster.max_frame_bytes,
            tls,
        })
    }

    /// The CA to attach with: --tls-ca, else NODECLOUD_TLS_CA, else the file's `[cluster.tls]`
    /// when its service listener speaks TLS. A Unix socket never speaks TLS.
    fn tls(
        &self,
        file: Option<&crate::config::TlsConfig>,
        endpoint: &Endpoint,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<crate::tls::ClientTls>, CliError> {
        let given = self
            .tls_ca
            .clone()
            .or_else(|| env("NODECLOUD_TLS_CA").map(PathBuf::from));
        let from_file = file.filter(|t| t.service_tls).map(|t| t.ca.clone());
        let Some(ca) = given.clone().or(from_file) else {
            return Ok(None);
        };
        if let Endpoint::Unix(_) = endpoint {
            // A file's TLS is for its TCP listeners; only an explicit CA here is a mistake.
            return match given {
                Some(_) => Err(CliError::Usage(format!(
                    "--tls-ca: {endpoint} is a Unix socket, which never speaks TLS"
                ))),
                None => Ok(None),
            };
        }
        crate::tls::ClientTls::from_ca_file(&ca)
            .map(Some)
            .map_err(|e| CliError::Usage(format!("--tls-ca: {e}")))
    }

    /// The key from --key-file, --key-env or NODECLOUD_KEY; `None` if none is given.
    fn key(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Vec<u8>>, CliError> {
        if let Some(path) = &self.key_file {
            return read_key_file(path).map(Some);
        }
        if let Some(var) = &self.key_env {
            return env(var).map(|k| Some(k.into_bytes())).ok_or_else(|| {
                CliError::Usage(format!("--key-env: environment variable {var} is not set"))
            });
        }
        Ok(env("NODECLOUD_KEY").map(String::into_bytes))
    }
}

/// Reads a key file: a regular file of at most 64 KiB, without its final newline.
fn read_key_file(path: &Path) -> Result<Vec<u8>, CliError> {
    let bytes = crate::config::read_secret_file(path)
        .map_err(|why| CliError::Usage(format!("--key-file: {why}")))?;
    if bytes.is_empty() {
        return Err(CliError::Usage(format!(
            "--key-file: {} is empty",
            path.display()
        )));
    }
    Ok(bytes)
}

impl Target {
    /// Connect and authenticate, within [`ATTACH_TIMEOUT`].
    ///
    /// # Errors
    /// [`CliError`]: `Down` when the node does not answer, `Usage` for a wrong key or port.
    pub async fn connect(&self, app_name: &str) -> Result<Client, CliError> {
        let attach = Client::connect_tls(
            &self.endpoint,
            self.tls.as_ref(),
            &self.cluster,
            &self.key,
            app_name,
            self.max_frame_bytes,
        );
        match tokio::time::timeout(ATTACH_TIMEOUT, attach).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(CliError::from_client(e, &self.node)),
            Err(_) => Err(CliError::Down(format!(
                "node {} at {} did not answer within {ATTACH_TIMEOUT:?}",
                self.node, self.endpoint
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_environment_supplies_address_cluster_and_key() {
        let env = env_of(&[
            ("NODECLOUD_ADDRESS", "127.0.0.1:7200"),
            ("NODECLOUD_CLUSTER", "demo"),
            ("NODECLOUD_KEY", "a-key-of-sixteen-bytes"),
        ]);
        let t = Attach::default().resolve(&env).unwrap();
        assert_eq!(t.endpoint, Endpoint::Tcp("127.0.0.1:7200".parse().unwrap()));
        assert_eq!(t.cluster, "demo");
        assert_eq!(t.key, b"a-key-of-sixteen-bytes");
    }

    #[test]
    fn options_win_over_the_environment() {
        let env = env_of(&[
            ("NODECLOUD_ADDRESS", "127.0.0.1:7200"),
            ("NODECLOUD_CLUSTER", "demo"),
            ("NODECLOUD_KEY", "from-the-environment"),
            ("MY_KEY", "from-my-variable"),
        ]);
        let a = Attach {
            address: Some("/run/nc.sock".into()),
            cluster: Some("other".into()),
            key_env: Some("MY_KEY".into()),
            ..Attach::default()
        };
        let t = a.resolve(&env).unwrap();
        assert_eq!(t.endpoint, Endpoint::Unix("/run/nc.sock".into()));
        assert_eq!(t.cluster, "other");
        assert_eq!(t.key, b"from-my-variable");
    }

    #[test]
    fn an_address_without_cluster_or_key_says_what_is_missing() {
        let a = Attach {
            address: Some("localhost:7200".into()),
            ..Attach::default()
        };
        let e = a.resolve(&env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("--cluster"), "{e}");
        assert_eq!(e.exit_status(), 2);
        let a = Attach {
            cluster: Some("demo".into()),
            ..a
        };
        let e = a.resolve(&env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("--key-file"), "{e}");
        let e = Attach::default().resolve(&env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("--address"), "{e}");
    }

    #[test]
    fn a_missing_key_variable_is_named() {
        let a = Attach {
            address: Some("127.0.0.1:1".into()),
            cluster: Some("demo".into()),
            key_env: Some("NOT_SET_ANYWHERE".into()),
            ..Attach::default()
        };
        let e = a.resolve(&env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("NOT_SET_ANYWHERE"), "{e}");
    }

    #[test]
    fn a_key_file_loses_its_final_newline_and_must_be_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "secret-of-sixteen-bytes\n").unwrap();
        assert_eq!(read_key_file(&p).unwrap(), b"secret-of-sixteen-bytes");
        assert!(read_key_file(dir.path()).is_err());
        std::fs::write(&p, vec![b'k'; 70_000]).unwrap();
        let e = read_key_file(&p).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn addresses_parse_as_tcp_host_names_or_unix_paths() {
        assert_eq!(
            Endpoint::parse("[::1]:7200").unwrap(),
            Endpoint::Tcp("[::1]:7200".parse().unwrap())
        );
        assert_eq!(
            Endpoint::parse("node-1.example:7200").unwrap(),
            Endpoint::Host("node-1.example:7200".into())
        );
        assert_eq!(
            Endpoint::parse("unix:nc.sock").unwrap(),
            Endpoint::Unix("nc.sock".into())
        );
        assert!(Endpoint::parse("no-port").is_err());
        assert!(Endpoint::parse("host:notaport").is_err());
    }
}
