//! The Blob service's `SharedKey` signature, exactly as documented for version 2015-02-21 and
//! later (learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key):
//!
//! ```text
//! StringToSign = VERB + "\n" + Content-Encoding + "\n" + Content-Language + "\n"
//!              + Content-Length (empty when 0) + "\n" + Content-MD5 + "\n" + Content-Type + "\n"
//!              + Date + "\n" + If-Modified-Since + "\n" + If-Match + "\n" + If-None-Match + "\n"
//!              + If-Unmodified-Since + "\n" + Range + "\n"
//!              + CanonicalizedHeaders + CanonicalizedResource
//! Signature    = Base64(HMAC-SHA256(UTF8(StringToSign)))   key: Base64Decode(account key)
//! Authorization: SharedKey <account>:<Signature>
//! ```
//!
//! CanonicalizedHeaders: every `x-ms-*` header, lowercased, sorted, `name:value\n`, values
//! trimmed. CanonicalizedResource: `/` + account + the URL path as encoded, then one
//! `\nname:value` per query parameter (names lowercased and sorted, values URL-decoded, several
//! values of one name sorted and comma-joined). Path-style URLs (Azurite,
//! `http://127.0.0.1:10000/devstoreaccount1/c`) keep the account in the path as well, so the
//! resource is `/devstoreaccount1/devstoreaccount1/c`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use sha2::Sha256;

/// The date header every signed request carries (the standard `Date` is then signed empty).
pub const X_MS_DATE: &str = "x-ms-date";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Never includes the key itself.
    #[error(
        "the storage account key is not valid base64; use key1 or key2 as the portal's \"Access keys\" page shows it"
    )]
    KeyNotBase64,
    #[error("the storage account name {0:?} cannot be used in an Authorization header")]
    BadAccountName(String),
}

/// A storage account key, decoded. Its Debug output never shows it.
#[derive(Clone)]
pub struct AccountKey(Vec<u8>);

impl AccountKey {
    /// The key as the portal shows it (base64).
    pub fn from_base64(key: &str) -> Result<Self, SignatureError> {
        base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map(Self)
            .map_err(|_| SignatureError::KeyNotBase64)
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A header's value as text, trimmed; empty when absent.
fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map_or("", str::trim)
}

/// `x-ms-*` headers, lowercased (HeaderMap names already are), sorted, one `name:value\n` each;
/// repeated headers are comma-joined in the order given.
pub fn canonicalized_headers(headers: &HeaderMap) -> String {
    let mut ms: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if name.as_str().starts_with("x-ms-") {
            let value = String::from_utf8_lossy(value.as_bytes()).trim().to_string();
            ms.entry(name.as_str()).or_default().push(value);
        }
    }
    let mut out = String::new();
    for (name, values) in ms {
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out
}

/// `/<account><encoded path>` plus the query parameters, decoded and sorted.
pub fn canonicalized_resource(account: &str, url: &Url) -> String {
    let mut out = format!("/{account}{}", url.path());
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in url.query_pairs() {
        params
            .entry(name.to_lowercase())
            .or_default()
            .push(value.into_owned());
    }
    for (name, mut values) in params {
        values.sort();
        out.push('\n');
        out.push_str(&name);
        out.push(':');
        out.push_str(&values.join(","));
    }
    out
}

/// The string a request's signature covers.
pub fn string_to_sign(method: &Method, url: &Url, headers: &HeaderMap, account: &str) -> String {
    let content_length = match header_text(headers, header::CONTENT_LENGTH) {
        "0" => "",
        other => other,
    };
    // With x-ms-date present the standard Date is signed as an empty string.
    let date = if headers.contains_key(X_MS_DATE) {
        ""
    } else {
        header_text(headers, header::DATE)
    };
    let fields = [
        method.as_str(),
        header_text(headers, header::CONTENT_ENCODING),
        header_text(headers, header::CONTENT_LANGUAGE),
        content_length,
        header_text(headers, "content-md5"),
        header_text(headers, header::CONTENT_TYPE),
        date,
        header_text(headers, header::IF_MODIFIED_SINCE),
        header_text(headers, header::IF_MATCH),
        header_text(headers, header::IF_NONE_MATCH),
        header_text(headers, header::IF_UNMODIFIED_SINCE),
        header_text(headers, header::RANGE),
    ];
    let mut out = fields.join("\n");
    out.push('\n');
    out.push_str(&canonicalized_headers(headers));
    out.push_str(&canonicalized_resource(account, url));
    out
}

/// Base64 of the HMAC-SHA256 of `string_to_sign` under the key.
pub fn signature(key: &AccountKey, string_to_sign: &str) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.0)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Signs a request in place: adds `x-ms-date` (now) when missing, `Content-Length` when the body
/// is in memory and the header is not set (so the signed length is the one sent), then
/// `Authorization: SharedKey <account>:<signature>`.
pub fn sign_request(
    request: &mut reqwest::Request,
    account: &str,
    key: &AccountKey,
) -> Result<(), SignatureError> {
    if !request.headers().contains_key(X_MS_DATE) {
        let now = crate::sinks::data_collector::rfc1123(SystemTime::now());
        // An RFC 1123 date is always a valid header value.
        if let Ok(value) = HeaderValue::from_str(&now) {
            request
                .headers_mut()
                .insert(HeaderName::from_static(X_MS_DATE), value);
        }
    }
    let body_len = request.body().and_then(|b| b.as_bytes()).map(<[u8]>::len);
    if let Some(len) = body_len
        && !request.headers().contains_key(header::CONTENT_LENGTH)
    {
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let sts = string_to_sign(request.method(), request.url(), request.headers(), account);
    let value = HeaderValue::from_str(&format!("SharedKey {account}:{}", signature(key, &sts)))
        .map_err(|_| SignatureError::BadAccountName(account.to_string()))?;
    request.headers_mut().insert(header::AUTHORIZATION, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Azurite's published development key (not a secret).
    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    const DATE: &str = "Sun, 22 Nov 2026 13:00:00 GMT";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    /// The two examples of the doc's "Shared Key format for 2009-09-19 and later" section.
    #[test]
    fn canonicalized_resource_matches_the_documented_examples() {
        let url = Url::parse(
            "https://myaccount.blob.core.windows.net/mycontainer?restype=container&comp=metadata",
        )
        .unwrap();
        assert_eq!(
            canonicalized_resource("myaccount", &url),
            "/myaccount/mycontainer\ncomp:metadata\nrestype:container"
        );
        let url = Url::parse("https://myaccount.blob.core.windows.net/mycontainer?restype=container&comp=list&include=snapshots&include=metadata&include=uncommittedblobs").unwrap();
        assert_eq!(
            canonicalized_resource("myaccount", &url),
            "/myaccount/mycontainer\ncomp:list\ninclude:metadata,snapshots,uncommittedblobs\nrestype:container"
        );
    }

    /// Derived by hand from the rules: twelve standard fields (Content-Length 0 signed empty,
    /// Date empty because x-ms-date is set, the x-ms-range not in the Range slot), then the
    /// x-ms-* headers sorted with values trimmed (a non-x-ms header left out), then the
    /// path-style resource with the path as encoded and the query names lowercased, sorted,
    /// values decoded.
    #[test]
    fn string_to_sign_follows_the_documented_rules() {
        let url = Url::parse(
            "http://127.0.0.1:10000/devstoreaccount1/defender/tenantId%3Dabc/PT1H.json?Timeout=30&comp=x%2Fy",
        )
        .unwrap();
        let h = headers(&[
            ("x-ms-version", "2021-08-06"),
            ("x-ms-range", "  bytes=0-1023 "),
            ("x-ms-date", DATE),
            ("content-length", "0"),
            ("user-agent", "ignored"),
            ("x-ms-client-request-id", "abc"),
        ]);
        let expected = "GET\n\n\n\n\n\n\n\n\n\n\n\n\
             x-ms-client-request-id:abc\n\
             x-ms-date:Sun, 22 Nov 2026 13:00:00 GMT\n\
             x-ms-range:bytes=0-1023\n\
             x-ms-version:2021-08-06\n\
             /devstoreaccount1/devstoreaccount1/defender/tenantId%3Dabc/PT1H.json\n\
             comp:x/y\n\
             timeout:30";
        assert_eq!(
            string_to_sign(&Method::GET, &url, &h, "devstoreaccount1"),
            expected
        );
    }

    /// A PUT with a body: the length, type and MD5 land in their slots.
    #[test]
    fn string_to_sign_puts_standard_headers_in_their_slots() {
        let url = Url::parse("https://acct.blob.core.windows.net/c/b?comp=appendblock").unwrap();
        let h = headers(&[
            ("content-length", "5"),
            ("content-type", "application/octet-stream"),
            ("content-md5", "XUFAKrxLKna5cZ2REBfFkg=="),
            ("if-match", "\"0x1\""),
            ("x-ms-date", DATE),
        ]);
        assert_eq!(
            string_to_sign(&Method::PUT, &url, &h, "acct"),
            "PUT\n\n\n5\nXUFAKrxLKna5cZ2REBfFkg==\napplication/octet-stream\n\n\n\"0x1\"\n\n\n\n\
             x-ms-date:Sun, 22 Nov 2026 13:00:00 GMT\n/acct/c/b\ncomp:appendblock"
        );
    }

    /// Expected value computed independently, two ways that agree:
    /// `python3 -c 'import base64,hmac,hashlib; print(base64.b64encode(hmac.new(base64.b64decode(KEY), STS.encode(), hashlib.sha256).digest()))'`
    /// and `printf '<STS>' | openssl dgst -sha256 -mac HMAC -macopt hexkey:<key as hex> -binary | base64`.
    #[test]
    fn signature_matches_an_independent_computation() {
        let sts = "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Sun, 22 Nov 2026 13:00:00 GMT\nx-ms-version:2021-08-06\n/devstoreaccount1/devstoreaccount1/defender\ncomp:list\nprefix:tenantId=abc/y=2026\nrestype:container";
        let key = AccountKey::from_base64(DEV_KEY).unwrap();
        assert_eq!(
            signature(&key, sts),
            "XbtdBcJLa9cb15HlymQB08RLz/JDCbIUrxxZdh7p5Z4="
        );

        // The same request built as a reqwest::Request signs to the same value.
        let url = Url::parse("http://127.0.0.1:10000/devstoreaccount1/defender?restype=container&comp=list&prefix=tenantId%3Dabc%2Fy%3D2026").unwrap();
        let mut request = reqwest::Request::new(Method::GET, url);
        request.headers_mut().extend(headers(&[
            ("x-ms-date", DATE),
            ("x-ms-version", "2021-08-06"),
        ]));
        sign_request(&mut request, "devstoreaccount1", &key).unwrap();
        assert_eq!(
            request.headers()[header::AUTHORIZATION],
            "SharedKey devstoreaccount1:XbtdBcJLa9cb15HlymQB08RLz/JDCbIUrxxZdh7p5Z4="
        );
    }

    #[test]
    fn sign_request_adds_date_and_body_length() {
        let key = AccountKey::from_base64(DEV_KEY).unwrap();
        let url = Url::parse("http://127.0.0.1:1/devstoreaccount1/c/b?comp=appendblock").unwrap();
        let mut request = reqwest::Request::new(Method::PUT, url);
        *request.body_mut() = Some(b"hello".to_vec().into());
        sign_request(&mut request, "devstoreaccount1", &key).unwrap();
        assert!(request.headers().contains_key(X_MS_DATE));
        assert_eq!(request.headers()[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn the_key_never_shows() {
        let key = AccountKey::from_base64(DEV_KEY).unwrap();
        assert_eq!(format!("{key:?}"), "<redacted>");
        let err = AccountKey::from_base64("not base64 !!secret!!").unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }
}
