//! azure_identity only talks https to its authority; tests and benchmarks hand it this transport,
//! which carries its requests to the emulator on loopback instead. The credential itself (the
//! real client-credentials protocol, caching, refresh) is azure_identity's own.

use azure_core::http::{AsyncRawResponse, HttpClient, Request};

#[derive(Debug)]
pub struct ToEmulator {
    authority: String,
    base: String,
    inner: reqwest::Client,
}

impl ToEmulator {
    /// Requests to `authority` (e.g. `https://login.emulator.test`) go to `base` instead.
    pub fn new(authority: &str, base: &str) -> Self {
        Self {
            authority: authority.to_string(),
            base: base.to_string(),
            inner: reqwest::Client::new(),
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for ToEmulator {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let mut request = request.clone();
        let rewritten = request
            .url()
            .as_str()
            .replacen(&self.authority, &self.base, 1);
        *request.url_mut() = rewritten.parse().map_err(|e| {
            azure_core::Error::with_message(azure_core::error::ErrorKind::Other, format!("{e}"))
        })?;
        self.inner.execute_request(&request).await
    }
}
