//! The health and metrics endpoint during a run against the emulators: counters move, and
//! /readyz turns unready when Entra refuses the sink's token.

mod common;

use std::path::Path;
use std::time::Duration;

use common::management::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Adds the endpoint to a test config.
fn with_metrics(config: &Path, port: u16) {
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(&format!("metrics:\n  listen: 127.0.0.1:{port}\n"));
    std::fs::write(config, text).unwrap();
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The value of a sample line `name{labels} value` (or `name value`).
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_during_a_run_and_health_answers() {
    let emulator = emulator_with_tenants([true, true, true]).await;
    let content = make_content(&emulator, &[0, 1, 2], 6_000, 30, false);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    let port = free_port();
    with_metrics(&config, port);
    let log = dir.path().join("log.txt");
    emulator.set_outage(Some(503));
    let child = spawn(&["run"], &config, &log);
    let mut first = None;
    wait_for("the endpoint", Duration::from_secs(60), || {
        first = futures_lite_block(get(port, "/metrics"));
        first.is_some()
    })
    .await;
    let (status, before) = first.unwrap();
    assert_eq!(status, 200);
    // During the outage: rows mapped and spooled, nothing delivered, 503s counted.
    let mut during = String::new();
    wait_for("503s to be counted", Duration::from_secs(60), || {
        during = futures_lite_block(get(port, "/metrics"))
            .map(|r| r.1)
            .unwrap_or_default();
        sample(&during, "m365_sentinel_responses_total{status=\"503\"}").unwrap_or(0.0) >= 3.0
    })
    .await;
    assert!(
        sample(&during, "m365_sentinel_spool_bytes").unwrap_or(0.0) > 0.0,
        "{during}"
    );
    assert!(sample(&during, "m365_sentinel_management_blobs_total").unwrap_or(0.0) > 0.0);
    emulator.set_outage(None);
    wait_for("every record", Duration::from_secs(120), || {
        emulator.accepted_count() >= content.records.len()
    })
    .await;
    let mut after = String::new();
    wait_for("the delivered count", Duration::from_secs(30), || {
        after = futures_lite_block(get(port, "/metrics"))
            .map(|r| r.1)
            .unwrap_or_default();
        sample(
            &after,
            "m365_sentinel_rows_delivered_total{table=\"OfficeActivity_CL\"}",
        )
        .unwrap_or(0.0)
            >= content.records.len() as f64
    })
    .await;
    let mapped = |t: &str| {
        sample(
            t,
            "m365_sentinel_rows_mapped_total{table=\"OfficeActivity_CL\"}",
        )
        .unwrap_or(0.0)
    };
    assert!(mapped(&after) > mapped(&before), "rows mapped moved");
    assert_eq!(mapped(&after), content.records.len() as f64);
    for name in [
        "m365_sentinel_requests_total",
        "m365_sentinel_bytes_sent_total",
        "m365_sentinel_batch_fill_ratio",
        "m365_sentinel_management_lag_seconds{",
    ] {
        assert!(after.contains(name), "{name} missing:\n{after}");
    }
    assert!(!after.contains("secret"), "no secret in metrics");
    assert_eq!(get(port, "/healthz").await.unwrap().0, 200);
    assert_eq!(get(port, "/readyz").await.unwrap().0, 200);
    stop_after_three_rounds(&emulator, child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_when_the_sink_token_is_refused() {
    // No content at all: nothing will be delivered, so only the start-up credential check can
    // find out that the sink's own secret is wrong.
    let emulator = emulator_with_tenants([true, true, true]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&emulator, dir.path(), None);
    std::fs::write(dir.path().join("secret"), "wrong-secret").unwrap();
    let port = free_port();
    with_metrics(&config, port);
    let log = dir.path().join("log.txt");
    let mut child = spawn(&["run"], &config, &log);
    let mut readyz = None;
    wait_for("/readyz to say unready", Duration::from_secs(60), || {
        readyz = futures_lite_block(get(port, "/readyz"));
        readyz.as_ref().is_some_and(|(s, _)| *s == 503)
    })
    .await;
    let (_, why) = readyz.unwrap();
    assert!(why.contains("token"), "{why}");
    assert!(!why.contains("wrong-secret"));
    assert_eq!(
        get(port, "/healthz").await.unwrap().0,
        200,
        "alive, only not ready"
    );
    let metrics = get(port, "/metrics").await.unwrap().1;
    assert!(sample(&metrics, "m365_sentinel_token_failures_total").unwrap_or(0.0) >= 1.0);
    assert_eq!(sample(&metrics, "m365_sentinel_ready"), Some(0.0));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Runs a future to completion from inside a `wait_for` condition (a plain closure).
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
