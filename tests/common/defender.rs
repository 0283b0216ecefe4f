//! Defender email events for the live-source tests: rows of the four tables, a real Kafka
//! broker (tansu) with a topic to produce them into, and configs for the binary.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use m365_emulator::Emulator;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tansu broker (a Kafka-compatible broker in Rust) on 127.0.0.1, in memory; killed on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
}

fn tansu_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = Path::new(&home).join(".cargo/bin/tansu");
    assert!(
        installed.exists(),
        "tansu (the Kafka broker the tests run) is not installed: `cargo install tansu --features dynostore --locked` (or set TANSU_BIN)"
    );
    installed
}

impl Broker {
    pub fn start() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        wait_for_port(port, "tansu");
        Self { child, port }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .unwrap();
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap();
        for r in results {
            r.unwrap();
        }
    }

    /// Produces `messages` to `topic`, message i to partition i % partitions; waits for acks.
    pub fn produce(&self, topic: &str, partitions: i32, messages: &[String]) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("linger.ms", "5")
            // One message per record batch: tansu 0.6.0 answers a fetch from an offset inside
            // a batch with the next batch, so a consumer resuming mid-batch would skip the
            // rest of that batch (seen: 108 messages lost after a restart, exactly one batch).
            .set("batch.num.messages", "1")
            .create()
            .unwrap();
        for (i, body) in messages.iter().enumerate() {
            let partition = i32::try_from(i).unwrap() % partitions;
            let key = i.to_string();
            loop {
                let record = BaseRecord::to(topic)
                    .partition(partition)
                    .key(&key)
                    .payload(body);
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, _)) => {
                        assert!(format!("{e}").contains("Queue full"), "produce failed: {e}");
                        producer.poll(Duration::from_millis(50));
                    }
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
