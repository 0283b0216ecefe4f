//! End to end: file → map → batch → gzip → Logs Ingestion emulator over loopback, through the
//! real sink (tokens from azure_identity). Reports records per CPU-second of the connector (the
//! process's CPU minus the emulator's own threads), peak RSS (of the whole process, emulator
//! included, so an upper bound) and the average request fill.
//! Runs the memory-only path, the spooled path, and the spooled path with the integrity chain
//! (`DELIVERY_BENCH_SPOOL=off|on|chain` for one), and prints their ratios. The spooled runs
//! write health rows too, as `run` does by default; the count checked is the audit table's.
//! Run: `cargo bench --bench delivery` (N records: `DELIVERY_BENCH_RECORDS`, default 300,000).
//!
//! `DELIVERY_BENCH_BINARY=1`: the connector is the release binary (`run --input FILE`), its own
//! process, against the emulator over TLS; its CPU is the process's own (nothing shared with
//! the emulator: allocator, threads, interrupts landing on the emulator's threads). The modes
//! alternate for `DELIVERY_BENCH_RUNS` rounds (default 5) and the medians are compared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::http::Transport;
use m365_emulator::{Emulator, ToEmulator};
use m365_sentinel::auth::{Cloud, CredentialConfig, credential};
use m365_sentinel::pipeline::Setup;
use m365_sentinel::run::{Delivery, Intake, RunOptions, run};
use m365_sentinel::sinks::logs_ingestion::LogsIngestionConfig;
use m365_sentinel::sinks::retry::RetryPolicy;
use m365_sentinel::sinks::workspace::{Api, WorkspaceSink};
use m365_sentinel::state::dlq::DeadLetterStore;

#[path = "common/binary.rs"]
mod binary;
#[path = "common/measure.rs"]
mod measure;
#[path = "common/records.rs"]
mod records;

use measure::{CLIENT, SECRET, TENANT, cpu_seconds, emulator_config, emulator_runtime, report};

const AUTHORITY: &str = "https://login.emulator.test";

fn main() {
    // `cargo test --benches` runs benches as tests with --bench absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("DELIVERY_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 2_000 } else { 300_000 });
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("audit.ndjson");
    {
        use std::io::Write;
        let file = std::fs::File::create(&input).expect("input file");
        let mut out = std::io::BufWriter::new(file);
        for i in 0..n {
            writeln!(out, "{}", records::record(i)).expect("input written");
        }
        out.flush().expect("input flushed");
    }
    std::fs::write(dir.path().join("secret"), SECRET).expect("secret written");
    if std::env::var_os("DELIVERY_BENCH_BINARY").is_some() {
        binary_mode(dir.path(), &input, n);
        return;
    }

    // The emulator gets its own runtime and threads, so its CPU can be told apart.
    let emulator_rt = emulator_runtime();
    let emulator = emulator_rt
        .block_on(Emulator::start(emulator_config()))
        .expect("emulator");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("connector")
        .enable_all()
        .build()
        .expect("runtime");
    let setup = Arc::new(Setup::load(None, None, std::iter::empty()).expect("setup"));
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
    .expect("credential");
    let dlq = Arc::new(DeadLetterStore::open(&dir.path().join("dlq")).expect("dlq"));
    let sink = Arc::new(WorkspaceSink::new(
        reqwest::Client::new(),
        Api::LogsIngestion {
            credential: cred,
            scope: Cloud::Public.monitor_scope().to_string(),
        },
        RetryPolicy::default(),
        dlq,
    ));
    let config = LogsIngestionConfig {
        endpoint: emulator.url(),
        dcr_immutable_id: measure::DCR.into(),
        tables: Default::default(),
        allow_plain_http_loopback: true,
    };
    let targets: Vec<_> = setup
        .schemas
        .tables
        .iter()
        .map(|t| config.target(t).expect("target"))
        .collect();
    // (spool, chain)
    let modes: &[(bool, bool)] = match std::env::var("DELIVERY_BENCH_SPOOL").as_deref() {
        Ok("on") => &[(true, false)],
        Ok("off") => &[(false, false)],
        Ok("chain") => &[(true, true)],
        _ => &[(false, false), (true, false), (true, true)],
    };
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    std::fs::write(
        keys.join("k1"),
        "bench-chain-key-0123456789abcdef0123456789",
    )
    .expect("key");
    let spool_dir = dir.path().join("spool");
    let chained = Arc::new(
        Setup::load(
            None,
            None,
            [
                (
                    "M365_SENTINEL__INTEGRITY__KEYS_DIR".to_string(),
                    keys.display().to_string(),
                ),
                (
                    "M365_SENTINEL__SPOOL__DIR".to_string(),
                    spool_dir.display().to_string(),
                ),
            ],
        )
        .expect("setup with integrity"),
    );
    let audit_stream = setup.schemas.tables[setup.schemas.audit_table().expect("audit table")]
        .stream
        .clone();
    let mut rates = Vec::new();
    let mut cpu_rates = Vec::new();
    for &(spooled, chain) in modes {
        let spool = spooled.then(|| {
            let streams = setup.schemas.streams();
            let config = m365_sentinel::state::spool::SpoolConfig {
                dir: spool_dir.clone(),
                ..Default::default()
            };
            m365_sentinel::state::spool::Spool::open(&config, &streams).expect("spool")
        });
        let run_setup = if chain {
            chained.clone()
        } else {
            setup.clone()
        };
        let options = RunOptions {
            flush_delay: Duration::from_secs(5),
            concurrency: 4,
            dlq_dir: dir.path().join("dlq"),
            shutdown: m365_sentinel::ops::shutdown::Shutdown::never(),
            shutdown_deadline: Duration::from_secs(25),
            live: Default::default(),
            archive: Default::default(),
            boards: Default::default(),
        };
        let audit_rows = || -> usize {
            emulator
                .requests()
                .iter()
                .filter(|r| r.status == 204 && r.stream == audit_stream)
                .map(|r| r.rows)
                .sum()
        };
        let accepted_before = audit_rows();
        let sink_before = sink.stats();
        let (cpu_before, emulator_before) = cpu_seconds();
        let started = Instant::now();
        let stats = runtime
            .block_on(run(
                run_setup,
                Intake::Files(vec![input.clone()]),
                Delivery::Workspace {
                    sink: sink.clone(),
                    targets: targets.clone(),
                    spool,
                },
                options,
            ))
            .expect("run");
        let wall = started.elapsed().as_secs_f64();
        let (cpu_after, emulator_after) = cpu_seconds();
        let emulator_cpu = emulator_after - emulator_before;
        let connector_cpu = (cpu_after - cpu_before) - emulator_cpu;
        assert_eq!(audit_rows() - accepted_before, n, "every record delivered");
        println!(
            "--- spool {} (fsync policy: always){} ---",
            if spooled { "on" } else { "off" },
            if chain { ", integrity chain on" } else { "" }
        );
        println!("records:                   {n}");
        println!("records per second (wall): {:.0}", n as f64 / wall);
        let s = &stats.sink;
        let this_run = m365_sentinel::sinks::workspace::SinkStats {
            requests: s.requests - sink_before.requests,
            bytes_sent: s.bytes_sent - sink_before.bytes_sent,
            bytes_uncompressed: s.bytes_uncompressed - sink_before.bytes_uncompressed,
            ..s.clone()
        };
        report(n, wall, connector_cpu, emulator_cpu, &this_run);
        rates.push(n as f64 / wall);
        cpu_rates.push(n as f64 / connector_cpu.max(0.01));
    }
    if let ([off, on, ..], [cpu_off, cpu_on, ..]) = (&rates[..], &cpu_rates[..]) {
        println!(
            "spool on / spool off:      {:.0}% of the memory-only throughput ({:.0}% of its records per CPU-second)",
            on / off * 100.0,
            cpu_on / cpu_off * 100.0
        );
    }
    if let [_, on, chain] = cpu_rates[..] {
        println!(
            "integrity chain:           {:+.1}% CPU per record over the spooled path",
            (on / chain - 1.0) * 100.0
        );
    }
}

/// The three paths as the release binary, alternating, medians compared.
fn binary_mode(dir: &std::path::Path, input: &std::path::Path, n: usize) {
    let emulator_rt = emulator_runtime();
    let emulator = emulator_rt
        .block_on(Emulator::start_tls(emulator_config()))
        .expect("emulator");
    std::fs::write(dir.join("ca.pem"), emulator.ca_pem().expect("ca")).expect("ca");
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    std::fs::write(
        keys.join("k1"),
        "bench-chain-key-0123456789abcdef0123456789",
    )
    .expect("key");
    let rounds: usize = std::env::var("DELIVERY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let modes: &[(&str, bool, bool)] = match std::env::var("DELIVERY_BENCH_SPOOL").as_deref() {
        Ok("on") => &[("spool on", true, false)],
        Ok("off") => &[("spool off", false, false)],
        Ok("chain") => &[("spool on, chain", true, true)],
        _ => &[
            ("spool off", false, false),
            ("spool on", true, false),
            ("spool on, chain", true, true),
        ],
    };
    let audit_stream = "Custom-OfficeActivity_CL";
    let audit = |e: &Emulator| -> Vec<m365_emulator::RequestLog> {
        e.requests()
            .into_iter()
            .filter(|r| r.status == 204 && r.stream == audit_stream)
            .collect()
    };
    let mut costs: Vec<Vec<binary::Cost>> = modes.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (m, &(name, spooled, chain)) in modes.iter().enumerate() {
            let spool_dir = dir.join("spool");
            let _ = std::fs::remove_dir_all(&spool_dir);
            let integrity = if chain {
                format!(
                    "integrity:\n  keys_dir: {}\n  chain_id: bench-0\n  workspace_id: 00000000-0000-0000-0000-000000000000\n",
                    keys.display()
                )
            } else {
                String::new()
            };
            let config = format!(
                "http:\n  ca_bundle: {dir}/ca.pem\nsink:\n  logs_ingestion:\n    endpoint: {url}\n    dcr_immutable_id: {dcr}\n  credential: {{kind: client_secret, tenant_id: {TENANT}, client_id: {CLIENT}, secret_file: {dir}/secret}}\n  authority_host: {url}\nspool:\n  enabled: {spooled}\n  dir: {dir}/spool\ndlq:\n  dir: {dir}/dlq\n{integrity}",
                url = emulator.url(),
                dcr = measure::DCR,
                dir = dir.display(),
            );
            let config_path = dir.join("config.yaml");
            std::fs::write(&config_path, config).expect("config");
            let before = audit(&emulator).len();
            let args = [
                "run".as_ref(),
                "--config".as_ref(),
                config_path.as_os_str(),
                "--input".as_ref(),
                input.as_os_str(),
            ];
            let cost = binary::measure(&args, &dir.join("connector.log"));
            let requests = audit(&emulator).split_off(before);
            let rows: usize = requests.iter().map(|r| r.rows).sum();
            assert_eq!(rows, n, "every record delivered once ({name})");
            let over = requests
                .iter()
                .filter(|r| r.compressed_bytes > 1 << 20 || r.uncompressed_bytes > 1 << 20)
                .count();
            assert_eq!(over, 0, "no request over 1 MiB ({name})");
            let plain: usize = requests.iter().map(|r| r.uncompressed_bytes).sum();
            println!(
                "round {} {name:<16} {:.2} CPU-s ({:.2} user, {:.2} kernel), {:.0} records per CPU-second, {:.2} s wall, peak RSS {:.0} MB, {} requests (fill {:.1}%)",
                round + 1,
                cost.cpu(),
                cost.user,
                cost.system,
                n as f64 / cost.cpu().max(0.01),
                cost.wall,
                cost.peak_mb,
                requests.len(),
                100.0 * plain as f64 / (requests.len().max(1) as f64 * 1_000_000.0),
            );
            costs[m].push(cost);
        }
    }
    let median = |values: Vec<f64>| -> f64 {
        let mut v = values;
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut cpu_medians = Vec::new();
    for (m, &(name, _, _)) in modes.iter().enumerate() {
        let cpu = median(costs[m].iter().map(binary::Cost::cpu).collect());
        let wall = median(costs[m].iter().map(|c| c.wall).collect());
        let rss = costs[m].iter().map(|c| c.peak_mb).fold(0.0, f64::max);
        println!(
            "median {name:<15} {cpu:.2} CPU-s, {:.0} records per CPU-second, {wall:.2} s wall ({:.0} records/s), peak RSS at most {rss:.0} MB",
            n as f64 / cpu,
            n as f64 / wall
        );
        cpu_medians.push(cpu);
    }
    if let [off, on, ..] = cpu_medians[..] {
        println!(
            "spool on / spool off:      {:.0}% of the memory-only records per CPU-second (medians of {rounds})",
            off / on * 100.0
        );
    }
    if let [_, on, chain] = cpu_medians[..] {
        println!(
            "integrity chain:           {:+.1}% CPU per record over the spooled path (medians of {rounds})",
            (chain / on - 1.0) * 100.0
        );
    }
}
