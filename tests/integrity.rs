//! The integrity chain end to end, through the binary: rows collected from the Management API
//! emulator are sealed in the spool, delivered, read back through the emulated Query API by
//! `verify`, which finds a healthy run whole, reports deleted, changed and dropped rows by
//! their sequence numbers, and sees a kill loop's re-sends as duplicates, not damage.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::azure::WORKSPACE;
use common::management::*;
use m365_emulator::Emulator;

const AUDIT: &str = "Custom-OfficeActivity_CL";
const CHAIN: &str = "pod-0/OfficeActivity_CL";

/// The Management API test config with an `integrity` section and its key.
fn integrity_config(emulator: &Emulator, dir: &Path, page_rows: usize) -> PathBuf {
    let config = write_config_with(emulator, dir, None, "  commit_interval_ms: 0\n", "");
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join("k1"),
        "integrity-test-key-0123456789abcdef0123456789\n",
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "integrity:\n  keys_dir: {keys}\n  key_id: k1\n  chain_id: pod-0\n  workspace_id: {WORKSPACE}\n  query_endpoint: {url}\n  page_rows: {page_rows}\n",
        keys = keys.display(),
        url = emulator.url(),
    ));
    std::fs::write(&config, text).unwrap();
    config
}

/// `verify` of the audit table (or, with `all`, of every table), checkpoints of any age.
async fn verify_tables(config: &Path, all: bool) -> (i32, String) {
    let mut args = vec![
        "verify".into(),
        "--config".into(),
        config.display().to_string(),
        "--settle-minutes".into(),
        "0".into(),
    ];
    if !all {
        args.extend(["--table".into(), "OfficeActivity_CL".into()]);
    }
    let out = run_to_end(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("verify:\n{stdout}{stderr}");
    (out.status.code().unwrap_or(-1), stdout)
}

async fn verify(config: &Path) -> (i32, String) {
    verify_tables(config, false).await
}

fn seq(row: &serde_json::Value) -> u64 {
    row["ChainSeq"].as_u64().unwrap_or(0)
}

/// Extra copies per sequence number of the audit chain, as the emulator holds them.
fn same_seq_copies(emulator: &Emulator) -> BTreeMap<u64, u64> {
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    for (stream, row) in emulator.accepted() {
        if stream == AUDIT {
            assert_eq!(row["ChainStream"], CHAIN, "every row sealed");
            *counts.entry(seq(&row)).or_insert(0) += 1;
        }
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(s, n)| (s, n - 1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_run_verifies_whole_and_tampering_is_reported_by_sequence_number() {
    let emulator = emulator_with_tenants([false, false, false]).await;
    let content = make_content(&emulator, &[0, 1, 2], 3_000, 30, false);
    let dir = tempfile::tempdir().unwrap();
    let config = integrity_config(&emulator, dir.path(), 500);
    let out = run_to_end(once(&config)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = emulator
        .accepted()
        .into_iter()
        .filter(|(s, _)| s == AUDIT)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(rows.len(), content.records.len());
    let mut seqs: Vec<u64> = rows.iter().map(seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=3_000).collect::<Vec<u64>>(), "one chain, no gap");
    assert!(
        rows.iter()
            .all(|r| r["ChainKeyId"] == "k1"
                && r["ChainHash"].as_str().is_some_and(|h| h.len() == 22))
    );

    // Whole, also when the Query API cuts pages over its row limit (read smaller).
    emulator.set_query_limits(200, 64 << 20);
    let (code, report) = verify(&config).await;
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains(&format!(
            "chain {CHAIN}: sequence 1..3000, 3000 row(s): whole"
        )),
        "{report}"
    );

    // From a time on: the chain is read from the lowest sequence number of a row that recent,
    // not filtered by time (rows arrive out of event order), so no false gaps.
    let since = m365_emulator::format_time(now_ms() - 10 * HOUR_MS);
    let out = run_to_end(vec![
        "verify".into(),
        "--config".into(),
        config.display().to_string(),
        "--settle-minutes".into(),
        "0".into(),
        "--table".into(),
        "OfficeActivity_CL".into(),
        "--since".into(),
        since,
    ])
    .await;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains("starts after --since"), "{report}");
    assert!(!report.contains("missing"), "{report}");

    // Every table, the health table's own chain among them.
    let (code, report) = verify_tables(&config, true).await;
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("M365SentinelHealth_CL: 1 chain(s)"),
        "{report}"
    );

    // The last checkpoint names a hash the row at its number does not carry (as after a tail
    // written again with the key): reported, though every link checks out.
    let checkpoints = |e: &Emulator| -> Vec<serde_json::Value> {
        e.accepted()
            .into_iter()
            .filter(|(s, r)| s == "Custom-M365SentinelHealth_CL" && r["CheckpointChain"] == CHAIN)
            .map(|(_, r)| r)
            .collect()
    };
    let last = checkpoints(&emulator)
        .iter()
        .filter_map(|r| r["CheckpointSeq"].as_u64())
        .max()
        .expect("a checkpoint of the audit chain");
    assert_eq!(last, 3_000, "the last row sent is checkpointed");
    // Sets the last checkpoint's hash; returns what it was.
    let set_last_hash = |hash: &str| -> Vec<String> {
        let mut before = Vec::new();
        emulator.alter_rows(|s, r| {
            if s != "Custom-M365SentinelHealth_CL"
                || r["CheckpointChain"] != CHAIN
                || r["CheckpointSeq"].as_u64() != Some(last)
            {
                return false;
            }
            before.push(r["CheckpointHash"].as_str().unwrap_or_default().to_string());
            r["CheckpointHash"] = hash.into();
            true
        });
        before
    };
    let sent = set_last_hash("AAAAAAAAAAAAAAAAAAAAAA");
    assert!(!sent.is_empty());
    let (code, report) = verify(&config).await;
    assert_eq!(code, 5, "{report}");
    assert!(
        report.contains("sequence 3000 does not carry the hash the connector checkpointed"),
        "{report}"
    );
    assert!(
        !report.contains("altered") && !report.contains("missing"),
        "{report}"
    );
    set_last_hash(&sent[0]);
    let (code, report) = verify(&config).await;
    assert_eq!(code, 0, "{report}");

    // Tamper: delete one row, change one value, drop a range, cut the end (which only the
    // checkpoint in the health table shows).
    let deleted = emulator.delete_rows(|s, r| {
        s == AUDIT && (seq(r) == 10 || (30..=34).contains(&seq(r)) || seq(r) > 2_997)
    });
    assert_eq!(deleted, 9);
    let altered = emulator.alter_rows(|s, r| {
        if s != AUDIT || seq(r) != 2_000 {
            return false;
        }
        r["Operation"] = serde_json::Value::String("FileDeleted".into());
        true
    });
    assert_eq!(altered, 1);
    let (code, report) = verify(&config).await;
    assert_eq!(code, 5, "{report}");
    assert!(
        report.contains("missing: 9 sequence number(s): 10, 30..34, 2998..3000"),
        "{report}"
    );
    assert!(
        report.contains("altered (hash does not match content and place): 1 row(s): 2000"),
        "{report}"
    );
    assert!(!report.contains("forked"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_loops_resends_verify_as_duplicates_not_damage() {
    let emulator = emulator_with_tenants([false, false, false]).await;
    let content = make_content(&emulator, &[0, 1, 2], 30_000, 60, true);
    let dir = tempfile::tempdir().unwrap();
    let config = integrity_config(&emulator, dir.path(), 4_000);
    let log = dir.path().join("log.txt");
    let mut rng = fastrand::Rng::with_seed(17);
    let mut kill_points: Vec<usize> = (0..8).map(|_| rng.usize(500..28_000)).collect();
    kill_points.sort_unstable();
    let (counts, rows) = kill_loop(&emulator, &content, &config, &log, &kill_points).await;
    assert_eq!(counts.len(), content.records.len(), "nothing lost");
    let resent = same_seq_copies(&emulator);
    let extra: u64 = resent.values().sum();
    let max_seq = rows.iter().map(seq).max().unwrap_or(0);
    eprintln!(
        "{} rows, {} distinct records, highest sequence {max_seq}, {extra} same-sequence re-sends",
        rows.len(),
        counts.len()
    );
    let (code, report) = verify(&config).await;
    assert_eq!(
        code,
        0,
        "{report}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        report.contains(&format!("chain {CHAIN}: sequence 1..{max_seq}")),
        "{report}"
    );
    if extra > 0 {
        assert!(
            report.contains(&format!("duplicates (the same row sent again; not damage): {extra} extra cop(ies) at {} sequence number(s)", resent.len())),
            "{report}"
        );
    }
}
