//! The Defender Streaming API sources end to end: Storage append blobs read while they grow
//! (Azurite), both sources in one process killed and restarted, a wrong credential for one
//! source, and dry-run from both. The binary runs against real servers on 127.0.0.1: Azurite,
//! a tansu Kafka broker and the ingestion emulator.

mod common;

use std::path::Path;
use std::time::Duration;

use common::azurite::{ACCOUNT, Azurite, KEY};
use common::defender::{
    Broker, DEFENDER_TENANT, email_arrivals, event_hub_bodies, hub_yaml, row, tally,
    write_defender_config,
};
use common::management::{run_to_end, spawn, wait_for};
use m365_emulator::Emulator;

const EMAILEVENTS: &str = "insights-logs-advancedhunting-emailevents";
const URLINFO: &str = "insights-logs-advancedhunting-emailurlinfo";

async fn emulator() -> Emulator {
    Emulator::start_tls(common::azure::emulator_config())
        .await
        .unwrap()
}

/// The hour blob of now, as the export names it.
fn hour_blob() -> String {
    let now = common::management::now_ms();
    let iso = m365_sentinel::stages::map::datetime::format_unix_millis(now);
    format!(
        "tenantId={DEFENDER_TENANT}/y={}/m={}/d={}/h={}/m=00/PT1H.json",
        &iso[0..4],
        &iso[5..7],
        &iso[8..10],
        &iso[11..13]
    )
}

/// A `storage` entry for Azurite with `key` as the account key; reads of at most 64 KiB, so a
/// pass reads a blob in several ranges.
fn storage_yaml(azurite: &Azurite, dir: &Path, key: &str) -> String {
    std::fs::write(dir.join("storage-key"), key).unwrap();
    format!(
        "    - account: {ACCOUNT}\n      endpoint: {}\n      allow_plain_http_loopback: true\n      poll_interval_secs: 1\n      max_read_bytes: 65536\n      auth: {{kind: shared_key, key_file: {}/storage-key}}\n",
        azurite.endpoint(),
        dir.display()
    )
}

/// JSON lines (CRLF) of rows `range` of `table`, tagged `tag`.
fn lines(table: usize, tag: &str, range: std::ops::Range<usize>) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut ids = Vec::new();
    for i in range {
        text.push_str(&row(table, tag, i));
        text.push_str("\r\n");
        ids.push(format!("{table}-{tag}-{i}"));
    }
    (text, ids)
}

/// An append blob written in several appends while the connector reads it, one line split
/// across two appends: every row arrives once, the split line whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_blob_is_read_as_it_grows_and_a_line_split_across_appends_is_assembled() {
    let azurite = Azurite::start();
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let blob = hour_blob();
    for container in [EMAILEVENTS, URLINFO] {
        azurite.create_container(container).await;
        azurite.create_append_blob(container, &blob).await;
    }
    let defender = format!("  storage:\n{}", storage_yaml(&azurite, dir.path(), KEY));
    let config = write_defender_config(&emulator, dir.path(), &defender);
    let mut child = spawn(&["run"], &config, &dir.path().join("log"));
    let mut expected = Vec::new();
    for round in 0..4 {
        let (text, ids) = lines(0, "s", round * 250..(round + 1) * 250);
        azurite
            .append_block(EMAILEVENTS, &blob, text.as_bytes())
            .await;
        let (text, more) = lines(2, "s", round * 100..(round + 1) * 100);
        azurite.append_block(URLINFO, &blob, text.as_bytes()).await;
        expected.extend(ids);
        expected.extend(more);
        wait_for("the rows appended so far", Duration::from_secs(60), || {
            email_arrivals(&emulator).len() >= expected.len()
        })
        .await;
    }
    // A line split across two appends: the first half is read and held back.
    let (text, ids) = lines(0, "split", 0..3);
    let cut = text.len() - 40;
    azurite
        .append_block(EMAILEVENTS, &blob, &text.as_bytes()[..cut])
        .await;
    expected.extend(ids);
    wait_for("the two whole lines", Duration::from_secs(30), || {
        email_arrivals(&emulator).len() >= expected.len() - 1
    })
    .await;
    // Two more polls see the partial line and must leave it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(email_arrivals(&emulator).len(), expected.len() - 1);
    azurite
        .append_block(EMAILEVENTS, &blob, &text.as_bytes()[cut..])
        .await;
    wait_for("the split line", Duration::from_secs(30), || {
        email_arrivals(&emulator).len() >= expected.len()
    })
    .await;
    // A line longer than max_read_bytes (64 KiB here) is refused, kept in the refused-input
    // file; the line after it still arrives.
    let (after, ids) = lines(0, "after-long", 0..1);
    let long = format!(
        "{{\"category\":\"AdvancedHunting-EmailEvents\",\"pad\":\"{}\"}}\r\n{after}",
        "x".repeat(70_000)
    );
    azurite
        .append_block(EMAILEVENTS, &blob, long.as_bytes())
        .await;
    expected.extend(ids);
    wait_for(
        "the line after the long one",
        Duration::from_secs(30),
        || email_arrivals(&emulator).len() >= expected.len(),
    )
    .await;
    let refused = std::fs::read_to_string(dir.path().join("dlq/rejected-input.ndjson")).unwrap();
    assert!(refused.contains("longer than max_read_bytes"), "{refused}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let counts = email_arrivals(&emulator);
    let (distinct, missing, duplicates) = tally(&counts, &expected);
    assert_eq!((distinct, missing, duplicates), (expected.len(), 0, 0));
    let split = emulator
        .accepted()
        .into_iter()
        .find(|(_, r)| r["NetworkMessageId"] == "0-split-2")
        .expect("the split line arrived");
    assert_eq!(split.1["RecipientEmailAddress"], "user2@contoso.example");
    let positions =
        std::fs::read_to_string(dir.path().join(format!("state/storage/{ACCOUNT}.json"))).unwrap();
    assert!(positions.contains(&blob), "{positions}");
}

/// Both sources in one process, SIGKILLed three times while it reads and restarted: every row
/// arrives; the copies are what was read past the committed positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_and_restarted_while_reading_both_sources_it_resumes_from_committed_positions() {
    let broker = Broker::start();
    broker.create_topic("restart", 2).await;
    let (bodies, mut expected) = event_hub_bodies(2_500, 10, "k");
    broker.produce("restart", 2, &bodies);
    let azurite = Azurite::start();
    let blob = hour_blob();
    azurite.create_container(EMAILEVENTS).await;
    azurite.create_append_blob(EMAILEVENTS, &blob).await;
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let defender = format!(
        "  event_hubs:\n{}  storage:\n{}",
        hub_yaml(&broker, "restart", "restart"),
        storage_yaml(&azurite, dir.path(), KEY)
    );
    let config = write_defender_config(&emulator, dir.path(), &defender);
    let log = dir.path().join("log");
    let total_blob_rows = 5_000;
    let mut appended = 0;
    for kill in 0..3 {
        let mut child = spawn(&["run"], &config, &log);
        // Appends while it runs.
        for _ in 0..3 {
            let (text, ids) = lines(1, "b", appended..appended + 400);
            appended += 400;
            expected.extend(ids);
            azurite
                .append_block(EMAILEVENTS, &blob, text.as_bytes())
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let target = (kill + 1) * expected.len() / 5;
        wait_for("progress before the kill", Duration::from_secs(120), || {
            email_arrivals(&emulator).len() >= target
        })
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let (text, ids) = lines(1, "b", appended..total_blob_rows);
    expected.extend(ids);
    azurite
        .append_block(EMAILEVENTS, &blob, text.as_bytes())
        .await;
    let mut child = spawn(&["run"], &config, &log);
    let start = std::time::Instant::now();
    while email_arrivals(&emulator).len() < expected.len()
        && start.elapsed() < Duration::from_secs(90)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let counts = email_arrivals(&emulator);
    let (distinct, missing, duplicates) = tally(&counts, &expected);
    let examples: Vec<&String> = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .take(8)
        .collect();
    println!(
        "rows {distinct} of {}, missing {missing} (e.g. {examples:?}), duplicates {duplicates} after 3 kills",
        expected.len()
    );
    assert_eq!(missing, 0);
    assert_eq!(distinct, expected.len());
    // Per kill: the blob rows read since the last position write (written at most 1 s after
    // rows are safe; each run appends 1,200) and the hub rows read past the last commit
    // (200 ms of reading plus the run's queues), 2,000 in all. Positions never written would
    // resend every earlier row at each restart: over 15,000 here.
    assert!(duplicates <= 3 * 2_000, "{duplicates} duplicates");
}

/// A wrong account key for the storage account: a clear error naming it and what to check;
/// the event hub keeps being read and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_storage_key_is_reported_and_the_event_hub_keeps_running() {
    let broker = Broker::start();
    broker.create_topic("creds", 2).await;
    let (bodies, ids) = event_hub_bodies(500, 10, "c");
    broker.produce("creds", 2, &bodies);
    let azurite = Azurite::start();
    azurite.create_container(EMAILEVENTS).await;
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let wrong_key = "QkFEa2V5QkFEa2V5QkFEa2V5QkFEa2V5QkFEa2V5QkFEa2V5QkFEa2V5QkFEa2V5QkFEa2V5QkFEa2V5QkFEa2V5QkFEa2V5";
    let defender = format!(
        "  event_hubs:\n{}  storage:\n{}",
        hub_yaml(&broker, "creds", "creds"),
        storage_yaml(&azurite, dir.path(), wrong_key)
    );
    let config = write_defender_config(&emulator, dir.path(), &defender);
    let port = common::kafka::free_port();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("metrics:\n  listen: 127.0.0.1:{port}\n"));
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("log");
    let mut child = spawn(&["run"], &config, &log);
    wait_for("every event hub row", Duration::from_secs(60), || {
        email_arrivals(&emulator).len() >= ids.len()
    })
    .await;
    wait_for("the storage error", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("access refused"))
    })
    .await;
    let metrics = common::scrape_metrics(port).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let sample = |start: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(
        sample(&format!(
            "m365_sentinel_source_auth_failed{{source=\"storage account {ACCOUNT}\"}}"
        )),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample("m365_sentinel_source_auth_failed{source=\"event hub creds\"}"),
        Some(0.0)
    );
    assert!(
        sample("m365_sentinel_source_units_total{source=\"event hub creds\"}").unwrap_or(0.0)
            >= 100.0
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().find(|l| l.contains("access refused")).unwrap();
    assert!(
        line.contains(&format!("storage account {ACCOUNT}")),
        "{line}"
    );
    assert!(line.contains("account key"), "says what to check: {line}");
    assert!(!text.contains(wrong_key), "the key never appears");
    let (_, missing, duplicates) = tally(&email_arrivals(&emulator), &ids);
    assert_eq!((missing, duplicates), (0, 0));

    // A single pass says the same on stderr and exits 4 (some sources failed).
    let out = run_to_end(common::management::once(&config)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("access refused"), "{stderr}");
}

/// dry-run reads both sources, writes the bodies and commits nothing: a real run afterwards
/// still delivers every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_reads_both_sources_and_commits_nothing() {
    let broker = Broker::start();
    broker.create_topic("dry", 2).await;
    let (bodies, mut expected) = event_hub_bodies(100, 10, "d");
    broker.produce("dry", 2, &bodies);
    let azurite = Azurite::start();
    let blob = hour_blob();
    azurite.create_container(URLINFO).await;
    azurite.create_append_blob(URLINFO, &blob).await;
    let (mut text, ids) = lines(2, "d-blob", 0..300);
    // A row the event hub carries too, redelivered through the other export: sent once.
    text.push_str(&row(0, "d", 0));
    text.push_str("\r\n");
    azurite.append_block(URLINFO, &blob, text.as_bytes()).await;
    expected.extend(ids);
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let defender = format!(
        "  event_hubs:\n{}  storage:\n{}",
        hub_yaml(&broker, "dry", "dry"),
        storage_yaml(&azurite, dir.path(), KEY)
    );
    let config = write_defender_config(&emulator, dir.path(), &defender);
    let out_dir = dir.path().join("dry-out");
    let out = run_to_end(common::management::dry_run_args(&config, &out_dir)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bodies_text = String::new();
    for entry in walk(&out_dir) {
        bodies_text.push_str(&std::fs::read_to_string(entry).unwrap_or_default());
    }
    for id in &expected {
        assert!(
            bodies_text.contains(&format!("\"{id}\"")),
            "{id} missing from the bodies; dry-run said:\n{stdout}"
        );
    }
    assert_eq!(
        bodies_text.matches("\"0-d-0\"").count(),
        1,
        "the repeated row once"
    );
    assert!(
        stdout.contains("defender: 1 exact repeat row(s) skipped"),
        "{stdout}"
    );
    assert!(
        !dir.path().join("state").exists(),
        "dry-run wrote no positions"
    );
    assert_eq!(emulator.accepted_count(), 0, "dry-run sent nothing");
    // Nothing committed: a real pass delivers everything.
    let out = run_to_end(common::management::once(&config)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (distinct, missing, _) = tally(&email_arrivals(&emulator), &expected);
    assert_eq!((distinct, missing), (expected.len(), 0));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
