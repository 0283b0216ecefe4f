//! TLS for the emulator: a throw-away CA and a certificate for 127.0.0.1/localhost, made at start,
//! so the connector's real HTTPS path (and `http.ca_bundle`) is what the tests exercise.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The CA (PEM, for the client to trust) and a server configuration signed by it.
pub(crate) fn make()
-> Result<(String, Arc<rustls::ServerConfig>), Box<dyn std::error::Error + Send + Sync>> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "m365-emulator test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf_key = KeyPair::generate()?;
    let leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )?;
    Ok((ca.pem(), Arc::new(config)))
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An axum listener that speaks TLS. Handshakes run side by side, as a real front end's do (one
/// at a time, a burst of new connections would wait on each other's handshakes and look like a
/// slow server). Handshakes that fail are dropped; connections accepted are counted.
pub(crate) struct TlsListener {
    pub(crate) tcp: TcpListener,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
    pub(crate) connections: Arc<AtomicUsize>,
}

impl TlsListener {
    pub(crate) fn new(
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        connections: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            tcp,
            acceptor,
            handshakes: JoinSet::new(),
            connections,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => {
                    let Ok((stream, addr)) = accepted else {
                        // Out of descriptors, say: don't spin while it lasts (as axum's own
                        // listener does).
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    self.connections.fetch_add(1, Ordering::Relaxed);
                    let acceptor = self.acceptor.clone();
                    self.handshakes.spawn(async move {
                        // A client that never says hello doesn't hold a task for ever.
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                            .ok()?
                            .ok()
                            .map(|tls| (tls, addr))
                    });
                }
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
