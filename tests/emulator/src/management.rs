//! The Office 365 Management Activity API for several tenants: subscriptions (start, stop,
//! list), content listings with the documented window rules and paging through `NextPageUri`,
//! content blobs, and the misbehaviours collectors must survive: AF429 as an HTTP 403, AF20022,
//! AF20051, duplicates across blobs, blobs listed out of order and blobs that show up late.
//!
//! Tokens must be issued by this emulator for the tenant in the URL (AF20010 otherwise), with a
//! `manage` audience. Times are UTC; windows follow the reference: start inclusive, end
//! exclusive, both or neither, at most 24 hours, start at most 7 days back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::Shared;

const DAY_MS: i64 = 86_400_000;

/// A tenant of the emulated API.
#[derive(Debug, Clone)]
pub struct MgmtTenant {
    pub tenant_id: String,
    /// The secret its app registration accepts (client id: the emulator's `client_id`).
    pub client_secret: String,
    /// Listing entries per page.
    pub page_size: usize,
    /// The paging header's name: `NextPageUri` (the reference) or `NextPageUrl` (other docs).
    pub next_page_header: &'static str,
    /// Whether its subscriptions start out enabled.
    pub subscriptions_enabled: bool,
}

/// A content blob to serve.
#[derive(Debug, Clone)]
pub struct BlobSpec {
    pub content_type: String,
    pub content_id: String,
    /// `contentCreated`, ms since the epoch.
    pub created_ms: i64,
    pub records: Vec<serde_json::Value>,
    /// Listings that cover it but leave it out before it appears (a late blob).
    pub hidden_listings: u32,
    /// Its GET answers AF20051.
    pub expired: bool,
}

/// A misbehaviour for a tenant's next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MgmtFault {
    /// HTTP 403 with AF429.
    Af429,
    /// HTTP 500 with AF50000.
    Af50000,
    /// The next content listing finds its subscription disabled (AF20022).
    Af20022,
    /// The next subscription start is answered HTTP 500 with AF50000.
    StartAf50000,
}

/// One request as the emulator saw it.
#[derive(Debug, Clone)]
pub struct MgmtRequest {
    pub tenant: String,
    /// start, stop, list, content, blob
    pub op: &'static str,
    pub status: u16,
    pub code: Option<String>,
    pub publisher_identifier: bool,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Subscription {
    enabled: bool,
    starts: u32,
}

#[derive(Debug)]
struct TenantData {
    spec: MgmtTenant,
    subscriptions: HashMap<String, Subscription>,
    blobs: Vec<BlobSpec>,
}

#[derive(Default)]
pub(crate) struct MgmtState {
    tenants: HashMap<String, TenantData>,
    throttle_until: Option<Instant>,
    faults: HashMap<String, VecDeque<MgmtFault>>,
    requests: Vec<MgmtRequest>,
    /// Listings in progress: content ids of the whole listing, paged out of here.
    listings: HashMap<u64, Listing>,
    next_listing: u64,
    pub(crate) base_url: String,
    /// How far the service's clock is ahead of this machine's (ms); windows are judged by it
    /// and the Date header shows it.
    clock_offset_ms: i64,
}

impl MgmtState {
    pub(crate) fn secret_of(&self, tenant: &str) -> Option<&str> {
        self.tenants
            .get(tenant)
            .map(|t| t.spec.client_secret.as_str())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

/// `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS`, UTC, as ms since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if s.get(4..5)? != "-"
        || s.get(7..8)? != "-"
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    let (h, mi, sec) = match s.len() {
        10 => (0, 0, 0),
        16 => (num(11..13)?, num(14..16)?, 0),
        19 => (num(11..13)?, num(14..16)?, num(17..19)?),
        _ => return None,
    };
    if s.len() > 10 && (s.get(10..11)? != "T" || s.get(13..14)? != ":") {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000)
}

/// An HTTP date (IMF-fixdate), for the Date header.
fn http_date(ms: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let iso = format_time(ms);
    let day = ms.div_euclid(DAY_MS).rem_euclid(7) as usize;
    let month: usize = iso[5..7].parse().unwrap_or(1);
    format!(
        "{}, {} {} {} {} GMT",
        DAYS[day],
        &iso[8..10],
        MONTHS[month - 1],
        &iso[0..4],
        &iso[11..19]
    )
}

/// ISO 8601 with milliseconds and Z, as the API writes `contentCreated`.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// A stable, order-scrambling key: listings are not in creation order, as in the real API.
fn scramble(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path((tenant, rest)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let op: &'static str = match (method.as_str(), rest.as_str()) {
        ("POST", "subscriptions/start") => "start",
        ("POST", "subscriptions/stop") => "stop",
        ("GET", "subscriptions/list") => "list",
        ("GET", "subscriptions/content") => "content",
        ("GET", r) if r.starts_with("audit/") => "blob",
        _ => return error(StatusCode::NOT_FOUND, "NotFound", "no such operation"),
    };
    let mut response = answer(&shared, op, &tenant, &rest, &query, &headers);
    let service_now = now_ms() + shared.state().mgmt.clock_offset_ms;
    if let Ok(date) = http_date(service_now).parse() {
        response.headers_mut().insert("date", date);
    }
    let status = response.status().as_u16();
    let code = response
        .headers()
        .get("x-emulator-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    shared.state().mgmt.requests.push(MgmtRequest {
        tenant,
        op,
        status,
        code,
        publisher_identifier: query
            .get("PublisherIdentifier")
            .is_some_and(|p| !p.is_empty()),
        at: Instant::now(),
    });
    response
}

fn coded(mut response: Response, code: &str) -> Response {
    if let Ok(v) = code.parse() {
        response.headers_mut().insert("x-emulator-code", v);
    }
    response
}

fn answer(
    shared: &Shared,
    op: &'static str,
    tenant: &str,
    rest: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let mut guard = shared.state();
    let state = &mut *guard;
    // The token: issued here, unexpired, for this tenant and the manage audience.
    let bearer = crate::bearer(headers);
    let Some(token) = bearer else {
        return error(
            StatusCode::UNAUTHORIZED,
            "",
            "Authorization has been denied for this request.",
        );
    };
    let Some(issued) = state
        .issued_tokens
        .iter()
        .find(|t| t.token == token && t.expires > Instant::now())
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "",
            "Authorization has been denied for this request.",
        );
    };
    if !issued.scope.contains("manage") {
        return error(
            StatusCode::UNAUTHORIZED,
            "",
            "the token's audience is not the Management API",
        );
    }
    if !issued.tenant.eq_ignore_ascii_case(tenant) {
        return coded(
            error(
                StatusCode::FORBIDDEN,
                "AF20010",
                "Tenant ID in the URL does not match the tenant ID in the access token",
            ),
            "AF20010",
        );
    }
    let mgmt = &mut state.mgmt;
    if mgmt.throttle_until.is_some_and(|t| Instant::now() < t) {
        return af429(op, query);
    }
    let fault = mgmt.faults.get_mut(tenant).and_then(|q| {
        let next = *q.front()?;
        // AF20022 waits for a listing, StartAf50000 for a start; the others hit whatever
        // comes next.
        let applies = match next {
            MgmtFault::Af20022 => op == "content",
            MgmtFault::StartAf50000 => op == "start",
            MgmtFault::Af429 | MgmtFault::Af50000 => true,
        };
        applies.then(|| q.pop_front())?
    });
    match fault {
        Some(MgmtFault::Af429) => return af429(op, query),
        Some(MgmtFault::Af50000 | MgmtFault::StartAf50000) => {
            return coded(
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "AF50000",
                    "An internal server error occurred. Retry the request.",
                ),
                "AF50000",
            );
        }
        Some(MgmtFault::Af20022) => {
            if let Some(ct) = query.get("contentType")
                && let Some(t) = mgmt.tenants.get_mut(tenant)
            {
                t.subscriptions.entry(ct.clone()).or_default().enabled = false;
            }
        }
        None => {}
    }
    let base = mgmt.base_url.clone();
    let service_now = now_ms() + mgmt.clock_offset_ms;
    let listing_id = mgmt.next_listing;
    let Some(data) = mgmt.tenants.get_mut(tenant) else {
        return coded(
            error(
                StatusCode::BAD_REQUEST,
                "AF20011",
                "Specified tenant ID does not exist in the system or has been deleted.",
            ),
            "AF20011",
        );
    };
    match op {
        "start" | "stop" => {
            let Some(ct) = query.get("contentType").filter(|c| is_content_type(c)) else {
                return coded(
                    error(
                        StatusCode::BAD_REQUEST,
                        "AF20020",
                        "The specified content type is not valid.",
                    ),
                    "AF20020",
                );
            };
            let sub = data.subscriptions.entry(ct.clone()).or_default();
            if op == "start" {
                sub.starts += 1;
                if sub.enabled {
                    return coded(
                        error(
                            StatusCode::BAD_REQUEST,
                            "AF20024",
                            "The subscription is already enabled. No property change.",
                        ),
                        "AF20024",
                    );
                }
                sub.enabled = true;
            } else {
                sub.enabled = false;
            }
            let body = serde_json::json!({
                "contentType": ct,
                "status": if sub.enabled { "enabled" } else { "disabled" },
                "webhook": null,
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        "list" => {
            let list: Vec<serde_json::Value> = CONTENT_TYPES
                .iter()
                .filter_map(|ct| {
                    let enabled = data.subscriptions.get(*ct).is_some_and(|s| s.enabled);
                    enabled.then(|| serde_json::json!({"contentType": ct, "status": "enabled", "webhook": null}))
                })
                .collect();
            (StatusCode::OK, axum::Json(list)).into_response()
        }
        "content" => {
            let page_size = data.spec.page_size.max(1);
            let header = data.spec.next_page_header;
            let (listing, offset) = match query.get("nextPage") {
                Some(token) => {
                    let parsed = token.split_once('-').and_then(|(l, o)| {
                        Some((l.parse::<u64>().ok()?, o.parse::<usize>().ok()?))
                    });
                    match parsed.filter(|(l, _)| mgmt.listings.contains_key(l)) {
                        Some(p) => p,
                        None => {
                            return coded(
                                error(StatusCode::BAD_REQUEST, "AF20031", "Invalid nextPage input"),
                                "AF20031",
                            );
                        }
                    }
                }
                None => {
                    let entries = match start_listing(data, query, service_now) {
                        Ok(entries) => entries,
                        Err(refusal) => return *refusal,
                    };
                    mgmt.next_listing += 1;
                    mgmt.listings.insert(listing_id, entries);
                    (listing_id, 0)
                }
            };
            let entries = mgmt.listings.get(&listing).cloned().unwrap_or_default();
            let end = (offset + page_size).min(entries.len());
            let items: Vec<serde_json::Value> = entries[offset.min(end)..end]
                .iter()
                .map(|(ct, id, created)| {
                    serde_json::json!({
                        "contentType": ct,
                        "contentId": id,
                        "contentUri": format!("{base}/api/v1.0/{tenant}/activity/feed/audit/{id}"),
                        "contentCreated": format_time(*created),
                        "contentExpiration": format_time(created + 7 * DAY_MS),
                    })
                })
                .collect();
            let mut response = (StatusCode::OK, axum::Json(items)).into_response();
            if end < entries.len() {
                let mut next = format!(
                    "{base}/api/v1.0/{tenant}/activity/feed/subscriptions/content?nextPage={listing}-{end}"
                );
                for key in ["contentType", "startTime", "endTime"] {
                    if let Some(v) = query.get(key) {
                        next.push_str(&format!("&{key}={v}"));
                    }
                }
                if let Ok(v) = next.parse() {
                    response.headers_mut().insert(header, v);
                }
            }
            response
        }
        "blob" => {
            let id = rest.trim_start_matches("audit/");
            match data.blobs.iter().find(|b| b.content_id == id) {
                None => coded(
                    error(
                        StatusCode::NOT_FOUND,
                        "AF20050",
                        "The specified content does not exist.",
                    ),
                    "AF20050",
                ),
                Some(b) if b.expired => coded(
                    error(
                        StatusCode::BAD_REQUEST,
                        "AF20051",
                        "Content requested with the key has already expired. Content older than 7 days cannot be retrieved.",
                    ),
                    "AF20051",
                ),
                Some(b) => {
                    let body = serde_json::to_vec(&b.records).unwrap_or_default();
                    Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/json; charset=utf-8")
                        .body(Body::from(body))
                        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
                }
            }
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

const CONTENT_TYPES: [&str; 5] = [
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
];

fn is_content_type(ct: &str) -> bool {
    CONTENT_TYPES.contains(&ct)
}

fn af429(op: &str, query: &HashMap<String, String>) -> Response {
    let publisher = query.get("PublisherIdentifier").map_or("", String::as_str);
    let method = match op {
        "blob" => "GetBlob",
        "content" => "ListContent",
        _ => "Subscriptions",
    };
    coded(
        error(
            StatusCode::FORBIDDEN,
            "AF429",
            &format!("Too many requests. Method={method}, PublisherId={publisher}"),
        ),
        "AF429",
    )
}

type Listing = Vec<(String, String, i64)>;

/// Checks a first listing request and collects what it lists: (content type, id, created).
fn start_listing(
    data: &mut TenantData,
    query: &HashMap<String, String>,
    now: i64,
) -> Result<Listing, Box<Response>> {
    let refuse =
        |status, code: &str, message: &str| Box::new(coded(error(status, code, message), code));
    let Some(ct) = query.get("contentType").filter(|c| is_content_type(c)) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "AF20020",
            "The specified content type is not valid.",
        ));
    };
    if !data.subscriptions.get(ct).is_some_and(|s| s.enabled) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "AF20022",
            "No subscription found for the specified content type",
        ));
    }
    let window = match (query.get("startTime"), query.get("endTime")) {
        (None, None) => (now - DAY_MS, now),
        (Some(s), Some(e)) => match (parse_time(s), parse_time(e)) {
            (Some(s), Some(e)) => (s, e),
            _ => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "AF20002",
                    "Invalid parameter type: startTime/endTime. Expected type: DateTime",
                ));
            }
        },
        _ => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "AF20030",
                "Start time and end time must both be specified (or both omitted) and must be less than or equal to 24 hours apart, with the start time no more than 7 days in the past.",
            ));
        }
    };
    let (start, end) = window;
    if start >= end {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "AF20055",
            "Start time and end time must both be specified (or both omitted) and must be less than or equal to 24 hours apart, with the start time prior to end time and start time no more than 7 days in the past.",
        ));
    }
    if end - start > DAY_MS || start < now - 7 * DAY_MS {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "AF20030",
            "Start time and end time must both be specified (or both omitted) and must be less than or equal to 24 hours apart, with the start time no more than 7 days in the past.",
        ));
    }
    let mut listed: Listing = Vec::new();
    for blob in data.blobs.iter_mut() {
        if &blob.content_type != ct || blob.created_ms < start || blob.created_ms >= end {
            continue;
        }
        if blob.hidden_listings > 0 {
            blob.hidden_listings -= 1;
            continue;
        }
        listed.push((
            blob.content_type.clone(),
            blob.content_id.clone(),
            blob.created_ms,
        ));
    }
    listed.sort_by_key(|(_, id, _)| scramble(id));
    Ok(listed)
}

impl crate::Emulator {
    /// Adds a tenant to the Management Activity API (and to the token endpoint).
    pub fn add_mgmt_tenant(&self, spec: MgmtTenant) {
        let enabled = spec.subscriptions_enabled;
        let subscriptions = CONTENT_TYPES
            .iter()
            .map(|ct| ((*ct).to_string(), Subscription { enabled, starts: 0 }))
            .collect();
        self.shared.state().mgmt.tenants.insert(
            spec.tenant_id.clone(),
            TenantData {
                spec,
                subscriptions,
                blobs: Vec::new(),
            },
        );
    }

    /// Serves more content blobs for a tenant (added before or during a run).
    pub fn add_blobs(&self, tenant: &str, blobs: impl IntoIterator<Item = BlobSpec>) {
        if let Some(t) = self.shared.state().mgmt.tenants.get_mut(tenant) {
            t.blobs.extend(blobs);
        }
    }

    /// Every Management API request of a tenant is answered AF429 for this long from now.
    pub fn throttle_for(&self, duration: Duration) {
        self.shared.state().mgmt.throttle_until = Some(Instant::now() + duration);
    }

    /// Queues misbehaviours for a tenant's next requests.
    pub fn push_mgmt_faults(&self, tenant: &str, faults: impl IntoIterator<Item = MgmtFault>) {
        self.shared
            .state()
            .mgmt
            .faults
            .entry(tenant.to_string())
            .or_default()
            .extend(faults);
    }

    /// Drops the misbehaviours still queued for a tenant.
    pub fn clear_mgmt_faults(&self, tenant: &str) {
        self.shared.state().mgmt.faults.remove(tenant);
    }

    /// Puts the service's clock `offset_ms` ahead of (or, negative, behind) this machine's.
    pub fn set_service_clock_offset(&self, offset_ms: i64) {
        self.shared.state().mgmt.clock_offset_ms = offset_ms;
    }

    pub fn mgmt_requests(&self) -> Vec<MgmtRequest> {
        self.shared.state().mgmt.requests.clone()
    }

    /// Turns a subscription on or off, as a tenant admin could.
    pub fn set_subscription_enabled(&self, tenant: &str, content_type: &str, enabled: bool) {
        if let Some(t) = self.shared.state().mgmt.tenants.get_mut(tenant) {
            t.subscriptions
                .entry(content_type.to_string())
                .or_default()
                .enabled = enabled;
        }
    }

    /// How often a subscription was asked to start, and whether it is enabled now.
    pub fn subscription(&self, tenant: &str, content_type: &str) -> (u32, bool) {
        self.shared
            .state()
            .mgmt
            .tenants
            .get(tenant)
            .and_then(|t| t.subscriptions.get(content_type))
            .map_or((0, false), |s| (s.starts, s.enabled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_the_accepted_forms() {
        assert_eq!(parse_time("1970-01-02"), Some(DAY_MS));
        assert_eq!(parse_time("1970-01-01T01:01"), Some(3_660_000));
        assert_eq!(parse_time("1970-01-01T00:00:07"), Some(7_000));
        assert_eq!(parse_time("1970-01-01T00:00:07Z"), None);
        assert_eq!(format_time(1_432_402_500_000), "2015-05-23T17:35:00.000Z");
        assert_eq!(parse_time("2015-05-23T17:35:00"), Some(1_432_402_500_000));
        assert_eq!(http_date(784_111_777_000), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
