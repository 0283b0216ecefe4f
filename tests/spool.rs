//! The spool end to end, through the binary: collection from the Management API emulator goes
//! on through a workspace outage, pauses at the spool's budget and on a full disk, survives
//! SIGKILL at twenty points and stops cleanly on SIGTERM, and the next start delivers what the
//! spool kept before anything new.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::management::*;
use m365_emulator::Emulator;
use m365_sentinel::sources::management::journal::positions_on_disk;

/// Bytes of spool files on disk.
fn spool_bytes(dir: &Path) -> u64 {
    let Ok(streams) = std::fs::read_dir(dir.join("spool")) else {
        return 0;
    };
    streams
        .flatten()
        .filter_map(|s| std::fs::read_dir(s.path()).ok())
        .flatten()
        .flatten()
        .filter(|f| f.path().extension().is_some_and(|e| e == "seg"))
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn blobs_fetched(emulator: &Emulator) -> usize {
    emulator
        .mgmt_requests()
        .iter()
        .filter(|r| r.op == "blob" && r.status == 200)
        .count()
}

fn ingestion_requests(emulator: &Emulator) -> usize {
    emulator.requests().len()
}

fn log_has(log: &Path, text: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains(text))
}

/// Waits until blob fetching stops (no new blob while the sink retried ten more times against
/// the outage): the pipeline's buffers are full and the sources wait. Returns the count.
async fn fetching_plateau(emulator: &Emulator) -> usize {
    let started = std::time::Instant::now();
    loop {
        let blobs = blobs_fetched(emulator);
        let requests = ingestion_requests(emulator);
        wait_for("more retries", Duration::from_secs(60), || {
            ingestion_requests(emulator) >= requests + 10
        })
        .await;
        if blobs_fetched(emulator) == blobs {
            return blobs;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "collection never paused"
        );
    }
}

/// Waits for `sign` in the log, then for fetching to stop; checks collection paused short of
/// the end. Returns the blobs fetched by then.
async fn assert_paused(emulator: &Emulator, content: &Content, dir: &Path, sign: &str) -> usize {
    let log = dir.join("log.txt");
    wait_for(sign, Duration::from_secs(120), || log_has(&log, sign)).await;
    // Paused: once what was on its way (blobs being fetched, queued for the mapper, rows
    // waiting for the writer) is held, nothing more is read.
    let paused_at = fetching_plateau(emulator).await;
    eprintln!(
        "paused at {paused_at} of {} blobs, {} bytes in the spool",
        content.blobs,
        spool_bytes(dir)
    );
    assert!(
        paused_at < content.blobs,
        "collection paused: {paused_at} of {} blobs",
        content.blobs
    );
    paused_at
}

/// Lifts the outage, waits for every record, stops the run and checks each arrived once.
async fn assert_all_delivered_after(
    emulator: &Emulator,
    content: &Content,
    child: std::process::Child,
    log: &Path,
) {
    emulator.set_outage(None);
    wait_for("every record", Duration::from_secs(180), || {
        emulator.accepted_count() >= content.records.len()
    })
    .await;
    stop_after_three_rounds(emulator, child).await;
    assert_exactly_once(emulator, content, log);
}

/// Every record once: nothing lost, nothing twice.
fn assert_exactly_once(emulator: &Emulator, content: &Content, log: &Path) {
    let (counts, rows) = arrivals(emulator);
    let missing = content
        .records
        .keys()
        .filter(|id| !counts.contains_key(*id))
        .count();
    assert_eq!(
        missing,
        0,
        "lost records\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    assert_eq!(counts.len(), content.records.len());
    let twice = counts.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "records delivered twice");
    assert_rows_match(&rows, content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_twenty_points_nothing_is_lost_and_duplicates_stay_bounded() {
    let emulator = emulator_with_tenants([false, false, false]).await;
    let content = make_content(&emulator, &[0, 1, 2], 100_000, 60, true);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(&emulator, dir.path(), None, "  commit_interval_ms: 0\n", "");
    let log = dir.path().join("log.txt");
    let mut rng = fastrand::Rng::with_seed(20);
    let mut kill_points: Vec<usize> = (0..20).map(|_| rng.usize(500..98_000)).collect();
    kill_points.sort_unstable();
    let (counts, rows) = kill_loop(&emulator, &content, &config, &log, &kill_points).await;
    assert_eq!(
        counts.len(),
        content.records.len(),
        "nothing lost, nothing foreign"
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    // What a kill can send again: the requests in flight (CONCURRENCY bodies of at most
    // BATCH_ROWS_BOUND rows; the spool's cursor is written after every delivery), and on the
    // intake side the rows spooled whose blobs' positions were not yet written (at most two
    // writer batches of 512 KB, about 840 rows each at these row sizes, plus the two blobs
    // a batch boundary cuts through).
    let per_kill = CONCURRENCY * BATCH_ROWS_BOUND + 2 * 840 + 2 * content.max_blob_records;
    eprintln!(
        "20 kills: {} rows accepted, {duplicates} duplicates (bound {}), {} distinct",
        rows.len(),
        20 * per_kill,
        counts.len()
    );
    assert!(duplicates <= 20 * per_kill, "{duplicates} duplicates");
    assert_rows_match(&rows, &content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_goes_on_through_a_workspace_outage_and_everything_arrives_after() {
    let emulator = emulator_with_tenants([true, true, true]).await;
    let content = make_content(&emulator, &[0, 1, 2], 20_000, 30, false);
    emulator.set_outage(Some(503));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    let log = dir.path().join("log.txt");
    let child = spawn(&["run"], &config, &log);
    // Every blob is read while the workspace refuses everything.
    wait_for("collection to finish", Duration::from_secs(120), || {
        blobs_fetched(&emulator) >= content.blobs
    })
    .await;
    let retried = ingestion_requests(&emulator);
    wait_for("the sink to keep trying", Duration::from_secs(60), || {
        ingestion_requests(&emulator) >= retried + 10
    })
    .await;
    assert_eq!(emulator.accepted_count(), 0);
    assert!(
        spool_bytes(dir.path()) > 20_000 * 500,
        "the rows wait in the spool"
    );
    emulator.set_outage(None);
    wait_for("every record", Duration::from_secs(120), || {
        emulator.accepted_count() >= content.records.len()
    })
    .await;
    stop_after_three_rounds(&emulator, child).await;
    assert_exactly_once(&emulator, &content, &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_pauses_collection_which_resumes_when_delivery_frees_room() {
    let emulator = emulator_with_tenants([true, true, true]).await;
    // About 20 MB of rows against a 4 MiB budget.
    let content = make_content(&emulator, &[0, 1, 2], 30_000, 30, false);
    emulator.set_outage(Some(503));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(&emulator, dir.path(), None, "", "  max_bytes: 4194304\n");
    let log = dir.path().join("log.txt");
    let child = spawn(&["run"], &config, &log);
    assert_paused(&emulator, &content, dir.path(), "spool full").await;
    let on_disk = spool_bytes(dir.path());
    assert!(
        on_disk <= 4_194_304 + (512 << 10) + 64 * 1024,
        "{on_disk} bytes"
    );
    assert_all_delivered_after(&emulator, &content, child, &log).await;
    assert!(log_has(&log, "collection resumes"));
}

/// A tmpfs of a given size, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CAP_SYS_ADMIN), as on the CI machines"
        );
        Self(path.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_collection_loses_nothing_and_recovers_when_space_returns() {
    let emulator = emulator_with_tenants([true, true, true]).await;
    let content = make_content(&emulator, &[0, 1, 2], 20_000, 30, false);
    emulator.set_outage(Some(503));
    let dir = tempfile::tempdir().unwrap();
    // A 3 MiB disk under an 8 GiB budget: the disk fills first.
    let disk = Tmpfs::mount(&dir.path().join("spool"), "3m");
    let config = write_config(&emulator, dir.path(), None);
    let log = dir.path().join("log.txt");
    let child = spawn(&["run"], &config, &log);
    assert_paused(
        &emulator,
        &content,
        dir.path(),
        "spool write failed (disk full?)",
    )
    .await;
    // Space returns, then the workspace.
    disk.resize("64m");
    assert_all_delivered_after(&emulator, &content, child, &log).await;
    assert!(log_has(&log, "spool writes again"));
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_the_next_start_delivers_the_spool_before_new_content() {
    let emulator = emulator_with_tenants([true, true, true]).await;
    let old = make_content(&emulator, &[0, 1, 2], 10_000, 30, false);
    emulator.set_outage(Some(503));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    let log = dir.path().join("log.txt");
    let deadline = [("M365_SENTINEL__SINK__SHUTDOWN_DEADLINE_SECS", "2")];
    let child = spawn_with(&["run"], &config, &log, &deadline);
    // Every old row is in the spool (its blob's position committed) before the signal.
    let run_started = now_ms();
    wait_for(
        "every old row in the spool",
        Duration::from_secs(120),
        || all_committed_since(dir.path(), run_started),
    )
    .await;
    let (status, took) = common::management::sigterm_and_wait(child).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(took < Duration::from_secs(10), "within the deadline");
    assert!(log_has(&log, "stopped on a signal"));
    assert_eq!(emulator.accepted_count(), 0);
    assert!(spool_bytes(dir.path()) > 0, "the rows wait in the spool");

    // New content arrives meanwhile; the workspace is back.
    let new = make_content_aged(&emulator, &[0], 600, 1_000..60_000, false, 500_000);
    let new_ids: Vec<String> = new.records.keys().cloned().collect();
    assert!(new_ids.iter().all(|id| !old.records.contains_key(id)));
    emulator.set_outage(None);
    let child = spawn(&["run"], &config, &log);
    wait_for("everything", Duration::from_secs(120), || {
        emulator.accepted_count() >= old.records.len() + new_ids.len()
    })
    .await;
    stop_after_three_rounds(&emulator, child).await;
    let (counts, rows) = arrivals(&emulator);
    assert!(old.records.keys().all(|id| counts.get(id) == Some(&1)));
    // The spool went first: every old row was accepted before any new one.
    // The spool went first: no old row came after the first new one, but for those of the
    // requests in flight beside it (CONCURRENCY bodies, answered in any order).
    let first_new = new_ids
        .iter()
        .filter_map(|id| rows.iter().position(|r| r["OfficeId"] == id.as_str()))
        .min()
        .unwrap();
    let old_after = rows[first_new..]
        .iter()
        .filter(|r| old.records.contains_key(r["OfficeId"].as_str().unwrap()))
        .count();
    eprintln!("old rows accepted after the first new one: {old_after}");
    assert!(old_after <= CONCURRENCY * BATCH_ROWS_BOUND, "{old_after}");
}

/// True when every content type of every tenant has a position committed after `since`.
fn all_committed_since(dir: &Path, since: i64) -> bool {
    TENANTS.iter().all(|tenant| {
        let Ok(positions) = positions_on_disk(&dir.join("state"), tenant).map(serde_json::to_value)
        else {
            return false;
        };
        let Ok(positions) = positions else {
            return false;
        };
        CONTENT_TYPES.iter().all(|ct| {
            positions["content_types"][ct]["committed"]
                .as_str()
                .and_then(|c| m365_emulator::parse_time(&c[..19]))
                .is_some_and(|c| c >= since - 1_000)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_spool_off_rows_go_from_memory_and_sources_commit_on_delivery() {
    let emulator = emulator_with_tenants([true, true, true]).await;
    let content = make_content(&emulator, &[0, 1, 2], 3_000, 30, false);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(&emulator, dir.path(), None, "", "  enabled: false\n");
    let out = run_to_end(once(&config)).await;
    let log = dir.path().join("log.txt");
    std::fs::write(&log, &out.stderr).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("spool").exists(), "no spool written");
    assert_exactly_once(&emulator, &content, &log);
    assert!(all_committed_since(dir.path(), now_ms() - 120_000));
}
