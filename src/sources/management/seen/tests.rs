use super::*;

const NOW: i64 = 20_000 * DAY_MS + 3_600_000;

fn commit_and_write(seen: &mut SeenSet, files: &mut SeenFiles, created: i64, keys: &[u128]) {
    seen.commit(created, keys);
    files.write(seen.take_writes()).unwrap();
}

#[test]
fn guids_are_their_own_key_and_other_ids_are_hashed() {
    let a = id_key("0b3a8f5e-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
    assert_eq!(a, id_key("0B3A8F5E-1C2D-4E5F-8A9B-0C1D2E3F4A5B"));
    assert_eq!(a, 0x0b3a8f5e_1c2d_4e5f_8a9b_0c1d2e3f4a5b);
    assert_ne!(id_key("not-a-guid"), id_key("not-a-guid2"));
    assert_eq!(id_key("not-a-guid"), id_key("not-a-guid"));
}

#[test]
fn pending_ids_are_forgotten_by_a_crash_committed_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let (mut seen, _) = SeenSet::load(dir.path(), true, NOW, 8, 1_000).unwrap();
    let mut files = SeenFiles::open(dir.path()).unwrap();
    assert!(seen.admit(1));
    assert!(!seen.admit(1), "in flight");
    assert!(seen.admit(2));
    commit_and_write(&mut seen, &mut files, NOW, &[1]);
    assert!(!seen.admit(1), "delivered");
    drop(seen);
    let (mut again, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000).unwrap();
    assert_eq!(loaded.ids, 1);
    assert!(!again.admit(1));
    assert!(
        again.admit(2),
        "2 was only in flight when the process stopped"
    );
}

#[test]
fn a_torn_tail_is_cut_and_expired_days_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let day = NOW / DAY_MS;
    let mut bytes = 7u128.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[1, 2, 3]);
    std::fs::write(dir.path().join(format!("{day}.ids")), &bytes).unwrap();
    std::fs::write(
        dir.path().join(format!("{}.ids", day - 9)),
        9u128.to_le_bytes(),
    )
    .unwrap();
    let (mut seen, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000).unwrap();
    assert_eq!(
        loaded,
        Loaded {
            ids: 1,
            files: 1,
            torn_bytes: 3,
            expired_files: 1,
            damaged_runs: Vec::new(),
        }
    );
    assert!(!seen.admit(7));
    assert!(seen.admit(9));
    let mut files = SeenFiles::open(dir.path()).unwrap();
    commit_and_write(&mut seen, &mut files, NOW, &[9]);
    let (_, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000).unwrap();
    assert_eq!((loaded.ids, loaded.torn_bytes), (2, 0));
}

#[test]
fn a_torn_file_left_by_a_failed_write_is_realigned_before_appending() {
    let dir = tempfile::tempdir().unwrap();
    let day = NOW / DAY_MS;
    let path = dir.path().join(format!("{day}.ids"));
    let mut bytes = 5u128.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[9; 7]);
    std::fs::write(&path, &bytes).unwrap();
    let mut seen = SeenSet::in_memory(8, 100);
    let mut files = SeenFiles::open(dir.path()).unwrap();
    commit_and_write(&mut seen, &mut files, NOW, &[6]);
    assert_eq!(std::fs::read(&path).unwrap().len(), 32);
    let (mut reloaded, loaded) = SeenSet::load(dir.path(), false, NOW, 8, 100).unwrap();
    assert_eq!(loaded.torn_bytes, 0);
    assert!(!reloaded.admit(5) && !reloaded.admit(6));
}

#[test]
fn the_ceiling_and_the_retention_drop_the_oldest_days_files_included() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = SeenSet::in_memory(8, 3);
    let mut files = SeenFiles::open(dir.path()).unwrap();
    commit_and_write(&mut seen, &mut files, NOW - 2 * DAY_MS, &[1, 2]);
    commit_and_write(&mut seen, &mut files, NOW, &[3, 4]);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen.evicted_early, 1);
    assert!(seen.admit(1));
    assert!(!seen.admit(3));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    seen.expire(NOW + 9 * DAY_MS);
    files.write(seen.take_writes()).unwrap();
    assert!(seen.is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn dry_run_reads_but_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    let day = NOW / DAY_MS;
    std::fs::write(dir.path().join(format!("{day}.ids")), [1u8, 2, 3]).unwrap();
    std::fs::write(dir.path().join(format!("{}.ids", day - 20)), [0u8; 16]).unwrap();
    let (mut seen, loaded) = SeenSet::load(dir.path(), false, NOW, 8, 100).unwrap();
    assert_eq!((loaded.torn_bytes, loaded.expired_files), (3, 1));
    seen.admit(5);
    seen.commit(NOW, &[5]);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "nothing deleted"
    );
    assert_eq!(
        std::fs::read(dir.path().join(format!("{day}.ids")))
            .unwrap()
            .len(),
        3
    );
}

/// Keys that differ only in their lowest bits (the hardest case for a filter).
fn near(i: u128) -> u128 {
    (0x0123_4567_89ab_cdef_u128 << 64) | (i * 2)
}

fn files_named(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(suffix)
        })
        .count()
}

#[test]
fn fresh_ids_become_runs_the_log_empties_and_a_restart_finds_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let lock = std::sync::Mutex::new(SeenSet::in_memory(8, 1_000_000).with_compaction(100, 3));
    let mut files = SeenFiles::open(dir.path()).unwrap();
    for batch in 0..10u128 {
        let keys: Vec<u128> = (batch * 100..batch * 100 + 100).map(near).collect();
        let mut seen = lock.lock().unwrap();
        for k in &keys {
            assert!(seen.admit(*k));
        }
        seen.commit(NOW, &keys);
        let writes = seen.take_writes();
        drop(seen);
        files.write(writes).unwrap();
        assert_eq!(compact_due(&lock, &mut files, NOW).unwrap(), 1);
    }
    let day = NOW / DAY_MS;
    assert_eq!(
        std::fs::metadata(dir.path().join(format!("{day}.ids")))
            .unwrap()
            .len(),
        0,
        "every id is in a run"
    );
    // Ten runs made, merged whenever a fourth would come: never more than three.
    let runs = files_named(dir.path(), ".run");
    assert!((1..=3).contains(&runs), "{runs} run files");
    let mut seen = lock.into_inner().unwrap();
    assert_eq!(seen.len(), 1_000);
    let per_id = seen.memory_bytes() as f64 / 1_000.0;
    assert!(per_id < 3.0, "{per_id} bytes of memory per id");
    let (mut reloaded, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000_000).unwrap();
    assert_eq!(loaded.ids, 1_000);
    for set in [&mut seen, &mut reloaded] {
        for i in 0..1_000 {
            assert!(!set.admit(near(i)), "{i} was delivered");
            assert!(set.admit(near(i) + 1), "{i}+1 never was");
        }
    }
    // The day leaving the retention takes its runs with it.
    reloaded.expire(NOW + 9 * DAY_MS);
    files.write(reloaded.take_writes()).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_crash_between_writing_a_run_and_emptying_the_log_counts_each_id_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = SeenSet::in_memory(8, 1_000).with_compaction(10, 4);
    let mut files = SeenFiles::open(dir.path()).unwrap();
    let keys: Vec<u128> = (0..20).map(near).collect();
    commit_and_write(&mut seen, &mut files, NOW, &keys);
    let due = seen.compactions_due(NOW);
    assert_eq!(due.len(), 1);
    for c in due {
        files.compact(c).unwrap(); // written, never installed nor retired: the crash
    }
    std::fs::write(dir.path().join("19.0.run.tmp"), b"half a run").unwrap();
    let (mut again, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000).unwrap();
    assert_eq!(
        loaded.ids, 20,
        "the log's copies of the run's ids are not counted twice"
    );
    assert!(keys.iter().all(|k| !again.admit(*k)));
    assert_eq!(
        files_named(dir.path(), ".tmp"),
        0,
        "a cut-short run is removed"
    );
}

/// The property dedupe must never break: an id that was admitted but whose blob never
/// became safe (a crash), or that was never offered, is admitted after any number of
/// compactions, merges and restarts.
#[test]
fn a_record_never_delivered_is_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut delivered = Vec::new();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..6 {
        let (set, _) = SeenSet::load(dir.path(), true, NOW, 8, 1_000_000).unwrap();
        let lock = std::sync::Mutex::new(set.with_compaction(64, 2));
        let mut files = SeenFiles::open(dir.path()).unwrap();
        for blob in 0..20 {
            let keys: Vec<u128> = (0..25)
                .map(|_| near(u128::from(next() % 1_000_000)))
                .collect();
            let mut seen = lock.lock().unwrap();
            let admitted: Vec<u128> = keys.iter().copied().filter(|k| seen.admit(*k)).collect();
            // Every other blob of the last round is still in flight when the process dies.
            if round == 5 && blob % 2 == 1 {
                continue;
            }
            let day = NOW - i64::from(blob % 3) * DAY_MS;
            seen.commit(day, &admitted);
            delivered.extend(admitted);
            let writes = seen.take_writes();
            drop(seen);
            files.write(writes).unwrap();
            compact_due(&lock, &mut files, NOW).unwrap();
        }
    }
    let (mut seen, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000_000).unwrap();
    delivered.sort_unstable();
    delivered.dedup();
    assert_eq!(loaded.ids, delivered.len());
    for i in 0..1_000_000u128 {
        let key = near(i);
        let was_delivered = delivered.binary_search(&key).is_ok();
        assert_eq!(!seen.admit(key), was_delivered, "id {i}");
        assert!(seen.admit(key + 1), "{i}+1 was never offered");
    }
}
