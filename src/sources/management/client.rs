//! One tenant's view of the Office 365 Management Activity API: subscriptions, content listings
//! page by page, content blobs. One attempt per call; what to do about a failure is decided from
//! the AF error code by the caller (see [`ApiError`]).
//!
//! Reference: learn.microsoft.com/office/office-365-management-api/office-365-management-activity-api-reference
//! (operations, paging header, error codes) and its troubleshooting page (AF429 arrives as an
//! HTTP 403; PublisherIdentifier on every call, the content GET included).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::credentials::TokenCredential;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::config::TenantConfig;
use super::rate::RateLimiter;
use crate::stages::map::datetime::{format_unix_seconds_plain, parse_unix_millis};

/// A failed call, by what the caller should do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// AF429 (an HTTP 403) or 429: back off with jitter and try again.
    #[error("throttled ({code}): {message}")]
    Throttled { code: String, message: String },
    /// AF50000, 5xx, timeouts, broken connections: back off and try again.
    #[error("{0}")]
    Transient(String),
    /// AF20022 (no subscription) or AF20023 (disabled by an admin): start it, then retry.
    #[error("{code}: {message}")]
    NoSubscription { code: String, message: String },
    /// AF20030, AF20055: the window is outside what the API takes; `server_time` (ms) is the
    /// service's clock from its Date header, to re-window against.
    #[error("{code}: {message}")]
    BadWindow {
        code: String,
        message: String,
        server_time: Option<i64>,
    },
    /// AF20051: the content is older than the API keeps it.
    #[error("{code}: {message}")]
    Expired { code: String, message: String },
    /// AF10001, AF20010–AF20013, 401, or no token: this tenant's setup is wrong; nothing will
    /// work until someone fixes it.
    #[error("{0}")]
    TenantSetup(String),
    /// Any other refusal (AF20050 content does not exist, AF20031, ...).
    #[error("HTTP {status}, {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The service pointed somewhere it should not (another host) or sent something unusable.
    #[error("{0}")]
    Protocol(String),
}

impl ApiError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::Transient(_))
    }
}

/// One entry of a content listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentItem {
    pub content_id: String,
    pub content_uri: String,
    /// `contentCreated` in ms since the epoch: what listing windows filter on.
    pub created: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawContent {
    content_id: String,
    content_uri: String,
    content_created: String,
}

#[derive(Deserialize)]
struct RawSubscription {
    #[serde(rename = "contentType")]
    content_type: String,
    status: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

pub struct ApiClient {
    http: reqwest::Client,
    /// `https://manage.office.com/api/v1.0/{tenant}/activity/feed/`
    feed: Url,
    publisher: String,
    credential: Arc<dyn TokenCredential>,
    scope: String,
    limiter: RateLimiter,
    /// Shared by every tenant: a permit per request on the wire (see `max_concurrent_requests`).
    requests: Arc<Semaphore>,
    /// Shared by every tenant: a permit per token asked of the credential (see [`TOKEN_FETCHES`]).
    token_fetches: Arc<Semaphore>,
    /// The tenant's last token, used while it has more than [`TOKEN_MARGIN`] to live.
    token: std::sync::Mutex<Option<azure_core::credentials::AccessToken>>,
    /// Held by the one content type of this tenant fetching a token: a tenant takes at most
    /// one of the process's token permits.
    fetching: tokio::sync::Mutex<()>,
    max_blob_bytes: usize,
}

/// Tokens asked of the tenants' credentials at once, process-wide. 500 tenants starting
/// together asked for 500 tokens at once, each on a connection of its own to the authority
/// (an HTTP/1.1 pool has no idle connection to lend yet): 570 connections in a pass, each a
/// TLS handshake and buffers kept alive. A few at a time reuse each other's connections.
pub const TOKEN_FETCHES: usize = 8;

/// A token this close to its expiry is asked for again (the credential refreshes it).
const TOKEN_MARGIN: azure_core::time::Duration = azure_core::time::Duration::minutes(5);

/// How long one token fetch may hold its permit: an authority that hangs must not keep the
/// other tenants' refreshes waiting for the HTTP client's own timeouts and retries.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(60);

/// A successful answer, read whole while its request held a permit.
struct Answer {
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl ApiClient {
    pub fn new(
        http: reqwest::Client,
        tenant: &TenantConfig,
        credential: Arc<dyn TokenCredential>,
        limiter: RateLimiter,
        requests: Arc<Semaphore>,
        token_fetches: Arc<Semaphore>,
        max_blob_bytes: usize,
    ) -> Result<Self, String> {
        let endpoint = tenant.endpoint();
        let base = Url::parse(&endpoint).map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
        let feed = base
            .join(&format!("api/v1.0/{}/activity/feed/", tenant.tenant_id))
            .map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
        Ok(Self {
            http,
            feed,
            publisher: tenant.publisher_identifier.clone(),
            credential,
            scope: tenant.cloud.scope(),
            limiter,
            requests,
            token_fetches,
            token: std::sync::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            max_blob_bytes,
        })
    }

    /// The bearer token for a call: the tenant's own copy while it is fresh, else one asked of
    /// the credential by one content type of the tenant at a time, under one of the process's
    /// [`TOKEN_FETCHES`] permits for at most [`TOKEN_TIMEOUT`]. A copy taken without a permit
    /// never waits behind other tenants' fetches: a tenant whose authority is slow holds one
    /// token permit, never a request permit, and while another content type of it fetches,
    /// the others go on with the old token as long as it has not expired.
    async fn token(&self) -> Result<azure_core::credentials::Secret, ApiError> {
        if let Some(token) = self.held_token(TOKEN_MARGIN) {
            return Ok(token);
        }
        let _fetching = match self.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) => match self.held_token(azure_core::time::Duration::ZERO) {
                Some(token) => return Ok(token),
                None => self.fetching.lock().await,
            },
        };
        // Another content type of this tenant may have fetched it meanwhile.
        if let Some(token) = self.held_token(TOKEN_MARGIN) {
            return Ok(token);
        }
        // The semaphore is never closed.
        let _permit = self.token_fetches.acquire().await;
        let scopes = [self.scope.as_str()];
        let fetched = tokio::time::timeout(TOKEN_TIMEOUT, self.credential.get_token(&scopes, None))
            .await
            .map_err(|_| {
                ApiError::Transient(format!(
                    "no token for {} within {} s; the authority is slow or unreachable",
                    self.scope,
                    TOKEN_TIMEOUT.as_secs()
                ))
            })?;
        let token = fetched.map_err(|e| {
            ApiError::TenantSetup(format!(
                "no token for {}: {e}; check the credential (secret, certificate, federated identity) and that the app is consented in this tenant",
                self.scope
            ))
        })?;
        let secret = token.token.clone();
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(secret)
    }

    /// The tenant's token if it has more than `margin` to live.
    fn held_token(
        &self,
        margin: azure_core::time::Duration,
    ) -> Option<azure_core::credentials::Secret> {
        let held = self.token.lock().unwrap_or_else(|e| e.into_inner());
        let token = held.as_ref()?;
        let now = azure_core::time::OffsetDateTime::now_utc();
        (token.expires_on - now > margin).then(|| token.token.clone())
    }

    /// Content types whose subscription is enabled.
    pub async fn enabled_subscriptions(&self) -> Result<Vec<String>, ApiError> {
        let url = self.url("subscriptions/list", &[])?;
        let body = self.send(Method::GET, url).await?.body;
        let subs: Vec<RawSubscription> = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Protocol(format!("subscriptions/list answer: {e}")))?;
        Ok(subs
            .into_iter()
            .filter(|s| s.status.eq_ignore_ascii_case("enabled"))
            .map(|s| s.content_type)
            .collect())
    }

    /// Starts a subscription; one that is already enabled (AF20024) counts as started.
    pub async fn start_subscription(&self, content_type: &str) -> Result<(), ApiError> {
        let url = self.url("subscriptions/start", &[("contentType", content_type)])?;
        match self.send(Method::POST, url).await {
            Ok(_) => Ok(()),
            Err(ApiError::Refused { code, .. }) if code == "AF20024" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The first page of content created in `[start, end)` (ms since the epoch).
    pub fn listing_url(&self, content_type: &str, start: i64, end: i64) -> Result<Url, ApiError> {
        self.url(
            "subscriptions/content",
            &[
                ("contentType", content_type),
                ("startTime", &format_unix_seconds_plain(start)),
                ("endTime", &format_unix_seconds_plain(end)),
            ],
        )
    }

    /// One page of a listing, and the next page's address if there is one.
    pub async fn list_page(&self, url: Url) -> Result<(Vec<ContentItem>, Option<Url>), ApiError> {
        let Answer { headers, body } = self.send(Method::GET, url).await?;
        // Both names are in Microsoft's documents; header names are case-insensitive anyway.
        let next = ["NextPageUri", "NextPageUrl"]
            .iter()
            .find_map(|name| headers.get(*name))
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
            .map(|v| self.same_service(v.trim(), "NextPageUri"))
            .transpose()?;
        let raw: Vec<RawContent> = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Protocol(format!("content listing: {e}")))?;
        let mut items = Vec::with_capacity(raw.len());
        for r in raw {
            let created = parse_unix_millis(&r.content_created).ok_or_else(|| {
                ApiError::Protocol(format!(
                    "content {}: contentCreated {:?} is not a date-time",
                    r.content_id, r.content_created
                ))
            })?;
            items.push(ContentItem {
                content_id: r.content_id,
                content_uri: r.content_uri,
                created,
            });
        }
        Ok((items, next))
    }

    /// A content blob: a JSON array of audit records, as text.
    pub async fn fetch(&self, content_uri: &str) -> Result<Vec<u8>, ApiError> {
        let mut url = self.same_service(content_uri, "contentUri")?;
        url.query_pairs_mut()
            .append_pair("PublisherIdentifier", &self.publisher);
        Ok(self.send(Method::GET, url).await?.body)
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, ApiError> {
        let mut url = self
            .feed
            .join(path)
            .map_err(|e| ApiError::Protocol(format!("{path}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
            q.append_pair("PublisherIdentifier", &self.publisher);
        }
        Ok(url)
    }

    /// The bearer token goes only to the API we were configured with: an address from a
    /// response (next page, content) must be on the same scheme, host and port.
    fn same_service(&self, address: &str, what: &str) -> Result<Url, ApiError> {
        let url = Url::parse(address)
            .map_err(|_| ApiError::Protocol(format!("{what} is not a URL: {address:?}")))?;
        if url.origin() != self.feed.origin() {
            return Err(ApiError::Protocol(format!(
                "{what} {address:?} points away from {}; refusing to send the token there",
                self.feed.origin().ascii_serialization()
            )));
        }
        let mut url = url;
        // The listing puts PublisherIdentifier into next-page links already; keep one.
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("PublisherIdentifier"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.set_query(None);
        if !kept.is_empty() || what == "NextPageUri" {
            let mut q = url.query_pairs_mut();
            q.extend_pairs(kept);
            if what == "NextPageUri" {
                q.append_pair("PublisherIdentifier", &self.publisher);
            }
        }
        Ok(url)
    }

    /// One call, its answer read whole. The rate limit is waited out before a permit is
    /// taken, so a throttled tenant holds none while it waits; the permit is held until the
    /// body is read, which is when the connection is free again. Hundreds of tenants then
    /// share a bounded set of pooled connections instead of opening one per call.
    async fn send(&self, method: Method, url: Url) -> Result<Answer, ApiError> {
        // The token first, outside the shared request permit: a tenant whose authority is
        // slow or unreachable must not hold permits the other tenants' calls need.
        let token = self.token().await?;
        self.limiter.acquire().await;
        let _permit = self.requests.acquire().await;
        let response = self
            .http
            .request(method.clone(), url)
            .bearer_auth(token.secret())
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await
            .map_err(|e| {
                ApiError::Transient(format!(
                    "{method} failed: {}",
                    crate::http_client::error_chain(&e)
                ))
            })?;
        let status = response.status();
        if status.is_success() {
            let headers = response.headers().clone();
            let body = read_limited(response, self.max_blob_bytes).await?;
            return Ok(Answer { headers, body });
        }
        let server_time = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::sinks::retry::parse_http_date)
            .and_then(|s| i64::try_from(s).ok())
            .map(|s| s * 1000);
        let body = read_limited(response, 64 * 1024).await.unwrap_or_default();
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                String::new(),
                String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            ),
        };
        Err(classify(status, code, message, server_time))
    }
}

/// The caller's decision for a refused call, from the AF code first and the status second.
pub fn classify(
    status: StatusCode,
    code: String,
    message: String,
    server_time: Option<i64>,
) -> ApiError {
    match code.as_str() {
        "AF429" => ApiError::Throttled { code, message },
        "AF50000" => ApiError::Transient(format!("{code}: {message}")),
        "AF20022" | "AF20023" => ApiError::NoSubscription { code, message },
        "AF20030" | "AF20055" => ApiError::BadWindow {
            code,
            message,
            server_time,
        },
        "AF20051" => ApiError::Expired { code, message },
        "AF10001" => ApiError::TenantSetup(format!(
            "{code}: {message}; grant the app the Office 365 Management APIs application permission ActivityFeed.Read (and ActivityFeed.ReadDlp for DLP.All) and admin consent in this tenant"
        )),
        "AF20010" | "AF20011" | "AF20012" | "AF20013" => ApiError::TenantSetup(format!(
            "{code}: {message}; check tenant_id and that the credential's tenant is this tenant"
        )),
        _ if status == StatusCode::TOO_MANY_REQUESTS => ApiError::Throttled {
            code: "429".into(),
            message,
        },
        _ if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT => {
            ApiError::Transient(format!("HTTP {status} {code}: {message}"))
        }
        _ if status == StatusCode::UNAUTHORIZED => ApiError::TenantSetup(format!(
            "HTTP 401 {code}: {message}; the token was refused: check the app's permissions in this tenant"
        )),
        _ => ApiError::Refused {
            status: status.as_u16(),
            code,
            message,
        },
    }
}

/// Reads a body, refusing one larger than `limit` instead of holding it all.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ApiError::Transient(format!("reading the answer: {e}")))?
    {
        if body.len() + chunk.len() > limit {
            return Err(ApiError::Protocol(format!(
                "answer larger than {limit} bytes (input.max_document_bytes)"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Now, in ms since the epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn af(status: u16, code: &str) -> ApiError {
        classify(
            StatusCode::from_u16(status).unwrap(),
            code.into(),
            "m".into(),
            None,
        )
    }

    #[test]
    fn af_codes_decide_before_statuses() {
        assert!(matches!(af(403, "AF429"), ApiError::Throttled { .. }));
        assert!(af(403, "AF429").is_retryable());
        assert!(af(500, "AF50000").is_retryable());
        assert!(af(503, "").is_retryable());
        assert!(matches!(
            af(400, "AF20022"),
            ApiError::NoSubscription { .. }
        ));
        assert!(matches!(
            af(400, "AF20023"),
            ApiError::NoSubscription { .. }
        ));
        assert!(matches!(af(400, "AF20030"), ApiError::BadWindow { .. }));
        assert!(matches!(af(400, "AF20055"), ApiError::BadWindow { .. }));
        assert!(matches!(af(400, "AF20051"), ApiError::Expired { .. }));
        for code in ["AF10001", "AF20010", "AF20011", "AF20012", "AF20013"] {
            assert!(matches!(af(403, code), ApiError::TenantSetup(_)), "{code}");
        }
        assert!(matches!(af(401, ""), ApiError::TenantSetup(_)));
        assert!(matches!(af(400, "AF20050"), ApiError::Refused { .. }));
        assert!(!af(400, "AF20050").is_retryable());
    }
}
