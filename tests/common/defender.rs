//! Defender email events for the live-source tests: rows of the four tables, a real Kafka
//! broker (tansu) with a topic to produce them into, and configs for the binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use m365_emulator::Emulator;
use serde_json::Value;

pub use super::kafka::Broker;

use super::azure::{CLIENT, DCR, SECRET, TENANT};
use super::management::CONCURRENCY;

pub const CATEGORIES: [&str; 4] = [
    "AdvancedHunting-EmailEvents",
    "AdvancedHunting-EmailAttachmentInfo",
    "AdvancedHunting-EmailUrlInfo",
    "AdvancedHunting-EmailPostDeliveryEvents",
];
pub const DEFENDER_TENANT: &str = "8e1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

/// One Streaming API row; its NetworkMessageId (`<table>-<tag>-<i>`) identifies it at arrival.
pub fn row(table: usize, tag: &str, i: usize) -> String {
    let category = CATEGORIES[table];
    let id = format!("{table}-{tag}-{i}");
    serde_json::json!({
        "time": "2026-11-22T10:00:00.0000000Z",
        "tenantId": DEFENDER_TENANT,
        "operationName": "Publish",
        "category": category,
        "_TimeReceivedBySvc": "2026-11-22T10:00:00.0000000",
        "properties": {
            "Timestamp": "2026-11-22T09:59:58.0000000Z",
            "NetworkMessageId": id,
            "RecipientEmailAddress": format!("user{i}@contoso.example"),
            "ReportId": format!("{id}-report"),
        }
    })
    .to_string()
}

/// Accepted Email* rows by NetworkMessageId, with how many times each arrived.
pub fn email_arrivals(emulator: &Emulator) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (stream, row) in emulator.accepted() {
        // The connector's own health rows go beside the data.
        if stream == "Custom-M365SentinelHealth_CL" {
            continue;
        }
        assert!(
            stream.starts_with("Custom-Email"),
            "unexpected stream {stream}"
        );
        let id = row["NetworkMessageId"].as_str().unwrap_or("").to_string();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// (distinct rows arrived of `expected`, missing, extra copies).
pub fn tally(counts: &BTreeMap<String, usize>, expected: &[String]) -> (usize, usize, usize) {
    let missing = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .count();
    let duplicates = counts.values().map(|n| n - 1).sum();
    (counts.len(), missing, duplicates)
}

/// `{"records":[...]}` bodies of `per_message` rows each, the four tables interleaved:
/// `rows_per_table` rows of each table, tagged `tag`. Returns (bodies, every row id).
pub fn event_hub_bodies(
    rows_per_table: usize,
    per_message: usize,
    tag: &str,
) -> (Vec<String>, Vec<String>) {
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    for i in 0..rows_per_table {
        for table in 0..4 {
            rows.push(row(table, tag, i));
            ids.push(format!("{table}-{tag}-{i}"));
        }
    }
    let bodies = rows
        .chunks(per_message)
        .map(|chunk| format!("{{\"records\":[{}]}}", chunk.join(",")))
        .collect();
    (bodies, ids)
}

/// The sink part of a config (emulated Logs Ingestion over TLS), with the spool under `dir`.
pub fn sink_yaml(emulator: &Emulator, dir: &Path) -> String {
    std::fs::write(dir.join("ca.pem"), emulator.ca_pem().unwrap()).unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let url = emulator.url();
    format!(
        "sink:\n  logs_ingestion:\n    endpoint: {url}\n    dcr_immutable_id: {DCR}\n  credential:\n    kind: client_secret\n    tenant_id: {TENANT}\n    client_id: {CLIENT}\n    secret_file: {dir}/secret\n  authority_host: {url}\n  flush_delay_ms: 200\n  concurrency: {CONCURRENCY}\nbatch:\n  max_body_bytes: 100000\nhttp:\n  ca_bundle: {dir}/ca.pem\ndlq:\n  dir: {dir}/dlq\nspool:\n  dir: {dir}/spool\nretry:\n  min_delay_ms: 100\n  max_delay_secs: 2\n",
        dir = dir.display()
    )
}

/// An `event_hubs` entry for the broker (plaintext: a local broker).
/// `KAFKA_DEBUG=<librdkafka debug contexts>` (e.g. `cgrp,fetch`) turns librdkafka's debug log
/// on in the binaries a test runs.
pub fn hub_yaml(broker: &Broker, topic: &str, group: &str) -> String {
    let debug = std::env::var("KAFKA_DEBUG")
        .map(|d| format!("      librdkafka: {{debug: \"{d}\"}}\n"))
        .unwrap_or_default();
    format!(
        "    - name: {topic}\n      bootstrap_servers: {}\n      event_hub: {topic}\n      consumer_group: {group}\n      auth: {{kind: plaintext}}\n      session_timeout_ms: 6000\n      commit_interval_ms: 200\n{debug}",
        broker.bootstrap()
    )
}

/// Writes `dir/config.yaml`: the sink, then a `defender` section holding `sources` (entries
/// under `event_hubs:` / `storage:` already indented).
pub fn write_defender_config(emulator: &Emulator, dir: &Path, defender: &str) -> PathBuf {
    let log = if std::env::var("KAFKA_DEBUG").is_ok() {
        "log:\n  level: info,m365_sentinel::sources::eventhubs=debug\n"
    } else {
        ""
    };
    let config = format!(
        "{}{log}defender:\n  state_dir: {}/state\n{defender}",
        sink_yaml(emulator, dir),
        dir.display()
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

/// The JSON body of a row as the emulator received it.
pub fn row_id(row: &Value) -> &str {
    row["NetworkMessageId"].as_str().unwrap_or("")
}
