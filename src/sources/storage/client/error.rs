//! What a Blob service call can fail with, and the service's error body read without its
//! secrets (quoted parts masked).

use super::*;

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

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ErrorBody {
    pub(super) code: Option<String>,
    pub(super) message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawError {
    #[serde(default)]
    pub(super) code: Option<String>,
    #[serde(default)]
    pub(super) message: Option<String>,
    #[serde(default)]
    pub(super) authentication_error_detail: Option<String>,
}

/// The code and a message from an `<Error>` body: the message's first line (the rest is request
/// id and time), plus the authentication detail with its quoted parts masked (they can hold the
/// request's signature).
pub(super) fn parse_error_body(body: &[u8]) -> ErrorBody {
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
pub(super) fn mask_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('\'').enumerate() {
        if i > 0 {
            out.push('\'');
        }
        out.push_str(if i % 2 == 1 { "…" } else { part });
    }
    out
}
