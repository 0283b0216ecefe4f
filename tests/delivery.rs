//! Delivery to the emulated workspace: tokens from azure_identity (its transport pointed at the
//! emulator, as the issue asks: no hand-written token client), bodies from the same batcher as
//! dry-run, faults, poison rows and the dead-letter store.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use azure_core::http::Transport;
use common::azure::{CLIENT, SHARED_KEY, TENANT, WORKSPACE};
use m365_emulator::{Emulator, Fault, ToEmulator};
use m365_sentinel::auth::{Cloud, CredentialConfig, credential};
use m365_sentinel::pipeline::{Output, Setup, process_unit};
use m365_sentinel::record::Position;
use m365_sentinel::sinks::batch::{Body, BodyBuilder};
use m365_sentinel::sinks::logs_ingestion::LogsIngestionConfig;
use m365_sentinel::sinks::retry::RetryPolicy;
use m365_sentinel::sinks::workspace::{Api, Target, WorkspaceSink};
use m365_sentinel::state::dlq::DeadLetterStore;
use serde_json::Value;

const AUTHORITY: &str = "https://login.emulator.test";

struct World {
    emulator: Emulator,
    sink: Arc<WorkspaceSink>,
    setup: Arc<Setup>,
    config: LogsIngestionConfig,
    dlq: Arc<DeadLetterStore>,
    _dir: tempfile::TempDir,
}

async fn world(policy: RetryPolicy) -> World {
    let setup = common::setup();
    let emulator = Emulator::start(common::azure::emulator_config())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret-for-tests\n").unwrap();
    let transport = Transport::new(Arc::new(ToEmulator::new(AUTHORITY, &emulator.url())));
    let cred = credential(
        &CredentialConfig::ClientSecret {
            tenant_id: TENANT.into(),
            client_id: CLIENT.into(),
            secret_file: Some(dir.path().join("secret")),
            secret_env: None,
        },
        Cloud::Public,
        Some(AUTHORITY),
        Some(transport),
    )
    .unwrap();
    let dlq = Arc::new(DeadLetterStore::open(&dir.path().join("dlq")).unwrap());
    let sink = Arc::new(WorkspaceSink::new(
        reqwest::Client::new(),
        Api::LogsIngestion {
            credential: cred,
            scope: Cloud::Public.monitor_scope().to_string(),
        },
        policy,
        dlq.clone(),
    ));
    let config = LogsIngestionConfig {
        endpoint: emulator.url(),
        dcr_immutable_id: "dcr-0123456789abcdef0123456789abcdef".into(),
        tables: Default::default(),
        allow_plain_http_loopback: true,
    };
    World {
        emulator,
        sink,
        setup: Arc::new(setup),
        config,
        dlq,
        _dir: dir,
    }
}

/// Maps `lines` and cuts them into bodies per table, as dry-run would.
fn cut_bodies(setup: &Setup, lines: &[String], limit: usize) -> Vec<(usize, Body)> {
    let mapper = setup.front();
    let mut builders: Vec<BodyBuilder> = setup
        .schemas
        .tables
        .iter()
        .map(|_| BodyBuilder::new(limit))
        .collect();
    let mut out = Vec::new();
    let pos = Position::new(Arc::from("test"), 1);
    for line in lines {
        process_unit(&mapper, line, &pos, &mut |o| {
            if let Output::Row { row, .. } = o {
                if let Some(body) = builders[row.table].push(row.json.as_bytes()).unwrap() {
                    out.push((row.table, body));
                }
            } else {
                panic!("test records map");
            }
        });
    }
    for (table, builder) in builders.iter_mut().enumerate() {
        if let Some(body) = builder.take() {
            out.push((table, body));
        }
    }
    out
}

fn target(w: &World, table: usize) -> Target {
    w.config.target(&w.setup.schemas.tables[table]).unwrap()
}

fn audit(i: usize, extra: &str) -> String {
    format!(
        r#"{{"CreationTime":"2026-03-01T10:00:00","Id":"00000000-0000-4000-8000-{i:012}","Operation":"FileAccessed","OrganizationId":"{TENANT}","RecordType":6,"UserType":0,"Workload":"SharePoint","UserId":"user{i}@contoso.com","ClientIP":"192.0.2.{}"{extra}}}"#,
        i % 250
    )
}

fn defender(i: usize) -> String {
    let (category, extra) = match i % 4 {
        0 => (
            "EmailEvents",
            r#","Subject":"hello","EmailSize":1234,"IsFirstContact":true,"To":["a@contoso.com"]"#,
        ),
        1 => (
            "EmailAttachmentInfo",
            r#","FileName":"a.txt","FileSize":54"#,
        ),
        2 => (
            "EmailUrlInfo",
            r#","Url":"https://example.net/a","UrlChainPosition":0"#,
        ),
        _ => (
            "EmailPostDeliveryEvents",
            r#","ActionType":"Phish ZAP","Action":"Soft delete""#,
        ),
    };
    format!(
        r#"{{"time":"2026-03-01T10:00:05.1234567Z","tenantId":"{TENANT}","category":"AdvancedHunting-{category}","properties":{{"Timestamp":"2026-03-01T10:00:00Z","NetworkMessageId":"nm-{i}","ReportId":"r-{i}"{extra}}}}}"#
    )
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn every_row_of_the_five_tables_arrives_once_within_the_limits() {
    let w = world(quick()).await;
    let lines: Vec<String> = (0..100_000)
        .map(|i| {
            if i % 3 == 0 {
                defender(i)
            } else {
                audit(i, "")
            }
        })
        .collect();
    let bodies = cut_bodies(&w.setup, &lines, 1_000_000);
    for (table, body) in bodies {
        w.sink.deliver(&target(&w, table), body).await.unwrap();
    }
    let accepted = w.emulator.accepted();
    assert_eq!(accepted.len(), 100_000);
    let mut per_stream: HashMap<String, usize> = HashMap::new();
    for (stream, _) in &accepted {
        *per_stream.entry(stream.clone()).or_default() += 1;
    }
    assert_eq!(per_stream["Custom-OfficeActivity_CL"], 66_666);
    for s in [
        "EmailEvents",
        "EmailAttachmentInfo",
        "EmailUrlInfo",
        "EmailPostDeliveryEvents",
    ] {
        let n = per_stream[&format!("Custom-{s}_CL")];
        assert!((8_333..=8_334).contains(&n), "{s}: {n}");
    }
    let mut ids: Vec<&str> = accepted
        .iter()
        .filter_map(|(_, row)| row.get("OfficeId").and_then(Value::as_str))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 66_666, "each audit record exactly once");
    let mut reports: Vec<&str> = accepted
        .iter()
        .filter_map(|(_, row)| row.get("ReportId").and_then(Value::as_str))
        .collect();
    reports.sort_unstable();
    reports.dedup();
    assert_eq!(reports.len(), 33_334, "each Defender row exactly once");
    for r in w.emulator.requests() {
        assert_eq!(r.status, 204);
        assert!(r.compressed_bytes <= 1_000_000 && r.uncompressed_bytes <= 1_000_000);
    }
    let stats = w.sink.stats();
    assert_eq!(stats.delivered_rows, 100_000);
    assert_eq!(stats.dead_lettered, 0);
    let fill = stats.bytes_uncompressed as f64 / (stats.requests as f64 * 1_000_000.0);
    println!(
        "{} requests, average uncompressed fill {:.1}%",
        stats.requests,
        fill * 100.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_fifth_of_requests_faulted_every_row_arrives_duplicates_counted() {
    let w = world(quick()).await;
    let lines: Vec<String> = (0..20_000).map(|i| audit(i, "")).collect();
    let bodies = cut_bodies(&w.setup, &lines, 200_000);
    let largest_body = bodies.iter().map(|(_, b)| b.rows()).max().unwrap_or(0);
    let body_count = bodies.len();
    // Every fifth request misbehaves, in turn: throttled with Retry-After, unavailable, reset
    // before the service looked, reset after it took the rows (their answer is lost).
    let faults = [
        Fault::Status {
            status: 429,
            retry_after: Some(5),
        },
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        Fault::Reset,
        Fault::ResetAfterAccept,
    ];
    let mut plan = Vec::new();
    for i in 0..body_count {
        plan.extend([Fault::Pass, Fault::Pass, Fault::Pass, Fault::Pass]);
        plan.push(faults[i % faults.len()].clone());
    }
    w.emulator.push_faults(plan);
    for (table, body) in bodies {
        w.sink.deliver(&target(&w, table), body).await.unwrap();
    }
    let accepted = w.emulator.accepted();
    let mut ids: Vec<&str> = accepted
        .iter()
        .filter_map(|(_, row)| row.get("OfficeId").and_then(Value::as_str))
        .collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20_000, "every row arrived");
    let duplicates = total - ids.len();
    let stats = w.sink.stats();
    println!(
        "{body_count} bodies, {} requests, {} retries, {duplicates} duplicate rows",
        stats.requests, stats.retries
    );
    // Duplicates only come from a body taken but not answered: at most one body per such fault.
    let lost_answers = body_count.div_ceil(5).div_ceil(4);
    assert!(duplicates <= lost_answers * largest_body, "{duplicates}");
    assert!(
        duplicates > 0,
        "the plan loses answers, so some rows arrive twice"
    );
    assert!(stats.retries >= (body_count / 5) as u64);
}

#[tokio::test(start_paused = true)]
async fn throttling_and_outages_are_retried_until_everything_arrives() {
    let w = world(quick()).await;
    let lines: Vec<String> = (0..3_000).map(|i| audit(i, "")).collect();
    let bodies = cut_bodies(&w.setup, &lines, 50_000);
    assert!(bodies.len() >= 20);
    w.emulator.push_faults([
        Fault::Status {
            status: 429,
            retry_after: Some(30),
        },
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        Fault::Status {
            status: 500,
            retry_after: None,
        },
        Fault::Status {
            status: 429,
            retry_after: Some(2),
        },
        Fault::Status {
            status: 502,
            retry_after: None,
        },
    ]);
    let started = tokio::time::Instant::now();
    for (table, body) in bodies {
        w.sink.deliver(&target(&w, table), body).await.unwrap();
    }
    assert_eq!(w.emulator.accepted().len(), 3_000);
    let stats = w.sink.stats();
    assert_eq!(stats.retries, 5);
    // The paused clock moved at least as far as the two Retry-After answers asked.
    assert!(tokio::time::Instant::now() - started >= Duration::from_secs(32));
}

#[tokio::test]
async fn a_poison_row_alone_goes_to_the_dead_letter_store_and_replays_later() {
    let w = world(quick()).await;
    let mut lines: Vec<String> = (0..5_000).map(|i| audit(i, "")).collect();
    lines[2_345] = audit(2_345, r#","UserAgent":"POISON-ROW""#);
    let bodies = cut_bodies(&w.setup, &lines, 1_000_000);
    w.emulator.set_poison(Some("POISON-ROW"));
    for (table, body) in bodies {
        w.sink.deliver(&target(&w, table), body).await.unwrap();
    }
    assert_eq!(w.emulator.accepted().len(), 4_999);
    let letters = w.dlq.read("OfficeActivity_CL").unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].status, Some(400));
    assert_eq!(letters[0].error_code.as_deref(), Some("InvalidRecord"));
    assert!(letters[0].row.get().contains("POISON-ROW"));

    // The service accepts it again: replay delivers it once and empties the store.
    w.emulator.set_poison(None);
    let mut builder = BodyBuilder::new(1_000_000);
    for l in &letters {
        assert!(builder.push(l.row.get().as_bytes()).unwrap().is_none());
    }
    let table = w.setup.schemas.table_by_name("OfficeActivity").unwrap();
    w.sink
        .deliver(&target(&w, table), builder.take().unwrap())
        .await
        .unwrap();
    w.dlq.replace("OfficeActivity_CL", &[]).unwrap();
    assert_eq!(w.emulator.accepted().len(), 5_000);
    assert!(w.dlq.list().unwrap().is_empty());
}

#[tokio::test]
async fn long_fields_are_cut_before_sending_and_oversized_requests_split() {
    let w = world(quick()).await;
    // An 80 KB field is truncated by the mapper (marker and count), so the service cuts nothing.
    let lines = vec![audit(
        1,
        &format!(r#","UserAgent":"{}""#, "x".repeat(80 * 1024)),
    )];
    let bodies = cut_bodies(&w.setup, &lines, 1_000_000);
    for (table, body) in bodies {
        w.sink.deliver(&target(&w, table), body).await.unwrap();
    }
    let row = &w.emulator.accepted()[0].1;
    assert!(
        row["UserAgent"]
            .as_str()
            .unwrap()
            .ends_with("[truncated by m365-sentinel: 81920 bytes]")
    );
    assert_eq!(w.emulator.truncated_fields(), 0);

    // A 413 splits the body, and the halves arrive.
    let lines: Vec<String> = (0..200).map(|i| audit(i, "")).collect();
    let bodies = cut_bodies(&w.setup, &lines, 1_000_000);
    w.emulator.push_faults([Fault::Status {
        status: 413,
        retry_after: None,
    }]);
    for (table, body) in bodies {
        w.sink.deliver(&target(&w, table), body).await.unwrap();
    }
    assert_eq!(w.emulator.accepted().len(), 201);
    assert_eq!(w.sink.stats().splits, 1);
}

#[tokio::test]
async fn run_delivers_files_dead_letters_rows_too_large_and_keeps_refused_input() {
    let w = world(quick()).await;
    let dir = tempfile::tempdir().unwrap();
    let columns = common::WIDE_COLUMNS;
    let wide: String = columns
        .iter()
        .map(|c| format!(r#","{c}":"{}""#, "y".repeat(60_000)))
        .collect();
    let lines = [
        audit(1, ""),
        audit(2, &wide),
        "{not json".to_string(),
        audit(3, ""),
    ];
    std::fs::write(dir.path().join("in.ndjson"), lines.join("\n")).unwrap();
    let targets: Vec<Target> = (0..w.setup.schemas.tables.len())
        .map(|t| target(&w, t))
        .collect();
    let dlq_dir = dir.path().join("dlq");
    let options = m365_sentinel::run::RunOptions {
        flush_delay: Duration::from_millis(200),
        concurrency: 2,
        dlq_dir: dlq_dir.clone(),
        shutdown: m365_sentinel::ops::shutdown::Shutdown::never(),
        shutdown_deadline: Duration::from_secs(25),
        live: Default::default(),
        archive: Default::default(),
        boards: Default::default(),
    };
    let inputs = vec![
        dir.path().join("in.ndjson"),
        common::fixtures().join("input"),
    ];
    let stats = m365_sentinel::run::run(
        w.setup.clone(),
        m365_sentinel::run::Intake::Files(inputs),
        m365_sentinel::run::Delivery::Workspace {
            sink: w.sink.clone(),
            targets,
            spool: None,
        },
        options,
    )
    .await
    .unwrap();
    // 3 audit records here (one too large) and 18 fixture records.
    assert_eq!(stats.input.rows(), 21);
    assert_eq!(stats.sink.delivered_rows, 20);
    assert_eq!(w.emulator.accepted().len(), 20);
    let letters = w.dlq.read("OfficeActivity_CL").unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0]
            .reason
            .contains("over the 1000000-byte request limit"),
        "{}",
        letters[0].reason
    );
    assert_eq!(stats.input.rejected_total(), 1);
    let refused =
        std::fs::read_to_string(dlq_dir.join(m365_sentinel::run::REJECTED_INPUT_FILE)).unwrap();
    assert!(refused.contains("unparsable_json"), "{refused}");
}

#[tokio::test]
async fn replay_sends_dead_letters_again_and_keeps_what_is_refused_again() {
    let w = world(quick()).await;
    let lines: Vec<String> = (0..50)
        .map(|i| {
            audit(
                i,
                if i % 10 == 0 {
                    r#","UserAgent":"POISON-ROW""#
                } else {
                    ""
                },
            )
        })
        .collect();
    w.emulator.set_poison(Some("POISON-ROW"));
    for (table, body) in cut_bodies(&w.setup, &lines, 1_000_000) {
        w.sink.deliver(&target(&w, table), body).await.unwrap();
    }
    assert_eq!(w.emulator.accepted().len(), 45);
    assert_eq!(w.dlq.read("OfficeActivity_CL").unwrap().len(), 5);
    let targets: Vec<Target> = (0..w.setup.schemas.tables.len())
        .map(|t| target(&w, t))
        .collect();

    // Still refused: they come back to the store, nothing is lost.
    let replayed = m365_sentinel::run::replay(
        w.setup.clone(),
        &w.dlq,
        w.sink.clone(),
        targets.clone(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(replayed[0].rows, 5);
    assert_eq!(w.dlq.read("OfficeActivity_CL").unwrap().len(), 5);

    // Accepted now: delivered once, store empty.
    w.emulator.set_poison(None);
    m365_sentinel::run::replay(
        w.setup.clone(),
        &w.dlq,
        w.sink.clone(),
        targets,
        Some("OfficeActivity_CL"),
    )
    .await
    .unwrap();
    assert_eq!(w.emulator.accepted().len(), 50);
    assert!(w.dlq.list().unwrap().is_empty());
}

#[test]
fn dlq_list_and_run_without_a_sink_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeadLetterStore::open(&dir.path().join("dlq")).unwrap();
    let row = serde_json::value::RawValue::from_string(r#"{"x":1}"#.into()).unwrap();
    store
        .append(&[m365_sentinel::state::dlq::DeadLetter::now(
            "OfficeActivity_CL",
            "Custom-OfficeActivity_CL",
            "test".into(),
            row,
        )])
        .unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!("dlq:\n  dir: {}\n", dir.path().join("dlq").display()),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_m365-sentinel");
    let out = std::process::Command::new(bin)
        .args(["dlq", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OfficeActivity_CL") && stdout.contains("1 rows"),
        "{stdout}"
    );

    let out = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--input", "tests/fixtures/input"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sink configured"));
}

#[tokio::test]
async fn the_retired_data_collector_api_gets_signed_posts_it_verifies() {
    let w = world(quick()).await;
    let dc = m365_sentinel::sinks::data_collector::DataCollectorConfig {
        workspace_id: WORKSPACE.into(),
        shared_key_file: None,
        shared_key_env: None,
        azure_resource_id: Some("/subscriptions/x/resourceGroups/y/providers/z/w".into()),
        endpoint: Some(w.emulator.url()),
        allow_plain_http_loopback: true,
        log_types: Default::default(),
    };
    let sink = WorkspaceSink::new(
        reqwest::Client::new(),
        Api::DataCollector {
            workspace_id: WORKSPACE.into(),
            shared_key: SHARED_KEY.into(),
            azure_resource_id: dc.azure_resource_id.clone(),
        },
        quick(),
        w.dlq.clone(),
    );
    let url = dc.url("unused").unwrap();
    let lines: Vec<String> = (0..300)
        .map(|i| {
            if i % 3 == 0 {
                defender(i)
            } else {
                audit(i, "")
            }
        })
        .collect();
    for (table, body) in cut_bodies(&w.setup, &lines, 1_000_000) {
        let schema = &w.setup.schemas.tables[table];
        let target = Target {
            url: url.clone(),
            table: schema.output_table.clone(),
            stream: dc.log_type(schema).unwrap(),
        };
        sink.deliver(&target, body).await.unwrap();
    }
    let accepted = w.emulator.accepted();
    assert_eq!(accepted.len(), 300);
    assert!(accepted.iter().all(|(stream, row)| {
        stream.starts_with("dc:")
            && row.get("EventTime").is_some()
            && row.get("TimeGenerated").is_none()
    }));
    assert!(
        accepted
            .iter()
            .any(|(stream, _)| stream == "dc:OfficeActivity")
    );
    assert_eq!(sink.stats().dead_lettered, 0);
}

#[tokio::test(start_paused = true)]
async fn refused_authorisation_is_retried_once_at_once_then_with_backoff() {
    let w = world(quick()).await;
    let lines: Vec<String> = (0..10).map(|i| audit(i, "")).collect();
    w.emulator.push_faults([
        Fault::Status {
            status: 401,
            retry_after: None,
        },
        Fault::Status {
            status: 403,
            retry_after: None,
        },
        Fault::Status {
            status: 403,
            retry_after: None,
        },
    ]);
    let started = tokio::time::Instant::now();
    for (table, body) in cut_bodies(&w.setup, &lines, 1_000_000) {
        w.sink.deliver(&target(&w, table), body).await.unwrap();
    }
    assert_eq!(w.emulator.accepted().len(), 10);
    let stats = w.sink.stats();
    assert_eq!(stats.requests, 4);
    assert_eq!(
        stats.retries, 2,
        "the first refusal is retried at once, with a fresh token"
    );
    assert!(w.sink.problem().is_none(), "healthy again once delivered");
    // Two backoffs happened on the paused clock, none longer than the cap.
    assert!(tokio::time::Instant::now() - started <= Duration::from_secs(20));
}

/// A TLS emulator whose CA the connector trusts only through `http.ca_bundle`.
async fn tls_emulator() -> Emulator {
    Emulator::start_tls(common::azure::emulator_config())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_extra_ca_bundle_is_what_makes_the_emulator_trusted() {
    let emulator = tls_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, emulator.ca_pem().unwrap()).unwrap();
    let url = format!("{}/{TENANT}/oauth2/v2.0/token", emulator.url());
    let plain = m365_sentinel::http_client::build(&Default::default()).unwrap();
    assert!(
        plain.post(&url).send().await.is_err(),
        "an unknown CA is refused"
    );
    let config = m365_sentinel::config::HttpConfig {
        ca_bundle: Some(ca),
        ..Default::default()
    };
    let trusting = m365_sentinel::http_client::build(&config).unwrap();
    let answer = trusting.post(&url).send().await.unwrap();
    assert_eq!(
        answer.status(),
        415,
        "TLS holds; the token endpoint wants a form body"
    );
}

/// A config file for the binary, pointing at a TLS emulator, and the directory it lives in.
fn binary_config(emulator: &Emulator) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), emulator.ca_pem().unwrap()).unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret-for-tests").unwrap();
    let config = format!(
        "sink:\n  logs_ingestion:\n    endpoint: {url}\n    dcr_immutable_id: dcr-0123456789abcdef0123456789abcdef\n  credential:\n    kind: client_secret\n    tenant_id: {TENANT}\n    client_id: {CLIENT}\n    secret_file: {dir}/secret\n  authority_host: {url}\n  flush_delay_ms: 100\nhttp:\n  ca_bundle: {dir}/ca.pem\ndlq:\n  dir: {dir}/dlq\nspool:\n  dir: {dir}/spool\nretry:\n  min_delay_ms: 10\n  max_delay_secs: 1\n",
        url = emulator.url(),
        dir = dir.path().display()
    );
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, config).unwrap();
    (dir, cfg)
}

/// Runs the binary with `args` off the async runtime, so the emulator keeps answering.
/// Rows the emulator accepted into the data tables (`run` writes health rows beside them).
fn data_rows(emulator: &Emulator) -> usize {
    emulator
        .accepted()
        .iter()
        .filter(|(stream, _)| stream != "Custom-M365SentinelHealth_CL")
        .count()
}

async fn binary(args: Vec<String>) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_m365-sentinel");
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin).args(args).output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_run_command_delivers_over_https_with_tokens_from_the_emulated_entra() {
    let emulator = tls_emulator().await;
    let (_dir, cfg) = binary_config(&emulator);
    let cfg = cfg.display().to_string();
    // `check` accepts this configuration, and `run` then starts and delivers: nothing `check`
    // accepted is refused at start-up (tests/preflight.rs has the refusals).
    let check = binary(vec!["check".into(), "--config".into(), cfg.clone()]).await;
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("configuration OK"));
    let out = binary(vec![
        "run".into(),
        "--config".into(),
        cfg,
        "--input".into(),
        "tests/fixtures/input".into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("delivered 18 row(s)"), "{stdout}");
    assert_eq!(data_rows(&emulator), 18);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("s3cret"),
        "no secret in logs"
    );
}

#[tokio::test]
async fn dlq_list_and_replay_through_the_binary() {
    let emulator = tls_emulator().await;
    let (dir, cfg) = binary_config(&emulator);
    let cfg = cfg.display().to_string();
    let input = dir.path().join("in.ndjson");
    let lines: Vec<String> = (0..20)
        .map(|i| {
            audit(
                i,
                if i == 7 {
                    r#","UserAgent":"POISON-ROW""#
                } else {
                    ""
                },
            )
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    emulator.set_poison(Some("POISON-ROW"));
    let run = vec![
        "run".into(),
        "--config".into(),
        cfg.clone(),
        "--input".into(),
        input.display().to_string(),
    ];
    let out = binary(run).await;
    assert_eq!(out.status.code(), Some(3), "rows were dead-lettered");
    assert_eq!(data_rows(&emulator), 19);
    let out = binary(vec![
        "dlq".into(),
        "list".into(),
        "--config".into(),
        cfg.clone(),
    ])
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("OfficeActivity_CL"));

    emulator.set_poison(None);
    let out = binary(vec![
        "dlq".into(),
        "replay".into(),
        "--config".into(),
        cfg.clone(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OfficeActivity_CL: 1 row(s) replayed"),
        "{stdout}"
    );
    assert_eq!(data_rows(&emulator), 20);
    let out = binary(vec!["dlq".into(), "list".into(), "--config".into(), cfg]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("no dead letters"));
}

#[tokio::test]
async fn a_client_certificate_signs_the_token_request_the_emulator_verifies() {
    let (pkcs12, cert_pem) = m365_emulator::make_client_certificate("pfx-password").unwrap();
    let emulator = Emulator::start(m365_emulator::Config {
        client_secret: "not-used-here".into(),
        streams: Default::default(),
        accept_undeclared_streams: true,
        client_certificate_pem: Some(cert_pem),
        ..common::azure::emulator_config()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client.pfx"), pkcs12).unwrap();
    std::fs::write(dir.path().join("password"), "pfx-password\n").unwrap();
    let cert_credential = |pfx: &str, password: &str| {
        let transport = Transport::new(Arc::new(ToEmulator::new(AUTHORITY, &emulator.url())));
        credential(
            &CredentialConfig::ClientCertificate {
                tenant_id: TENANT.into(),
                client_id: CLIENT.into(),
                certificate_file: dir.path().join(pfx),
                password_file: Some(dir.path().join(password)),
            },
            Cloud::Public,
            Some(AUTHORITY),
            Some(transport),
        )
        .unwrap()
    };
    let cred = cert_credential("client.pfx", "password");
    let token = cred
        .get_token(&[Cloud::Public.monitor_scope()], None)
        .await
        .expect("the emulator accepts the signed assertion");
    assert!(token.token.secret().starts_with("emulated-"));

    // A certificate the app doesn't have is refused.
    let (other, _) = m365_emulator::make_client_certificate("x").unwrap();
    std::fs::write(dir.path().join("other.pfx"), other).unwrap();
    std::fs::write(dir.path().join("x"), "x").unwrap();
    let wrong = cert_credential("other.pfx", "x");
    assert!(
        wrong
            .get_token(&[Cloud::Public.monitor_scope()], None)
            .await
            .is_err()
    );
}
