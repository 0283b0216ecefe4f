//! Sealing rows into their chain as the spool takes them, and keeping each chain's head (last
//! sequence number and hash) on the spool's volume.
//!
//! Order of durability, in the spool writer: rows are sealed, written and flushed; then the
//! heads are written (a slot file per stream, one write and fsync); only then are the rows
//! published to delivery and acknowledged. A crash between the two leaves rows in the spool
//! whose sequence is past the stored head: at start the last spooled row of each stream is
//! read, and a later head found there wins. So a sequence number is never given twice, and
//! rows sent again after a crash are the same bytes with the same hash.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::canonical::{CanonicalError, Columns, Found};
use super::{
    GENESIS, HASH_COLUMN, Hash, KEY_COLUMN, Keyring, SEQ_COLUMN, STREAM_COLUMN, decode_hash,
    encode_hash,
};
use crate::schema::SchemaSet;
use crate::state::slot_file::{SlotFile, SlotRead};

/// What every hash starts with, so a hash of this chain can't be passed off as another use of
/// the same key.
const DOMAIN: &[u8] = b"m365-sentinel chain v1\n";

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("chain state {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(
        "chain state of {stream} in {path} is damaged ({why}); move its chain-<id>.0 and .1 files away to start the stream's chain again (verify then reports the restart as a fork)"
    )]
    Damaged {
        stream: String,
        path: String,
        why: String,
    },
    #[error("row of {stream} can't be sealed: {error}")]
    Row {
        stream: String,
        error: CanonicalError,
    },
}

/// The hash of a row at `seq` in chain `stream` after `prev`, under `key`.
pub fn link(key: &[u8], stream: &str, seq: u64, prev: &Hash, canonical: &[u8]) -> Hash {
    match keyed(key, stream) {
        Some(template) => link_from(&template, seq, prev, canonical),
        None => GENESIS,
    }
}

/// The MAC of a chain before its first row-specific byte: the key's pads and the chain's name
/// hashed once, not for every row (two compressions and the domain text a row).
fn keyed(key: &[u8], stream: &str) -> Option<Hmac<Sha256>> {
    // HMAC takes keys of any length; the keyring refuses short ones.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).ok()?;
    mac.update(DOMAIN);
    mac.update(stream.as_bytes());
    mac.update(b"\n");
    Some(mac)
}

/// [`link`] from the chain's keyed MAC.
fn link_from(template: &Hmac<Sha256>, seq: u64, prev: &Hash, canonical: &[u8]) -> Hash {
    let mut mac = template.clone();
    mac.update(&seq.to_be_bytes());
    mac.update(prev);
    mac.update(canonical);
    let full = mac.finalize().into_bytes();
    let mut hash = GENESIS;
    hash.copy_from_slice(&full[..GENESIS.len()]);
    hash
}

/// One stream's chain.
struct StreamChain {
    /// The `ChainStream` value: `<chain_id>/<table>`.
    name: String,
    /// The active key's MAC with the chain's name hashed in.
    keyed: Option<Hmac<Sha256>>,
    columns: Columns,
    seq: u64,
    last: Hash,
    slots: SlotFile,
    persisted: u64,
    dir: String,
}

/// Every stream's chain, owned by the spool writer.
pub struct Chain {
    keys: Keyring,
    /// Per table; None for a table another chain writer seals.
    streams: Vec<Option<StreamChain>>,
    canonical: Vec<u8>,
    found: Vec<Found>,
}

/// A chain's head: the last row sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub table: usize,
    pub chain: String,
    pub seq: u64,
    pub hash: String,
}

/// The chain columns of a sealed row, as read back from its text.
#[derive(Debug, Deserialize)]
pub struct Seal {
    #[serde(rename = "ChainStream")]
    pub stream: String,
    #[serde(rename = "ChainSeq")]
    pub seq: u64,
    #[serde(rename = "ChainHash")]
    pub hash: String,
}

impl Chain {
    /// Opens the chains of every table (heads in `spool_dir/<stream>/chain-<chain_id>.0` and `.1`); `last_rows`
    /// (per table, the last row the spool still holds) may carry a later head.
    pub fn open(
        keys: Keyring,
        chain_id: &str,
        schemas: &SchemaSet,
        spool_dir: &Path,
        last_rows: &[Option<Vec<u8>>],
    ) -> Result<Self, ChainError> {
        let all: Vec<usize> = (0..schemas.tables.len()).collect();
        Self::open_tables(keys, chain_id, schemas, spool_dir, last_rows, &all)
    }

    /// As [`Chain::open`], for `tables` only (each chain has one writer).
    pub fn open_tables(
        keys: Keyring,
        chain_id: &str,
        schemas: &SchemaSet,
        spool_dir: &Path,
        last_rows: &[Option<Vec<u8>>],
        tables: &[usize],
    ) -> Result<Self, ChainError> {
        let mut streams = Vec::new();
        for (i, table) in schemas.tables.iter().enumerate() {
            if !tables.contains(&i) {
                streams.push(None);
                continue;
            }
            let name = format!("{chain_id}/{}", table.output_table);
            let dir = spool_dir.join(&table.stream);
            let shown = dir.display().to_string();
            crate::state::private_fs::private_dir(&dir).map_err(|error| ChainError::Io {
                path: shown.clone(),
                error,
            })?;
            // One head file per chain id: a stream that changes chains and back finds its
            // own head again.
            let (slots, read) =
                SlotFile::open(&dir, &format!("chain-{chain_id}")).map_err(|error| {
                    ChainError::Io {
                        path: shown.clone(),
                        error,
                    }
                })?;
            let (mut seq, mut last) = match read {
                SlotRead::Missing => (0, GENESIS),
                SlotRead::Found(body) => match parse_head(&body, &name) {
                    Some(head) => head,
                    None => {
                        return Err(ChainError::Damaged {
                            stream: name,
                            path: shown,
                            why: "the head file is not one this version writes for this chain"
                                .into(),
                        });
                    }
                },
                SlotRead::Damaged(why) => {
                    return Err(ChainError::Damaged {
                        stream: name,
                        path: shown,
                        why,
                    });
                }
            };
            let persisted = seq;
            if let Some(Some(row)) = last_rows.get(i)
                && let Ok(seal) = serde_json::from_slice::<Seal>(row)
                && seal.stream == name
                && seal.seq > seq
                && let Some(hash) = decode_hash(&seal.hash)
            {
                tracing::info!(stream = %name, stored = seq, spooled = seal.seq, "the chain's head is taken from the spool (the last run stopped before writing it)");
                (seq, last) = (seal.seq, hash);
            }
            streams.push(Some(StreamChain {
                keyed: keyed(keys.active_key(), &name),
                name,
                columns: Columns::of(table),
                seq,
                last,
                slots,
                persisted,
                dir: shown,
            }));
        }
        Ok(Self {
            keys,
            streams,
            canonical: Vec::new(),
            found: Vec::new(),
        })
    }

    /// The most bytes sealing adds to a row of `table`.
    pub fn overhead(&self, table: usize) -> usize {
        let name = self
            .streams
            .get(table)
            .and_then(Option::as_ref)
            .map_or(0, |s| s.name.len());
        // Four names, quotes, colons and commas; 20 digits; 64 hex; the key id.
        name + self.keys.active_id().len() + 20 + 64 + 80
    }

    /// Gives the row (a JSON object's text) of `table` the next place in its chain.
    pub fn seal(&mut self, table: usize, row: &mut String) -> Result<(), ChainError> {
        let Some(Some(stream)) = self.streams.get_mut(table) else {
            return Ok(());
        };
        stream
            .columns
            .of_sent_with(row, &mut self.canonical, &mut self.found)
            .map_err(|error| ChainError::Row {
                stream: stream.name.clone(),
                error,
            })?;
        let seq = stream.seq + 1;
        let hash = match &stream.keyed {
            Some(template) => link_from(template, seq, &stream.last, &self.canonical),
            None => GENESIS,
        };
        let trimmed = row.trim_end().len();
        row.truncate(trimmed);
        row.pop(); // the closing brace
        if !row.trim_end().ends_with('{') {
            row.push(',');
        }
        // Names and ids are plain (chain ids and key ids are checked at load): no escaping.
        row.push('"');
        row.push_str(STREAM_COLUMN);
        row.push_str("\":\"");
        row.push_str(&stream.name);
        row.push_str("\",\"");
        row.push_str(SEQ_COLUMN);
        row.push_str("\":");
        push_decimal(row, seq);
        row.push_str(",\"");
        row.push_str(HASH_COLUMN);
        row.push_str("\":\"");
        row.push_str(&encode_hash(&hash));
        row.push_str("\",\"");
        row.push_str(KEY_COLUMN);
        row.push_str("\":\"");
        row.push_str(self.keys.active_id());
        row.push_str("\"}");
        stream.seq = seq;
        stream.last = hash;
        Ok(())
    }

    /// Writes the heads that moved since the last call (one write and fsync each).
    pub fn persist(&mut self) -> Result<(), ChainError> {
        for s in self.streams.iter_mut().flatten() {
            if s.seq == s.persisted {
                continue;
            }
            let text = format!("v1 {} {} {}\n", s.seq, encode_hash(&s.last), s.name);
            s.slots
                .replace(text.as_bytes())
                .map_err(|error| ChainError::Io {
                    path: s.dir.clone(),
                    error,
                })?;
            s.persisted = s.seq;
        }
        Ok(())
    }

    /// Each chain's table index, name, last sequence number and hash (as the rows carry it): the checkpoints.
    pub fn heads(&self) -> Vec<Head> {
        self.streams
            .iter()
            .enumerate()
            .filter_map(|(table, s)| {
                let s = s.as_ref()?;
                Some(Head {
                    table,
                    chain: s.name.clone(),
                    seq: s.seq,
                    hash: encode_hash(&s.last),
                })
            })
            .collect()
    }
}

fn push_decimal(out: &mut String, n: u64) {
    use std::fmt::Write as _;
    let _ = write!(out, "{n}");
}

/// `v1 SEQ HASH NAME`; None when it is another chain's (the chain id changed: a new chain).
fn parse_head(body: &[u8], name: &str) -> Option<(u64, Hash)> {
    let text = std::str::from_utf8(body).ok()?;
    let mut parts = text.trim_end().splitn(4, ' ');
    (parts.next()? == "v1").then_some(())?;
    let seq = parts.next()?.parse().ok()?;
    let hash = decode_hash(parts.next()?)?;
    (parts.next()? == name).then_some((seq, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn keys() -> Keyring {
        Keyring::from_keys(BTreeMap::from([("k1".to_string(), vec![7u8; 32])]), "k1")
    }

    fn schemas() -> SchemaSet {
        SchemaSet::embedded().unwrap()
    }

    #[test]
    fn sealing_continues_across_restarts_and_a_spooled_head_wins() {
        let dir = tempfile::tempdir().unwrap();
        let schemas = schemas();
        let none = vec![None; schemas.tables.len()];
        let t = schemas.audit_table().unwrap();
        let mut chain = Chain::open(keys(), "pod-0", &schemas, dir.path(), &none).unwrap();
        let mut a = r#"{"TimeGenerated":"2024-01-01T00:00:00Z","Operation":"A"}"#.to_string();
        chain.seal(t, &mut a).unwrap();
        let sealed: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(sealed["ChainSeq"], 1);
        assert_eq!(sealed["ChainKeyId"], "k1");
        assert!(
            sealed["ChainStream"]
                .as_str()
                .unwrap()
                .starts_with("pod-0/")
        );
        chain.persist().unwrap();
        let mut b = r#"{"Operation":"B"}"#.to_string();
        chain.seal(t, &mut b).unwrap();
        // Crash before persisting b's head: the spool's last row carries it.
        let mut last = none.clone();
        last[t] = Some(b.clone().into_bytes());
        let mut again = Chain::open(keys(), "pod-0", &schemas, dir.path(), &last).unwrap();
        let mut c = r#"{"Operation":"C"}"#.to_string();
        again.seal(t, &mut c).unwrap();
        let c: serde_json::Value = serde_json::from_str(&c).unwrap();
        assert_eq!(c["ChainSeq"], 3);
        let b: serde_json::Value = serde_json::from_str(&b).unwrap();
        let prev = decode_hash(b["ChainHash"].as_str().unwrap()).unwrap();
        let mut canonical = Vec::new();
        Columns::of(&schemas.tables[t])
            .of_sent(r#"{"Operation":"C"}"#, &mut canonical)
            .unwrap();
        let expect = link(
            &[7u8; 32],
            c["ChainStream"].as_str().unwrap(),
            3,
            &prev,
            &canonical,
        );
        assert_eq!(c["ChainHash"].as_str().unwrap(), encode_hash(&expect));
        // Without the spooled row only the persisted head is known.
        let fresh = Chain::open(keys(), "pod-0", &schemas, dir.path(), &none).unwrap();
        assert_eq!(fresh.heads()[t].seq, 1);
        // Another chain id starts its own chain.
        let other = Chain::open(keys(), "pod-1", &schemas, dir.path(), &none).unwrap();
        assert_eq!(other.heads()[t].seq, 0);
    }

    #[test]
    fn a_rotated_key_continues_the_chain_and_verify_needs_the_old_one_too() {
        use crate::integrity::verify::{Checker, Checkpoint, ReadRow};
        let dir = tempfile::tempdir().unwrap();
        let schemas = schemas();
        let t = schemas.audit_table().unwrap();
        let none = vec![None; schemas.tables.len()];
        let both = BTreeMap::from([
            ("k1".to_string(), vec![7u8; 32]),
            ("k2".to_string(), vec![9u8; 40]),
        ]);
        let mut sealed = Vec::new();
        let mut chain = Chain::open(keys(), "pod-0", &schemas, dir.path(), &none).unwrap();
        for op in ["A", "B"] {
            let mut row = format!(r#"{{"Operation":"{op}"}}"#);
            chain.seal(t, &mut row).unwrap();
            sealed.push(row);
        }
        chain.persist().unwrap();
        let rotated = Keyring::from_keys(both.clone(), "k2");
        let mut chain = Chain::open(rotated, "pod-0", &schemas, dir.path(), &none).unwrap();
        for op in ["C", "D"] {
            let mut row = format!(r#"{{"Operation":"{op}"}}"#);
            chain.seal(t, &mut row).unwrap();
            sealed.push(row);
        }
        let columns = Columns::of(&schemas.tables[t]);
        let read: Vec<ReadRow> = sealed
            .iter()
            .map(|text| {
                let v: serde_json::Value = serde_json::from_str(text).unwrap();
                let mut canonical = Vec::new();
                columns.of_sent(text, &mut canonical).unwrap();
                ReadRow {
                    seq: v["ChainSeq"].as_u64().unwrap(),
                    hash: v["ChainHash"].as_str().unwrap().to_string(),
                    key_id: v["ChainKeyId"].as_str().unwrap().to_string(),
                    canonical,
                }
            })
            .collect();
        assert_eq!(read[1].key_id, "k1");
        assert_eq!(read[2].key_id, "k2");
        let head = chain.heads()[t].clone();
        let stream = head.chain.clone();
        assert_eq!(head.seq, 4);
        // The checkpoint as the health table carries it: the head's number and hash.
        let checkpoint = Some(Checkpoint {
            seq: head.seq,
            hash: Some(head.hash.clone()),
        });
        let ring = Keyring::from_keys(both.clone(), "k2");
        let mut checker = Checker::new(&ring, &stream, false).with_checkpoint(checkpoint.clone());
        checker.feed(&read);
        let report = checker.finish();
        assert!(report.is_whole(), "{report:?}");
        // Without the old key, its rows can't be checked: reported, not passed.
        let only_new =
            Keyring::from_keys(BTreeMap::from([("k2".to_string(), vec![9u8; 40])]), "k2");
        let mut checker = Checker::new(&only_new, &stream, false).with_checkpoint(checkpoint);
        checker.feed(&read);
        let report = checker.finish();
        assert_eq!(report.unknown_keys.len(), 2);
        assert!(!report.is_whole());
    }
}
