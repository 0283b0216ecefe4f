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

mod error;
mod listing;
mod wire;

pub use error::StorageError;
use error::*;
use listing::*;
use wire::*;

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

#[cfg(test)]
mod tests;
