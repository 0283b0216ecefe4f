use std::time::Duration;

use super::*;

fn config(dir: &Path, max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        enabled: true,
        dir: dir.to_path_buf(),
        max_bytes,
        sync: SyncPolicy::Always,
    }
}

fn streams() -> Vec<String> {
    vec!["Custom-A_CL".into(), "Custom-B_CL".into()]
}

fn row(i: usize) -> Vec<u8> {
    format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(100)).into_bytes()
}

fn write(spool: &Arc<Spool>, stream: usize, rows: std::ops::Range<usize>) {
    let mut w = SpoolWriter::new(spool.clone());
    for i in rows {
        assert!(w.push(stream, &row(i)));
        if w.pending_bytes() > 4096 {
            w.commit().unwrap();
        }
    }
    w.commit().unwrap();
}

/// Takes everything readable now, delivering as it goes when `deliver`.
async fn drain(reader: &mut StreamReader, deliver: bool) -> Vec<usize> {
    let mut seen = Vec::new();
    let acker = reader.acker();
    while let Ok(Some(taken)) =
        tokio::time::timeout(Duration::from_millis(50), reader.take(10_000)).await
    {
        for (range, start, end) in &taken.rows {
            let v: serde_json::Value = serde_json::from_slice(&taken.bytes[range.clone()]).unwrap();
            seen.push(v["i"].as_u64().unwrap() as usize);
            if deliver {
                acker.begin(*start, *end);
                acker.delivered(*start);
            }
        }
    }
    acker.flush();
    seen
}

#[tokio::test]
async fn rows_come_back_in_order_per_stream_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 4 << 20);
    let spool = Spool::open(&cfg, &streams()).unwrap();
    write(&spool, 0, 0..500);
    write(&spool, 1, 1000..1010);
    let mut a = spool.reader(0);
    assert_eq!(drain(&mut a, false).await, (0..500).collect::<Vec<_>>());
    drop((a, spool));
    // Nothing was delivered: a restart gives every row again.
    let spool = Spool::open(&cfg, &streams()).unwrap();
    assert_eq!(spool.recovery[0].rows, 500);
    assert_eq!(spool.recovery[1].rows, 10);
    // The last row waiting is handed over (a later chain head may be in it).
    assert_eq!(spool.recovery[0].last_row, Some(row(499)));
    assert_eq!(spool.recovery[1].last_row, Some(row(1009)));
    let mut a = spool.reader(0);
    assert_eq!(drain(&mut a, true).await.len(), 500);
    let mut b = spool.reader(1);
    assert_eq!(drain(&mut b, false).await, (1000..1010).collect::<Vec<_>>());
    drop((a, b, spool));
    // Stream A was delivered: only B's rows come back.
    let spool = Spool::open(&cfg, &streams()).unwrap();
    assert_eq!((spool.recovery[0].rows, spool.recovery[1].rows), (0, 10));
    assert_eq!(
        spool.recovery[0].last_row, None,
        "nothing waits in a delivered stream"
    );
    assert_eq!(spool.recovery[1].last_row, Some(row(1009)));
}

#[tokio::test]
async fn the_cursor_waits_for_the_earliest_delivery_and_frees_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 4 << 20); // segments of 256 KiB
    let spool = Spool::open(&cfg, &streams()).unwrap();
    write(&spool, 0, 0..6_000); // about 800 KB: several segments
    let before = spool.bytes();
    let mut reader = spool.reader(0);
    let acker = reader.acker();
    let mut ranges = Vec::new();
    while let Ok(Some(t)) =
        tokio::time::timeout(Duration::from_millis(50), reader.take(50_000)).await
    {
        let (first, last) = (t.rows[0].1, t.rows[t.rows.len() - 1].2);
        acker.begin(first, last);
        ranges.push(first);
    }
    // All but the first delivered: nothing can be freed yet.
    for start in &ranges[1..] {
        acker.delivered(*start);
    }
    assert_eq!(spool.bytes(), before);
    acker.delivered(ranges[0]);
    assert!(spool.bytes() < before / 2, "delivered segments deleted");
    acker.flush();
    drop((reader, acker, spool));
    let spool = Spool::open(&cfg, &streams()).unwrap();
    assert_eq!(spool.recovery[0].rows, 0);
}

#[test]
fn a_truncated_and_a_corrupted_segment_keep_their_intact_rows_and_say_what_was_cut() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 4 << 20);
    let spool = Spool::open(&cfg, &streams()).unwrap();
    write(&spool, 0, 0..100);
    write(&spool, 1, 0..100);
    drop(spool);
    let seg = |s: &str| {
        std::fs::read_dir(dir.path().join(s))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap()
    };
    // Stream A: cut mid-record. Stream B: one byte flipped in the 50th record.
    let a = seg("Custom-A_CL");
    let len = std::fs::metadata(&a).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .set_len(len - 30)
        .unwrap();
    let b = seg("Custom-B_CL");
    let mut bytes = std::fs::read(&b).unwrap();
    let record = bytes.len() / 100;
    bytes[49 * record + 20] ^= 0xff;
    std::fs::write(&b, bytes).unwrap();

    let spool = Spool::open(&cfg, &streams()).unwrap();
    let (ra, rb) = (&spool.recovery[0], &spool.recovery[1]);
    assert_eq!((ra.rows, ra.records_cut), (99, 1), "{ra:?}");
    assert!(ra.damage[0].contains("torn"), "{ra:?}");
    assert_eq!((rb.rows, rb.records_cut), (99, 1), "{rb:?}");
    assert!(rb.damage[0].contains("damaged"), "{rb:?}");
    // The damage is gone from disk: a second start finds the same rows and nothing to cut.
    drop(spool);
    let spool = Spool::open(&cfg, &streams()).unwrap();
    assert_eq!(
        spool.recovery[0].records_cut + spool.recovery[1].records_cut,
        0
    );
    assert_eq!(spool.recovery[1].rows, 99);
}

#[tokio::test]
async fn new_rows_after_a_restart_follow_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 4 << 20);
    let spool = Spool::open(&cfg, &streams()).unwrap();
    write(&spool, 0, 0..10);
    drop(spool);
    let spool = Spool::open(&cfg, &streams()).unwrap();
    write(&spool, 0, 10..20);
    let mut reader = spool.reader(0);
    assert_eq!(drain(&mut reader, true).await, (0..20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_holds_the_writer_until_delivery_frees_room() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), MIN_MAX_BYTES);
    let spool = Spool::open(&cfg, &streams()).unwrap();
    // 60,000 rows of ~125 bytes: about 8 MB, twice the budget.
    let writer_spool = spool.clone();
    let writer = tokio::task::spawn_blocking(move || write(&writer_spool, 0, 0..60_000));
    // Without delivery the writer stops at the budget.
    let mut reader = spool.reader(0);
    tokio::time::timeout(Duration::from_secs(10), async {
        while !spool.is_full() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the spool fills up");
    assert!(spool.bytes() <= MIN_MAX_BYTES + 8192, "{}", spool.bytes());
    assert!(!writer.is_finished());
    // Delivering frees room; everything arrives, in order.
    let mut got = Vec::new();
    let acker = reader.acker();
    while got.len() < 60_000 {
        let t = reader.take(100_000).await.unwrap();
        for (range, _, _) in &t.rows {
            let v: serde_json::Value = serde_json::from_slice(&t.bytes[range.clone()]).unwrap();
            got.push(v["i"].as_u64().unwrap() as usize);
        }
        // Delivered as one request body, as the run does.
        let (first, last) = (t.rows[0].1, t.rows[t.rows.len() - 1].2);
        acker.begin(first, last);
        acker.delivered(first);
    }
    writer.await.unwrap();
    assert_eq!(got, (0..60_000).collect::<Vec<_>>());
    assert!(!spool.is_full());
}

#[test]
fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("spool");
    let spool = Spool::open(&config(&root, 4 << 20), &streams()).unwrap();
    write(&spool, 0, 0..3);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("Custom-A_CL")), 0o700);
    for e in std::fs::read_dir(root.join("Custom-A_CL")).unwrap() {
        assert_eq!(mode(&e.unwrap().path()), 0o600);
    }
}
