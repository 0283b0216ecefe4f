//! The Management API's seen-id set at scale: a tenant writing 10 million records a day, kept
//! for 8 days (80 million ids). Builds the state through the real path (admit, commit, write
//! the logs, compact into runs), then reports the memory per remembered id (the set's own
//! accounting and the process's resident memory after a reload), the reload time, and the cost
//! of admitting a new id and of refusing a delivered one.
//! Run: `cargo bench --bench dedupe` (ids per day: `DEDUPE_BENCH_IDS_PER_DAY`, default
//! 10,000,000; days: `DEDUPE_BENCH_DAYS`, default 8).

use std::sync::Mutex;
use std::time::Instant;

use m365_sentinel::sources::management::seen::{SeenFiles, SeenSet, compact_due};

const DAY_MS: i64 = 86_400_000;
const BLOB_IDS: usize = 20_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A record id as the API's: a random version-4 GUID, as its key.
fn guid_key(state: &mut u64) -> u128 {
    let mut word = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    };
    let raw = (u128::from(word()) << 64) | u128::from(word());
    (raw & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let per_day = env(
        "DEDUPE_BENCH_IDS_PER_DAY",
        if quick { 50_000 } else { 10_000_000 },
    );
    let days = env("DEDUPE_BENCH_DAYS", 8) as i64;
    let dir = tempfile::tempdir().expect("temp dir");
    let now = 20_000 * DAY_MS + 12 * 3_600_000;
    let started = Instant::now();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut kept = Vec::new();
    {
        let lock = Mutex::new(SeenSet::in_memory(8, usize::MAX));
        let mut files = SeenFiles::open(dir.path()).expect("seen dir");
        for day in 0..days {
            let created = now - (days - 1 - day) * DAY_MS;
            let mut left = per_day as usize;
            while left > 0 {
                let n = left.min(BLOB_IDS);
                left -= n;
                let keys: Vec<u128> = (0..n).map(|_| guid_key(&mut state)).collect();
                if kept.len() < 100_000 {
                    kept.extend_from_slice(&keys[..n.min(100)]);
                }
                let mut seen = lock.lock().expect("lock");
                for k in &keys {
                    seen.admit(*k);
                }
                seen.commit(created, &keys);
                let writes = seen.take_writes();
                drop(seen);
                files.write(writes).expect("logs written");
                // The committer's clock: the day being written is "today", so its fresh ids
                // wait for a full run.
                compact_due(&lock, &mut files, created).expect("compaction");
            }
        }
        // The next morning's commit turns the days' leftovers into runs.
        compact_due(&lock, &mut files, now + DAY_MS).expect("compaction");
    }
    let built = started.elapsed().as_secs_f64();
    let disk: u64 = std::fs::read_dir(dir.path())
        .expect("seen dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum();

    let rss_before = rss_mb();
    let started = Instant::now();
    let (mut seen, loaded) =
        SeenSet::load(dir.path(), false, now + DAY_MS, 8, usize::MAX).expect("reload");
    let reload = started.elapsed().as_secs_f64();
    let rss_after = rss_mb();
    assert_eq!(
        loaded.ids as u64,
        per_day * days as u64,
        "every id reloaded"
    );

    let probes = 1_000_000usize.min(per_day as usize * days as usize);
    let started = Instant::now();
    let mut admitted = 0;
    for _ in 0..probes {
        admitted += usize::from(seen.admit(guid_key(&mut state)));
    }
    let new_ns = started.elapsed().as_nanos() as f64 / probes as f64;
    assert_eq!(
        admitted, probes,
        "a new id is never taken for a delivered one"
    );
    let started = Instant::now();
    for k in &kept {
        assert!(!seen.admit(*k), "a delivered id is refused");
    }
    let dup_ns = started.elapsed().as_nanos() as f64 / kept.len() as f64;
    let ids = loaded.ids as f64;
    println!("ids remembered:               {}", loaded.ids);
    println!(
        "files:                        {} ({} MB on disk)",
        loaded.files,
        disk >> 20
    );
    println!("built (admit, commit, write, compact): {built:.1} s");
    println!(
        "memory per id (set's own):    {:.2} bytes",
        seen.memory_bytes() as f64 / ids
    );
    println!(
        "memory per id (RSS of reload): {:.2} bytes ({:.0} MB → {:.0} MB)",
        (rss_after - rss_before) * 1_048_576.0 / ids,
        rss_before,
        rss_after
    );
    println!("reload:                       {reload:.2} s");
    println!("admit, new id:                {new_ns:.0} ns");
    println!(
        "admit, delivered id:          {dup_ns:.0} ns ({} probes)",
        kept.len()
    );
}
