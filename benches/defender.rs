//! Defender email events end to end, one source at a time: rows produced into a 4-partition
//! topic of a real Kafka-protocol broker (tansu) and read by the Event Hubs source, then the
//! same number of rows in append blobs (Azurite) read by the Storage source; each mapped,
//! deduped, batched, gzipped and delivered to the Logs Ingestion emulator over HTTPS. One
//! pass each (`--once` semantics: partitions read to their end, blobs to their end), offsets
//! and positions committed. Reports rows per CPU-second of the connector (this process minus
//! the emulator's threads; tansu and Azurite are other processes) and wall time.
//! Run: `cargo bench --bench defender` (rows per source: `DEFENDER_BENCH_ROWS`, default
//! 200,000). Needs tansu and Azurite as the tests do (`scripts/test` installs them into .tools/).

use std::sync::Arc;
use std::time::{Duration, Instant};

use m365_emulator::Emulator;
use m365_sentinel::pipeline::Setup;
use m365_sentinel::run::{Delivery, Intake, RunOptions, run};
use m365_sentinel::sources::live::{LiveOptions, LiveSources};

#[path = "../tests/common/azurite.rs"]
#[allow(dead_code)]
mod azurite;
#[path = "../tests/common/kafka.rs"]
mod kafka;
#[path = "common/measure.rs"]
mod measure;
#[path = "common/sink.rs"]
mod sink;
#[path = "../tests/common/tools.rs"]
#[allow(dead_code)]
mod tools;

use measure::{SECRET, cpu_seconds, emulator_config, emulator_runtime, report};

const CATEGORIES: [&str; 4] = [
    "AdvancedHunting-EmailEvents",
    "AdvancedHunting-EmailAttachmentInfo",
    "AdvancedHunting-EmailUrlInfo",
    "AdvancedHunting-EmailPostDeliveryEvents",
];
const CONTAINERS: [&str; 4] = [
    "insights-logs-advancedhunting-emailevents",
    "insights-logs-advancedhunting-emailattachmentinfo",
    "insights-logs-advancedhunting-emailurlinfo",
    "insights-logs-advancedhunting-emailpostdeliveryevents",
];

/// A Streaming API row of about 600 bytes, as Defender writes them (envelope and properties).
fn row(table: usize, i: usize) -> String {
    format!(
        r#"{{"time":"2026-11-22T10:00:00.0000000Z","tenantId":"8e1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d","operationName":"Publish","category":"{}","_TimeReceivedBySvc":"2026-11-22T10:00:00.0000000","properties":{{"Timestamp":"2026-11-22T09:59:58.0000000Z","NetworkMessageId":"{table}-{i:08}-5d2c-4b6e-9f0a-1c2d3e4f5a6b","InternetMessageId":"<{i}@mail.contoso.example>","SenderFromAddress":"sender{i}@fabrikam.example","RecipientEmailAddress":"user{i}@contoso.example","Subject":"Quarterly report {i}","DeliveryAction":"Delivered","DeliveryLocation":"Inbox/folder","ThreatTypes":"","EmailDirection":"Inbound","ReportId":"{table}-{i}-report"}}}}"#,
        CATEGORIES[table]
    )
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("DEFENDER_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 4_000 } else { 200_000 });
    let dir = tempfile::tempdir().expect("temp dir");
    let emulator_rt = emulator_runtime();
    let emulator = emulator_rt
        .block_on(Emulator::start_tls(emulator_config()))
        .expect("emulator");
    std::fs::write(dir.path().join("secret"), SECRET).expect("secret");
    std::fs::write(dir.path().join("ca.pem"), emulator.ca_pem().expect("ca")).expect("ca");

    // The event hub: messages of 50 rows, the four tables interleaved, round-robin over four
    // partitions, one message per record batch (see tests/common/kafka.rs on tansu).
    let broker = kafka::Broker::start();
    let rows: Vec<String> = (0..n).map(|i| row(i % 4, i)).collect();
    let bodies: Vec<String> = rows
        .chunks(50)
        .map(|c| format!("{{\"records\":[{}]}}", c.join(",")))
        .collect();
    emulator_rt.block_on(broker.create_topic("bench", 4));
    broker.produce("bench", 4, &bodies);
    let hub = format!(
        "  event_hubs:\n    - bootstrap_servers: {}\n      event_hub: bench\n      auth: {{kind: plaintext}}\n",
        broker.bootstrap()
    );
    measure_source("event hub", &dir, &emulator, &hub, n, "hub", true);

    // The storage account: one hour blob per table, written in appends of 1,000 lines.
    let storage = azurite::Azurite::start();
    let now = m365_sentinel::stages::map::datetime::format_unix_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64,
    );
    let blob = format!(
        "tenantId=8e1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d/y={}/m={}/d={}/h={}/m=00/PT1H.json",
        &now[0..4],
        &now[5..7],
        &now[8..10],
        &now[11..13]
    );
    emulator_rt.block_on(async {
        for (table, container) in CONTAINERS.iter().enumerate() {
            storage.create_container(container).await;
            storage.create_append_blob(container, &blob).await;
            let mine: Vec<String> = (0..n)
                .filter(|i| i % 4 == table)
                .map(|i| row(table, i + n))
                .collect();
            for chunk in mine.chunks(1_000) {
                let text: String = chunk.iter().map(|r| format!("{r}\r\n")).collect();
                storage
                    .append_block(container, &blob, text.as_bytes())
                    .await;
            }
        }
    });
    std::fs::write(dir.path().join("storage-key"), azurite::KEY).expect("key");
    let account = format!(
        "  storage:\n    - account: {}\n      endpoint: {}\n      allow_plain_http_loopback: true\n      auth: {{kind: shared_key, key_file: {}/storage-key}}\n",
        azurite::ACCOUNT,
        storage.endpoint(),
        dir.path().display()
    );
    measure_source(
        "storage account",
        &dir,
        &emulator,
        &account,
        n,
        "storage",
        false,
    );
}

/// The source in `defender_yaml` read until the emulator has `n` more rows, measured:
/// `continuous` as `run` reads (stopped by the shutdown signal once everything arrived), else
/// one `--once` pass.
fn measure_source(
    what: &str,
    dir: &tempfile::TempDir,
    emulator: &Emulator,
    defender_yaml: &str,
    n: usize,
    name: &str,
    continuous: bool,
) {
    let config_path = dir.path().join(format!("{name}.yaml"));
    let config = format!(
        "http:\n  ca_bundle: {dir}/ca.pem\ndefender:\n  state_dir: {dir}/state-{name}\n{defender_yaml}",
        dir = dir.path().display()
    );
    std::fs::write(&config_path, config).expect("config");
    let setup = Arc::new(Setup::load(Some(&config_path), None, std::iter::empty()).expect("setup"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("connector")
        .enable_all()
        .build()
        .expect("runtime");
    let http = m365_sentinel::http_client::build(&setup.config.http).expect("http client");
    let (sink, targets) = sink::emulator_sink(&setup, http, emulator, dir.path());
    let (stop, shutdown) = m365_sentinel::ops::shutdown::channel();
    let options = RunOptions {
        flush_delay: Duration::from_secs(1),
        concurrency: 4,
        dlq_dir: dir.path().join("dlq"),
        shutdown: shutdown.clone(),
        shutdown_deadline: Duration::from_secs(25),
        live: Default::default(),
        archive: Default::default(),
        boards: Default::default(),
    };
    let accepted_before = emulator.accepted_count();
    let (cpu_before, emulator_before) = cpu_seconds();
    let started = Instant::now();
    let stats = runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (end_run, run_ended) = m365_sentinel::ops::shutdown::channel();
        let live = LiveOptions {
            persist: true,
            once: !continuous,
            shutdown,
            run_ended,
        };

        let sources = LiveSources::start(&setup.config, live, tx).expect("sources");
        let finishing = tokio::spawn(sources.finish());
        let stop_when_done = async {
            if continuous {
                while emulator.accepted_count() - accepted_before < n {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                stop.stop();
            }
        };
        let (stats, ()) = tokio::join!(
            run(
                setup.clone(),
                Intake::Units(rx),
                Delivery::Workspace {
                    sink,
                    targets,
                    spool: None
                },
                options
            ),
            stop_when_done
        );
        let stats = stats.expect("run");
        end_run.stop();
        let reports = finishing.await.expect("sources");
        assert!(
            reports.iter().all(|r| r.errors.is_empty()),
            "{:?}",
            reports.iter().map(|r| &r.errors).collect::<Vec<_>>()
        );
        stats
    });
    let wall = started.elapsed().as_secs_f64();
    let (cpu_after, emulator_after) = cpu_seconds();
    let emulator_cpu = emulator_after - emulator_before;
    let connector_cpu = (cpu_after - cpu_before) - emulator_cpu;
    assert_eq!(
        emulator.accepted_count() - accepted_before,
        n,
        "every row delivered once"
    );
    println!("\n{what}: {n} rows");
    report(n, wall, connector_cpu, emulator_cpu, &stats.sink);
}
