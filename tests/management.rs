//! The Management Activity API source end to end: the binary collects three emulated tenants
//! over HTTPS (tokens from the emulated Entra through azure_identity) and delivers to the
//! emulated Logs Ingestion API. Content comes in paged listings, out of order, with duplicates
//! across blobs and blobs that show up late.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use common::management::*;
use m365_emulator::{BlobSpec, MgmtFault};
use m365_sentinel::sources::management::journal::positions_on_disk;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tenants_fifty_thousand_records_arrive_exactly_once() {
    // The second tenant's subscriptions are already on; the others are started by the connector.
    let emulator = emulator_with_tenants([false, true, false]).await;
    let content = make_content(&emulator, &[0, 1, 2], 50_000, 90, true);
    assert!(content.duplicate_copies > 100 && content.late_blobs > 10);
    // Mid-run misbehaviour: tenant 2's subscription turns out disabled; tenant 3 sees an
    // internal error and a throttled answer.
    emulator.push_mgmt_faults(TENANTS[1], [MgmtFault::Af20022]);
    emulator.push_mgmt_faults(TENANTS[2], [MgmtFault::Af50000, MgmtFault::Af429]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    let log = dir.path().join("log.txt");
    let child = spawn(&["run"], &config, &log);
    wait_for("every record", Duration::from_secs(240), || {
        emulator.accepted_count() >= content.records.len()
    })
    .await;
    stop_after_three_rounds(&emulator, child).await;

    let (counts, rows) = arrivals(&emulator);
    let stderr = std::fs::read_to_string(&log).unwrap();
    let missing = content
        .records
        .keys()
        .filter(|id| !counts.contains_key(*id))
        .count();
    assert_eq!(missing, 0, "lost records\n{stderr}");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {}", twice.len());
    assert_eq!(counts.len(), content.records.len());
    assert_rows_match(&rows, &content);
    assert_publisher_on_every_call(&emulator);
    for (i, tenant) in TENANTS.iter().enumerate() {
        let mut starts_total = 0;
        for ct in CONTENT_TYPES {
            let (starts, enabled) = emulator.subscription(tenant, ct);
            assert!(enabled, "{tenant} {ct}");
            starts_total += starts;
            if i != 1 {
                assert_eq!(starts, 1, "{tenant} {ct}: started once");
            }
        }
        if i == 1 {
            assert_eq!(
                starts_total, 1,
                "enabled from the start; started again only after the AF20022"
            );
        }
    }
    // The positions on disk are readable and past the content.
    let positions = positions_on_disk(&dir.path().join("state"), TENANTS[0]).unwrap();
    let positions: Value = serde_json::to_value(positions).unwrap();
    for ct in CONTENT_TYPES {
        let committed = positions["content_types"][ct]["committed"]
            .as_str()
            .unwrap();
        let committed = m365_emulator::parse_time(&committed[..19]).unwrap();
        assert!(committed > now_ms() - 5 * 60_000, "{ct} at {committed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_five_times_nothing_is_lost_and_duplicates_stay_bounded() {
    let emulator = emulator_with_tenants([false, false, false]).await;
    let content = make_content(&emulator, &[0, 1, 2], 50_000, 90, true);
    let dir = tempfile::tempdir().unwrap();
    // Positions written after every completion: what comes twice is then only what was in
    // flight. (The default commit interval adds what was acknowledged within it; see README.)
    let config = write_config_with(&emulator, dir.path(), None, "  commit_interval_ms: 0\n", "");
    let log = dir.path().join("log.txt");
    let mut rng = fastrand::Rng::with_seed(11);
    let mut kill_points: Vec<usize> = (0..5).map(|_| rng.usize(1_000..48_000)).collect();
    kill_points.sort_unstable();
    let (counts, rows) = kill_loop(&emulator, &content, &config, &log, &kill_points).await;
    assert_eq!(
        counts.len(),
        content.records.len(),
        "nothing lost, nothing foreign"
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    // At a kill, rows delivered but not yet committed come again: those of the bodies in
    // flight and of the blobs they cut through (a body's rows belong to at most two partly
    // delivered blobs at each end), per kill.
    let per_kill =
        (CONCURRENCY + 1) * BATCH_ROWS_BOUND + 2 * (CONCURRENCY + 1) * content.max_blob_records;
    eprintln!(
        "kill points {kill_points:?}: {} rows accepted, {duplicates} duplicates (bound {})",
        rows.len(),
        5 * per_kill
    );
    assert!(duplicates <= 5 * per_kill, "{duplicates} duplicates");
    assert_rows_match(&rows, &content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_af429_storm_slows_collection_without_a_hot_loop_or_loss() {
    let emulator = emulator_with_tenants([true, true, true]).await;
    let content = make_content(&emulator, &[0, 1, 2], 3_000, 30, false);
    let storm = Duration::from_secs(3);
    emulator.throttle_for(storm);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    let out = run_to_end(once(&config)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let (counts, rows) = arrivals(&emulator);
    assert_eq!(counts.len(), content.records.len(), "{stderr}");
    assert!(counts.values().all(|n| *n == 1));
    assert_rows_match(&rows, &content);
    let throttled = emulator
        .mgmt_requests()
        .iter()
        .filter(|r| r.code.as_deref() == Some("AF429"))
        .count();
    // 15 workers back off from 100 ms, doubling up to 2 s, never less than half a step: at most
    // 7 attempts each fit into 3 s. A hot loop would make thousands.
    let total = emulator.mgmt_requests().len();
    eprintln!("AF429 storm of {storm:?}: {throttled} throttled answers, {total} requests in all");
    assert!(throttled >= 15, "the storm was felt: {throttled}");
    assert!(throttled <= 15 * 8, "{throttled} throttled requests");
    assert!(stderr.contains("AF429"), "the throttling is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_a_wrong_secret_is_reported_and_the_others_complete() {
    let emulator = emulator_with_tenants([true, true, true]).await;
    let content = make_content(&emulator, &[0, 1, 2], 3_000, 30, false);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), Some(1));
    let out = run_to_end(once(&config)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("tenant tenant-1") && stderr.contains("AADSTS7000215"),
        "the error names the tenant and Entra's reason: {stderr}"
    );
    assert!(!stderr.contains("not-the-secret") && !stderr.contains("secret-of-tenant"));
    let (counts, _) = arrivals(&emulator);
    let expected: HashSet<&String> = content
        .records
        .iter()
        .filter(|(_, r)| r["OrganizationId"] != TENANTS[1])
        .map(|(id, _)| id)
        .collect();
    assert_eq!(counts.len(), expected.len());
    assert!(counts.keys().all(|id| expected.contains(id)));
    for file in ["json", "0", "1"] {
        let path = format!("state/positions/{}.{file}", TENANTS[1]);
        assert!(!dir.path().join(&path).exists(), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reads_the_api_writes_the_bodies_and_commits_nothing() {
    let emulator = emulator_with_tenants([true, true, true]).await;
    let content = make_content(&emulator, &[0, 1, 2], 2_000, 30, false);
    assert!(
        content.duplicate_copies > 0,
        "duplicates across blobs to skip"
    );
    // One more blob, expired by the time it is fetched: an alarm, and the rest goes on.
    emulator.add_blobs(
        TENANTS[0],
        [BlobSpec {
            content_type: "Audit.Exchange".into(),
            content_id: "expired-blob".into(),
            created_ms: now_ms() - 2 * HOUR_MS,
            records: vec![audit_record(0, 1, 999_999_999, now_ms())],
            hidden_listings: 0,
            expired: true,
        }],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    let out_dir = dir.path().join("out");
    let out = run_to_end(dry_run_args(&config, &out_dir)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("content expired before it was read") && stderr.contains("tenant-0"),
        "the expired blob is alarmed about, naming the tenant: {stderr}"
    );
    let mut ids = HashMap::new();
    let mut bodies: Vec<PathBuf> = std::fs::read_dir(out_dir.join("Custom-OfficeActivity_CL"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    bodies.sort();
    // Per (tenant, content type), rows come in blob creation order, whatever order the listing
    // had; a record in several blobs comes from the earliest.
    let mut last_blob: HashMap<(String, String), i64> = HashMap::new();
    for path in bodies {
        let body: Vec<Value> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        for row in body {
            *ids.entry(row["OfficeId"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
            let key = (
                row["OrganizationId"].as_str().unwrap().to_string(),
                row["RecordType"].as_str().unwrap().to_string(),
            );
            let blob = content.first_blob[row["OfficeId"].as_str().unwrap()];
            if let Some(before) = last_blob.get(&key) {
                assert!(*before <= blob, "{key:?}: blob of {before} then {blob}");
            }
            last_blob.insert(key, blob);
        }
    }
    assert_eq!(
        ids.len(),
        content.records.len(),
        "every record, once\n{stderr}"
    );
    assert!(ids.values().all(|n| *n == 1), "duplicates skipped");
    assert_eq!(emulator.accepted_count(), 0, "nothing sent");
    assert!(
        !dir.path().join("state").exists(),
        "no position, no seen id written"
    );
    assert!(
        emulator.mgmt_requests().iter().all(|r| r.op != "start"),
        "dry-run changes nothing in the tenant"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_window_is_listed_again_inside_the_services_limits() {
    let emulator = emulator_with_tenants([true, true, true]).await;
    let content = make_content(&emulator, &[0, 1, 2], 1_500, 30, false);
    // The service's clock runs two hours ahead: a first window starting 7 days back by the
    // local clock is more than 7 days back by the service's.
    emulator.set_service_clock_offset(2 * HOUR_MS);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    let out = run_to_end_with(
        once(&config),
        vec![(
            "M365_SENTINEL__MANAGEMENT_API__INITIAL_LOOKBACK_HOURS",
            "168".into(),
        )],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let (counts, _) = arrivals(&emulator);
    assert_eq!(counts.len(), content.records.len());
    assert!(counts.values().all(|n| *n == 1));
    let refused = emulator
        .mgmt_requests()
        .iter()
        .filter(|r| r.code.as_deref() == Some("AF20030"))
        .count();
    assert_eq!(
        refused, 15,
        "one refusal per (tenant, content type), then a good window"
    );
    assert!(stderr.contains("local clock is off"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_never_started_twice_within_fifteen_minutes() {
    let emulator = emulator_with_tenants([false, true, true]).await;
    make_content(&emulator, &[0], 300, 10, false);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    let out = run_to_end(once(&config)).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        emulator.subscription(TENANTS[0], "Audit.Exchange"),
        (1, true)
    );
    // An admin turns it off; the next run finds it off at once, but the last start (kept with
    // the positions) was moments ago: it waits instead of starting it again.
    emulator.set_subscription_enabled(TENANTS[0], "Audit.Exchange", false);
    let log = dir.path().join("second.txt");
    let mut child = spawn(&["run", "--once"], &config, &log);
    wait_for("the wait to be announced", Duration::from_secs(60), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("subscription started recently; waiting"))
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        emulator.subscription(TENANTS[0], "Audit.Exchange"),
        (1, false),
        "no second start within 15 minutes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_killed_before_its_answer_is_asked_again_at_the_next_run() {
    let emulator = emulator_with_tenants([false, true, true]).await;
    make_content(&emulator, &[0], 300, 10, false);
    // Tenant 0's starts fail for a while: kill the run while it is still asking.
    emulator.push_mgmt_faults(
        TENANTS[0],
        std::iter::repeat_n(MgmtFault::StartAf50000, 10_000),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    let mut child = spawn(&["run"], &config, &dir.path().join("first.txt"));
    wait_for("a start to be refused", Duration::from_secs(60), || {
        emulator
            .mgmt_requests()
            .iter()
            .any(|r| r.tenant == TENANTS[0] && r.op == "start")
    })
    .await;
    // Long enough for a commit of anything recorded (the interval is 250 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        emulator.subscription(TENANTS[0], "Audit.Exchange"),
        (0, false)
    );
    emulator.clear_mgmt_faults(TENANTS[0]);
    let log = dir.path().join("second.txt");
    let out = run_to_end(once(&config)).await;
    std::fs::write(&log, &out.stderr).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("waiting before starting it again"),
        "a start the service never answered is not waited out: {stderr}"
    );
    for ct in CONTENT_TYPES {
        assert_eq!(emulator.subscription(TENANTS[0], ct), (1, true), "{ct}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_tenants_and_together_collect_each_once() {
    let emulator = emulator_with_tenants([true, true, true]).await;
    let content = make_content(&emulator, &[0, 1, 2], 3_000, 30, false);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    let mut delivered = Vec::new();
    for index in ["0", "1"] {
        let before = emulator.accepted_count();
        let out = run_to_end_with(
            once(&config),
            vec![
                ("M365_SENTINEL__MANAGEMENT_API__SHARD__COUNT", "2".into()),
                ("M365_SENTINEL__MANAGEMENT_API__SHARD__INDEX", index.into()),
            ],
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        delivered.push(emulator.accepted_count() - before);
    }
    let (counts, _) = arrivals(&emulator);
    assert_eq!(counts.len(), content.records.len());
    assert!(
        counts.values().all(|n| *n == 1),
        "no tenant collected by both"
    );
    assert!(
        delivered.iter().all(|n| *n > 0),
        "both replicas had tenants: {delivered:?}"
    );
    // Every tenant was listed (by one replica or the other: no duplicates above).
    let requests = emulator.mgmt_requests();
    for tenant in TENANTS {
        let listings = requests
            .iter()
            .filter(|r| r.tenant == tenant && r.op == "content")
            .count();
        assert!(listings > 0, "{tenant}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runs_state_is_in_the_journal_and_a_dry_run_and_the_next_run_both_skip_what_it_sent()
 {
    let emulator = emulator_with_tenants([true, true, true]).await;
    let content = make_content(&emulator, &[0, 1, 2], 3_000, 30, true);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    let log = dir.path().join("log.txt");
    let child = spawn(&["run"], &config, &log);
    wait_for("every record", Duration::from_secs(120), || {
        emulator.accepted_count() >= content.records.len()
    })
    .await;
    stop_after_three_rounds(&emulator, child).await;
    // Killed: the commits are in the journal, and the position slots were never written.
    let journal = dir.path().join("state/journal");
    let journaled = std::fs::metadata(&journal).unwrap().len();
    assert!(journaled > 0);
    assert!(
        !dir.path()
            .join(format!("state/positions/{}.0", TENANTS[0]))
            .exists()
    );
    // A dry-run reads the journal: nothing is new to it, and it changes nothing.
    let out_dir = dir.path().join("out");
    let out = run_to_end(dry_run_args(&config, &out_dir)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let shown = std::fs::read_dir(out_dir.join("Custom-OfficeActivity_CL"))
        .map(|entries| {
            entries
                .map(|e| {
                    let body = std::fs::read(e.unwrap().path()).unwrap();
                    serde_json::from_slice::<Vec<Value>>(&body).unwrap().len()
                })
                .sum::<usize>()
        })
        .unwrap_or(0);
    assert_eq!(shown, 0, "the dry-run would send nothing again\n{stderr}");
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), journaled);
    // The next run replays the journal into the tenants' files and sends nothing again; ending
    // cleanly, it leaves the journal empty and the slots current.
    let out = run_to_end(once(&config)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (counts, rows) = arrivals(&emulator);
    assert_eq!(counts.len(), content.records.len());
    assert!(counts.values().all(|n| *n == 1), "nothing delivered twice");
    assert_rows_match(&rows, &content);
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0);
    assert!(
        dir.path()
            .join(format!("state/positions/{}.0", TENANTS[0]))
            .exists()
    );
}

/// Forty tenants starting at once: each asks for its token once, and no more than a few ask
/// at a time, so they share a few pooled connections instead of opening one each (an MSSP's
/// hundreds of tenants opened one connection to the authority per tenant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_tenants_starting_at_once_share_a_few_connections_for_their_tokens() {
    use m365_emulator::MgmtTenant;
    let emulator = m365_emulator::Emulator::start_tls(common::azure::emulator_config())
        .await
        .unwrap();
    let tenants: Vec<String> = (1..=40)
        .map(|i| format!("bbbbbbbb-0000-4000-8000-{i:012}"))
        .collect();
    let secrets: Vec<String> = (0..tenants.len())
        .map(|i| format!("secret-of-tenant-{i}"))
        .collect();
    let created = now_ms() - 2 * HOUR_MS;
    for (i, tenant) in tenants.iter().enumerate() {
        emulator.add_mgmt_tenant(MgmtTenant {
            tenant_id: tenant.clone(),
            client_secret: secrets[i].clone(),
            page_size: 20,
            next_page_header: "NextPageUri",
            subscriptions_enabled: true,
        });
        emulator.add_blobs(
            tenant,
            vec![BlobSpec {
                content_type: "Audit.General".into(),
                content_id: format!("blob-{i}"),
                created_ms: created,
                records: (0..2)
                    .map(|r| {
                        let mut record = audit_record(0, 3, 2 * i + r, created);
                        record["OrganizationId"] = tenant.clone().into();
                        record
                    })
                    .collect(),
                hidden_listings: 0,
                expired: false,
            }],
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_for(
        &emulator,
        dir.path(),
        &tenants,
        &secrets,
        "  max_concurrent_requests: 2\n",
        "",
    );
    let out = run_to_end(once(&config)).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (counts, _) = arrivals(&emulator);
    assert_eq!(counts.len(), 80, "every record delivered");
    for tenant in &tenants {
        assert_eq!(emulator.tokens_issued(tenant), 1, "{tenant}: one token");
    }
    // At most 8 token fetches and 2 API calls at once, the sink's requests beside them: a
    // connection per tenant would be more than 40.
    let connections = emulator.connections_accepted();
    assert!(
        connections <= 24,
        "{connections} connections for 40 tenants"
    );
}
