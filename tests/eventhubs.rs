//! Event Hubs through its Kafka endpoint, against a real Kafka broker (tansu) on 127.0.0.1 and
//! the ingestion emulator: consumer groups, commits after durability, a replica killed.

mod common;

use std::time::Duration;

use common::defender::{
    Broker, email_arrivals, event_hub_bodies, hub_yaml, tally, write_defender_config,
};
use common::management::{spawn, wait_for};
use m365_emulator::Emulator;

const TOPIC: &str = "defender-email";
const PARTITIONS: i32 = 4;

async fn emulator() -> Emulator {
    Emulator::start_tls(common::azure::emulator_config())
        .await
        .unwrap()
}

/// 10,000 rows of each table in a 4-partition topic, two replicas in one group, one killed
/// (SIGKILL) a third of the way: the other is assigned its partitions; every row arrives,
/// extra copies only from what the killed one had read past its last commit.
///
/// The replica killed is the one that joined second. tansu 0.6.0 keeps a dead member as the
/// group's leader, so a group whose leader died never forms again there; and it starts a new
/// generation only when a rejoining member's metadata changed, which with the cooperative
/// assignor (the connector's) it does: the survivor rejoins owning fewer partitions than it
/// last joined with. Kafka's and Event Hubs' coordinators need neither condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_the_partitions_and_one_takes_over_when_the_other_is_killed() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS).await;
    let (bodies, ids) = event_hub_bodies(10_000, 20, "g");
    broker.produce(TOPIC, PARTITIONS, &bodies);
    let emulator = emulator().await;
    let hub = format!("  event_hubs:\n{}", hub_yaml(&broker, TOPIC, "sentinel"));
    let temp = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let dirs = [temp[0].path().to_path_buf(), temp[1].path().to_path_buf()];
    let configs: Vec<_> = dirs
        .iter()
        .map(|d| write_defender_config(&emulator, d, &hub))
        .collect();
    // The first member is the group's leader; the second is killed (see above).
    let mut b = spawn(&["run"], &configs[1], &dirs[1].join("log"));
    wait_for(
        "the first replica's partitions",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(dirs[1].join("log"))
                .is_ok_and(|l| l.contains("partitions assigned"))
        },
    )
    .await;
    let mut a = spawn(&["run"], &configs[0], &dirs[0].join("log"));
    wait_for(
        "partitions for the second replica",
        Duration::from_secs(60),
        || std::fs::read_to_string(dirs[0].join("log")).is_ok_and(|l| owns_partitions(&l)),
    )
    .await;
    wait_for("a third of the rows", Duration::from_secs(120), || {
        emulator.accepted_count() >= ids.len() / 3
    })
    .await;
    a.kill().unwrap();
    a.wait().unwrap();
    let at_kill = emulator.accepted_count();
    let assignments_before = assignments(&dirs[1]);
    let start = std::time::Instant::now();
    while email_arrivals(&emulator).len() < ids.len() && start.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Rows the killed replica had made durable in its own spool (and committed past) wait for
    // it: the StatefulSet restarts it on its volume, and so does this test.
    let before_restart = email_arrivals(&emulator).len();
    let mut restarted = None;
    if before_restart < ids.len() {
        restarted = Some(spawn(&["run"], &configs[0], &dirs[0].join("log")));
        wait_for("every row", Duration::from_secs(120), || {
            email_arrivals(&emulator).len() >= ids.len()
        })
        .await;
    }
    // Anything sent twice would show by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.kill().unwrap();
    b.wait().unwrap();
    if let Some(mut a) = restarted {
        a.kill().unwrap();
        a.wait().unwrap();
    }
    let took_over = assignments(&dirs[1]) > assignments_before;
    println!(
        "survivor assigned more partitions after the kill: {took_over}; rows from the killed replica's spool after its restart: {}",
        ids.len().saturating_sub(before_restart)
    );
    assert!(
        took_over,
        "the survivor was not assigned the killed replica's partitions"
    );
    let counts = email_arrivals(&emulator);
    let (distinct, missing, duplicates) = tally(&counts, &ids);
    let log_b = std::fs::read_to_string(dirs[1].join("log")).unwrap();
    println!(
        "rows {distinct} of {}, missing {missing}, duplicates {duplicates} (accepted at the kill: {at_kill})",
        ids.len()
    );
    assert_eq!(missing, 0);
    assert_eq!(distinct, ids.len());
    assert!(
        log_b.contains("partitions given up to the group"),
        "the survivor gave partitions to the second replica when it joined:\n{log_b}"
    );
    // The killed replica's extra copies are what it had read past its last commit: at most its
    // two partitions' messages handed on within the commit interval and the run's queues. A
    // bound of 10% of the rows would catch offsets that were never committed.
    assert!(
        duplicates <= ids.len() / 10,
        "{duplicates} duplicates, more than the bound"
    );
}

/// Whether a replica's log shows partitions assigned to it.
fn owns_partitions(log: &str) -> bool {
    log.lines().any(is_assignment)
}

fn is_assignment(line: &str) -> bool {
    line.contains("partitions assigned")
        && line
            .split("partitions=[")
            .nth(1)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// How many times partitions were assigned to the replica logging in `dir`.
fn assignments(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| is_assignment(l))
        .count()
}

/// SIGTERM while reading: the consumer commits what is durable and leaves the group, the
/// process exits 0 promptly, and the next start goes on from the commit: every row arrives,
/// copies at most of the messages the stop cut through (0 in the runs so far).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_commits_what_is_durable_and_the_next_start_goes_on_from_there() {
    let broker = Broker::start();
    broker.create_topic("term", 2).await;
    let (bodies, ids) = event_hub_bodies(5_000, 10, "t");
    broker.produce("term", 2, &bodies);
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let hub = format!("  event_hubs:\n{}", hub_yaml(&broker, "term", "term"));
    let config = write_defender_config(&emulator, dir.path(), &hub);
    let log = dir.path().join("log");
    let child = spawn(&["run"], &config, &log);
    wait_for("some rows", Duration::from_secs(60), || {
        emulator.accepted_count() >= ids.len() / 4
    })
    .await;
    let (status, took) = common::management::sigterm_and_wait(child).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(took < Duration::from_secs(15), "prompt: {took:?}");
    assert!(text.contains("stopped on a signal"), "{text}");
    let mut child = spawn(&["run"], &config, &log);
    wait_for("every row", Duration::from_secs(120), || {
        email_arrivals(&emulator).len() >= ids.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let (distinct, missing, duplicates) = tally(&email_arrivals(&emulator), &ids);
    println!(
        "after SIGTERM and a restart: rows {distinct}, missing {missing}, duplicates {duplicates}"
    );
    assert_eq!((distinct, missing), (ids.len(), 0));
    // Copies only of a message cut by the stop (some rows durable, the rest not): at most the
    // intake's eight messages of ten rows.
    assert!(duplicates <= 80, "{duplicates} duplicates");
}
