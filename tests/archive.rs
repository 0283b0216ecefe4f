//! The raw archive against Azurite (Microsoft's Blob service emulator), written through the
//! `azure_storage_blob` SDK with a SAS: every record of every content blob the Management API
//! serves lands once in the hour's gzip JSON Lines blob, a source's position waits for the
//! archive, a unit read again is not archived twice, and SIGKILLs in the middle of writing
//! leave every blob valid gzip and lose nothing. A row a policy rule drops is in the archive.

mod common;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use common::azurite::Azurite;
use common::management::*;
use m365_sentinel::sources::management::journal::positions_on_disk;
use serde_json::Value;

const CONTAINER: &str = "m365-archive";

/// The `archive` section (a SAS in a file beside the config), placed after the spool section.
fn archive_section(azurite: &Azurite, dir: &Path) -> String {
    let sas = dir.join("archive.sas");
    std::fs::write(&sas, azurite.account_sas()).unwrap();
    format!(
        "archive:\n  container_url: {}/{CONTAINER}\n  sas_file: {}\n  prefix: m365/\n  commit_interval_ms: 50\n",
        azurite.endpoint(),
        sas.display()
    )
}

/// The signature of the SAS the test wrote (what must never be shown).
fn sas_signature(dir: &Path) -> String {
    let sas = std::fs::read_to_string(dir.join("archive.sas")).unwrap();
    let sig = sas
        .split('&')
        .find_map(|p| p.strip_prefix("sig="))
        .unwrap()
        .to_string();
    assert!(sig.len() > 20);
    sig
}

struct Archived {
    /// Record Id → lines holding it.
    ids: BTreeMap<String, usize>,
    lines: usize,
    blobs: Vec<String>,
}

/// Every archive blob read whole: each must be valid gzip and each line a JSON object.
async fn read_archive(azurite: &Azurite) -> Archived {
    let client = azurite.client();
    let items = client.list_blobs(CONTAINER, "").await.unwrap();
    let mut archived = Archived {
        ids: BTreeMap::new(),
        lines: 0,
        blobs: Vec::new(),
    };
    for item in items {
        let bytes = client
            .read_range(CONTAINER, &item.name, 0, item.size - 1)
            .await
            .unwrap();
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(bytes.as_slice())
            .read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("{} is not valid gzip: {e}", item.name));
        for line in text.lines() {
            let record: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: a line is not JSON ({e}): {line}", item.name));
            let id = record["Id"]
                .as_str()
                .expect("an audit record's Id")
                .to_string();
            *archived.ids.entry(id).or_default() += 1;
            archived.lines += 1;
        }
        archived.blobs.push(item.name);
    }
    archived
}

/// Each record as often as content blobs hold it (one blob in 12 repeats records of the one
/// before): every unit once, none twice.
fn assert_once_per_blob(archived: &Archived, content: &Content) {
    let missing: Vec<_> = content
        .records
        .keys()
        .filter(|id| !archived.ids.contains_key(*id))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "not archived: {missing:?}");
    assert_eq!(archived.ids.len(), content.records.len(), "nothing foreign");
    assert_eq!(
        archived.lines,
        content.records.len() + content.duplicate_copies,
        "each content blob's records exactly once"
    );
    let wrong: Vec<_> = archived
        .ids
        .iter()
        .filter(|(id, n)| content.served.get(*id) != Some(*n))
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "archived as often as served: {wrong:?}");
}

/// The creation times of the oldest and newest content blob of a tenant's content type (the
/// record Ids start with the tenant's and the content type's numbers).
fn blob_times(content: &Content, tenant: usize, ct: usize) -> (i64, i64) {
    let prefix = format!("{tenant:08x}-{ct:04x}-");
    let times = content
        .first_blob
        .iter()
        .filter(|(id, _)| id.starts_with(&prefix))
        .map(|(_, t)| *t);
    let (min, max) = times.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    assert!(
        min <= max,
        "no content for tenant {tenant}, content type {ct}"
    );
    (min, max)
}

/// Each content type's committed position (ms since the epoch).
fn committed(dir: &Path, tenant: &str) -> Vec<i64> {
    let positions = positions_on_disk(&dir.join("state"), tenant).unwrap();
    let positions: Value = serde_json::to_value(positions).unwrap();
    CONTENT_TYPES
        .iter()
        .map(|ct| {
            let committed = positions["content_types"][ct]["committed"]
                .as_str()
                .unwrap_or("1970-01-01T00:00:00");
            m365_emulator::parse_time(&committed[..19]).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_wait_for_the_archive_and_every_blobs_records_are_archived_once() {
    let azurite = Azurite::start();
    let emulator = emulator_with_tenants([false, false, false]).await;
    let content = make_content(&emulator, &[0, 1, 2], 3_000, 4, false);
    assert!(content.duplicate_copies > 0);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A policy that drops every Set-Mailbox row: they never reach the workspace, yet the
    // archive, written before any rule, has them.
    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    for entry in std::fs::read_dir("schemas").unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, schemas.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        schemas.join("policy.yaml"),
        "rules:\n  - name: no-set-mailbox\n    table: OfficeActivity\n    when: { column: Operation, equals: Set-Mailbox }\n    action: drop\n",
    )
    .unwrap();
    let dropped: Vec<&String> = content
        .records
        .iter()
        .filter(|(_, r)| r["Operation"] == "Set-Mailbox")
        .map(|(id, _)| id)
        .collect();
    assert!(!dropped.is_empty());
    let kept = content.records.len() - dropped.len();
    let archive = archive_section(&azurite, dir.path())
        + &format!(
            "metrics:\n  listen: 127.0.0.1:{port}\nschemas_dir: {}\n",
            schemas.display()
        );
    let config = write_config_with(&emulator, dir.path(), None, "", &archive);
    let log = dir.path().join("log.txt");

    // No container yet: every Stage Block is refused (404), so the archive holds nothing.
    // The rows still reach the workspace through the spool, but no position may move.
    let child = spawn(&["run"], &config, &log);
    wait_for(
        "every record in the workspace",
        Duration::from_secs(120),
        || emulator.accepted_count() >= kept,
    )
    .await;
    // /metrics says so while it lasts.
    let metrics = common::scrape_metrics(port).await;
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("m365_sentinel_archive_failures_total "))
        .unwrap_or_else(|| panic!("no archive failures metric:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(failures > 0, "{metrics}");
    assert!(
        metrics.contains("m365_sentinel_archive_units_total 0"),
        "{metrics}"
    );
    // So do the health rows: the sources are paused, the archive named as the reason.
    wait_for(
        "a health row naming the archive",
        Duration::from_secs(60),
        || {
            emulator.accepted().iter().any(|(s, r)| {
                s == "Custom-M365SentinelHealth_CL"
                    && r["Status"] == "paused"
                    && r["ErrorClass"] == "archive"
            })
        },
    )
    .await;
    let health = emulator.accepted();
    let signature = sas_signature(dir.path());
    assert!(
        health
            .iter()
            .all(|(_, r)| !r.to_string().contains(&signature)),
        "a SAS signature in a row"
    );
    let (status, _) = sigterm_and_wait(child).await;
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("archive write failed"), "{stderr}");
    let signature = sas_signature(dir.path());
    assert!(
        !stderr.contains(&signature),
        "the SAS signature was logged:\n{stderr}"
    );

    // A `--once` pass against the missing container gives up after its attempts, fails, and
    // commits nothing it could not archive.
    let out = run_to_end(once(&config)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the raw archive could not write"),
        "{stderr}"
    );
    assert!(!stderr.contains(&signature), "{stderr}");
    for (t, tenant) in TENANTS.iter().enumerate() {
        for (ct, at) in committed(dir.path(), tenant).into_iter().enumerate() {
            let (oldest, _) = blob_times(&content, t, ct);
            assert!(
                at <= oldest,
                "{tenant} {}: the position moved to {at}, past unarchived content from {oldest}",
                CONTENT_TYPES[ct]
            );
        }
    }

    // With the container there, the next pass archives everything and commits.
    azurite.create_container(CONTAINER).await;
    let out = run_to_end(once(&config)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archived = read_archive(&azurite).await;
    assert_once_per_blob(&archived, &content);
    let (delivered, _) = arrivals(&emulator);
    assert_eq!(delivered.len(), kept, "{stdout}");
    assert!(dropped.iter().all(|id| !delivered.contains_key(*id)));
    assert!(dropped.iter().all(|id| archived.ids.contains_key(*id)));
    for (t, tenant) in TENANTS.iter().enumerate() {
        for (ct, at) in committed(dir.path(), tenant).into_iter().enumerate() {
            let (_, newest) = blob_times(&content, t, ct);
            assert!(
                at > newest,
                "{tenant} {}: {at}, newest blob {newest}",
                CONTENT_TYPES[ct]
            );
        }
    }
    let name = regex::Regex::new(
        r"^m365/tenant-[0-2]/(Audit\.(AzureActiveDirectory|Exchange|SharePoint|General)|DLP\.All)/20\d\d/\d\d/\d\d/\d\d\.jsonl\.gz$",
    )
    .unwrap();
    for blob in &archived.blobs {
        assert!(name.is_match(blob), "blob name {blob}");
    }

    // Positions lost (a crash after the archive's commit and before the position's): the
    // units come again and are recognised by their block ids.
    std::fs::remove_dir_all(dir.path().join("state/positions")).unwrap();
    let out = run_to_end(once(&config)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let again = read_archive(&azurite).await;
    assert_eq!(again.lines, archived.lines, "{stdout}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("archive: "))
        .unwrap_or_else(|| panic!("no archive summary:\n{stdout}"));
    assert!(
        summary.starts_with("archive: 0 unit(s)")
            && !summary.contains(" 0 unit(s) archived before"),
        "{summary}"
    );

    // An archive blob, downloaded, is input again (`dry-run --input`).
    let client = azurite.client();
    let first = &archived.blobs[0];
    let size = client.list_blobs(CONTAINER, first).await.unwrap()[0].size;
    let bytes = client
        .read_range(CONTAINER, first, 0, size - 1)
        .await
        .unwrap();
    let file = dir.path().join("downloaded.jsonl.gz");
    std::fs::write(&file, bytes).unwrap();
    let out_dir = dir.path().join("dry");
    let out = run_to_end(vec![
        "dry-run".into(),
        "--input".into(),
        file.display().to_string(),
        "--out".into(),
        out_dir.display().to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = std::fs::read_to_string(out_dir.join("summary.txt")).unwrap();
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(std::fs::read(&file).unwrap().as_slice())
        .read_to_string(&mut text)
        .unwrap();
    let lines = text.lines().count();
    assert!(
        summary.contains(&format!("; {lines} record(s) in,")),
        "{lines} archived lines, dry-run said:\n{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_archiving_every_blob_stays_valid_gzip_and_each_unit_is_archived_once() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER).await;
    let emulator = emulator_with_tenants([false, false, false]).await;
    let content = make_content(&emulator, &[0, 1, 2], 20_000, 6, false);
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_section(&azurite, dir.path());
    let config = write_config_with(
        &emulator,
        dir.path(),
        None,
        "  commit_interval_ms: 0\n",
        &archive,
    );
    let log = dir.path().join("log.txt");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut kill_points: Vec<usize> = (0..6).map(|_| rng.usize(500..18_000)).collect();
    kill_points.sort_unstable();
    for point in &kill_points {
        let mut child = spawn(&["run"], &config, &log);
        wait_for("the kill point", Duration::from_secs(120), || {
            emulator.accepted_count() >= *point
        })
        .await;
        child.kill().unwrap(); // SIGKILL, while the archive is staging and committing
        child.wait().unwrap();
        // Whatever the kill cut, every blob reads as whole gzip JSON Lines and no unit is in
        // the archive twice.
        let archived = read_archive(&azurite).await;
        let twice: Vec<_> = archived
            .ids
            .iter()
            .filter(|(id, n)| content.served.get(*id).is_none_or(|served| *n > served))
            .take(5)
            .collect();
        assert!(
            twice.is_empty(),
            "after the kill at {point}: archived more often than served: {twice:?}"
        );
    }
    // One more pass archives what the killed runs had not committed (and recognises what
    // they had), and delivers the rest.
    let out = run_to_end(once(&config)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let (counts, _) = arrivals(&emulator);
    assert_eq!(
        counts.len(),
        content.records.len(),
        "the workspace has every record"
    );
    let archived = read_archive(&azurite).await;
    eprintln!(
        "kill points {kill_points:?}: {} archive lines in {} blobs; last pass: {}",
        archived.lines,
        archived.blobs.len(),
        stdout
            .lines()
            .find(|l| l.starts_with("archive: "))
            .unwrap_or("no summary")
    );
    assert_once_per_blob(&archived, &content);
}
