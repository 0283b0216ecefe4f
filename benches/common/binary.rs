//! The connector as its own process: the release binary, measured from /proc while it runs
//! (peak RSS from VmHWM, CPU from the zombie's stat before it is reaped).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one run of the binary cost.
#[allow(dead_code)] // each bench reads the fields it reports
pub struct Cost {
    pub wall: f64,
    pub user: f64,
    pub system: f64,
    pub peak_mb: f64,
    pub peak_threads: f64,
}

impl Cost {
    pub fn cpu(&self) -> f64 {
        self.user + self.system
    }
}

/// Runs `m365-sentinel ARGS` to its end (stderr to `log`) and measures it; panics with the
/// log's end when it fails.
///
/// `BENCH_WRAP` (a command and its arguments, split at spaces) runs the binary under it, e.g.
/// `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p`: instruction counts are the
/// same run after run, where CPU-seconds on a shared 2-core VM vary by a third. The CPU figures
/// printed are then the wrapper's and mean nothing.
pub fn measure(args: &[&std::ffi::OsStr], log: &Path) -> Cost {
    let log_file = std::fs::File::create(log).expect("log");
    let started = Instant::now();
    let binary = env!("CARGO_BIN_EXE_m365-sentinel");
    let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
    let mut wrap = wrap.split_whitespace();
    let mut command = match wrap.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(wrap).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    let mut child = command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("the release binary (cargo bench builds it)");
    let proc_dir = format!("/proc/{}", child.id());
    let mut peak_kb = 0.0_f64;
    let mut peak_threads = 0.0_f64;
    let (user, system) = loop {
        let stat = std::fs::read_to_string(format!("{proc_dir}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let status = std::fs::read_to_string(format!("{proc_dir}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        };
        peak_kb = peak_kb.max(field("VmHWM:").unwrap_or(0.0));
        peak_threads = peak_threads.max(field("Threads:").unwrap_or(0.0));
        // State is the first field after the name; utime and stime the 12th and 13th.
        if fields.first() == Some(&"Z") {
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
            break (
                ticks(11).unwrap_or(0.0) / 100.0,
                ticks(12).unwrap_or(0.0) / 100.0,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = child.wait().expect("wait");
    let wall = started.elapsed().as_secs_f64();
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        panic!(
            "m365-sentinel failed ({status}); its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Cost {
        wall,
        user,
        system,
        peak_mb: peak_kb / 1024.0,
        peak_threads,
    }
}

/// Runs `m365-sentinel run --once --config CONFIG` to its end and prints what it cost.
/// `delivered` reads how many rows the emulator accepted.
#[allow(dead_code)] // the collect bench's
pub fn run_once(
    config: &Path,
    n: usize,
    passes: usize,
    spooled: bool,
    delivered: impl Fn() -> usize,
) {
    let log = config.with_file_name("connector.log");
    let args = [
        "run".as_ref(),
        "--once".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    let cost = measure(&args, &log);
    let (wall, user, system) = (cost.wall, cost.user, cost.system);
    let (peak_kb, peak_threads) = (cost.peak_mb * 1024.0, cost.peak_threads);
    assert_eq!(delivered(), n, "every record delivered once");
    let cpu = cost.cpu();
    let spool = if spooled { "on" } else { "off" };
    println!("connector process:         m365-sentinel run --once (spool {spool})");
    println!("records:                   {n}");
    println!("wall:                      {wall:.2} s");
    println!("connector CPU:             {cpu:.2} s");
    println!("records per CPU-second:    {:.0}", n as f64 / cpu.max(0.01));
    println!(
        "connector user / kernel:   {user:.2} s / {system:.2} s (kernel {:.0}%)",
        100.0 * system / cpu.max(0.01)
    );
    println!(
        "CPU per tenant-poll:       {:.1} ms ({passes} tenant x content type passes)",
        1000.0 * cpu / passes as f64
    );
    println!("connector peak RSS:        {:.0} MB", peak_kb / 1024.0);
    println!("connector threads (peak):  {peak_threads:.0}");
}
