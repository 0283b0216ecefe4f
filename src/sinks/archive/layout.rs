//! What the archive writes for one unit: its blob (per tenant, source and hour), its block id
//! (from the unit's position, so a unit read again after a crash is recognised), and its block,
//! a gzip member of the unit's records as JSON Lines. A blob's blocks are concatenated gzip
//! members, which every gzip reader (`gzip -d`, `zcat`, flate2's `MultiGzDecoder`, this
//! connector's `--input`) reads as one stream.

use std::sync::Arc;

use azure_core::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use crate::sources::unit::Unit;
use crate::stages::decode::{Decoded, Fields, decode_unit};
use crate::stages::map::datetime::{civil_from_days, parse_unix_millis};

/// A blob holds at most 50,000 committed blocks (learn.microsoft.com/rest/api/storageservices/
/// put-block-list); an hour with more units goes on in a next part.
pub const MAX_BLOCKS_PER_BLOB: usize = 50_000;

/// The record fields that say when a record happened, in the order tried: audit records'
/// `CreationTime`, Defender envelopes' `time`, Defender rows' `Timestamp`.
const TIME_FIELDS: [&str; 3] = ["CreationTime", "time", "Timestamp"];

/// One unit ready to stage.
#[derive(Debug, Clone)]
pub struct Block {
    /// `PREFIX TENANT/SOURCE/YYYY/MM/DD/HH`: the hour's blobs are this plus `.jsonl.gz` (part
    /// 0) or `-N.jsonl.gz`.
    pub hour: Arc<str>,
    /// SHA-256 of the unit's position and its block: fixed length, as a blob's block ids must
    /// be; the same for a unit read again, different for other content at a reused position
    /// (an Event Hubs offset after the hub was recreated), which is then archived, not skipped.
    pub id: [u8; 32],
    pub gzip: Bytes,
    pub records: u64,
}

/// The blob name of part `part` of an hour.
pub fn part_name(hour: &str, part: usize) -> String {
    if part == 0 {
        format!("{hour}.jsonl.gz")
    } else {
        format!("{hour}-{part}.jsonl.gz")
    }
}

/// The block of `unit`: every record as received (before dedupe, mapping and the policy), one
/// per line, in the hour of its first record's time (else the unit's, else `now_millis`). Line breaks inside a record (pretty-printed JSON, where they can only be
/// whitespace) become spaces, so each line is one record. A unit that could not be read as
/// text is archived as its bytes, one line.
pub fn block_of(unit: &Unit, prefix: &str, now_millis: i64) -> Block {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    let mut records = 0u64;
    let mut when = None;
    let mut line = |text: &[u8]| {
        records += 1;
        // Writing into a Vec cannot fail.
        let _ = write_line(&mut gz, text);
    };
    match &unit.content {
        // A content blob, the common unit: a JSON array of objects, split without building
        // each record's field list (only the first one's, for its time).
        Ok(text) if let Some(elements) = array_of_objects(text) => {
            when = elements
                .first()
                .and_then(|first| Fields::parse(first.get()).ok())
                .and_then(|fields| time_of(&fields));
            for element in elements {
                line(element.get().as_bytes());
            }
        }
        Ok(text) => decode_unit(text, &unit.pos, &mut |decoded| match decoded {
            Decoded::Record(_, fields, text) => {
                if when.is_none() {
                    when = time_of(&fields);
                }
                line(text.as_bytes());
            }
            Decoded::Rejected(_, _, text) => line(text.as_bytes()),
        }),
        Err(refused) => line(&refused.raw),
    }
    let gzip = Bytes::from(gz.finish().unwrap_or_default());
    let hour = format!(
        "{prefix}{}/{}/{}",
        name_part(&unit.origin.tenant),
        name_part(&unit.origin.source),
        hour_path(when.or(unit.origin.created_ms).unwrap_or(now_millis))
    );
    let mut id = Sha256::new();
    id.update(unit.pos.source.as_bytes());
    id.update([0u8]);
    id.update(&gzip);
    Block {
        hour: hour.into(),
        id: id.finalize().into(),
        gzip,
        records,
    }
}

/// The elements of `text` when it is exactly a JSON array of objects; None for anything else
/// (which `decode_unit` splits, recovering what it can).
fn array_of_objects(text: &str) -> Option<Vec<&serde_json::value::RawValue>> {
    if !text.trim_start().starts_with('[') {
        return None;
    }
    let elements: Vec<&serde_json::value::RawValue> = serde_json::from_str(text).ok()?;
    elements
        .iter()
        .all(|e| e.get().starts_with('{'))
        .then_some(elements)
}

fn write_line(out: &mut impl std::io::Write, text: &[u8]) -> std::io::Result<()> {
    let mut rest = text;
    while let Some(at) = memchr::memchr2(b'\n', b'\r', rest) {
        out.write_all(&rest[..at])?;
        out.write_all(b" ")?;
        rest = &rest[at + 1..];
    }
    out.write_all(rest)?;
    out.write_all(b"\n")
}

fn time_of(fields: &Fields) -> Option<i64> {
    TIME_FIELDS.iter().find_map(|name| {
        let raw = fields.get(name)?.get();
        parse_unix_millis(raw.strip_prefix('"')?.strip_suffix('"')?)
    })
}

/// `YYYY/MM/DD/HH` of a time in UTC.
fn hour_path(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let h = secs.rem_euclid(86_400) / 3600;
    format!("{y:04}/{m:02}/{d:02}/{h:02}")
}

/// A tenant label or source name as one path segment of a blob name.
fn name_part(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "_".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Ack;
    use crate::record::Position;
    use crate::sources::recent::RecentRows;
    use crate::sources::unit::{Dedupe, Origin};
    use std::io::Read as _;

    fn unit(text: &str, source: &str) -> Unit {
        Unit {
            content: Ok(text.to_string()),
            pos: Position::new(source.into(), 1),
            ack: Ack::hold(|| {}),
            dedupe: Dedupe::Recent(RecentRows::new(60, 10)),
            origin: Origin {
                tenant: "contoso/prod".into(),
                source: "Audit.Exchange".into(),
                created_ms: None,
            },
        }
    }

    fn lines(gzip: &[u8]) -> Vec<String> {
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(gzip)
            .read_to_string(&mut text)
            .unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn a_blob_array_becomes_one_line_per_record_in_the_hour_of_its_first_record() {
        let text = "[{\"Id\":\"a\",\"CreationTime\":\"2026-12-07T13:59:59\"},\n {\"Id\":\"b\",\n\"CreationTime\":\"2026-12-07T14:00:00\"}, 7]";
        let block = block_of(&unit(text, "t/Audit.Exchange/c1"), "m365/", 0);
        assert_eq!(
            &*block.hour,
            "m365/contoso_prod/Audit.Exchange/2026/12/07/13"
        );
        assert_eq!(block.records, 3);
        assert_eq!(
            lines(&block.gzip),
            [
                "{\"Id\":\"a\",\"CreationTime\":\"2026-12-07T13:59:59\"}",
                "{\"Id\":\"b\", \"CreationTime\":\"2026-12-07T14:00:00\"}",
                "7"
            ]
        );
        assert_eq!(
            block.id,
            block_of(&unit(text, "t/Audit.Exchange/c1"), "", 0).id,
            "a unit read again has the same id"
        );
        assert_ne!(
            block.id,
            block_of(&unit("[]", "t/Audit.Exchange/c1"), "", 0).id,
            "other content at the same position is another block"
        );
        assert_ne!(
            block.id,
            block_of(&unit(text, "t/Audit.Exchange/c2"), "", 0).id
        );
    }

    #[test]
    fn an_array_of_objects_takes_the_short_way_to_the_same_lines() {
        let text = "[{\"Id\":\"a\",\n \"CreationTime\":\"2026-12-07T13:59:59\"}, {\"Id\":\"b\"}]";
        let block = block_of(&unit(text, "t/Audit.Exchange/c1"), "", 0);
        assert_eq!(&*block.hour, "contoso_prod/Audit.Exchange/2026/12/07/13");
        assert_eq!(block.records, 2);
        assert_eq!(
            lines(&block.gzip),
            [
                "{\"Id\":\"a\",  \"CreationTime\":\"2026-12-07T13:59:59\"}",
                "{\"Id\":\"b\"}"
            ]
        );
        assert!(array_of_objects(text).is_some());
        assert!(array_of_objects("[{\"a\":1}, 2]").is_none());
        assert!(
            array_of_objects("[{\"a\":1}").is_none(),
            "a truncated blob goes the long way"
        );
    }

    #[test]
    fn records_without_a_time_go_to_the_hour_they_arrived_in() {
        let block = block_of(&unit("{\"records\":[{\"x\":1}]}", "p"), "", 3_600_000 * 25);
        assert_eq!(&*block.hour, "contoso_prod/Audit.Exchange/1970/01/02/01");
        assert_eq!(
            part_name(&block.hour, 0),
            "contoso_prod/Audit.Exchange/1970/01/02/01.jsonl.gz"
        );
        assert_eq!(
            part_name(&block.hour, 2),
            "contoso_prod/Audit.Exchange/1970/01/02/01-2.jsonl.gz"
        );
    }
}
