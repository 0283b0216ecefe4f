//! Mapping throughput: decode → route → map → encode → batch for ~1 KB audit records, on one
//! core. Run: `cargo bench --bench mapping`. The target (issue 2) is ≥ 150,000 records/s.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use m365_sentinel::pipeline::{Front, Output, Setup, process_unit};
use m365_sentinel::record::Position;
use m365_sentinel::sinks::batch::{BodyBuilder, DEFAULT_MAX_BODY_BYTES};

#[path = "common/records.rs"]
mod records;
use records::records;

/// Rules as a cost-minded user writes them: most rows pass every test.
const BENCH_POLICY: &str = "\
rules:
  - name: drop-a-rare-operation
    table: OfficeActivity
    when: { column: Operation, equals: NoSuchOperation }
    action: drop
  - name: sample-file-reads
    table: OfficeActivity
    when: { column: Operation, in: [FileAccessed, FilePreviewed] }
    action: sample
    one_in: 10
  - name: cut-long-user-agents
    table: OfficeActivity
    when: { column: UserAgent, exists: true }
    action: trim
    cut: { UserAgent: 64 }
  - name: drop-a-workload
    table: OfficeActivity
    when: { field: Workload, equals: NoSuchWorkload }
    action: drop
";

/// Each line decoded, routed, mapped (and put through the policy) into request bodies; the
/// rows of the full bodies.
fn map_into_bodies(front: &Front, lines: &[String], pos: &Position) -> usize {
    let mut builder = BodyBuilder::new(DEFAULT_MAX_BODY_BYTES);
    let mut bodies = 0usize;
    for line in lines {
        process_unit(front, line, pos, &mut |out| {
            if let Output::Row { row, .. } = out
                && let Ok(Some(body)) = builder.push(row.json.as_bytes())
            {
                bodies += black_box(body).rows();
            }
        });
    }
    black_box(builder.take());
    bodies
}

fn bench(c: &mut Criterion) {
    let setup = Setup::load(None, None, std::iter::empty()).expect("embedded setup");
    let mapper = setup.front();
    let lines = records(3_000);
    let avg = lines.iter().map(String::len).sum::<usize>() / lines.len();
    eprintln!("average record: {avg} bytes");
    let pos = Position::new(Arc::from("bench"), 1);
    let mut group = c.benchmark_group("mapping");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("decode_route_map_encode_batch", |b| {
        b.iter(|| map_into_bodies(&mapper, &lines, &pos))
    });
    // The policy stage's share: three rules that each read a mapped column (the mapped row is
    // parsed once for all of them) and one that reads a record field.
    let policy_dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir("schemas").expect("schemas/") {
        let path = entry.expect("schema file").path();
        std::fs::copy(
            &path,
            policy_dir.path().join(path.file_name().expect("name")),
        )
        .expect("copy");
    }
    std::fs::write(policy_dir.path().join("policy.yaml"), BENCH_POLICY).expect("policy.yaml");
    let with_policy = Setup::load(None, Some(policy_dir.path()), std::iter::empty())
        .expect("setup with the bench policy")
        .front();
    group.bench_function("same_with_four_policy_rules", |b| {
        b.iter(|| map_into_bodies(&with_policy, &lines, &pos))
    });
    // The integrity chain's share: canonical bytes and HMAC of each mapped row.
    let mut mapped: Vec<(usize, String)> = Vec::new();
    for line in &lines {
        process_unit(&mapper, line, &pos, &mut |out| {
            if let Output::Row { row, .. } = out {
                mapped.push((row.table, row.json.clone()));
            }
        });
    }
    let keys = m365_sentinel::integrity::Keyring::from_keys(
        std::collections::BTreeMap::from([("k1".to_string(), vec![7u8; 32])]),
        "k1",
    );
    let chain_dir = tempfile::tempdir().expect("temp dir");
    let none = vec![None; setup.schemas.tables.len()];
    let mut chain = m365_sentinel::integrity::Chain::open(
        keys,
        "bench",
        &setup.schemas,
        chain_dir.path(),
        &none,
    )
    .expect("chain");
    group.bench_function("seal_mapped_rows", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            for (table, json) in &mapped {
                let mut row = json.clone();
                chain.seal(*table, &mut row).expect("sealed");
                bytes += black_box(row.len());
            }
            bytes
        })
    });
    group.bench_function("clone_mapped_rows", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            for (_, json) in &mapped {
                bytes += black_box(json.clone()).len();
            }
            bytes
        })
    });
    // Worst case: every record holds something a rule masks, so every value is examined.
    let secret_lines: Vec<String> = lines
        .iter()
        .map(|l| {
            l.replacen(
                "{",
                r#"{"Comment":"reset via https://x/y?password=abc123","#,
                1,
            )
        })
        .collect();
    group.bench_function("every_record_holds_a_secret", |b| {
        b.iter(|| {
            let mut rows = 0usize;
            for line in &secret_lines {
                process_unit(&mapper, line, &pos, &mut |out| {
                    if let Output::Row { row, .. } = out {
                        rows += black_box(row.json.len());
                    }
                });
            }
            rows
        })
    });
    let unredacted = m365_sentinel::pipeline::Front {
        mapper: m365_sentinel::stages::map::Mapper::new(
            setup.schemas.clone(),
            m365_sentinel::stages::redact::Redactor::none(),
            setup.config.map_options(),
        ),
        policy: setup.policy.clone(),
    };
    group.bench_function("same_without_redaction_rules", |b| {
        b.iter(|| {
            let mut rows = 0usize;
            for line in &lines {
                process_unit(&unredacted, line, &pos, &mut |out| {
                    if let Output::Row { row, .. } = out {
                        rows += black_box(row.json.len());
                    }
                });
            }
            rows
        })
    });
    group.bench_function("serde_json_value_round_trip_baseline", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for line in &lines {
                let v: serde_json::Value = serde_json::from_str(line).expect("valid");
                n += serde_json::to_vec(&v).expect("serialises").len();
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
