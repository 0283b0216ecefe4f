//! Helpers shared by the integration tests: run dry-run through the library and read back what
//! it wrote, exactly as a user would find it on disk.
#![allow(dead_code)]

pub mod azure;
pub mod azurite;
pub mod columns;
pub mod defender;
pub mod kafka;
pub mod management;
pub mod tools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use m365_sentinel::ops::stats::Stats;
use m365_sentinel::pipeline::{Intake, Setup};
use m365_sentinel::run::dry_run;
use serde_json::Value;

/// Twenty OfficeActivity string columns: sixty KB in each makes a row over the 1 MB request limit
/// while no single field is over the 64 KB field limit.
pub const WIDE_COLUMNS: [&str; 20] = [
    "UserAgent",
    "ClientInfoString",
    "ObjectId",
    "Parameters",
    "ModifiedProperties",
    "Item",
    "SiteUrl",
    "SourceFileName",
    "SourceRelativeUrl",
    "DestinationFileName",
    "TeamName",
    "ChannelName",
    "MessageId",
    "GenericInfo",
    "CustomEvent",
    "EventData",
    "ItemName",
    "UserSharedWith",
    "TargetUserOrGroupName",
    "OriginatingServer",
];

/// The five Sentinel tables the connector fills, as the workspace names them.
pub const SENTINEL_TABLES: [&str; 5] = [
    "OfficeActivity_CL",
    "EmailEvents_CL",
    "EmailAttachmentInfo_CL",
    "EmailUrlInfo_CL",
    "EmailPostDeliveryEvents_CL",
];

/// `../shared/samples`, which CI always has beside the repository.
pub fn shared_samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/samples")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn setup() -> Setup {
    Setup::load(None, None, std::iter::empty()).expect("embedded setup loads")
}

/// The outcome of a dry-run: rows per output table (parsed from the body files), the rejected
/// records and notices as written, and the counts.
pub struct Run {
    pub stats: Stats,
    pub rows: BTreeMap<String, Vec<Value>>,
    pub bodies: BTreeMap<String, Vec<Vec<u8>>>,
    pub rejected: Vec<Value>,
    pub notices: Vec<Value>,
    pub out: tempfile::TempDir,
}

impl Run {
    pub fn table(&self, name: &str) -> &[Value] {
        self.rows.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn all_rows(&self) -> impl Iterator<Item = &Value> {
        self.rows.values().flatten()
    }

    pub fn rejected_codes(&self) -> Vec<String> {
        self.rejected
            .iter()
            .map(|r| r["reason_code"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

fn read_ndjson(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("output lines are JSON"))
        .collect()
}

pub fn run_with(setup: &Setup, inputs: &[PathBuf]) -> Run {
    let out = tempfile::tempdir().unwrap();
    let stats = dry_run(
        std::sync::Arc::new(setup.clone()),
        Intake::Files(inputs.to_vec()),
        out.path(),
    )
    .expect("dry-run completes");
    let mut rows = BTreeMap::new();
    let mut bodies = BTreeMap::new();
    for t in &setup.schemas.tables {
        let dir = out.path().join(&t.stream);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let mut table_rows = Vec::new();
        let mut table_bodies = Vec::new();
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            let body: Vec<Value> = serde_json::from_slice(&bytes).expect("a body is a JSON array");
            table_rows.extend(body);
            table_bodies.push(bytes);
        }
        rows.insert(t.output_table.clone(), table_rows);
        bodies.insert(t.output_table.clone(), table_bodies);
    }
    let rejected = read_ndjson(&out.path().join("rejected.ndjson"));
    let notices = read_ndjson(&out.path().join("notices.ndjson"));
    Run {
        stats,
        rows,
        bodies,
        rejected,
        notices,
        out,
    }
}

pub fn run(inputs: &[PathBuf]) -> Run {
    run_with(&setup(), inputs)
}

/// Writes `content` to a file named `name` in a new temporary directory.
pub fn temp_input(name: &str, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    (dir, path)
}

/// A row whose column `key` equals `value`.
pub fn find<'a>(rows: &'a [Value], key: &str, value: &str) -> &'a Value {
    rows.iter()
        .find(|r| r[key] == value)
        .unwrap_or_else(|| panic!("no row with {key} = {value}"))
}

/// The text of `/metrics` on 127.0.0.1:`port`.
pub async fn scrape_metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
