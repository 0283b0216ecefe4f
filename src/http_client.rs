//! The one HTTP client configuration every outbound call uses (token requests included):
//! HTTPS_PROXY/NO_PROXY from the environment, extra trusted CAs from a file, a timeout.

use std::time::Duration;

use crate::config::HttpConfig;

#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("http.ca_bundle {path}: {detail}; give a PEM file of CA certificates")]
    CaBundle { path: String, detail: String },
    #[error("HTTP client: {0}")]
    Build(String),
}

pub fn build(config: &HttpConfig) -> Result<reqwest::Client, HttpClientError> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_secs.max(1)))
        .user_agent(concat!("m365-sentinel/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &config.ca_bundle {
        let fail = |detail: String| HttpClientError::CaBundle {
            path: path.display().to_string(),
            detail,
        };
        let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("no certificate in it".into()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| HttpClientError::Build(e.to_string()))
}

/// An error with its causes ("error sending request: connection refused"): reqwest's own
/// message alone rarely says what went wrong.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
