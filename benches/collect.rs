//! The audit log end to end: the Management Activity API emulator (3 tenants × 5 content types,
//! paged listings, blobs of 100 records) → collector → map (with dedupe by Id) → batch → gzip →
//! the Logs Ingestion emulator, over HTTPS, with tokens from azure_identity, positions and seen
//! ids written to disk. One pass (`--once` semantics). Reports records per CPU-second of the
//! connector (the emulator's threads excluded), wall time, peak RSS (whole process, emulator
//! included) and request fill.
//! Run: `cargo bench --bench collect` (N records: `COLLECT_BENCH_RECORDS`, default 300,000;
//! the per-tenant request budget: `COLLECT_BENCH_RPM`, default 1,000,000, i.e. unthrottled).
//! With `COLLECT_BENCH_BINARY=1` the connector is the release binary itself, `run --once` with
//! the spool on (`COLLECT_BENCH_SPOOL=off`: off), as a user runs it: its CPU, kernel share and peak RSS are its own process's.
//! Adding `COLLECT_BENCH_ARCHIVE=1` turns the raw archive on, into a container of Azurite (as
//! the tests start it), so the two runs side by side give the archive's cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use m365_emulator::{BlobSpec, Emulator, MgmtTenant};
use m365_sentinel::pipeline::Setup;
use m365_sentinel::run::{Delivery, Intake, RunOptions, run};
use m365_sentinel::sources::management::config::ALL_CONTENT_TYPES as CONTENT_TYPES;
use m365_sentinel::sources::management::{Collector, CollectorOptions};

#[path = "../tests/common/azurite.rs"]
#[allow(dead_code)]
mod azurite;
#[path = "../tests/common/tools.rs"]
#[allow(dead_code)]
mod tools;

#[path = "common/binary.rs"]
mod binary;
#[path = "common/measure.rs"]
mod measure;
#[path = "common/records.rs"]
mod records;
#[path = "common/sink.rs"]
mod sink;

use measure::{
    CLIENT, DCR, SECRET, TENANT, connector_user_system, cpu_seconds, emulator_config,
    emulator_runtime, peak_rss_mb, report, reset_peak_rss, rss_mb,
};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const PUBLISHER: &str = "99999999-8888-4777-8666-555555555555";
const BLOB_RECORDS: usize = 100;

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("COLLECT_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 3_000 } else { 300_000 });
    // The API's own baseline is 2,000 per tenant per minute, which makes a run of this size
    // last about half a minute whatever the connector does; measure the connector instead.
    let requests_per_minute: u32 = std::env::var("COLLECT_BENCH_RPM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let emulator_rt = emulator_runtime();
    let emulator = emulator_rt
        .block_on(Emulator::start_tls(emulator_config()))
        .expect("emulator");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    // An MSSP's shape: `COLLECT_BENCH_TENANTS=500 COLLECT_BENCH_RECORDS=500000
    // COLLECT_BENCH_BLOB_RECORDS=44` is 500 tenants of 1,000 records in about 23 blobs each.
    let tenant_count: usize = env_or("COLLECT_BENCH_TENANTS", 3);
    let blob_records: usize = env_or("COLLECT_BENCH_BLOB_RECORDS", BLOB_RECORDS);
    let tenants: Vec<String> = (1..=tenant_count)
        .map(|i| format!("aaaaaaaa-0000-4000-8000-{i:012}"))
        .collect();
    let mut tenant_yaml = String::new();
    for (t, tenant) in tenants.iter().enumerate() {
        emulator.add_mgmt_tenant(MgmtTenant {
            tenant_id: tenant.clone(),
            client_secret: SECRET.into(),
            page_size: 200,
            next_page_header: "NextPageUri",
            subscriptions_enabled: true,
        });
        tenant_yaml.push_str(&format!(
            "    - tenant_id: {tenant}\n      publisher_identifier: {PUBLISHER}\n      endpoint: {url}\n      authority_host: {url}\n      credential: {{kind: client_secret, tenant_id: {tenant}, client_id: {CLIENT}, secret_file: {dir}/secret}}\n",
            url = emulator.url(),
            dir = dir.path().display()
        ));
        for (c, ct) in CONTENT_TYPES.iter().enumerate() {
            let stream = t * CONTENT_TYPES.len() + c;
            let streams = tenants.len() * CONTENT_TYPES.len();
            let mine: Vec<usize> = (stream..n).step_by(streams).collect();
            let blobs = mine.chunks(blob_records).enumerate().map(|(b, chunk)| {
                let records = chunk
                    .iter()
                    .map(|i| serde_json::from_str(&records::record(*i)).expect("record"))
                    .collect();
                BlobSpec {
                    content_type: (*ct).to_string(),
                    content_id: format!("{stream}-{b}"),
                    created_ms: now - 20 * 3_600_000 + (b as i64) * 1_000,
                    records,
                    hidden_listings: 0,
                    expired: false,
                }
            });
            emulator.add_blobs(tenant, blobs.collect::<Vec<_>>());
        }
    }
    std::fs::write(dir.path().join("secret"), SECRET).expect("secret");
    std::fs::write(dir.path().join("ca.pem"), emulator.ca_pem().expect("ca")).expect("ca");
    let config = format!(
        "http:\n  ca_bundle: {dir}/ca.pem\nmanagement_api:\n  state_dir: {dir}/state\n  initial_lookback_hours: 24\n  requests_per_minute: {rpm}\n  tenants:\n{tenant_yaml}",
        dir = dir.path().display(),
        rpm = requests_per_minute
    );
    std::fs::write(dir.path().join("config.yaml"), &config).expect("config");
    if std::env::var_os("COLLECT_BENCH_BINARY").is_some() {
        // `COLLECT_BENCH_SPOOL=off`: memory-only delivery, the in-process mode's footing.
        let spooled = std::env::var("COLLECT_BENCH_SPOOL").map_or(true, |v| v != "off");
        let sink = format!(
            "sink:\n  logs_ingestion:\n    endpoint: {url}\n    dcr_immutable_id: {DCR}\n  credential: {{kind: client_secret, tenant_id: {TENANT}, client_id: {CLIENT}, secret_file: {dir}/secret}}\n  authority_host: {url}\nspool:\n  enabled: {spooled}\n  dir: {dir}/spool\ndlq:\n  dir: {dir}/dlq\nhealth:\n  enabled: false\n",
            url = emulator.url(),
            dir = dir.path().display()
        );
        // Health rows off: the emulator's count is then the records'. The archive's Azurite
        // lives until the pass is done.
        let mut archive = String::new();
        let _azurite = if std::env::var("COLLECT_BENCH_ARCHIVE").is_ok_and(|v| v == "1") {
            let azurite = azurite::Azurite::start();
            emulator_rt.block_on(azurite.create_container("archive"));
            std::fs::write(dir.path().join("archive.sas"), azurite.account_sas()).expect("sas");
            archive = format!(
                "archive:\n  container_url: {}/archive\n  sas_file: {}/archive.sas\n",
                azurite.endpoint(),
                dir.path().display()
            );
            eprintln!("archive:                   on (Azurite)");
            Some(azurite)
        } else {
            None
        };
        std::fs::write(
            dir.path().join("config.yaml"),
            format!("{sink}{archive}{config}"),
        )
        .expect("config");
        binary::run_once(
            &dir.path().join("config.yaml"),
            n,
            tenant_count * CONTENT_TYPES.len(),
            spooled,
            || emulator.accepted_count(),
        );
        println!(
            "connections opened:        {} (to the emulator: tokens, API and ingestion)",
            emulator.connections_accepted()
        );
        return;
    }
    let setup = Arc::new(
        Setup::load(
            Some(&dir.path().join("config.yaml")),
            None,
            std::iter::empty(),
        )
        .expect("setup"),
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("connector")
        .enable_all()
        .build()
        .expect("runtime");
    let http = m365_sentinel::http_client::build(&setup.config.http).expect("http client");
    let (sink, targets) = sink::emulator_sink(&setup, http.clone(), &emulator, dir.path());
    let options = RunOptions {
        flush_delay: Duration::from_secs(1),
        concurrency: 4,
        dlq_dir: dir.path().join("dlq"),
        shutdown: m365_sentinel::ops::shutdown::Shutdown::never(),
        shutdown_deadline: Duration::from_secs(25),
        live: Default::default(),
        archive: Default::default(),
        boards: Default::default(),
    };
    reset_peak_rss();
    let rss_before = rss_mb();
    let (user_before, system_before) = connector_user_system();
    let (cpu_before, emulator_before) = cpu_seconds();
    let started = Instant::now();
    let (stats, counters) = runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let collector = Collector::start(
            &setup.config.management_api,
            http,
            CollectorOptions {
                persist: true,
                once: true,
                max_blob_bytes: setup.config.input.max_document_bytes,
                retry: setup.config.retry_policy(),
                shutdown: m365_sentinel::ops::shutdown::Shutdown::never(),
            },
            tx,
        )
        .expect("collector");
        let counters = collector.counters.clone();
        let stats = run(
            setup.clone(),
            Intake::Units(rx),
            Delivery::Workspace {
                sink,
                targets,
                spool: None,
            },
            options,
        )
        .await
        .expect("run");
        let (reports, state_error) = collector.finish().await;
        assert!(reports.iter().all(|r| r.errors.is_empty()), "{reports:?}");
        assert_eq!(state_error, None, "the collection state is durable");
        (stats, counters)
    });
    let wall = started.elapsed().as_secs_f64();
    let (cpu_after, emulator_after) = cpu_seconds();
    let (user_after, system_after) = connector_user_system();
    let emulator_cpu = emulator_after - emulator_before;
    let connector_cpu = (cpu_after - cpu_before) - emulator_cpu;
    assert_eq!(emulator.accepted_count(), n, "every record delivered once");
    let blobs = counters.blobs.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "records:                   {n} in {blobs} blobs, {tenant_count} tenants x {} content types",
        CONTENT_TYPES.len()
    );
    report(n, wall, connector_cpu, emulator_cpu, &stats.sink);
    let (user, system) = (user_after - user_before, system_after - system_before);
    println!(
        "connector user / kernel:   {user:.2} s / {system:.2} s (kernel {:.0}%)",
        100.0 * system / (user + system).max(0.01)
    );
    println!(
        "CPU per tenant-poll:       {:.1} ms ({} tenant x content type passes)",
        1000.0 * connector_cpu / (tenant_count * CONTENT_TYPES.len()) as f64,
        tenant_count * CONTENT_TYPES.len()
    );
    println!(
        "RSS growth during the run: {:.0} MB (peak {:.0} MB over {rss_before:.0} MB of set-up, the emulator's data included)",
        peak_rss_mb() - rss_before,
        peak_rss_mb()
    );
}
