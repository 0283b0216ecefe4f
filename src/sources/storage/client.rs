//! Reads the Blob service a Defender export writes to: List Blobs, page by page, and ranged
//! reads of (append) blobs. One attempt per call; what to do about a failure is the caller's
//! choice, told by [`StorageError::is_retryable`].
//!
//! References (learn.microsoft.com/rest/api/storageservices/): "List Blobs" (query, XML,
//! NextMarker), "Get Blob" (x-ms-range, 206/416), "Blob service error codes", "Authorize with
//! Shared Key", "Authorize with Microsoft Entra ID" (scope `https://storage.azure.com/.default`,
//! x-ms-version 2017-11-09 or later).
//!
//! Secrets (account key, SAS token, bearer token) never appear in an error or Debug output: URLs
//! in messages lose their query string, and the service's own detail text loses its quoted parts
//! (a failed Shared Key check quotes the request's signature).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core::credentials::TokenCredential;
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::signature::{self, AccountKey};

/// The service version sent on every request: supports Entra tokens and `Encoded` blob names,
/// and is one Azurite 3.x accepts.
pub const API_VERSION: &str = "2021-08-06";
/// The token scope for Entra (bearer) authorization; the same in every cloud.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// How much of an error body is read to find its code and message.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

/// A SAS token. Its Debug output never shows it.
#[derive(Clone)]
pub struct SasToken(String);

impl SasToken {
    /// The token as the portal gives it, with or without its leading `?`.
    pub fn new(token: &str) -> Self {
        Self(token.trim().trim_start_matches('?').to_string())
    }
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How requests prove access.
#[derive(Clone)]
pub enum BlobAuth {
    /// The account key (Shared Key signature on every request).
    SharedKey { account: String, key: AccountKey },
    /// A SAS token appended to every URL (needs read and list: `sp=rl`).
    Sas(SasToken),
    /// An Entra credential (needs the role "Storage Blob Data Reader").
    Bearer(Arc<dyn TokenCredential>),
}

impl BlobAuth {
    /// Shared Key auth from the key as the portal shows it (base64).
    pub fn shared_key(account: &str, key_base64: &str) -> Result<Self, StorageError> {
        let key = AccountKey::from_base64(key_base64)
            .map_err(|e| StorageError::InvalidArgument(e.to_string()))?;
        Ok(Self::SharedKey {
            account: account.to_string(),
            key,
        })
    }

    /// What to check when the service refuses this kind of credential.
    fn hint(&self) -> &'static str {
        match self {
            Self::SharedKey { .. } => {
                "check the account name and the account key (key1 or key2 from the storage account's \"Access keys\"; a rotated key stops working) and that Shared Key access is allowed on the account"
            }
            Self::Sas(_) => {
                "check the SAS token: not expired (se=), permissions include read and list (sp=rl), it covers the blob service and this container, and any IP or protocol restriction"
            }
            Self::Bearer(_) => {
                "check that the identity has the role \"Storage Blob Data Reader\" on the storage account or container (a new role assignment can take minutes to apply)"
            }
        }
    }
}

impl fmt::Debug for BlobAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SharedKey { account, .. } => f
                .debug_struct("SharedKey")
                .field("account", account)
                .field("key", &"<redacted>")
                .finish(),
            Self::Sas(_) => f.write_str("Sas(<redacted>)"),
            Self::Bearer(c) => f.debug_tuple("Bearer").field(c).finish(),
        }
    }
}

/// One blob of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobItem {
    pub name: String,
    pub size: u64,
    /// `BlockBlob`, `AppendBlob` or `PageBlob`.
    pub blob_type: String,
    /// As the service writes it (RFC 1123).
    pub last_modified: Option<String>,
}

/// One page of a listing; `next_marker` is where the next page starts (`None`: the last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobPage {
    pub items: Vec<BlobItem>,
    /// With a delimiter: the names' prefixes up to it (`<BlobPrefix>`), each listed once.
    pub prefixes: Vec<String>,
    pub next_marker: Option<String>,
}

/// A failed call, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// 401 or 403 (AuthenticationFailed, AuthorizationFailure, AuthorizationPermissionMismatch,
    /// ...): the credential or its rights are wrong; retrying will not help until fixed.
    #[error(
        "storage account {account}, container {container}: access refused (HTTP {status}, {code}: {message}); {hint}"
    )]
    AuthRefused {
        account: String,
        container: String,
        status: u16,
        code: String,
        message: String,
        hint: String,
    },
    /// 404 ContainerNotFound.
    #[error(
        "storage account {account}: container {container} does not exist (HTTP 404, {code}); check the name, and note the Defender export creates its containers only once it first writes events"
    )]
    ContainerNotFound {
        account: String,
        container: String,
        code: String,
    },
    /// 404 BlobNotFound: deleted (a lifecycle rule) or never there.
    #[error(
        "storage account {account}, container {container}: blob {blob} does not exist (HTTP 404, {code})"
    )]
    BlobNotFound {
        account: String,
        container: String,
        blob: String,
        code: String,
    },
    /// The blob has no byte at `start` (it is shorter): a 416 from the service, or an empty 206
    /// (Azurite answers so when `start` is exactly the blob's length).
    #[error(
        "storage account {account}, container {container}: blob {blob} has no byte {start} (asked bytes {start}-{end}; HTTP {status}, {code})"
    )]
    RangeNotSatisfiable {
        account: String,
        container: String,
        blob: String,
        start: u64,
        end: u64,
        status: u16,
        code: String,
    },
    /// 408, 429, 500, 502, 503 (ServerBusy), 504: try again later.
    #[error(
        "storage account {account}: service busy or failing (HTTP {status}, {code}: {message})"
    )]
    Busy {
        account: String,
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No Entra token.
    #[error(
        "storage account {account}: no token for {STORAGE_SCOPE}: {reason}; check the credential (secret, certificate, federated identity, managed identity)"
    )]
    Token { account: String, reason: String },
    /// The request or the answer's body did not get through (connection, timeout, TLS).
    #[error("storage account {account}: {method} {url}: {reason}")]
    Transport {
        account: String,
        method: String,
        url: String,
        reason: String,
    },
    /// The listing's XML could not be read.
    #[error("storage account {account}, container {container}: unreadable listing: {reason}")]
    UnparsableListing {
        account: String,
        container: String,
        reason: String,
    },
    /// An answer that contradicts the request (wrong range, endless paging).
    #[error("storage account {account}: {url}: {reason}")]
    BadResponse {
        account: String,
        url: String,
        reason: String,
    },
    /// Any other refusal.
    #[error("storage account {account}: {url}: HTTP {status}, {code}: {message}")]
    Refused {
        account: String,
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    /// A bad endpoint, key or range given by the caller.
    #[error("{0}")]
    InvalidArgument(String),
}

impl StorageError {
    /// Busy or transport failures: the same call may work later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Busy { .. } | Self::Transport { .. })
    }
}

/// What a request is about, for error messages.
struct Target<'a> {
    container: &'a str,
    blob: Option<&'a str>,
    range: Option<(u64, u64)>,
}

/// A read client for one storage account.
#[derive(Debug, Clone)]
pub struct BlobClient {
    http: reqwest::Client,
    /// Without a trailing `/`.
    endpoint: String,
    /// For messages and Shared Key: from the auth, else from the endpoint.
    account: String,
    auth: BlobAuth,
}

impl BlobClient {
    /// `endpoint` is the account's base URL: `https://<account>.blob.core.windows.net`, or a
    /// path-style one such as Azurite's `http://127.0.0.1:10000/devstoreaccount1`.
    pub fn new(
        http: reqwest::Client,
        endpoint: &str,
        auth: BlobAuth,
    ) -> Result<Self, StorageError> {
        let endpoint = endpoint.trim().trim_end_matches('/');
        let url = Url::parse(endpoint).map_err(|e| {
            StorageError::InvalidArgument(format!("storage endpoint {endpoint:?}: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https")
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(StorageError::InvalidArgument(format!(
                "storage endpoint {}: give only https://<account>.blob.core.windows.net (a SAS token goes in the auth settings, not the URL)",
                strip_query(&url)
            )));
        }
        let account = match &auth {
            BlobAuth::SharedKey { account, .. } => account.clone(),
            _ => account_from_endpoint(&url),
        };
        Ok(Self {
            http,
            endpoint: endpoint.to_string(),
            account,
            auth,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// Every blob under `prefix`, all pages followed.
    pub async fn list_blobs(
        &self,
        container: &str,
        prefix: &str,
    ) -> Result<Vec<BlobItem>, StorageError> {
        self.list_blobs_paged(container, prefix, None).await
    }

    /// As [`Self::list_blobs`], asking for at most `page_size` blobs per page (the service's
    /// default and maximum is 5000).
    pub async fn list_blobs_paged(
        &self,
        container: &str,
        prefix: &str,
        page_size: Option<u32>,
    ) -> Result<Vec<BlobItem>, StorageError> {
        let mut items = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .list_page(container, prefix, marker.as_deref(), page_size)
                .await?;
            items.extend(page.items);
            match page.next_marker {
                None => return Ok(items),
                Some(next) if marker.as_deref() == Some(next.as_str()) => {
                    return Err(StorageError::BadResponse {
                        account: self.account.clone(),
                        url: format!("{}/{container}", self.endpoint),
                        reason: format!("the listing's NextMarker repeats ({next:?})"),
                    });
                }
                Some(next) => marker = Some(next),
            }
        }
    }

    /// The distinct prefixes of the names under `prefix` up to the next `delimiter` (the
    /// "folders" of a listing), all pages followed.
    pub async fn list_prefixes(
        &self,
        container: &str,
        prefix: &str,
        delimiter: &str,
    ) -> Result<Vec<String>, StorageError> {
        let mut prefixes = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .list_page_with(container, prefix, Some(delimiter), marker.as_deref(), None)
                .await?;
            prefixes.extend(page.prefixes);
            match page.next_marker {
                Some(next) if marker.as_deref() != Some(next.as_str()) => marker = Some(next),
                _ => return Ok(prefixes),
            }
        }
    }

    /// One page of List Blobs, starting at `marker` (`None`: the first page).
    pub async fn list_page(
        &self,
        container: &str,
        prefix: &str,
        marker: Option<&str>,
        page_size: Option<u32>,
    ) -> Result<BlobPage, StorageError> {
        self.list_page_with(container, prefix, None, marker, page_size)
            .await
    }

    async fn list_page_with(
        &self,
        container: &str,
        prefix: &str,
        delimiter: Option<&str>,
        marker: Option<&str>,
        page_size: Option<u32>,
    ) -> Result<BlobPage, StorageError> {
        let size_text = page_size.map(|n| n.to_string());
        let mut query = vec![
            ("restype", "container"),
            ("comp", "list"),
            ("prefix", prefix),
        ];
        if let Some(delimiter) = delimiter {
            query.push(("delimiter", delimiter));
        }
        if let Some(marker) = marker {
            query.push(("marker", marker));
        }
        if let Some(size) = &size_text {
            query.push(("maxresults", size.as_str()));
        }
        let url = self.url(&format!("/{}", encode(container, false)), &query)?;
        let target = Target {
            container,
            blob: None,
            range: None,
        };
        let response = self.send(Method::GET, url.clone(), None, &target).await?;
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport(&Method::GET, &url, e))?;
        parse_listing(&body).map_err(|reason| StorageError::UnparsableListing {
            account: self.account.clone(),
            container: container.to_string(),
            reason,
        })
    }

    /// Bytes `start..=end_inclusive` of a blob. A blob that ends inside the range gives fewer
    /// bytes (never none); one with no byte at `start` gives
    /// [`StorageError::RangeNotSatisfiable`].
    pub async fn read_range(
        &self,
        container: &str,
        blob: &str,
        start: u64,
        end_inclusive: u64,
    ) -> Result<Vec<u8>, StorageError> {
        if start > end_inclusive {
            return Err(StorageError::InvalidArgument(format!(
                "read_range: start {start} is after end {end_inclusive}"
            )));
        }
        let url = self.url(
            &format!("/{}/{}", encode(container, false), encode(blob, true)),
            &[],
        )?;
        let target = Target {
            container,
            blob: Some(blob),
            range: Some((start, end_inclusive)),
        };
        let range = format!("bytes={start}-{end_inclusive}");
        let response = self
            .send(
                Method::GET,
                url.clone(),
                Some(("x-ms-range", range)),
                &target,
            )
            .await?;
        let status = response.status();
        let content_range = response
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport(&Method::GET, &url, e))?;
        let wanted = end_inclusive - start + 1;
        let bad = |reason: String| StorageError::BadResponse {
            account: self.account.clone(),
            url: strip_query(&url),
            reason,
        };
        // A success that still has no byte at `start`.
        let short = |code: &str| StorageError::RangeNotSatisfiable {
            account: self.account.clone(),
            container: container.to_string(),
            blob: blob.to_string(),
            start,
            end: end_inclusive,
            status: status.as_u16(),
            code: code.to_string(),
        };
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let first = content_range.as_deref().and_then(range_start);
                if first != Some(start) {
                    return Err(bad(format!(
                        "asked bytes {start}-{end_inclusive}, got Content-Range {content_range:?}"
                    )));
                }
                if body.len() as u64 > wanted {
                    return Err(bad(format!(
                        "asked {wanted} bytes, got {} bytes",
                        body.len()
                    )));
                }
                if body.is_empty() {
                    return Err(short("no bytes returned"));
                }
                Ok(body.to_vec())
            }
            // The whole blob: cut the range out of it.
            StatusCode::OK => {
                let len = body.len() as u64;
                if start >= len {
                    return Err(short("whole blob returned, shorter than start"));
                }
                let end = len.min(end_inclusive + 1);
                // Both bounds are ≤ body.len(), which is a usize.
                Ok(body[start as usize..end as usize].to_vec())
            }
            other => Err(bad(format!("unexpected HTTP {other} for a ranged read"))),
        }
    }

    /// `<endpoint><path>?<query>[&<sas>]`, every query value percent-encoded.
    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, StorageError> {
        let mut text = format!("{}{path}", self.endpoint);
        let mut pairs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v, false)))
            .collect();
        if let BlobAuth::Sas(sas) = &self.auth
            && !sas.0.is_empty()
        {
            pairs.push(sas.0.clone());
        }
        if !pairs.is_empty() {
            text.push('?');
            text.push_str(&pairs.join("&"));
        }
        Url::parse(&text).map_err(|e| {
            StorageError::InvalidArgument(format!("storage URL for {}{path}: {e}", self.endpoint))
        })
    }

    /// One request with version, date and credentials; a non-2xx answer becomes its error.
    async fn send(
        &self,
        method: Method,
        url: Url,
        extra: Option<(&'static str, String)>,
        target: &Target<'_>,
    ) -> Result<reqwest::Response, StorageError> {
        let now = crate::sinks::data_collector::rfc1123(SystemTime::now());
        let mut builder = self
            .http
            .request(method.clone(), url.clone())
            .header("x-ms-version", API_VERSION)
            .header(signature::X_MS_DATE, now);
        if let Some((name, value)) = extra {
            builder = builder.header(name, value);
        }
        let mut request = builder
            .build()
            .map_err(|e| self.transport(&method, &url, e))?;
        match &self.auth {
            BlobAuth::SharedKey { account, key } => {
                signature::sign_request(&mut request, account, key)
                    .map_err(|e| StorageError::InvalidArgument(e.to_string()))?;
            }
            BlobAuth::Sas(_) => {}
            BlobAuth::Bearer(credential) => {
                let token = credential
                    .get_token(&[STORAGE_SCOPE], None)
                    .await
                    .map_err(|e| StorageError::Token {
                        account: self.account.clone(),
                        reason: crate::http_client::error_chain(&e),
                    })?;
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.token.secret()))
                    .map_err(|_| StorageError::Token {
                        account: self.account.clone(),
                        reason: "the token is not a valid header value".into(),
                    })?;
                value.set_sensitive(true);
                request.headers_mut().insert(header::AUTHORIZATION, value);
            }
        }
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| self.transport(&method, &url, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let header_code = response
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::sinks::retry::parse_retry_after(v, SystemTime::now()));
        let body = read_limited(response, ERROR_BODY_LIMIT).await;
        let parsed = parse_error_body(&body);
        let code = header_code.or(parsed.code).unwrap_or_default();
        Err(self.classify(status, code, parsed.message, retry_after, &url, target))
    }

    fn classify(
        &self,
        status: StatusCode,
        code: String,
        message: String,
        retry_after: Option<Duration>,
        url: &Url,
        target: &Target<'_>,
    ) -> StorageError {
        let account = self.account.clone();
        let container = target.container.to_string();
        let code = if code.is_empty() {
            "no error code".to_string()
        } else {
            code
        };
        match status.as_u16() {
            401 | 403 => {
                let mut hint = self.auth.hint().to_string();
                if code == "AuthorizationFailure" || code == "AuthorizationSourceIPMismatch" {
                    hint.push_str(
                        "; also check that the account's firewall (networking) lets this client in",
                    );
                }
                StorageError::AuthRefused {
                    account,
                    container,
                    status: status.as_u16(),
                    code,
                    message,
                    hint,
                }
            }
            404 if code == "ContainerNotFound" => StorageError::ContainerNotFound {
                account,
                container,
                code,
            },
            404 if code == "BlobNotFound" => StorageError::BlobNotFound {
                account,
                container,
                blob: target.blob.unwrap_or_default().to_string(),
                code,
            },
            416 => {
                let (start, end) = target.range.unwrap_or_default();
                StorageError::RangeNotSatisfiable {
                    account,
                    container,
                    blob: target.blob.unwrap_or_default().to_string(),
                    start,
                    end,
                    status: status.as_u16(),
                    code,
                }
            }
            408 | 429 | 500 | 502 | 503 | 504 => StorageError::Busy {
                account,
                status: status.as_u16(),
                code,
                message,
                retry_after,
            },
            other => StorageError::Refused {
                account,
                url: strip_query(url),
                status: other,
                code,
                message,
            },
        }
    }

    fn transport(&self, method: &Method, url: &Url, e: reqwest::Error) -> StorageError {
        // reqwest's message names the URL, query (SAS) included: drop it.
        let e = e.without_url();
        StorageError::Transport {
            account: self.account.clone(),
            method: method.to_string(),
            url: strip_query(url),
            reason: crate::http_client::error_chain(&e),
        }
    }
}

/// The account name for messages: the first path segment of a path-style endpoint (an IP
/// address or localhost), else the first label of the host.
fn account_from_endpoint(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let path_style = bare.parse::<std::net::IpAddr>().is_ok() || host == "localhost";
    if path_style {
        url.path_segments()
            .and_then(|mut s| s.next())
            .unwrap_or_default()
            .to_string()
    } else {
        host.split('.').next().unwrap_or_default().to_string()
    }
}

/// A URL for messages: no query (a SAS), no fragment.
fn strip_query(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// Percent-encodes all but RFC 3986's unreserved characters, keeping `/` when `keep_slash`
/// (blob names use it as a path separator).
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`encode`] (for names listed with `Encoded="true"`); bad escapes stay as they are.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first byte of `Content-Range: bytes <first>-<last>/<total>`.
fn range_start(value: &str) -> Option<u64> {
    value
        .trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= limit {
            body.truncate(limit);
            break;
        }
    }
    body
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EnumerationResults {
    #[serde(default)]
    blobs: RawBlobs,
    #[serde(default)]
    next_marker: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawBlobs {
    #[serde(rename = "Blob", default)]
    blob: Vec<RawBlob>,
    #[serde(rename = "BlobPrefix", default)]
    blob_prefix: Vec<RawPrefix>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawPrefix {
    name: RawName,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawBlob {
    name: RawName,
    properties: RawProperties,
}

/// `<Name Encoded="true">` holds a percent-encoded name (one with characters XML cannot carry).
#[derive(Deserialize)]
struct RawName {
    #[serde(rename = "@Encoded", default)]
    encoded: bool,
    #[serde(rename = "$text", default)]
    text: String,
}

#[derive(Deserialize)]
struct RawProperties {
    #[serde(rename = "Content-Length")]
    content_length: u64,
    #[serde(rename = "BlobType", default)]
    blob_type: String,
    #[serde(rename = "Last-Modified", default)]
    last_modified: Option<String>,
}

/// A List Blobs answer → its blobs and next marker.
fn parse_listing(body: &[u8]) -> Result<BlobPage, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let text = text.trim_start_matches('\u{feff}');
    let raw: EnumerationResults = quick_xml::de::from_str(text).map_err(|e| e.to_string())?;
    let prefixes = raw
        .blobs
        .blob_prefix
        .into_iter()
        .map(|p| {
            if p.name.encoded {
                decode(&p.name.text)
            } else {
                p.name.text
            }
        })
        .collect();
    let items = raw
        .blobs
        .blob
        .into_iter()
        .map(|b| BlobItem {
            name: if b.name.encoded {
                decode(&b.name.text)
            } else {
                b.name.text
            },
            size: b.properties.content_length,
            blob_type: b.properties.blob_type,
            last_modified: b.properties.last_modified,
        })
        .collect();
    Ok(BlobPage {
        items,
        prefixes,
        next_marker: raw.next_marker.filter(|m| !m.is_empty()),
    })
}

#[derive(Debug, Default, PartialEq, Eq)]
struct ErrorBody {
    code: Option<String>,
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    authentication_error_detail: Option<String>,
}

/// The code and a message from an `<Error>` body: the message's first line (the rest is request
/// id and time), plus the authentication detail with its quoted parts masked (they can hold the
/// request's signature).
fn parse_error_body(body: &[u8]) -> ErrorBody {
    let text = String::from_utf8_lossy(body);
    let Ok(raw) = quick_xml::de::from_str::<RawError>(text.trim_start_matches('\u{feff}')) else {
        return ErrorBody::default();
    };
    let mut message = raw
        .message
        .as_deref()
        .and_then(|m| m.lines().next())
        .unwrap_or_default()
        .trim()
        .to_string();
    if let Some(detail) = raw.authentication_error_detail {
        let masked = mask_quoted(detail.trim());
        message.push_str(if message.is_empty() { "" } else { " " });
        message.push_str(&masked.chars().take(300).collect::<String>());
    }
    ErrorBody {
        code: raw.code.filter(|c| !c.is_empty()),
        message,
    }
}

/// `'...'` → `'…'`.
fn mask_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('\'').enumerate() {
        if i > 0 {
            out.push('\'');
        }
        out.push_str(if i % 2 == 1 { "…" } else { part });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped as the List Blobs reference shows it, with a BOM as the service sends it.
    const LISTING: &str = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<EnumerationResults ServiceEndpoint=\"https://acct.blob.core.windows.net/\" ContainerName=\"insights\">\
<Prefix>tenantId=t/</Prefix><MaxResults>2</MaxResults><Blobs>\
<Blob><Name>tenantId=t/y=2026/m=11/d=22/h=13/m=00/PT1H.json</Name><Properties>\
<Creation-Time>Sun, 22 Nov 2026 13:00:01 GMT</Creation-Time>\
<Last-Modified>Sun, 22 Nov 2026 13:59:01 GMT</Last-Modified><Etag>0x8D</Etag>\
<Content-Length>1234</Content-Length><Content-Type>application/octet-stream</Content-Type>\
<BlobType>AppendBlob</BlobType><LeaseStatus>unlocked</LeaseStatus></Properties>\
<OrMetadata /></Blob>\
<Blob><Name Encoded=\"true\">odd%EF%BF%BEname</Name><Properties>\
<Content-Length>0</Content-Length><BlobType>BlockBlob</BlobType></Properties></Blob>\
</Blobs><NextMarker>2!96!abc</NextMarker></EnumerationResults>";

    #[test]
    fn a_listing_parses_with_sizes_types_and_marker() {
        let page = parse_listing(LISTING.as_bytes()).unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(
            page.items[0],
            BlobItem {
                name: "tenantId=t/y=2026/m=11/d=22/h=13/m=00/PT1H.json".into(),
                size: 1234,
                blob_type: "AppendBlob".into(),
                last_modified: Some("Sun, 22 Nov 2026 13:59:01 GMT".into()),
            }
        );
        assert_eq!(page.items[1].name, "odd\u{fffe}name");
        assert_eq!(page.items[1].last_modified, None);
        assert_eq!(page.next_marker.as_deref(), Some("2!96!abc"));
    }

    #[test]
    fn the_last_page_has_no_marker() {
        let xml = "<EnumerationResults><Blobs /><NextMarker /></EnumerationResults>";
        let page = parse_listing(xml.as_bytes()).unwrap();
        assert!(page.items.is_empty());
        assert_eq!(page.next_marker, None);
        assert!(parse_listing(b"<EnumerationResults><Blobs><Blob><Name>x</Name></Blob>").is_err());
    }

    #[test]
    fn error_bodies_keep_code_and_first_line_and_mask_quotes() {
        let body = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code>\
<Message>Server failed to authenticate the request.\nRequestId:1\nTime:2026</Message>\
<AuthenticationErrorDetail>The MAC signature found in the HTTP request 'SECRETSIG=' is not the same as any computed signature. Server used following string to sign: 'GET\n'.</AuthenticationErrorDetail></Error>";
        let parsed = parse_error_body(body.as_bytes());
        assert_eq!(parsed.code.as_deref(), Some("AuthenticationFailed"));
        assert!(
            parsed
                .message
                .starts_with("Server failed to authenticate the request. The MAC")
        );
        assert!(!parsed.message.contains("SECRETSIG"));
        assert!(!parsed.message.contains("RequestId"));
        assert_eq!(parse_error_body(b"not xml"), ErrorBody::default());
    }

    #[test]
    fn names_are_encoded_for_paths_and_queries() {
        assert_eq!(
            encode("tenantId=a b/y=2026/PT1H.json", true),
            "tenantId%3Da%20b/y%3D2026/PT1H.json"
        );
        assert_eq!(encode("a/b+c", false), "a%2Fb%2Bc");
        assert_eq!(decode("a%2Fb%2Bc%zz"), "a/b+c%zz");
        assert_eq!(range_start("bytes 10-19/100"), Some(10));
        assert_eq!(range_start("items 1-2"), None);
    }

    #[test]
    fn urls_carry_the_sas_and_errors_do_not() {
        let client = BlobClient::new(
            reqwest::Client::new(),
            "https://acct.blob.core.windows.net/",
            BlobAuth::Sas(SasToken::new("?sv=2022&sp=rl&sig=SECRET%3D")),
        )
        .unwrap();
        assert_eq!(client.account(), "acct");
        let url = client
            .url("/c", &[("restype", "container"), ("prefix", "t=1/")])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://acct.blob.core.windows.net/c?restype=container&prefix=t%3D1%2F&sv=2022&sp=rl&sig=SECRET%3D"
        );
        assert_eq!(strip_query(&url), "https://acct.blob.core.windows.net/c");
        assert!(!format!("{client:?}").contains("SECRET"));
        let target = Target {
            container: "c",
            blob: None,
            range: None,
        };
        let err = client.classify(
            StatusCode::FORBIDDEN,
            "AuthorizationPermissionMismatch".into(),
            "no".into(),
            None,
            &url,
            &target,
        );
        let text = err.to_string();
        assert!(matches!(err, StorageError::AuthRefused { .. }));
        assert!(text.contains("acct") && text.contains("container c") && text.contains("sp=rl"));
        assert!(!text.contains("SECRET"));
        let err = client.classify(
            StatusCode::IM_A_TEAPOT,
            String::new(),
            String::new(),
            None,
            &url,
            &target,
        );
        assert!(!err.to_string().contains("SECRET"));
        assert!(!err.is_retryable());
        let busy = client.classify(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServerBusy".into(),
            String::new(),
            None,
            &url,
            &target,
        );
        assert!(busy.is_retryable());
        assert!(busy.to_string().contains("ServerBusy"));
    }

    #[test]
    fn path_style_endpoints_name_their_account() {
        let url = Url::parse("http://127.0.0.1:10000/devstoreaccount1").unwrap();
        assert_eq!(account_from_endpoint(&url), "devstoreaccount1");
        assert!(
            BlobClient::new(
                reqwest::Client::new(),
                "https://a.blob.core.windows.net/?sig=x",
                BlobAuth::Sas(SasToken::new("x"))
            )
            .is_err()
        );
    }
}
