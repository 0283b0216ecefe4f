//! Dry-run sink: writes the exact request bodies the workspace sink would send, one file per
//! body under a directory per stream, plus the rejected records and row adjustments. Nothing is
//! sent anywhere. The files hold audit data, so they are created 0600 in 0700 directories.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::record::{Position, Rejected};
use crate::sinks::batch::Body;
use crate::stages::map::Note;

pub const REJECTED_FILE: &str = "rejected.ndjson";
pub const NOTICES_FILE: &str = "notices.ndjson";
pub const SUMMARY_FILE: &str = "summary.txt";

pub struct DryRunSink {
    dir: PathBuf,
    counters: Vec<u64>,
    rejected: BufWriter<File>,
    notices: BufWriter<File>,
}

use crate::state::private_fs::private_dir;

fn private_file(path: &Path) -> io::Result<File> {
    crate::state::private_fs::private_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Removes the outputs of an earlier dry-run (and only those) so runs don't mix.
fn clear_previous(dir: &Path, streams: &[String]) -> io::Result<()> {
    for stream in streams {
        let d = dir.join(stream);
        if let Ok(entries) = fs::read_dir(&d) {
            for e in entries {
                let p = e?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with("body-") && name.ends_with(".json") {
                    fs::remove_file(&p)?;
                }
            }
        }
    }
    Ok(())
}

impl DryRunSink {
    /// Prepares `dir` with one subdirectory per stream.
    pub fn create(dir: &Path, streams: &[String]) -> io::Result<Self> {
        private_dir(dir)?;
        clear_previous(dir, streams)?;
        for s in streams {
            private_dir(&dir.join(s))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            counters: vec![0; streams.len()],
            rejected: BufWriter::new(private_file(&dir.join(REJECTED_FILE))?),
            notices: BufWriter::new(private_file(&dir.join(NOTICES_FILE))?),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one body of stream `stream_index` (named `stream`); returns the file written.
    pub fn write_body(
        &mut self,
        stream_index: usize,
        stream: &str,
        body: &Body,
    ) -> io::Result<PathBuf> {
        let n = &mut self.counters[stream_index];
        *n += 1;
        let path = self.dir.join(stream).join(format!("body-{:06}.json", *n));
        let mut f = private_file(&path)?;
        f.write_all(&body.bytes)?;
        Ok(path)
    }

    pub fn write_rejected(&mut self, r: &Rejected) -> io::Result<()> {
        self.rejected.write_all(rejected_line(r).as_bytes())
    }

    /// One line per adjusted row; `raw` (the redacted original record) is kept when a value was
    /// cut, so what the field limit removed is still on disk.
    pub fn write_notes(
        &mut self,
        pos: &Position,
        table: &str,
        notes: &[Note],
        raw: Option<&str>,
    ) -> io::Result<()> {
        let mut line = String::with_capacity(128 * notes.len() + 64);
        line.push('{');
        push_position(&mut line, pos);
        line.push_str(",\"table\":");
        crate::stages::map::json::push_json_string(&mut line, table);
        line.push_str(",\"notes\":[");
        for (i, n) in notes.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str("{\"column\":");
            crate::stages::map::json::push_json_string(&mut line, &n.column);
            line.push_str(",\"kind\":");
            crate::stages::map::json::push_json_string(&mut line, n.kind.code());
            line.push_str(",\"detail\":");
            crate::stages::map::json::push_json_string(&mut line, &n.to_string());
            line.push('}');
        }
        line.push(']');
        if let Some(raw) = raw {
            line.push_str(",\"raw\":");
            crate::stages::map::json::push_json_string(&mut line, raw);
        }
        line.push_str("}\n");
        self.notices.write_all(line.as_bytes())
    }

    pub fn finish(mut self, summary: &str) -> io::Result<()> {
        self.rejected.flush()?;
        self.notices.flush()?;
        let mut f = private_file(&self.dir.join(SUMMARY_FILE))?;
        f.write_all(summary.as_bytes())
    }
}

/// One line of a rejected-records file: position, reason and the (already masked) raw text,
/// base64 when it is not UTF-8.
pub fn rejected_line(r: &Rejected) -> String {
    let mut line = String::with_capacity(r.raw.len() + 128);
    line.push('{');
    push_position(&mut line, &r.pos);
    line.push_str(",\"reason_code\":");
    crate::stages::map::json::push_json_string(&mut line, r.reason.code());
    line.push_str(",\"reason\":");
    crate::stages::map::json::push_json_string(&mut line, &r.reason.to_string());
    match std::str::from_utf8(&r.raw) {
        Ok(text) => {
            line.push_str(",\"raw\":");
            crate::stages::map::json::push_json_string(&mut line, text);
        }
        Err(_) => {
            line.push_str(",\"raw_base64\":\"");
            line.push_str(&base64::engine::general_purpose::STANDARD.encode(&r.raw));
            line.push('"');
        }
    }
    line.push_str("}\n");
    line
}

fn push_position(line: &mut String, pos: &Position) {
    line.push_str("\"source\":");
    crate::stages::map::json::push_json_string(line, &pos.source);
    line.push_str(&format!(",\"line\":{},\"index\":{}", pos.line, pos.index));
}
