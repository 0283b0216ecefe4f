//! The Management Activity API side of the end-to-end tests: three emulated tenants, content
//! made to order (paged, out of order, duplicates, late blobs), configs for the binary, and the
//! checks on what reached the ingestion emulator.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use m365_emulator::{BlobSpec, Emulator, MgmtTenant, format_time};
use serde_json::{Value, json};

use super::azure::{CLIENT, DCR, SECRET, TENANT};

pub const PUBLISHER: &str = "99999999-8888-4777-8666-555555555555";
pub const TENANTS: [&str; 3] = [
    "aaaaaaaa-0000-4000-8000-000000000001",
    "aaaaaaaa-0000-4000-8000-000000000002",
    "aaaaaaaa-0000-4000-8000-000000000003",
];
pub use m365_sentinel::sources::management::config::ALL_CONTENT_TYPES as CONTENT_TYPES;
pub const HOUR_MS: i64 = 3_600_000;
/// Rows per request body in these runs (max_body_bytes 100 KB, rows of about 700 bytes).
pub const BATCH_ROWS_BOUND: usize = 160;
/// Requests in flight per stream (sink.concurrency).
pub const CONCURRENCY: usize = 2;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An audit record as the API serves it (CreationTime without a zone, RecordType an integer).
pub fn audit_record(tenant: usize, ct: usize, i: usize, created_ms: i64) -> Value {
    let (record_type, workload, operation) = match CONTENT_TYPES[ct] {
        "Audit.AzureActiveDirectory" => (15, "AzureActiveDirectory", "UserLoggedIn"),
        "Audit.Exchange" => (1, "Exchange", "Set-Mailbox"),
        "Audit.SharePoint" => (6, "SharePoint", "FileAccessed"),
        "Audit.General" => (25, "MicrosoftTeams", "MemberAdded"),
        _ => (11, "SharePoint", "DlpRuleMatch"),
    };
    let creation = format_time(created_ms - 600_000);
    json!({
        "CreationTime": &creation[..19],
        "Id": format!("{tenant:08x}-{ct:04x}-4000-8000-{i:012x}"),
        "Operation": operation,
        "OrganizationId": TENANTS[tenant],
        "RecordType": record_type,
        "ResultStatus": "Succeeded",
        "UserKey": format!("10032000{i:08X}"),
        "UserType": 0,
        "Version": 1,
        "Workload": workload,
        "ClientIP": "203.0.113.7:49152",
        "ObjectId": format!("https://contoso.sharepoint.com/sites/s/doc{i}.docx"),
        "UserId": format!("user{i}@contoso.com"),
        "UserAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36 Edg/120.0",
    })
}

/// What the emulator serves, and what must arrive.
pub struct Content {
    /// Record Id → the raw record.
    pub records: HashMap<String, Value>,
    /// Record Id → creation time of the earliest blob holding it: where a collector handing
    /// blobs on in creation order takes it from.
    pub first_blob: HashMap<String, i64>,
    pub blobs: usize,
    /// Record Id → how many content blobs hold it (more than one for the repeated records).
    pub served: HashMap<String, usize>,
    pub duplicate_copies: usize,
    pub late_blobs: usize,
    pub max_blob_records: usize,
}

/// `total` distinct records over the tenants and content types, in blobs of 20 to 120 records
/// created over the last `hours`: one blob in 12 repeats a few records of the blob before it;
/// with `late_blobs`, one in 25 is created in the last half hour and hidden from its first
/// listing (a single pass can't see those).
pub fn make_content(
    emulator: &Emulator,
    tenants: &[usize],
    total: usize,
    hours: i64,
    late_blobs: bool,
) -> Content {
    make_content_aged(
        emulator,
        tenants,
        total,
        HOUR_MS..hours * HOUR_MS,
        late_blobs,
        0,
    )
}

/// As [`make_content`], with blobs created `age` ms ago and record numbers from `first` (so a
/// second batch of content has ids of its own).
pub fn make_content_aged(
    emulator: &Emulator,
    tenants: &[usize],
    total: usize,
    age: std::ops::Range<i64>,
    late_blobs: bool,
    first: usize,
) -> Content {
    let mut rng = fastrand::Rng::with_seed(4 + first as u64);
    let now = now_ms();
    let streams: Vec<(usize, usize)> = tenants
        .iter()
        .flat_map(|t| (0..CONTENT_TYPES.len()).map(move |c| (*t, c)))
        .collect();
    let mut content = Content {
        records: HashMap::new(),
        first_blob: HashMap::new(),
        blobs: 0,
        served: HashMap::new(),
        duplicate_copies: 0,
        late_blobs: 0,
        max_blob_records: 0,
    };
    for (s, (tenant, ct)) in streams.iter().enumerate() {
        let share = total / streams.len() + usize::from(s < total % streams.len());
        let mut i = 0;
        let mut previous: Vec<Value> = Vec::new();
        let mut blobs = Vec::new();
        while i < share {
            let n = rng.usize(20..=120).min(share - i);
            let late = late_blobs && rng.usize(0..25) == 0;
            let created = if late {
                now - rng.i64(60_000..30 * 60_000)
            } else {
                now - rng.i64(age.clone())
            };
            let mut records: Vec<Value> = (i..i + n)
                .map(|k| audit_record(*tenant, *ct, first + k + s * 1_000_000, created))
                .collect();
            for r in &records {
                content
                    .records
                    .insert(r["Id"].as_str().unwrap().to_string(), r.clone());
            }
            if rng.usize(0..12) == 0 && !previous.is_empty() {
                let copies = rng.usize(1..=previous.len().min(10));
                records.extend(previous[..copies].iter().cloned());
                content.duplicate_copies += copies;
            }
            content.max_blob_records = content.max_blob_records.max(records.len());
            for r in &records {
                *content
                    .served
                    .entry(r["Id"].as_str().unwrap().to_string())
                    .or_default() += 1;
                let first = content
                    .first_blob
                    .entry(r["Id"].as_str().unwrap().to_string())
                    .or_insert(created);
                *first = (*first).min(created);
            }
            previous = records.clone();
            content.late_blobs += usize::from(late);
            blobs.push(BlobSpec {
                content_type: CONTENT_TYPES[*ct].to_string(),
                content_id: format!("{created}${s}${}", first + i),
                created_ms: created,
                records,
                hidden_listings: u32::from(late),
                expired: false,
            });
            i += n;
        }
        content.blobs += blobs.len();
        emulator.add_blobs(TENANTS[*tenant], blobs);
    }
    content
}

pub async fn emulator_with_tenants(subscriptions_enabled: [bool; 3]) -> Emulator {
    let emulator = Emulator::start_tls(super::azure::emulator_config())
        .await
        .unwrap();
    for (i, tenant) in TENANTS.iter().enumerate() {
        emulator.add_mgmt_tenant(MgmtTenant {
            tenant_id: tenant.to_string(),
            client_secret: format!("secret-of-tenant-{i}"),
            page_size: 20,
            // The third tenant pages with the other documented header name.
            next_page_header: if i == 2 { "NextPageUrl" } else { "NextPageUri" },
            subscriptions_enabled: subscriptions_enabled[i],
        });
    }
    emulator
}

/// A config for the binary: the three tenants (`wrong_secret` gets a secret the emulated
/// Entra refuses), small bodies so many requests are in flight, short polls.
pub fn write_config(emulator: &Emulator, dir: &Path, wrong_secret: Option<usize>) -> PathBuf {
    write_config_with(emulator, dir, wrong_secret, "", "")
}

/// As [`write_config`], with more `management_api` and `spool` settings (indented lines).
pub fn write_config_with(
    emulator: &Emulator,
    dir: &Path,
    wrong_secret: Option<usize>,
    management_extra: &str,
    spool_extra: &str,
) -> PathBuf {
    let secrets: Vec<String> = (0..TENANTS.len())
        .map(|i| {
            if wrong_secret == Some(i) {
                "not-the-secret".to_string()
            } else {
                format!("secret-of-tenant-{i}")
            }
        })
        .collect();
    write_config_for(
        emulator,
        dir,
        &TENANTS.map(String::from),
        &secrets,
        management_extra,
        spool_extra,
    )
}

/// As [`write_config_with`], for `tenants` with their `secrets`.
pub fn write_config_for(
    emulator: &Emulator,
    dir: &Path,
    tenant_ids: &[String],
    secrets: &[String],
    management_extra: &str,
    spool_extra: &str,
) -> PathBuf {
    std::fs::write(dir.join("ca.pem"), emulator.ca_pem().unwrap()).unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let url = emulator.url();
    let mut tenants = String::new();
    for (i, (tenant, secret)) in tenant_ids.iter().zip(secrets).enumerate() {
        std::fs::write(dir.join(format!("secret-{i}")), secret).unwrap();
        tenants.push_str(&format!(
            "    - tenant_id: {tenant}\n      name: tenant-{i}\n      publisher_identifier: {PUBLISHER}\n      endpoint: {url}\n      authority_host: {url}\n      credential:\n        kind: client_secret\n        tenant_id: {tenant}\n        client_id: {CLIENT}\n        secret_file: {dir}/secret-{i}\n",
            dir = dir.display()
        ));
    }
    let config = format!(
        "sink:\n  logs_ingestion:\n    endpoint: {url}\n    dcr_immutable_id: {DCR}\n  credential:\n    kind: client_secret\n    tenant_id: {TENANT}\n    client_id: {CLIENT}\n    secret_file: {dir}/secret\n  authority_host: {url}\n  flush_delay_ms: 200\n  concurrency: {CONCURRENCY}\nbatch:\n  max_body_bytes: 100000\nhttp:\n  ca_bundle: {dir}/ca.pem\ndlq:\n  dir: {dir}/dlq\nspool:\n  dir: {dir}/spool\n{spool_extra}retry:\n  min_delay_ms: 100\n  max_delay_secs: 2\nmanagement_api:\n  state_dir: {dir}/state\n  poll_interval_ms: 300\n  initial_lookback_hours: 96\n  blob_concurrency: 4\n{management_extra}  tenants:\n{tenants}",
        dir = dir.display()
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

pub fn spawn(args: &[&str], config: &Path, log: &Path) -> Child {
    spawn_with(args, config, log, &[])
}

/// As [`spawn`], with environment variables.
pub fn spawn_with(args: &[&str], config: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_m365-sentinel"))
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The arguments of `run --once` with `config`.
pub fn once(config: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--once".into(),
        "--config".into(),
        config.display().to_string(),
    ]
}

/// The arguments of `dry-run` with `config`, writing to `out`.
pub fn dry_run_args(config: &Path, out: &Path) -> Vec<String> {
    vec![
        "dry-run".into(),
        "--config".into(),
        config.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ]
}

/// Sends SIGTERM (what Kubernetes sends) and waits for the process: its exit status and how
/// long it took to stop.
pub async fn sigterm_and_wait(mut child: Child) -> (std::process::ExitStatus, Duration) {
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    (status, started.elapsed())
}

/// Runs the binary to its end, off the async runtime so the emulator keeps answering.
pub async fn run_to_end(args: Vec<String>) -> std::process::Output {
    run_to_end_with(args, Vec::new()).await
}

pub async fn run_to_end_with(
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_m365-sentinel"))
            .args(args)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Waits, polling the emulator, until `done` holds; fails the test after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lets a continuous run list every content type three more times (late blobs need a
/// relisting, and anything sent twice would show), then kills it.
pub async fn stop_after_three_rounds(emulator: &Emulator, mut child: Child) {
    let seen = listings(emulator);
    wait_for("three more rounds", Duration::from_secs(60), || {
        listings(emulator) >= seen + 3 * 15
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Accepted OfficeActivity rows by OfficeId, with how many times each arrived.
pub fn arrivals(emulator: &Emulator) -> (BTreeMap<String, usize>, Vec<Value>) {
    let mut counts = BTreeMap::new();
    let mut rows = Vec::new();
    for (stream, row) in emulator.accepted() {
        // The connector's own health rows go beside the data.
        if stream == "Custom-M365SentinelHealth_CL" {
            continue;
        }
        assert_eq!(
            stream, "Custom-OfficeActivity_CL",
            "only audit rows expected"
        );
        *counts
            .entry(row["OfficeId"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
        rows.push(row);
    }
    (counts, rows)
}

pub fn listings(emulator: &Emulator) -> usize {
    emulator
        .mgmt_requests()
        .iter()
        .filter(|r| r.op == "content" && r.status == 200)
        .count()
}

/// Every record arrived, mapped as OfficeActivity expects.
pub fn assert_rows_match(rows: &[Value], content: &Content) {
    for row in rows {
        let id = row["OfficeId"].as_str().unwrap();
        let raw = &content.records[id];
        assert_eq!(row["Operation"], raw["Operation"], "{id}");
        assert_eq!(row["OrganizationId"], raw["OrganizationId"]);
        assert_eq!(row["UserId"], raw["UserId"]);
        assert_eq!(row["ClientIP"], raw["ClientIP"], "ClientIP verbatim");
        let expected_type = match raw["RecordType"].as_i64().unwrap() {
            1 => "ExchangeAdmin",
            6 => "SharePointFileOperation",
            11 => "ComplianceDLPSharePoint",
            15 => "AzureActiveDirectoryStsLogon",
            _ => "MicrosoftTeams",
        };
        assert_eq!(row["RecordType"], expected_type);
        assert_eq!(row["UserType"], "Regular");
        assert_eq!(
            row["TimeGenerated"].as_str().unwrap(),
            format!("{}Z", raw["CreationTime"].as_str().unwrap())
        );
    }
}

pub fn assert_publisher_on_every_call(emulator: &Emulator) {
    let requests = emulator.mgmt_requests();
    assert!(!requests.is_empty());
    let without: Vec<_> = requests
        .iter()
        .filter(|r| !r.publisher_identifier)
        .collect();
    assert!(
        without.is_empty(),
        "calls without PublisherIdentifier: {without:?}"
    );
}

/// Runs the binary, SIGKILLs it each time delivery reached the next of `kill_points` (rows the
/// ingestion emulator accepted), then lets a last run deliver everything. Returns what arrived.
pub async fn kill_loop(
    emulator: &Emulator,
    content: &Content,
    config: &Path,
    log: &Path,
    kill_points: &[usize],
) -> (BTreeMap<String, usize>, Vec<Value>) {
    for point in kill_points {
        let mut child = spawn(&["run"], config, log);
        wait_for("the kill point", Duration::from_secs(300), || {
            emulator.accepted_count() >= *point
        })
        .await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let child = spawn(&["run"], config, log);
    wait_for("every record", Duration::from_secs(300), || {
        let (counts, _) = arrivals(emulator);
        content.records.keys().all(|id| counts.contains_key(id))
    })
    .await;
    stop_after_three_rounds(emulator, child).await;
    arrivals(emulator)
}
