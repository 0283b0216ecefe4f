//! Azurite (Microsoft's Blob service emulator) for the Storage source's tests: one process per
//! test on a free port of 127.0.0.1, its data in a temporary directory, killed on drop. The
//! write helpers sign with the crate's own Shared Key signer, so every write Azurite accepts is
//! also a check of that signer.
//!
//! Where Azurite comes from: see `tools.rs` (`scripts/test` installs it into `.tools/azurite`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use m365_sentinel::sources::storage::client::{API_VERSION, BlobAuth, BlobClient};
use m365_sentinel::sources::storage::signature::{AccountKey, sign_request};
use reqwest::{Method, Url};

/// Azurite's built-in account and its published development key (not a secret).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// A running Azurite blob service.
pub struct Azurite {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

/// A port nobody listens on right now (the OS picks it; a race with other processes is possible
/// but unlikely on 127.0.0.1).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

impl Azurite {
    /// Starts Azurite and waits until it accepts connections.
    pub fn start() -> Azurite {
        let bin = super::tools::require(&super::tools::AZURITE);
        let dir = tempfile::tempdir().expect("temporary directory for Azurite");
        let port = free_port();
        let log =
            |name: &str| std::fs::File::create(dir.path().join(name)).expect("Azurite log file");
        let child = Command::new(&bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
            ])
            .arg(dir.path().join("data"))
            .args([
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
                "--disableTelemetry",
            ])
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {} (is Node.js installed?): {e}", bin.display())
            });
        let mut azurite = Azurite {
            child,
            port,
            dir,
            http: reqwest::Client::new(),
        };
        azurite.wait_ready();
        azurite
    }

    fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, POLL).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Azurite exited ({status}) before listening:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "Azurite did not listen on {addr} within {START_TIMEOUT:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(POLL);
        }
    }

    fn logs(&self) -> String {
        ["stdout.log", "stderr.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                format!("--- {name}\n{text}")
            })
            .collect()
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1` (path-style).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    pub fn account(&self) -> &'static str {
        ACCOUNT
    }

    pub fn key(&self) -> &'static str {
        KEY
    }

    /// A read client with the account key.
    pub fn client(&self) -> BlobClient {
        let auth = BlobAuth::shared_key(ACCOUNT, KEY).expect("dev key");
        BlobClient::new(reqwest::Client::new(), &self.endpoint(), auth).expect("client")
    }

    pub async fn create_container(&self, name: &str) {
        self.write(
            Method::PUT,
            &format!("/{name}?restype=container"),
            &[],
            Vec::new(),
        )
        .await;
    }

    /// An empty append blob; `name` may hold `/` and `=` as Defender's names do.
    pub async fn create_append_blob(&self, container: &str, name: &str) {
        self.write(
            Method::PUT,
            &format!("/{container}/{}", encode_path(name)),
            &[("x-ms-blob-type", "AppendBlob")],
            Vec::new(),
        )
        .await;
    }

    pub async fn append_block(&self, container: &str, name: &str, bytes: &[u8]) {
        self.write(
            Method::PUT,
            &format!("/{container}/{}?comp=appendblock", encode_path(name)),
            &[],
            bytes.to_vec(),
        )
        .await;
    }

    pub async fn put_block_blob(&self, container: &str, name: &str, bytes: &[u8]) {
        self.write(
            Method::PUT,
            &format!("/{container}/{}", encode_path(name)),
            &[("x-ms-blob-type", "BlockBlob")],
            bytes.to_vec(),
        )
        .await;
    }

    /// An account SAS for the blob service (read, write, delete, list, add, create on
    /// everything), as the portal's "Shared access signature" page makes one: version
    /// 2019-12-12's string to sign, `account\nsp\nss\nsrt\nst\nse\nsip\nspr\nsv\n`
    /// (learn.microsoft.com/rest/api/storageservices/create-account-sas).
    pub fn account_sas(&self) -> String {
        use base64::Engine as _;
        use hmac::{KeyInit as _, Mac as _};
        let (sp, ss, srt, se, spr, sv) = (
            "rwdlac",
            "b",
            "sco",
            "2099-01-01T00:00:00Z",
            "https,http",
            "2019-12-12",
        );
        let to_sign = format!("{ACCOUNT}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n");
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .expect("dev key");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC key");
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let sig: String = sig
            .bytes()
            .map(|b| match b {
                b'+' => "%2B".to_string(),
                b'/' => "%2F".to_string(),
                b'=' => "%3D".to_string(),
                b => (b as char).to_string(),
            })
            .collect();
        format!(
            "sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={se}&spr={}&sig={sig}",
            "https%2Chttp"
        )
    }

    /// One signed write; panics with Azurite's answer when it is refused.
    async fn write(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) {
        let url = Url::parse(&format!("{}{path_and_query}", self.endpoint())).expect("URL");
        let mut request = self
            .http
            .request(method.clone(), url)
            .header("x-ms-version", API_VERSION)
            .header(reqwest::header::CONTENT_LENGTH, body.len())
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.build().expect("request");
        let key = AccountKey::from_base64(KEY).expect("dev key");
        sign_request(&mut request, ACCOUNT, &key).expect("signature");
        let response = self.http.execute(request).await.expect("Azurite reachable");
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            panic!("Azurite refused {method} {path_and_query}: {status}\n{text}");
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a blob name for a URL path, keeping `/` and RFC 3986's unreserved characters.
pub fn encode_path(name: &str) -> String {
    let mut out = String::new();
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
