//! The Logs Ingestion API: `POST /dataCollectionRules/{dcr}/streams/{stream}?api-version=2023-01-01`.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::{Fault, MAX_BODY_BYTES, MAX_FIELD_BYTES, RequestLog, Shared};

fn error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(code) {
        response.headers_mut().insert("x-ms-error-code", v);
    }
    response
}

/// Whether `value` fits a DCR column type.
fn fits(kind: &str, value: &Value) -> bool {
    match (kind, value) {
        (_, Value::Null) | ("dynamic", _) => true,
        ("string" | "guid", Value::String(_)) => true,
        ("int" | "long", Value::Number(n)) => n.is_i64() || n.is_u64(),
        ("real", Value::Number(_)) => true,
        ("boolean" | "bool", Value::Bool(_)) => true,
        ("datetime", Value::String(s)) => {
            s.len() >= 20 && s.ends_with('Z') && s.as_bytes().get(10) == Some(&b'T')
        }
        _ => false,
    }
}

/// Ends the connection without an answer. Each connection is served by its own task; a panic
/// there ends that task and closes the socket, which is what a reset looks like to the client.
fn drop_connection() -> ! {
    std::panic::resume_unwind(Box::new("emulated connection reset"))
}

pub(crate) async fn ingest(
    State(shared): State<Arc<Shared>>,
    Path((dcr, stream)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fault = {
        let mut state = shared.state();
        // An outage answers everything with its status, queued faults untouched.
        match state
            .outage
            .or_else(|| state.stream_outages.get(&stream).copied())
        {
            Some(status) => Some(Fault::Status {
                status,
                retry_after: None,
            }),
            None => state.faults.pop_front(),
        }
    };
    if fault == Some(Fault::Reset) {
        drop_connection();
    }
    let reset_after = fault == Some(Fault::ResetAfterAccept);
    let (status, rows, uncompressed, response) =
        check(&shared, &dcr, &stream, &query, &headers, &body, fault).await;
    if reset_after && status == 204 {
        drop_connection();
    }
    shared.state().requests.push(RequestLog {
        stream,
        status,
        compressed_bytes: body.len(),
        uncompressed_bytes: uncompressed,
        rows,
    });
    response
}

async fn check(
    shared: &Shared,
    dcr: &str,
    stream: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    fault: Option<Fault>,
) -> (u16, usize, usize, Response) {
    let refuse =
        |status: u16, code: &str, message: &str| (status, 0, 0, error(status, code, message));
    match fault {
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::Pass | Fault::Reset | Fault::ResetAfterAccept) | None => {}
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            let mut response = error(status, "EmulatedFault", "fault injected by the test");
            if let Some(seconds) = retry_after
                && let Ok(v) = HeaderValue::from_str(&seconds.to_string())
            {
                response.headers_mut().insert("retry-after", v);
            }
            return (status, 0, 0, response);
        }
    }
    if query.get("api-version").map(String::as_str) != Some("2023-01-01") {
        return refuse(400, "InvalidApiVersion", "api-version must be 2023-01-01");
    }
    let bearer = crate::bearer(headers);
    let Some(token) = bearer else {
        return refuse(401, "InvalidAuthentication", "a bearer token is required");
    };
    let valid = shared
        .state()
        .issued_tokens
        .iter()
        .any(|t| t.token == token && t.expires > Instant::now());
    if !valid {
        return refuse(403, "Forbidden", "the token is unknown or expired");
    }
    let streams = if dcr == shared.config.dcr_immutable_id {
        &shared.config.streams
    } else if let Some(streams) = shared.config.other_dcrs.get(dcr) {
        streams
    } else {
        return refuse(404, "NotFound", "no such data collection rule");
    };
    let columns = match streams.get(stream) {
        Some(columns) => Some(columns),
        None if shared.config.accept_undeclared_streams => None,
        None => return refuse(404, "InvalidStream", "the DCR declares no such stream"),
    };
    if body.len() > MAX_BODY_BYTES {
        return refuse(
            413,
            "ContentLengthLimitExceeded",
            "more than 1 MB compressed",
        );
    }
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        == Some("gzip");
    let mut text = Vec::new();
    if gzip {
        let decoder = flate2::read::GzDecoder::new(body);
        if decoder
            .take(MAX_BODY_BYTES as u64 + 1)
            .read_to_end(&mut text)
            .is_err()
        {
            return refuse(400, "InvalidContentEncoding", "the body is not valid gzip");
        }
    } else {
        text.extend_from_slice(body);
    }
    if text.len() > MAX_BODY_BYTES {
        return refuse(
            413,
            "ContentLengthLimitExceeded",
            "more than 1 MB uncompressed",
        );
    }
    let uncompressed = text.len();
    let Ok(Value::Array(mut rows)) = serde_json::from_slice::<Value>(&text) else {
        return (
            400,
            0,
            uncompressed,
            error(400, "InvalidPayload", "the body must be a JSON array"),
        );
    };
    let poison = shared.state().poison.clone();
    let mut truncated = 0;
    for (i, row) in rows.iter_mut().enumerate() {
        let Value::Object(fields) = row else {
            return (
                400,
                0,
                uncompressed,
                error(400, "InvalidPayload", &format!("row {i} is not an object")),
            );
        };
        for (name, value) in fields.iter_mut() {
            let kind = match columns {
                None => "dynamic",
                Some(columns) => match columns.iter().find(|(c, _)| c == name) {
                    Some((_, kind)) => kind.as_str(),
                    None => {
                        let message =
                            format!("row {i}: column {name} is not declared in stream {stream}");
                        return (400, 0, uncompressed, error(400, "InvalidColumn", &message));
                    }
                },
            };
            if !fits(kind, value) {
                let message = format!("row {i}: column {name} ({kind}) got {value}");
                return (
                    400,
                    0,
                    uncompressed,
                    error(400, "InvalidColumnType", &message),
                );
            }
            if crate::cut_field(value, MAX_FIELD_BYTES) {
                truncated += 1;
            }
        }
        if let Some(marker) = &poison
            && row.to_string().contains(marker.as_str())
        {
            let message = format!("row {i} holds a value the service refuses");
            return (400, 0, uncompressed, error(400, "InvalidRecord", &message));
        }
    }
    let count = rows.len();
    let mut state = shared.state();
    state.truncated_fields += truncated;
    state.accepted_count += count;
    if shared.config.keep_rows {
        state
            .accepted
            .extend(rows.into_iter().map(|r| (stream.to_string(), r)));
    }
    (
        204,
        count,
        uncompressed,
        StatusCode::NO_CONTENT.into_response(),
    )
}
