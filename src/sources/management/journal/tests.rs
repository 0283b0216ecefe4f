use std::collections::BTreeMap;
use std::io::Write as _;

use super::*;
use crate::sources::management::now_millis;
use crate::sources::management::positions::ContentPosition;
use crate::sources::management::seen::SeenSet;

const DAY_MS: i64 = 86_400_000;

fn positions(tenant: &str, committed: i64) -> TenantPositions {
    TenantPositions {
        tenant_id: tenant.into(),
        content_types: BTreeMap::from([(
            "Audit.General".to_string(),
            ContentPosition {
                committed: Some(committed),
                done: BTreeMap::from([(format!("blob-{committed}"), committed + 1)]),
                subscription_started: None,
            },
        )]),
    }
}

fn keys(keys: &[u128]) -> Vec<u8> {
    keys.iter().flat_map(|k| k.to_le_bytes()).collect()
}

fn seen_dir(state: &Path, tenant: &str) -> PathBuf {
    state.join("seen").join(tenant)
}

fn seen_in(state: &Path) -> impl Fn(&str) -> PathBuf + Send + 'static {
    let state = state.to_path_buf();
    move |tenant| seen_dir(&state, tenant)
}

fn open(state: &Path, store: &Arc<PositionStore>) -> (StateJournal, HashMap<String, Entry>) {
    StateJournal::open(state, store, seen_in(state), Duration::ZERO).unwrap()
}

fn today() -> i64 {
    now_millis().div_euclid(DAY_MS)
}

/// A commit of `tenant` (loaded in `store` first, as the collector does).
fn commit(state: &Path, store: &Arc<PositionStore>, tenant: &str, n: i64, ids: &[u128]) -> Commit {
    store.load(tenant).unwrap();
    Commit {
        files: Arc::new(Mutex::new(
            SeenFiles::open(&seen_dir(state, tenant)).unwrap(),
        )),
        writes: Writes::from_appends(vec![(today(), keys(ids))]),
        positions: positions(tenant, n),
    }
}

/// Whether the tenant's files (as a restart loads them) remember `id`.
fn files_remember(state: &Path, tenant: &str, id: u128) -> bool {
    let (mut seen, _) =
        SeenSet::load(&seen_dir(state, tenant), false, now_millis(), 30, 1 << 20).unwrap();
    !seen.admit(id)
}

/// A run cut short after tenants "good" (id 1) and "bad" (id 2) committed positions 10, and
/// then "bad"'s seen-id directory can't be opened any more.
async fn cut_short_with_a_broken_tenant(state: &Path) {
    let store = store_in(state);
    let (journal, _) = open(state, &store);
    for (tenant, id) in [("good", 1), ("bad", 2)] {
        journal
            .commit(commit(state, &store, tenant, 10, &[id]))
            .await
            .unwrap();
    }
    drop(journal);
    break_seen_dir(state, "bad");
}

/// The tenant's seen-id directory becomes a file: its day logs can't be written any more.
fn break_seen_dir(state: &Path, tenant: &str) {
    std::fs::remove_dir_all(seen_dir(state, tenant)).unwrap();
    std::fs::write(seen_dir(state, tenant), b"not a directory").unwrap();
}

fn store_in(state: &Path) -> Arc<PositionStore> {
    Arc::new(PositionStore::open(&state.join("positions")).unwrap())
}

/// Commits `tenant`'s positions `n` and `ids`, which must succeed.
async fn committed(
    journal: &StateJournal,
    state: &Path,
    store: &Arc<PositionStore>,
    tenant: &str,
    n: i64,
    ids: &[u128],
) {
    journal
        .commit(commit(state, store, tenant, n, ids))
        .await
        .unwrap();
}

fn journal_len(state: &Path) -> u64 {
    std::fs::metadata(path(state)).unwrap().len()
}

#[tokio::test]
async fn commits_waiting_together_are_one_flush_and_reach_the_tenants_files_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let store = store_in(state);
    let (journal, writer) =
        StateJournal::prepare(state, &store, seen_in(state), Duration::ZERO).unwrap();
    let waiting: Vec<_> = (0..20u16)
        .map(|i| {
            let tenant = format!("tenant-{i}");
            journal.commit(commit(
                state,
                &store,
                &tenant,
                1_000 + i64::from(i),
                &[u128::from(i) + 1],
            ))
        })
        .collect();
    writer.start().unwrap();
    for commit in waiting {
        commit.await.unwrap();
    }
    assert_eq!(journal.stats.rounds.load(Ordering::Relaxed), 1, "one flush");
    assert_eq!(journal.stats.commits.load(Ordering::Relaxed), 20);
    // Durable in the journal; the tenants' own files are not written yet.
    assert!(journal_len(state) > 0);
    assert!(store.load("tenant-3").unwrap().content_types.is_empty());
    assert!(!files_remember(state, "tenant-3", 4));
    journal.close().await.unwrap();
    assert_eq!(journal_len(state), 0, "emptied once the files hold it all");
    for i in 0..20u16 {
        let tenant = format!("tenant-{i}");
        assert_eq!(
            store.load(&tenant).unwrap(),
            positions(&tenant, 1_000 + i64::from(i))
        );
        assert!(files_remember(state, &tenant, u128::from(i) + 1));
    }
    assert!(
        journal
            .commit(commit(state, &store, "late", 1, &[1]))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_run_cut_short_is_replayed_by_the_next_and_a_dry_run_reads_it_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let store = store_in(state);
    let (journal, _) = open(state, &store);
    committed(&journal, state, &store, "Tenant-A", 5, &[7]).await;
    committed(&journal, state, &store, "Tenant-A", 6, &[8, 9]).await;
    // Cut short: no close, so no checkpoint.
    drop(journal);
    let whole = journal_len(state);
    // A write cut short by the crash.
    let mut torn = Vec::new();
    frame::encode(
        &Entry {
            positions: positions("Tenant-A", 99),
            appends: vec![(today(), keys(&[99]))],
        },
        &mut torn,
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(path(state))
        .unwrap()
        .write_all(&torn[..torn.len() - 3])
        .unwrap();
    // A dry-run sees the last whole commit's positions and every id, and changes nothing.
    let seen = recovered(state).unwrap();
    let entry = &seen["tenant-a"];
    assert_eq!(entry.positions, positions("Tenant-A", 6));
    assert_eq!(
        entry.appends,
        vec![(today(), keys(&[7])), (today(), keys(&[8, 9]))]
    );
    assert!(journal_len(state) > whole);
    assert!(store.load("Tenant-A").unwrap().content_types.is_empty());
    // The next run replays the whole entries into the files and empties the journal.
    let store = store_in(state);
    let (again, carried) = open(state, &store);
    assert!(carried.is_empty());
    assert_eq!(journal_len(state), 0);
    assert_eq!(store.load("Tenant-A").unwrap(), positions("Tenant-A", 6));
    for id in [7, 8, 9] {
        assert!(files_remember(state, "Tenant-A", id), "id {id}");
    }
    assert!(
        !files_remember(state, "Tenant-A", 99),
        "the torn entry is not one"
    );
    again.close().await.unwrap();
}

#[tokio::test]
async fn a_journal_past_its_size_or_holding_too_many_ids_is_checkpointed_while_commits_go_on() {
    // Past its size in bytes; then holding more ids than the writer may keep in memory.
    for by_size in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let store = store_in(state);
        let (journal, mut writer) =
            StateJournal::prepare(state, &store, seen_in(state), Duration::ZERO).unwrap();
        if by_size {
            writer.writer.checkpoint_bytes = 1;
            writer.writer.next_checkpoint = 1;
        } else {
            writer.writer.pending_ids_max = 16;
            writer.writer.pending_ids_due = 16;
        }
        writer.start().unwrap();
        committed(&journal, state, &store, "t", 1, &[1]).await;
        committed(&journal, state, &store, "t", 2, &[2]).await;
        journal.close().await.unwrap();
        let stats = &journal.stats;
        assert_eq!(stats.rounds.load(Ordering::Relaxed), 2);
        assert_eq!(
            stats.checkpoints.load(Ordering::Relaxed),
            3,
            "one after each round, one at close (by size: {by_size})"
        );
        assert_eq!(store.load("t").unwrap(), positions("t", 2));
        assert!(files_remember(state, "t", 1) && files_remember(state, "t", 2));
        assert_eq!(journal_len(state), 0);
    }
    // Neither: only the close checkpoints.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let store = store_in(state);
    let (journal, _) = open(state, &store);
    for n in 1..=3 {
        committed(&journal, state, &store, "t", n, &[n as u128]).await;
    }
    journal.close().await.unwrap();
    assert_eq!(journal.stats.checkpoints.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_tenant_whose_files_fail_is_carried_in_the_journal_while_the_others_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    cut_short_with_a_broken_tenant(state).await;
    let store = store_in(state);
    let (journal, carried) = open(state, &store);
    // The good one is in its files; the bad one is handed back (for the collector to apply in
    // memory) and is all the journal still holds.
    assert_eq!(store.load("good").unwrap(), positions("good", 10));
    assert!(files_remember(state, "good", 1));
    assert_eq!(carried.keys().collect::<Vec<_>>(), vec!["bad"]);
    assert_eq!(carried["bad"].positions, positions("bad", 10));
    assert_eq!(
        recovered(state).unwrap().keys().collect::<Vec<_>>(),
        vec!["bad"]
    );
    // Until its committer commits (bringing its own files), a checkpoint carries it again.
    std::fs::remove_file(seen_dir(state, "bad")).unwrap();
    committed(&journal, state, &store, "good", 11, &[5]).await;
    // Fixed, and committing again: the next checkpoint (here the close) writes it out.
    committed(&journal, state, &store, "bad", 12, &[3]).await;
    journal.close().await.unwrap();
    assert_eq!(journal_len(state), 0);
    assert_eq!(store.load("bad").unwrap(), positions("bad", 12));
    assert!(files_remember(state, "bad", 2) && files_remember(state, "bad", 3));
    assert_eq!(store.load("good").unwrap(), positions("good", 11));
}

#[tokio::test]
async fn an_entry_this_version_cant_read_is_kept_aside_and_the_entries_before_it_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let mut bytes = Vec::new();
    frame::encode(
        &Entry {
            positions: positions("a", 1),
            appends: vec![(today(), keys(&[1]))],
        },
        &mut bytes,
    );
    // Whole by its checksum, but not an entry (a newer version's, say).
    let payload = b"not an entry of this version";
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    frame::encode(
        &Entry {
            positions: positions("b", 2),
            appends: vec![],
        },
        &mut bytes,
    );
    std::fs::write(path(state), &bytes).unwrap();
    let store = store_in(state);
    let (journal, _) = open(state, &store);
    assert_eq!(store.load("a").unwrap(), positions("a", 1));
    assert!(store.load("b").unwrap().content_types.is_empty());
    assert_eq!(
        std::fs::read(path(state).with_extension("unreadable")).unwrap(),
        bytes,
        "kept for an operator"
    );
    journal.close().await.unwrap();
}

#[tokio::test]
async fn a_journal_that_cant_be_replaced_stays_as_it_was_holding_everything() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    cut_short_with_a_broken_tenant(state).await;
    let before = std::fs::read(path(state)).unwrap();
    // The bad tenant is to be carried, but the journal's replacement can't be written.
    std::fs::create_dir(path(state).with_extension("next")).unwrap();
    let store = store_in(state);
    let (journal, carried) = open(state, &store);
    assert_eq!(carried.keys().collect::<Vec<_>>(), vec!["bad"]);
    assert_eq!(store.load("good").unwrap(), positions("good", 10));
    // The old journal is untouched: the carried tenant's state is still on disk.
    assert_eq!(std::fs::read(path(state)).unwrap(), before);
    assert_eq!(
        recovered(state).unwrap()["bad"].positions,
        positions("bad", 10)
    );
    drop(journal);
}

/// A writer whose journal takes no write (a handle that only reads: every append fails, as on
/// a full disk) and, with `no_replacement`, can't be replaced either.
fn failing_writer(
    state: &Path,
    store: &Arc<PositionStore>,
    no_replacement: bool,
) -> (StateJournal, Unstarted) {
    let (journal, mut writer) =
        StateJournal::prepare(state, store, seen_in(state), Duration::ZERO).unwrap();
    writer.writer.file = File::open(path(state)).unwrap();
    if no_replacement {
        std::fs::create_dir(path(state).with_extension("next")).unwrap();
    }
    (journal, writer)
}

#[tokio::test]
async fn a_failed_journal_write_is_taken_over_by_the_tenants_files_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let store = store_in(state);
    let (journal, writer) = failing_writer(state, &store, true);
    writer.start().unwrap();
    // Durable all the same: the checkpoint after the failed write put the state in the
    // tenant's own files before the commit was answered.
    committed(&journal, state, &store, "t", 7, &[9]).await;
    assert_eq!(store.load("t").unwrap(), positions("t", 7));
    assert!(files_remember(state, "t", 9));
    journal.close().await.unwrap();
}

#[tokio::test]
async fn state_that_reaches_neither_the_journal_nor_the_tenants_files_fails_the_close_by_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let store = store_in(state);
    let (journal, writer) = failing_writer(state, &store, true);
    let lost = commit(state, &store, "lost-tenant", 7, &[9]);
    break_seen_dir(state, "lost-tenant");
    writer.start().unwrap();
    let failed = journal.commit(lost).await;
    assert!(matches!(failed, Err(JournalError::Write(_))), "{failed:?}");
    let closed = journal.close().await;
    let Err(error @ JournalError::NotDurable { .. }) = closed else {
        panic!("the close must say the state is lost: {closed:?}");
    };
    let text = error.to_string();
    assert!(text.contains("lost-tenant"), "{text}");
    assert!(text.contains("management.state_dir"), "{text}");
    assert!(text.contains("nothing lost"), "{text}");
    // A tenant carried durably in the journal is not such a failure: the close succeeds.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let store = store_in(state);
    let (journal, _) = open(state, &store);
    let carried = commit(state, &store, "carried", 3, &[4]);
    break_seen_dir(state, "carried");
    journal.commit(carried).await.unwrap();
    journal.close().await.unwrap();
    assert_eq!(
        recovered(state).unwrap()["carried"].positions,
        positions("carried", 3)
    );
}

#[tokio::test]
async fn a_tenant_whose_round_was_lost_is_written_whole_by_its_next_round() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let store = store_in(state);
    let (_journal, mut unstarted) = failing_writer(state, &store, true);
    let writer = &mut unstarted.writer;
    // Round 1 reaches neither the journal nor the tenant's files (its seen-id directory is a
    // file now): answered as failed.
    let first = commit(state, &store, "t", 1, &[1]);
    break_seen_dir(state, "t");
    let (done, answer) = oneshot::channel();
    writer.write_round(vec![(first, done)]);
    assert!(answer.await.unwrap().is_err());
    // The journal takes writes again (room on the disk, the file ends whole); round 2 of
    // the same tenant succeeds.
    writer.file = private_fs::private_options()
        .read(true)
        .append(true)
        .open(path(state))
        .unwrap();
    writer.torn = false;
    let second = Commit {
        files: writer.pending["t"].files.clone().unwrap(),
        writes: Writes::from_appends(vec![(today(), keys(&[2]))]),
        positions: positions("t", 2),
    };
    let (done, answer) = oneshot::channel();
    writer.write_round(vec![(second, done)]);
    answer.await.unwrap().unwrap();
    // A crash now: the journal alone brings back round 1's ids with round 2's positions.
    let back = &recovered(state).unwrap()["t"];
    assert_eq!(back.positions, positions("t", 2));
    let ids: Vec<u8> = back.appends.iter().flat_map(|(_, k)| k.clone()).collect();
    for id in [1u128, 2] {
        assert!(
            ids.chunks(16).any(|k| k == id.to_le_bytes()),
            "id {id} in the journal"
        );
    }
}
