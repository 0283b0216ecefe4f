//! Measures the seen-id set (Management API dedupe): memory and disk per million record ids,
//! and the time to admit and commit them. `cargo run --release --example seen_size -- 1000000`

use std::time::Instant;

use m365_sentinel::sources::management::seen::{SeenFiles, SeenSet};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let now = 20_000 * 86_400_000i64;
    let (mut seen, _) = SeenSet::load(dir.path(), true, now, 8, usize::MAX).expect("load");
    let mut files = SeenFiles::open(dir.path()).expect("open");
    let mut rng = fastrand::Rng::with_seed(1);
    let before = rss_kib();
    let start = Instant::now();
    // Spread over 7 days of content, committed in blobs of 100.
    let mut blob = Vec::with_capacity(100);
    for i in 0..n {
        let key = rng.u128(..);
        assert!(seen.admit(key));
        blob.push(key);
        if blob.len() == 100 {
            let day = now - (i as i64 % 7) * 86_400_000;
            seen.commit(day, &blob);
            files.write(seen.take_writes()).expect("write");
            blob.clear();
        }
    }
    seen.commit(now, &blob);
    files.write(seen.take_writes()).expect("write");
    let took = start.elapsed();
    let after = rss_kib();
    let disk: u64 = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    let start = Instant::now();
    let (reloaded, loaded) = SeenSet::load(dir.path(), true, now, 8, usize::MAX).expect("load");
    let reload = start.elapsed();
    println!(
        "{n} ids: memory +{:.1} MiB ({:.1} bytes/id), disk {:.1} MiB ({} bytes/id), admit+commit {:.0} ns/id, reload {:.2} s ({} ids)",
        (after.saturating_sub(before)) as f64 / 1024.0,
        (after.saturating_sub(before) * 1024) as f64 / n as f64,
        disk as f64 / 1_048_576.0,
        disk / n as u64,
        took.as_nanos() as f64 / n as f64,
        reload.as_secs_f64(),
        loaded.ids.max(reloaded.len())
    );
}
