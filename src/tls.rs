//! TLS on peer links and on the service listener: the files of `[cluster.tls]` read and
//! checked, the rustls configurations built from them, and the one place where an accepted
//! or dialled TCP stream is wrapped into TLS. Nothing here is an actor: PeerListener,
//! ServiceListener and Upstream call in, and the node holds its [`NodeTls`] in `NodeShared`.
//!
//! Policy, stated once:
//! - TLS 1.3 only (both ends are nodecloud, or clients built on current TLS stacks), with the
//!   ring provider.
//! - Peers authenticate each other against `ca`: the acceptor requires a client certificate
//!   that chains to it, the dialler verifies the server's certificate against it **and the
//!   host it dialled** (the `advertise` host, else the `listen` IP), so a node's certificate
//!   carries that name or IP as a subject alternative name. The node *name* is authenticated
//!   by the HMAC handshake, which runs unchanged inside TLS.
//! - Applications are not asked for a certificate: they authenticate with the service key,
//!   inside TLS, as over plaintext. They verify the node against `ca` and the host dialled.
//! - A listener with TLS looks at the first bytes before the TLS handshake: anything but a
//!   TLS handshake record (0x16 0x03) is a plaintext peer, refused with a log line saying so
//!   and answered, in plaintext, with one `error` frame of code `tls_required` (after its
//!   hello is read, so the close does not reset the answer away), so the other side can say
//!   what is wrong too.
//! - The TLS handshake has the cluster's handshake deadline of its own, before the HMAC
//!   handshake's.
//!
//! Files are read bounded ([`MAX_PEM_BYTES`], regular files only) so a FIFO or a device
//! named by mistake cannot block or exhaust a node or `nodecloud check`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{Config, Host, NodeConfig};
use crate::link::Transport;

/// The largest PEM file read (a certificate chain is a few KiB).
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// What is wrong with a TLS file or setting. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS {what} {}: {problem}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("TLS key {} does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS certificate {} is not accepted by the CA {}: {reason}", cert.display(), ca.display())]
    NotTrusted {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error("node {0:?} has no TLS certificate and key (set `cert`/`key` in [cluster.tls] or `tls_cert`/`tls_key` in the node)")]
    NoCertificate(String),
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Why a connection did not become a TLS stream.
#[derive(Debug, thiserror::Error)]
pub enum TlsStreamError {
    /// The first bytes at a TLS listener were not a TLS handshake record.
    #[error("plaintext connection to a TLS listener refused (the peer is not configured for TLS)")]
    Plaintext,
    #[error("closed before the TLS handshake")]
    Closed,
    #[error("TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
    /// Includes a dialler reaching a plaintext listener: that node closes the connection on
    /// the ClientHello it cannot read.
    #[error("TLS handshake failed: {0} (is the other side configured for TLS with the same CA?)")]
    Handshake(std::io::Error),
    /// This side refused the other's certificate (another CA, expired, or not valid for the
    /// host dialled), or the other side refused this one's.
    #[error("TLS handshake failed: {0}")]
    Certificate(rustls::Error),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// A node's TLS: how it accepts peers and applications, and how it dials peers.
pub struct NodeTls {
    /// Requires a client certificate that chains to the CA.
    peer_acceptor: TlsAcceptor,
    /// Asks applications for no certificate; `None` when `service_tls = false`.
    service_acceptor: Option<TlsAcceptor>,
    connector: TlsConnector,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("service_tls", &self.service_acceptor.is_some())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn setup(e: impl std::fmt::Display) -> TlsError {
    TlsError::Setup(e.to_string())
}

/// Reads a regular file of at most [`MAX_PEM_BYTES`].
fn read_bounded(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let file_err = |problem: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        problem,
    };
    // Checked before opening: opening a FIFO blocks until someone writes to it.
    let meta = std::fs::metadata(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(file_err("is not a regular file".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_err(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(file_err(format!("is larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

/// The certificates of a PEM file (at least one); `what` names the file's role in messages.
///
/// # Errors
/// [`TlsError::File`]: unreadable, not a regular file, too large, not PEM, or no certificate.
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_bounded(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            what,
            path: path.to_path_buf(),
            problem: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            what,
            path: path.to_path_buf(),
            problem: "holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_bounded("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::File {
        what: "key",
        path: path.to_path_buf(),
        problem: format!(
            "holds no usable private key (expected a PEM PKCS#8, PKCS#1 or SEC1 key): {e}"
        ),
    })
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA", ca)? {
        roots.add(cert).map_err(|e| TlsError::File {
            what: "CA",
            path: ca.to_path_buf(),
            problem: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// The certificate chain and key of `node`: its own `tls_cert`/`tls_key`, else the cluster's.
pub fn node_files(config: &Config, node: &NodeConfig) -> Option<(PathBuf, PathBuf)> {
    let tls = config.cluster.tls.as_ref()?;
    let cert = node.tls_cert.clone().or_else(|| tls.cert.clone())?;
    let key = node.tls_key.clone().or_else(|| tls.key.clone())?;
    Some((cert, key))
}

impl NodeTls {
    /// The TLS of node `node`, or `None` without `[cluster.tls]`. Reads and checks every
    /// file: readable, PEM, the key matches the certificate, the certificate chains to the CA.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and what is wrong with it.
    pub fn load(config: &Config, node: &NodeConfig) -> Result<Option<Arc<NodeTls>>, TlsError> {
        let Some(tls) = &config.cluster.tls else {
            return Ok(None);
        };
        let (cert_path, key_path) =
            node_files(config, node).ok_or_else(|| TlsError::NoCertificate(node.name.clone()))?;
        let roots = roots(&tls.ca)?;
        let chain = read_certs("certificate", &cert_path)?;
        let key = read_key(&key_path)?;
        let provider = provider();
        let certified = rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                    cert: cert_path.clone(),
                    key: key_path.clone(),
                },
                e => TlsError::File {
                    what: "key",
                    path: key_path.clone(),
                    problem: e.to_string(),
                },
            })?;
        let certified = Arc::new(certified);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(setup)?;
        // A node's certificate serves both ways (it dials and accepts): it must pass as a
        // client certificate under the CA, which is what peers will check.
        let (end_entity, intermediates) = chain.split_first().ok_or_else(|| TlsError::File {
            what: "certificate",
            path: cert_path.clone(),
            problem: "holds no certificate".into(),
        })?;
        client_verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map_err(|e| TlsError::NotTrusted {
                cert: cert_path.clone(),
                ca: tls.ca.clone(),
                reason: e.to_string(),
            })?;
        let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(certified.clone()));
        let peer_server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(setup)?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(resolver.clone());
        let service_acceptor = if tls.service_tls {
            let service = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(VERSIONS)
                .map_err(setup)?
                .with_no_client_auth()
                .with_cert_resolver(resolver);
            Some(TlsAcceptor::from(Arc::new(service)))
        } else {
            None
        };
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)
            .map_err(setup)?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(ClientCert(certified)));
        Ok(Some(Arc::new(NodeTls {
            peer_acceptor: TlsAcceptor::from(Arc::new(peer_server)),
            service_acceptor,
            connector: TlsConnector::from(Arc::new(client)),
        })))
    }

    /// Whether applications on the service TCP listener speak TLS.
    pub fn service_tls(&self) -> bool {
        self.service_acceptor.is_some()
    }

    /// Accept a peer's TLS connection (client certificate required).
    ///
    /// # Errors
    /// [`TlsStreamError`]; `Plaintext` for a peer that is not speaking TLS.
    pub async fn accept_peer(
        &self,
        stream: TcpStream,
        deadline: Duration,
    ) -> Result<Transport, TlsStreamError> {
        accept(&self.peer_acceptor, stream, deadline).await
    }

    /// Accept an application's TLS connection, or pass it through when `service_tls = false`.
    ///
    /// # Errors
    /// [`TlsStreamError`].
    pub async fn accept_service(
        &self,
        stream: TcpStream,
        deadline: Duration,
    ) -> Result<Transport, TlsStreamError> {
        match &self.service_acceptor {
            Some(acceptor) => accept(acceptor, stream, deadline).await,
            None => Ok(stream.into()),
        }
    }

    /// Dial-side TLS over a connected `stream`, verifying the peer against the CA and `host`
    /// (the host this node dialled).
    ///
    /// # Errors
    /// [`TlsStreamError`].
    pub async fn connect(
        &self,
        host: &Host,
        stream: TcpStream,
        deadline: Duration,
    ) -> Result<Transport, TlsStreamError> {
        connect(&self.connector, host, stream, deadline).await
    }
}

/// Presents the node's certificate to every server that asks for one.
#[derive(Debug)]
struct ClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Whether the first bytes a client sent look like a TLS handshake record (content type 22,
/// major version 3). A nodecloud plaintext frame starts with its length's high bytes (0x00).
fn looks_like_tls(first: &[u8]) -> bool {
    match first {
        [] => false,
        [0x16] => true,
        [0x16, 0x03, ..] => true,
        _ => false,
    }
}

async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    deadline: Duration,
) -> Result<Transport, TlsStreamError> {
    let handshake = async {
        let mut first = [0u8; 2];
        let n = stream
            .peek(&mut first)
            .await
            .map_err(TlsStreamError::Handshake)?;
        if n == 0 {
            return Err(TlsStreamError::Closed);
        }
        if !looks_like_tls(&first[..n]) {
            refuse_plaintext(stream).await;
            return Err(TlsStreamError::Plaintext);
        }
        let tls = acceptor.accept(stream).await.map_err(handshake_error)?;
        Ok(Transport::Tls(Box::new(tls.into())))
    };
    tokio::time::timeout(deadline, handshake)
        .await
        .map_err(|_| TlsStreamError::Timeout(deadline))?
}

/// The answer a plaintext peer or application gets: its hello read (bounded), one `error`
/// frame `tls_required`, the write side shut. Best effort, within the caller's deadline.
async fn refuse_plaintext(stream: TcpStream) {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::Framed;
    let codec = crate::wire::FrameCodec::new(crate::wire::MAX_HANDSHAKE_FRAME_BYTES);
    let mut framed = Framed::new(stream, codec);
    let _ = tokio::time::timeout(Duration::from_secs(1), framed.next()).await;
    let refusal = crate::wire::Message::Error(crate::wire::ErrorFrame {
        code: "tls_required".into(),
        message: "this node's listener speaks TLS ([cluster.tls]); connect with TLS".into(),
    });
    let _ = tokio::time::timeout(Duration::from_millis(200), framed.send(&refusal)).await;
    let _ = tokio::time::timeout(Duration::from_millis(200), framed.get_mut().shutdown()).await;
}

async fn connect(
    connector: &TlsConnector,
    host: &Host,
    stream: TcpStream,
    deadline: Duration,
) -> Result<Transport, TlsStreamError> {
    let name = server_name(host)?;
    let handshake = connector.connect(name, stream);
    let tls = tokio::time::timeout(deadline, handshake)
        .await
        .map_err(|_| TlsStreamError::Timeout(deadline))?
        .map_err(handshake_error)?;
    Ok(Transport::Tls(Box::new(tls.into())))
}

/// A certificate problem as such (its message is the whole story); anything else with the
/// hint that the other side may not speak TLS at all.
fn handshake_error(e: std::io::Error) -> TlsStreamError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(
            tls @ (rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA
                | rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::CertificateExpired
                | rustls::AlertDescription::CertificateUnknown,
            )),
        ) => TlsStreamError::Certificate(tls.clone()),
        _ => TlsStreamError::Handshake(e),
    }
}

fn server_name(host: &Host) -> Result<ServerName<'static>, TlsStreamError> {
    match host {
        Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
        Host::Name(name) => {
            ServerName::try_from(name.clone()).map_err(|_| TlsStreamError::ServerName(name.clone()))
        }
    }
}

/// How an application reaches a node over TLS: the CA that node certificates chain to. The
/// node is verified against it and the host dialled; no client certificate is presented
/// (the service key authenticates the application).
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Trust node certificates that chain to the CA(s) in the PEM file `ca`.
    ///
    /// # Errors
    /// [`TlsError`] naming the file.
    pub fn from_ca_file(ca: &Path) -> Result<ClientTls, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(setup)?
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth();
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// TLS over a connected `stream` to `host`.
    ///
    /// # Errors
    /// [`TlsStreamError`].
    pub async fn connect(
        &self,
        host: &Host,
        stream: TcpStream,
        deadline: Duration,
    ) -> Result<Transport, TlsStreamError> {
        connect(&self.connector, host, stream, deadline).await
    }
}

/// `nodecloud check`: every node's TLS files, as the node would load them at start.
///
/// # Errors
/// The first [`TlsError`] found, node by node.
pub fn check(config: &Config) -> Result<(), TlsError> {
    for node in &config.nodes {
        NodeTls::load(config, node)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_handshake_record_is_told_from_a_plaintext_frame() {
        assert!(looks_like_tls(&[0x16, 0x03]));
        assert!(looks_like_tls(&[0x16]));
        // A nodecloud frame: a 4-byte big-endian length, small enough to start with 0x00.
        assert!(!looks_like_tls(&[0x00, 0x00]));
        assert!(!looks_like_tls(b"GE"));
        assert!(!looks_like_tls(&[0x16, 0x00]));
        assert!(!looks_like_tls(&[]));
    }

    #[test]
    fn a_fifo_or_directory_is_refused_as_a_pem_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_certs("CA", dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = read_certs("CA", Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_file_without_certificates_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = read_certs("CA", &p).unwrap_err();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        assert!(e.to_string().contains("ca.pem"), "{e}");
    }

    #[test]
    fn server_names_are_the_dialled_host_ip_or_name() {
        let ip = server_name(&Host::Ip("127.0.0.1".parse().unwrap())).unwrap();
        assert!(matches!(ip, ServerName::IpAddress(_)));
        let name = server_name(&Host::Name("node-1.example".into())).unwrap();
        assert!(matches!(name, ServerName::DnsName(_)));
    }
}
