//! The Azure side, on 127.0.0.1: an Entra token endpoint (client credentials with a secret) and
//! the Logs Ingestion API. Strict where Azure is lenient, so tests catch what Azure would drop in
//! silence: a body that is not a JSON array, undeclared columns and wrong types are 400 here.

mod certificate;
mod data_collector;
mod ingestion;
mod management;
mod query;
mod tls;
mod token;
mod transport;

pub use certificate::make_client_certificate;
pub use management::{BlobSpec, MgmtFault, MgmtRequest, MgmtTenant, format_time, parse_time};
pub use transport::ToEmulator;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::routing::post;

/// The request limit of the Logs Ingestion API, compressed and uncompressed.
pub const MAX_BODY_BYTES: usize = 1_000_000;
/// Longer field values are cut by the service.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

/// What the emulated tenant, app and DCR look like.
#[derive(Debug, Clone)]
pub struct Config {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub dcr_immutable_id: String,
    /// Stream declarations: stream name → columns (name, DCR type).
    pub streams: HashMap<String, Vec<(String, String)>>,
    /// Further DCRs (immutable id → their stream declarations), as for Auxiliary tables, which
    /// take a DCR of their own: a stream is accepted only on the DCR that declares it.
    pub other_dcrs: HashMap<String, HashMap<String, Vec<(String, String)>>>,
    /// Lifetime of issued tokens.
    pub token_lifetime: Duration,
    /// Accept streams that are not declared, with any columns (the binary, for benchmarks).
    pub accept_undeclared_streams: bool,
    /// Keep accepted rows for [`Emulator::accepted`]; benchmarks turn it off to count only.
    pub keep_rows: bool,
    /// The workspace of the legacy Data Collector API, and its shared key (base64).
    pub workspace_id: String,
    pub shared_key: String,
    /// The app's certificate (PEM), for client assertions instead of the secret.
    pub client_certificate_pem: Option<String>,
}

/// Cuts a string to `limit` bytes at a character boundary, as the services do; true if it did.
pub(crate) fn cut_field(value: &mut serde_json::Value, limit: usize) -> bool {
    match value {
        serde_json::Value::String(s) if s.len() > limit => {
            let mut cut = limit;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            true
        }
        _ => false,
    }
}

/// The bearer token of a request, if it has one.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// A misbehaviour for the next ingestion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// No misbehaviour: lets a fault plan interleave normal answers.
    Pass,
    /// Drop the connection without an answer, before looking at the request.
    Reset,
    /// Accept the rows, then drop the connection without an answer: the client can't know they
    /// arrived, so it sends them again (duplicates, as after a real network failure).
    ResetAfterAccept,
    /// Answer with this status; `retry_after` sets the Retry-After header (seconds).
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Answer only after this long.
    Slow(Duration),
}

/// One ingestion request as the emulator saw it.
#[derive(Debug, Clone)]
pub struct RequestLog {
    pub stream: String,
    pub status: u16,
    pub compressed_bytes: usize,
    pub uncompressed_bytes: usize,
    pub rows: usize,
}

/// A token this emulator issued.
pub(crate) struct Issued {
    pub(crate) token: String,
    pub(crate) tenant: String,
    pub(crate) scope: String,
    pub(crate) expires: std::time::Instant,
}

#[derive(Default)]
struct State {
    issued_tokens: Vec<Issued>,
    mgmt: management::MgmtState,
    faults: VecDeque<Fault>,
    /// While set, every ingestion request is answered with this status (a workspace outage).
    outage: Option<u16>,
    /// Outages of single streams (one table's DCR flow failing), by stream.
    stream_outages: HashMap<String, u16>,
    /// Rows whose JSON text contains this are refused with a 400, as a poison row.
    poison: Option<String>,
    accepted: Vec<(String, serde_json::Value)>,
    accepted_count: usize,
    requests: Vec<RequestLog>,
    truncated_fields: usize,
    query_max_rows: usize,
    query_max_bytes: usize,
}

struct Shared {
    config: Config,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take the emulator down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running emulator; stops when dropped.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    /// With TLS: the CA that signed its certificate (PEM).
    ca_pem: Option<String>,
    /// TCP connections accepted (counted with TLS only).
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Emulator {
    /// Starts on 127.0.0.1 at a free port.
    pub async fn start(config: Config) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0", config).await
    }

    /// Starts on 127.0.0.1 at a free port, speaking HTTPS with a certificate from a fresh CA
    /// ([`Emulator::ca_pem`]).
    pub async fn start_tls(config: Config) -> std::io::Result<Self> {
        let (ca_pem, server) = tls::make().map_err(|e| std::io::Error::other(e.to_string()))?;
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = tcp.local_addr()?;
        let connections = Arc::default();
        let listener = tls::TlsListener::new(
            tcp,
            tokio_rustls::TlsAcceptor::from(server),
            Arc::clone(&connections),
        );
        let mut emulator = Self::serve(listener, addr, config, Some(ca_pem));
        emulator.connections = connections;
        Ok(emulator)
    }

    /// Serves the emulator's routes on `listener` (plain TCP or TLS) in a background task.
    fn serve<L>(listener: L, addr: SocketAddr, config: Config, ca_pem: Option<String>) -> Self
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let scheme = if ca_pem.is_some() { "https" } else { "http" };
        let mut state = State {
            query_max_rows: query::DEFAULT_MAX_ROWS,
            query_max_bytes: query::DEFAULT_MAX_BYTES,
            ..State::default()
        };
        state.mgmt.base_url = format!("{scheme}://{addr}");
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(state),
        });
        let app = Self::router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            shared,
            task,
            ca_pem,
            connections: Arc::default(),
        }
    }

    /// TCP connections the TLS emulator accepted so far: what the clients' pooling achieved.
    pub fn connections_accepted(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tokens issued so far to clients of `tenant`.
    pub fn tokens_issued(&self, tenant: &str) -> usize {
        self.shared
            .state()
            .issued_tokens
            .iter()
            .filter(|t| t.tenant == tenant)
            .count()
    }

    /// The CA to trust for a TLS emulator.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    fn router(shared: Arc<Shared>) -> Router {
        Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token::issue))
            .route(
                "/dataCollectionRules/{dcr}/streams/{stream}",
                post(ingestion::ingest),
            )
            .route("/api/logs", post(data_collector::collect))
            .route("/v1/workspaces/{workspace}/query", post(query::query))
            .route(
                "/api/v1.0/{tenant}/activity/feed/{*rest}",
                axum::routing::any(management::handle),
            )
            .with_state(shared)
    }

    pub async fn start_on(bind: &str, config: Config) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        Ok(Self::serve(listener, addr, config, None))
    }

    /// `http://127.0.0.1:<port>` (or https with TLS): the authority host and the endpoints.
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues misbehaviours for the next requests, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared.state().faults.extend(faults);
    }

    /// Answers every ingestion request with `status` until called with None: an outage.
    pub fn set_outage(&self, status: Option<u16>) {
        self.shared.state().outage = status;
    }

    /// Answers every request to `stream` with `status` until called with None (one table
    /// failing while the others are delivered).
    pub fn set_stream_outage(&self, stream: &str, status: Option<u16>) {
        let mut state = self.shared.state();
        match status {
            Some(s) => state.stream_outages.insert(stream.to_string(), s),
            None => state.stream_outages.remove(stream),
        };
    }

    /// Refuses (400) any request holding a row whose text contains `marker`; None lifts it.
    pub fn set_poison(&self, marker: Option<&str>) {
        self.shared.state().poison = marker.map(str::to_string);
    }

    /// How many rows were accepted (kept or not).
    pub fn accepted_count(&self) -> usize {
        self.shared.state().accepted_count
    }

    /// Every accepted row with its stream, in arrival order.
    pub fn accepted(&self) -> Vec<(String, serde_json::Value)> {
        self.shared.state().accepted.clone()
    }

    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.state().requests.clone()
    }

    /// The Query API's result limits (rows, bytes of JSON rows); the service's by default.
    pub fn set_query_limits(&self, rows: usize, bytes: usize) {
        let mut state = self.shared.state();
        state.query_max_rows = rows;
        state.query_max_bytes = bytes;
    }

    /// Deletes stored rows for which `doomed(stream, row)` holds (an intruder purging the
    /// workspace, for the integrity tests); how many went.
    pub fn delete_rows(&self, mut doomed: impl FnMut(&str, &serde_json::Value) -> bool) -> usize {
        let mut state = self.shared.state();
        let before = state.accepted.len();
        state.accepted.retain(|(stream, row)| !doomed(stream, row));
        before - state.accepted.len()
    }

    /// Changes stored rows in place: `change(stream, row)` returns true if it changed one.
    pub fn alter_rows(
        &self,
        mut change: impl FnMut(&str, &mut serde_json::Value) -> bool,
    ) -> usize {
        let mut state = self.shared.state();
        let mut changed = 0;
        for (stream, row) in &mut state.accepted {
            if change(stream, row) {
                changed += 1;
            }
        }
        changed
    }

    /// Field values the emulator cut at 64 KB, as the service does.
    pub fn truncated_fields(&self) -> usize {
        self.shared.state().truncated_fields
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
