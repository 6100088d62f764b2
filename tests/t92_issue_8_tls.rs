//! TLS (`[cluster.tls]`): a star whose links run inside TLS exchanges events and a call; an
//! application attaches over TLS (library and CLI); a plaintext peer is refused at a TLS
//! listener with a log line; a peer whose certificate another CA issued is refused both ways;
//! a TLS dialler to a plaintext node gets a clear error; `nodecloud check` names a bad key or
//! certificate and exits 2. Certificates are made here at run time (rcgen); none is committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common {
    pub mod procs;
    pub mod python;
}

use std::io::Read;
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use common::procs::Proc;
use nodecloud::config::{Config, Host, HostPort};
use nodecloud::service::{Client, Endpoint, Incoming};
use nodecloud::testing::{self, Ports};
use nodecloud::tls::{ClientTls, NodeTls, TlsStreamError};
use nodecloud::{Delivery, Event, Invocation, Node, NodeHandle, Request};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "tls-test-secret-0123456789";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Note {
    text: String,
}
impl Event for Note {
    const TOPIC: &'static str = "notes.new";
}

#[derive(Serialize, Deserialize, Debug)]
struct Echo {
    text: String,
}
impl Request for Echo {
    const METHOD: &'static str = "tls.echo";
    type Response = String;
}

struct Sink {
    tx: mpsc::UnboundedSender<Note>,
}
impl Actor for Sink {
    type Context = Context<Self>;
}
impl Handler<Delivery<Note>> for Sink {
    type Result = ();
    fn handle(&mut self, d: Delivery<Note>, _: &mut Context<Self>) {
        let _ = self.tx.send(d.event);
    }
}
impl Handler<Invocation<Echo>> for Sink {
    type Result = Result<String, String>;
    fn handle(&mut self, c: Invocation<Echo>, _: &mut Context<Self>) -> Self::Result {
        Ok(format!("echo: {}", c.request.text))
    }
}

/// A CA made for one test, writing its certificate and the certificates it issues as PEM.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { cert, key, pem }
    }

    /// A certificate for node `name`: the name, `localhost` and 127.0.0.1 as SANs.
    fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec![name.to_owned(), "localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// A star of `master` (with a service listener) and two workers, on held ports, with
/// `[cluster.tls]` (each node its own certificate) unless `tls` is false.
struct Files {
    dir: tempfile::TempDir,
    ca: Ca,
    ports: Ports,
    text: String,
}

impl Files {
    fn new(tls: bool, service_tls: bool) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "cluster");
        let mut ports = Ports::new();
        let mut text = format!(
            "[cluster]\nname = \"tls\"\ntopology = \"star\"\nsecret = \"{SECRET}\"\n\
             heartbeat_interval_ms = 100\nfailure_threshold = 5\n"
        );
        if tls {
            text +=
                &format!("\n[cluster.tls]\nca = \"cluster-ca.pem\"\nservice_tls = {service_tls}\n");
        }
        for (i, name) in ["master", "worker-1", "worker-2"].iter().enumerate() {
            ca.issue(dir.path(), name);
            text += &format!(
                "\n[[nodes]]\nname = \"{name}\"\nlisten = \"{}\"\n",
                ports.reserve()
            );
            if i == 0 {
                text += &format!("role = \"master\"\nservice = \"{}\"\n", ports.reserve());
            }
            if tls {
                text += &format!("tls_cert = \"{name}.pem\"\ntls_key = \"{name}.key\"\n");
            }
        }
        Files {
            dir,
            ca,
            ports,
            text,
        }
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn config(&self) -> Arc<Config> {
        Arc::new(Config::parse(&self.text, "tls.toml", self.dir.path()).unwrap())
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    async fn start(&self, config: &Arc<Config>, names: &[&str]) -> Vec<NodeHandle> {
        let mut nodes = Vec::new();
        for name in names {
            let bound = self.ports.bound(config.node(name).unwrap());
            nodes.push(
                Node::start_bound(config.clone(), name, bound)
                    .await
                    .unwrap(),
            );
        }
        nodes
    }
}

#[actix_rt::test]
async fn a_tls_star_exchanges_events_and_a_call_and_serves_an_application_over_tls() {
    let files = Files::new(true, true);
    let config = files.config();
    let nodes = files
        .start(&config, &["master", "worker-1", "worker-2"])
        .await;
    let (tx, mut notes) = mpsc::unbounded_channel();
    let sink = Sink { tx }.start();
    nodes[2].subscribe::<Note>(sink.clone().recipient());
    nodes[2].implement::<Echo>(sink.recipient());
    testing::wait_converged(&nodes, WAIT).await.unwrap();
    testing::wait_implemented(&nodes[1], Echo::METHOD, &["worker-2"], WAIT)
        .await
        .unwrap();

    // worker-1 → master → worker-2: both links inside TLS.
    nodes[1]
        .publish(&Note {
            text: "over tls".into(),
        })
        .unwrap();
    let note = tokio::time::timeout(WAIT, notes.recv()).await.unwrap();
    assert_eq!(note.unwrap().text, "over tls");
    let answer = nodes[1]
        .call("worker-2", &Echo { text: "hi".into() })
        .await
        .unwrap();
    assert_eq!(answer, "echo: hi");

    // An application over TLS, verifying the node against the CA and 127.0.0.1.
    let service = nodes[0].service_addr().unwrap();
    let tls = ClientTls::from_ca_file(&files.ca.pem).unwrap();
    let app = Client::connect_tls(
        &Endpoint::Tcp(service),
        Some(&tls),
        "tls",
        SECRET.as_bytes(),
        "tls-app",
        1 << 20,
    )
    .await
    .unwrap();
    let answer = app
        .call("worker-2", &Echo { text: "app".into() }, Some(WAIT))
        .await
        .unwrap();
    assert_eq!(answer, "echo: app");

    // `connect_via` reads the CA from the configuration.
    let mut via = Client::connect_via(&config, "master", "via-app")
        .await
        .unwrap();
    via.subscribe("notes.new").await.unwrap();
    via.sync().await.unwrap();
    nodes[1]
        .publish(&Note {
            text: "to the app".into(),
        })
        .unwrap();
    let incoming = tokio::time::timeout(WAIT, via.next()).await.unwrap();
    assert!(
        matches!(incoming, Some(Incoming::Event { ref from, .. }) if from == "worker-1"),
        "{incoming:?}"
    );

    // A plaintext application at the TLS service port gets nowhere.
    let endpoint = Endpoint::Tcp(service);
    let plain = Client::connect(&endpoint, "tls", SECRET.as_bytes(), "plain");
    let refused = tokio::time::timeout(WAIT, plain).await.unwrap();
    let Err(e) = refused else {
        panic!("a plaintext application attached to a TLS service listener")
    };
    assert!(e.to_string().contains("tls_required"), "{e}");
    nodecloud::cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn service_tls_false_keeps_the_service_listener_plaintext() {
    let files = Files::new(true, false);
    let config = files.config();
    let nodes = files.start(&config, &["master"]).await;
    let service = nodes[0].service_addr().unwrap();
    let app = Client::connect(&Endpoint::Tcp(service), "tls", SECRET.as_bytes(), "plain")
        .await
        .unwrap();
    let view = app.cluster().await.unwrap();
    assert!(view.members.iter().any(|n| n.name == "master"), "{view:?}");
    // connect_via follows the file: plaintext too.
    Client::connect_via(&config, "master", "via").await.unwrap();
    nodecloud::cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_peer_with_a_certificate_of_another_ca_is_refused_both_ways() {
    let files = Files::new(true, true);
    let config = files.config();
    let nodes = files.start(&config, &["master"]).await;
    let listen = config.node("master").unwrap().listen;

    // A node of another CA: its dial fails verifying the master's certificate.
    let other = Ca::new(files.dir.path(), "other");
    let (cert, key) = other.issue(files.dir.path(), "intruder");
    let text = files
        .text
        .replace("cluster-ca.pem", "other-ca.pem")
        .replace("worker-1.pem", "intruder.pem")
        .replace("worker-1.key", "intruder.key");
    let intruder = Config::parse(&text, "other.toml", files.dir.path()).unwrap();
    let tls = NodeTls::load(&intruder, intruder.node("worker-1").unwrap())
        .unwrap()
        .unwrap();
    let stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let host = Host::Ip(listen.ip());
    let Err(e) = tls.connect(&host, stream, WAIT).await else {
        panic!("a node of another CA got through")
    };
    assert!(matches!(e, TlsStreamError::Certificate(_)), "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // A client that trusts the master but presents the other CA's certificate: the master
    // refuses it (TLS 1.3 tells the client on its first read).
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        for c in nodecloud::tls::read_certs("CA", &files.ca.pem).unwrap() {
            r.add(c).unwrap();
        }
        r
    };
    let chain = nodecloud::tls::read_certs("certificate", &cert).unwrap();
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(listen.ip().into());
    let outcome = tokio::time::timeout(WAIT, async {
        let mut tls = connector.connect(name, stream).await?;
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read(&mut tls, &mut byte).await
    })
    .await
    .unwrap();
    match outcome {
        Err(e) => assert!(
            e.to_string().contains("UnknownCA") || e.to_string().contains("alert"),
            "{e}"
        ),
        Ok(n) => assert_eq!(n, 0, "the master spoke to a client of another CA"),
    }
    nodecloud::cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_tls_dialler_to_a_plaintext_node_gets_a_clear_error() {
    let files = Files::new(false, false);
    let config = files.config();
    let nodes = files.start(&config, &["master"]).await;
    let listen = config.node("master").unwrap().listen;
    // The same cluster with TLS, as a misconfigured worker would have it.
    let text = files.text.replace(
        "failure_threshold = 5\n",
        "failure_threshold = 5\n\n[cluster.tls]\nca = \"cluster-ca.pem\"\ncert = \"worker-1.pem\"\nkey = \"worker-1.key\"\n",
    );
    let tls_config = Config::parse(&text, "tls.toml", files.dir.path()).unwrap();
    let tls = NodeTls::load(&tls_config, tls_config.node("worker-1").unwrap())
        .unwrap()
        .unwrap();
    let stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let Err(e) = tls.connect(&Host::Ip(listen.ip()), stream, WAIT).await else {
        panic!("TLS with a plaintext node succeeded")
    };
    assert!(
        e.to_string()
            .contains("is the other side configured for TLS"),
        "{e}"
    );
    nodecloud::cluster::stop(&nodes).await;
}

/// `nodecloud ARGS…`, run off the actor thread.
async fn nodecloud(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_nodecloud"))
            .args(&args)
            .env_remove("RUST_LOG")
            .env_remove("NODECLOUD_TLS_CA")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[actix_rt::test]
async fn the_cli_attaches_over_tls_from_the_file_or_with_tls_ca() {
    let files = Files::new(true, true);
    let config = files.config();
    let file = files.write("tls.toml", &files.text);
    let nodes = files
        .start(&config, &["master", "worker-1", "worker-2"])
        .await;
    // `status` reports a down node as a failure: let the star form first.
    testing::wait_converged(&nodes, WAIT).await.unwrap();
    let service = nodes[0].service_addr().unwrap().to_string();
    let file = file.to_str().unwrap().to_owned();

    let o = nodecloud(vec!["status".into(), "--config".into(), file.clone()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("master"));

    let ca = files.ca.pem.to_str().unwrap().to_owned();
    let by_address = |tls: bool| {
        let mut args: Vec<String> = ["status", "--address", &service, "--cluster", "tls"]
            .map(String::from)
            .to_vec();
        args.extend(["--key-file".into(), files.path("key").display().to_string()]);
        if tls {
            args.extend(["--tls-ca".into(), ca.clone()]);
        }
        args
    };
    files.write("key", SECRET);
    let o = nodecloud(by_address(true)).await;
    assert!(o.status.success(), "{}", stderr(&o));
    // Without --tls-ca the node answers the plaintext attempt with `tls_required`.
    let o = nodecloud(by_address(false)).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("tls_required"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--tls-ca"), "{}", stderr(&o));
    nodecloud::cluster::stop(&nodes).await;
}

#[test]
fn a_plaintext_peer_at_a_tls_listener_is_refused_with_a_log_line() {
    let files = Files::new(true, true);
    let tls_file = files.write("tls.toml", &files.text);
    // worker-1 as a node without TLS would run it: the same cluster, no [cluster.tls].
    let plain_text = files
        .text
        .split("\n[cluster.tls]")
        .next()
        .unwrap()
        .to_owned()
        + &files.text[files.text.find("\n[[nodes]]").unwrap()..]
            .lines()
            .filter(|l| !l.starts_with("tls_"))
            .map(|l| format!("{l}\n"))
            .collect::<String>();
    let plain_file = files.write("plain.toml", &plain_text);
    let mut master = Proc::start(&tls_file, "master", &files.ports);
    let mut worker = Proc::start(&plain_file, "worker-1", &files.ports);
    master.expect_line(&["plaintext connection to a TLS listener refused"], WAIT);
    // The plaintext node learns why: the refusal is the one plaintext frame it gets.
    worker.expect_line(&["tls_required"], WAIT);

    // A raw plaintext frame gets the `tls_required` error frame, then the connection ends.
    let listen = files.config().node("master").unwrap().listen;
    let mut raw = StdTcpStream::connect(listen).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(&mut raw, &[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    let mut answer = Vec::new();
    raw.take(4096).read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("tls_required"), "{text:?}");
    master.expect_line(&["plaintext connection to a TLS listener refused"], WAIT);
}

#[test]
fn check_names_a_key_that_does_not_match_and_a_certificate_of_another_ca() {
    let files = Files::new(true, true);
    let check = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_nodecloud"))
            .args(["check", "--config"])
            .arg(file)
            .output()
            .unwrap()
    };
    let good = files.write("good.toml", &files.text);
    let o = check(&good);
    assert!(o.status.success(), "{}", stderr(&o));

    // worker-1 with master's key.
    let swapped = files.write(
        "swapped.toml",
        &files.text.replace("worker-1.key", "master.key"),
    );
    let o = check(&swapped);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not match the certificate"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("worker-1.pem"), "{}", stderr(&o));

    // worker-2 with a certificate of another CA.
    let other = Ca::new(files.dir.path(), "other");
    other.issue(files.dir.path(), "stranger");
    let foreign = files.write(
        "foreign.toml",
        &files
            .text
            .replace("worker-2.pem", "stranger.pem")
            .replace("worker-2.key", "stranger.key"),
    );
    let o = check(&foreign);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not accepted by the CA"),
        "{}",
        stderr(&o)
    );

    // A key file that is not PEM, and a missing CA.
    files.write("garbage.key", "not a key");
    let garbage = files.write(
        "garbage.toml",
        &files.text.replace("master.key", "garbage.key"),
    );
    let o = check(&garbage);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no usable private key"),
        "{}",
        stderr(&o)
    );
    let missing = files.write(
        "missing.toml",
        &files.text.replace("cluster-ca.pem", "nowhere.pem"),
    );
    let o = check(&missing);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nowhere.pem: cannot read"),
        "{}",
        stderr(&o)
    );
}

/// The Python client attaches over TLS with `tls_ca` and calls a method; without TLS it is
/// refused with `tls_required`.
#[actix_rt::test]
async fn the_python_client_attaches_over_tls_with_tls_ca() {
    let files = Files::new(true, true);
    let config = files.config();
    let nodes = files.start(&config, &["master", "worker-1"]).await;
    let (tx, _notes) = mpsc::unbounded_channel();
    nodes[1].implement::<Echo>(Sink { tx }.start().recipient());
    testing::wait_implemented(&nodes[0], Echo::METHOD, &["worker-1"], WAIT)
        .await
        .unwrap();
    let service = nodes[0].service_addr().unwrap().to_string();
    let script = r#"
import sys, nodecloud
address, ca, secret = sys.argv[1], sys.argv[2], sys.argv[3]
with nodecloud.Client.connect(address, "tls", secret, "py-tls", tls_ca=ca) as app:
    print(app.call("tls.echo", {"text": "py"}, target="worker-1"))
try:
    nodecloud.Client.connect(address, "tls", secret, "py-plain")
    print("plaintext attached")
except nodecloud.HandshakeError as e:
    print("refused:", e.code)
"#;
    let ca = files.ca.pem.display().to_string();
    let mut python = tokio::task::spawn_blocking(common::python::command)
        .await
        .unwrap();
    python.args(["-c", script, &service, &ca, SECRET]);
    let out = tokio::task::spawn_blocking(move || python.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    assert!(stdout.contains("echo: py"), "{stdout}");
    assert!(stdout.contains("refused: tls_required"), "{stdout}");
    nodecloud::cluster::stop(&nodes).await;
}

/// The dialler verifies the acceptor's certificate against the host it dialled: `advertise`
/// = `localhost` is accepted (a DNS SAN of the certificate), a name the certificate does not
/// carry is refused.
#[actix_rt::test]
async fn the_dialler_verifies_the_certificate_against_the_advertised_host() {
    let files = Files::new(true, true);
    let mut config = (*files.config()).clone();
    let master = config
        .nodes
        .iter_mut()
        .find(|n| n.name == "master")
        .unwrap();
    let listen = master.listen;
    master.advertise = Some(HostPort::parse(&format!("localhost:{}", listen.port())).unwrap());
    let config = Arc::new(config);
    let nodes = files.start(&config, &["master", "worker-1"]).await;
    testing::wait_converged(&nodes, WAIT).await.unwrap();

    let tls = NodeTls::load(&config, config.node("worker-2").unwrap())
        .unwrap()
        .unwrap();
    let stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let elsewhere = Host::Name("not-in-the-certificate.example".into());
    let Err(e) = tls.connect(&elsewhere, stream, WAIT).await else {
        panic!("a certificate was accepted for a name it does not carry")
    };
    assert!(matches!(e, TlsStreamError::Certificate(_)), "{e}");
    assert!(e.to_string().contains("not valid for name"), "{e}");
    nodecloud::cluster::stop(&nodes).await;
}
