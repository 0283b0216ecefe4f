//! What the benchmarks share: the emulator on its own runtime (so its CPU can be told apart),
//! CPU per thread group and peak memory from /proc, and the report.
// Each benchmark includes this file and uses part of it.
#![allow(dead_code)]

/// Threads of the emulator's runtime are named with this prefix, so their CPU can be told apart.
pub const EMULATOR_THREAD: &str = "emulator";

/// CPU seconds (user + system) of this process's threads, split by whether a thread is the
/// emulator's: from /proc/self/task/*/stat (fields 14 and 15, in clock ticks of 1/100 s).
pub fn cpu_seconds() -> (f64, f64) {
    let (user, system, emulator) = cpu_split();
    (user + system, emulator)
}

/// The kernel's share of the connector's CPU: (user, system) seconds of the threads that are
/// not the emulator's.
pub fn connector_user_system() -> (f64, f64) {
    let (user, system, _) = cpu_split();
    let (emulator_user, emulator_system) = emulator_user_system();
    (user - emulator_user, system - emulator_system)
}

fn emulator_user_system() -> (f64, f64) {
    thread_ticks(|name| name.starts_with(EMULATOR_THREAD))
}

/// (user, system) seconds of the threads `pick` takes.
fn thread_ticks(pick: impl Fn(&str) -> bool) -> (f64, f64) {
    let mut user = 0.0;
    let mut system = 0.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0.0, 0.0);
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !pick(&stat[open + 1..close]) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        user += field(11).unwrap_or(0.0) / 100.0;
        system += field(12).unwrap_or(0.0) / 100.0;
    }
    (user, system)
}

/// (user, system, emulator user + system) seconds of this process's threads.
fn cpu_split() -> (f64, f64, f64) {
    let (user, system) = thread_ticks(|_| true);
    let (emulator_user, emulator_system) = emulator_user_system();
    (user, system, emulator_user + emulator_system)
}

/// Resets the peak-RSS mark (Linux: `5` into /proc/self/clear_refs), so a run's peak can be
/// told apart from its set-up's.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Resident memory now, MB.
pub fn rss_mb() -> f64 {
    status_kb("VmRSS:") / 1024.0
}

fn status_kb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

pub fn peak_rss_mb() -> f64 {
    status_kb("VmHWM:") / 1024.0
}

/// A runtime of one thread for the emulator, its threads named [`EMULATOR_THREAD`].
pub fn emulator_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(EMULATOR_THREAD)
        .enable_all()
        .build()
        .expect("emulator runtime")
}

pub const TENANT: &str = "7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
pub const CLIENT: &str = "0f0e0d0c-0b0a-4909-8887-868584838281";
pub const SECRET: &str = "bench-secret";
/// A DCR immutable id of the shape `check` requires.
pub const DCR: &str = "dcr-00000000000000000000000000b0e4c1";

/// An emulator that takes any stream and only counts rows.
pub fn emulator_config() -> m365_emulator::Config {
    m365_emulator::Config {
        tenant_id: TENANT.into(),
        client_id: CLIENT.into(),
        client_secret: SECRET.into(),
        dcr_immutable_id: DCR.into(),
        streams: Default::default(),
        other_dcrs: Default::default(),
        token_lifetime: std::time::Duration::from_secs(3600),
        accept_undeclared_streams: true,
        keep_rows: false,
        workspace_id: "00000000-0000-4000-8000-000000000003".into(),
        shared_key: "ZW11bGF0b3Itd29ya3NwYWNlLWtleQ==".into(),
        client_certificate_pem: None,
    }
}

/// Prints what a delivery run measured.
pub fn report(
    n: usize,
    wall: f64,
    connector_cpu: f64,
    emulator_cpu: f64,
    s: &m365_sentinel::sinks::workspace::SinkStats,
) {
    let fill = s.bytes_uncompressed as f64 / (s.requests.max(1) as f64 * 1_000_000.0);
    println!("wall:                      {wall:.2} s");
    println!("connector CPU:             {connector_cpu:.2} s (emulator {emulator_cpu:.2} s)");
    println!(
        "records per CPU-second:    {:.0}",
        n as f64 / connector_cpu.max(0.01)
    );
    println!("peak RSS (whole process):  {:.0} MB", peak_rss_mb());
    println!(
        "requests:                  {} ({} bytes gzip of {}), average fill {:.1}%",
        s.requests,
        s.bytes_sent,
        s.bytes_uncompressed,
        fill * 100.0
    );
}
