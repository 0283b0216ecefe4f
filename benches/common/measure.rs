//! What the benchmarks measure: CPU per thread group and peak memory, from /proc.

/// Threads of the emulator's runtime are named with this prefix, so their CPU can be told apart.
pub const EMULATOR_THREAD: &str = "emulator";

/// CPU seconds (user + system) of this process's threads, split by whether a thread is the
/// emulator's: from /proc/self/task/*/stat (fields 14 and 15, in clock ticks of 1/100 s).
pub fn cpu_seconds() -> (f64, f64) {
    let mut emulator = 0.0;
    let mut total = 0.0;
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
        let name = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<f64>().ok()))
            .sum();
        let seconds = ticks / 100.0;
        total += seconds;
        if name.starts_with(EMULATOR_THREAD) {
            emulator += seconds;
        }
    }
    (total, emulator)
}

pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
