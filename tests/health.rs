//! Health rows in the workspace, through the binary against the emulators: a tenant whose
//! credential is refused shows `failing`, a throttled tenant `throttled`, a full spool
//! `paused` while the data table can't deliver and the health rows still arrive; the counts
//! add up to what was delivered, and no secret is in them.

mod common;

use std::time::Duration;

use common::management::*;
use m365_emulator::{Emulator, MgmtFault};
use serde_json::Value;

const HEALTH: &str = "Custom-M365SentinelHealth_CL";
const AUDIT: &str = "Custom-OfficeActivity_CL";

fn health_rows(emulator: &Emulator) -> Vec<Value> {
    emulator
        .accepted()
        .into_iter()
        .filter(|(s, _)| s == HEALTH)
        .map(|(_, r)| r)
        .collect()
}

fn status_of<'a>(rows: &'a [Value], tenant: &str, status: &str) -> Option<&'a Value> {
    rows.iter()
        .find(|r| r["Kind"] == "status" && r["Tenant"] == tenant && r["Status"] == status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_and_a_throttled_tenant_show_in_the_health_rows() {
    let emulator = emulator_with_tenants([false, false, false]).await;
    let content = make_content(&emulator, &[0, 1, 2], 900, 30, false);
    emulator.push_mgmt_faults(TENANTS[0], std::iter::repeat_n(MgmtFault::Af429, 4));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), Some(1));
    let out = run_to_end(once(&config)).await;
    assert_eq!(out.status.code(), Some(4), "tenant-1 can't be collected");
    let rows = health_rows(&emulator);
    let all = serde_json::to_string(&rows).unwrap();
    assert!(!all.contains("not-the-secret"), "no secret in health rows");

    let failing = status_of(&rows, "tenant-1", "failing").unwrap_or_else(|| panic!("{all}"));
    assert_eq!(failing["ErrorClass"], "credential");
    assert!(
        failing["ErrorMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(failing["Table"], "OfficeActivity_CL");
    assert_eq!(failing["Version"], env!("CARGO_PKG_VERSION"));
    assert!(failing["Instance"].as_str().is_some_and(|i| !i.is_empty()));

    let throttled = status_of(&rows, "tenant-0", "throttled").unwrap_or_else(|| panic!("{all}"));
    assert!(
        throttled["Throttled"].as_u64().unwrap_or(0) >= 1,
        "{throttled}"
    );
    assert!(status_of(&rows, "tenant-2", "healthy").is_some(), "{all}");

    // Delivered counts the table's rows once per round: their sum is what arrived.
    let audit_rows = emulator
        .accepted()
        .iter()
        .filter(|(s, _)| s == AUDIT)
        .count() as u64;
    let counted: u64 = rows
        .iter()
        .filter(|r| r["Table"] == "OfficeActivity_CL")
        .map(|r| r["Delivered"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(counted, audit_rows, "{all}");
    assert!(audit_rows > 0 && (audit_rows as usize) < content.records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_is_reported_as_paused_while_the_data_table_waits() {
    let emulator = emulator_with_tenants([false, false, false]).await;
    let content = make_content(&emulator, &[0, 1, 2], 9_000, 30, false);
    // The audit table is throttled for good; the health table is not.
    emulator.set_stream_outage(AUDIT, Some(429));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(&emulator, dir.path(), None, "", "  max_bytes: 4194304\n");
    let log = dir.path().join("log.txt");
    let child = spawn(&["run"], &config, &log);
    wait_for("a paused health row", Duration::from_secs(120), || {
        status_of(&health_rows(&emulator), "tenant-0", "paused").is_some()
    })
    .await;
    let rows = health_rows(&emulator);
    let paused = status_of(&rows, "tenant-0", "paused").unwrap();
    assert_eq!(paused["ErrorClass"], "spool_full", "{paused}");
    assert!(
        rows.iter().all(|r| r["Status"] != "failing"),
        "throttling is not failure"
    );
    emulator.set_stream_outage(AUDIT, None);
    wait_for("every record", Duration::from_secs(120), || {
        let (counts, _) = arrivals(&emulator);
        content.records.keys().all(|id| counts.contains_key(id))
    })
    .await;
    wait_for("a healthy row after", Duration::from_secs(60), || {
        let rows = health_rows(&emulator);
        let last = rows.iter().rev().find(|r| r["Tenant"] == "tenant-0");
        last.is_some_and(|r| r["Status"] == "healthy")
    })
    .await;
    stop_after_three_rounds(&emulator, child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_stream_the_workspace_refuses_holds_up_neither_the_data_nor_the_end() {
    let emulator = emulator_with_tenants([false, false, false]).await;
    let content = make_content(&emulator, &[0, 1, 2], 600, 30, false);
    // A DCR deployed before the health table existed: its stream is unknown.
    emulator.set_stream_outage(HEALTH, Some(404));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    let started = std::time::Instant::now();
    let out = run_to_end(once(&config)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let (counts, _) = arrivals(&emulator);
    assert_eq!(
        counts.len(),
        content.records.len(),
        "every record delivered"
    );
    assert!(health_rows(&emulator).is_empty());
    assert!(
        stderr.contains("the health rows were not all delivered in time"),
        "{stderr}"
    );
    // The pass ends after the bounded wait for the health rows, not never.
    assert!(started.elapsed() < Duration::from_secs(120));
}
