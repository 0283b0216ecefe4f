//! The legacy HTTP Data Collector API: `POST /api/logs?api-version=2016-04-01` with a SharedKey
//! signature it verifies byte for byte, Log-Type rules, date skew and the 30 MB / 32 KB limits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::{RequestLog, Shared};

const MAX_POST_BYTES: usize = 30_000_000;
const MAX_FIELD_BYTES: usize = 32 * 1024;
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

fn error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(serde_json::json!({"Error": code, "Message": message})),
    )
        .into_response()
}

/// The signature as the documentation defines it, computed here on its own.
fn expected_signature(key_base64: &str, content_length: usize, date: &str) -> Option<String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine.decode(key_base64).ok()?;
    let to_sign = format!("POST\n{content_length}\napplication/json\nx-ms-date:{date}\n/api/logs");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).ok()?;
    mac.update(to_sign.as_bytes());
    Some(engine.encode(mac.finalize().into_bytes()))
}

/// Seconds since the epoch of an RFC 1123 date (`Mon, 04 Apr 2016 08:00:00 GMT`).
fn parse_date(value: &str) -> Option<u64> {
    let (_, rest) = value.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| x == month)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').filter_map(|p| p.parse().ok()).collect();
    let [h, mi, s] = hms.as_slice() else {
        return None;
    };
    // Days from civil (Howard Hinnant).
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).ok()
}

pub(crate) async fn collect(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let log_type = headers
        .get("log-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (status, rows, response) = check(&shared, &query, &headers, &body);
    shared.state().requests.push(RequestLog {
        stream: format!("dc:{log_type}"),
        status,
        compressed_bytes: body.len(),
        uncompressed_bytes: body.len(),
        rows,
    });
    response
}

fn check(
    shared: &Shared,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> (u16, usize, Response) {
    let refuse = |status: u16, code: &str, message: &str| (status, 0, error(status, code, message));
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if query.get("api-version").map(String::as_str) != Some("2016-04-01") {
        return refuse(400, "InvalidApiVersion", "api-version must be 2016-04-01");
    }
    if header("content-type") != Some("application/json") {
        return refuse(
            400,
            "UnsupportedContentType",
            "Content-Type must be application/json",
        );
    }
    let log_type = header("log-type").unwrap_or("");
    if log_type.is_empty() {
        return refuse(400, "MissingLogType", "Log-Type is required");
    }
    if log_type.len() > 100
        || !log_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return refuse(
            400,
            "InvalidLogType",
            "Log-Type: letters, digits and _ only, at most 100",
        );
    }
    let Some(date) = header("x-ms-date") else {
        return refuse(403, "InvalidAuthorization", "x-ms-date is required");
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match parse_date(date) {
        Some(at) if at.abs_diff(now) <= MAX_SKEW.as_secs() => {}
        _ => {
            return refuse(
                403,
                "InvalidAuthorization",
                "x-ms-date is missing, malformed or skewed",
            );
        }
    }
    let config = &shared.config;
    let expected = expected_signature(&config.shared_key, body.len(), date)
        .map(|sig| format!("SharedKey {}:{sig}", config.workspace_id));
    if header("authorization") != expected.as_deref() {
        return refuse(
            403,
            "InvalidAuthorization",
            "the SharedKey signature does not match",
        );
    }
    if body.len() > MAX_POST_BYTES {
        return refuse(413, "RequestTooLarge", "more than 30 MB in one post");
    }
    let Ok(Value::Array(mut rows)) = serde_json::from_slice::<Value>(body) else {
        return refuse(400, "InvalidDataFormat", "the body must be a JSON array");
    };
    let mut truncated = 0;
    for row in rows.iter_mut() {
        let Value::Object(fields) = row else {
            return refuse(400, "InvalidDataFormat", "every record must be an object");
        };
        for (name, value) in fields.iter_mut() {
            if ["TimeGenerated", "tenant", "RawData"].contains(&name.as_str()) {
                return refuse(
                    400,
                    "InvalidDataFormat",
                    &format!("{name} is a reserved name"),
                );
            }
            if crate::cut_field(value, MAX_FIELD_BYTES) {
                truncated += 1;
            }
        }
    }
    let count = rows.len();
    let stream = format!("dc:{log_type}");
    let mut state = shared.state();
    state.truncated_fields += truncated;
    state.accepted_count += count;
    if config.keep_rows {
        state
            .accepted
            .extend(rows.into_iter().map(|r| (stream.clone(), r)));
    }
    (200, count, StatusCode::OK.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_the_documented_signature() {
        assert_eq!(
            parse_date("Mon, 04 Apr 2016 08:00:00 GMT"),
            Some(1_459_756_800)
        );
        assert_eq!(parse_date("Mon 04 Apr 2016"), None);
        // The same independent value the connector's own test uses.
        let key = "bTM2NS1zZW50aW5lbCB0ZXN0IGtleTogbm90IGEgcmVhbCB3b3Jrc3BhY2Uga2V5IQ==";
        assert_eq!(
            expected_signature(key, 1024, "Mon, 04 Apr 2016 08:00:00 GMT").as_deref(),
            Some("jMrC0YLvwzlRzeF1aHzqR/oqJIFTXjJODQyFpkGxHcA=")
        );
    }
}
