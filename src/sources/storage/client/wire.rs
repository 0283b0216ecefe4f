//! URL and header text: the account from an endpoint, URLs without their query, percent
//! encoding, Content-Range, bounded reads of a response body.

use super::*;

/// The account name for messages: the first path segment of a path-style endpoint (an IP
/// address or localhost), else the first label of the host.
pub(super) fn account_from_endpoint(url: &Url) -> String {
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
pub(super) fn strip_query(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// Percent-encodes all but RFC 3986's unreserved characters, keeping `/` when `keep_slash`
/// (blob names use it as a path separator).
pub(super) fn encode(text: &str, keep_slash: bool) -> String {
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
pub(super) fn decode(text: &str) -> String {
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
pub(super) fn range_start(value: &str) -> Option<u64> {
    value
        .trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

pub(super) async fn read_limited(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
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
