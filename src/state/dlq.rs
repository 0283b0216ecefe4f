//! The dead-letter store: rows the workspace refused for good (a 400 for that row, a row over
//! the request limit), kept on disk with the reason, HTTP status and the service's error body, so
//! nothing is dropped and they can be replayed once the DCR or permissions are fixed.
//!
//! One NDJSON file per output table, `<dir>/<table>.ndjson`, created 0600 in a 0700 directory
//! (the rows are audit data). Appends are flushed and synced before `append` returns: a dead
//! letter counts as delivered for the source's position, so it must be durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::stages::map::datetime::format_unix_millis;

/// One refused row and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// When it was refused (UTC).
    pub time: String,
    /// The custom table (e.g. `OfficeActivity_CL`) and the DCR stream it was sent to.
    pub table: String,
    pub stream: String,
    /// What happened, in words.
    pub reason: String,
    /// HTTP status and the service's error code and body, when the service answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_body: Option<String>,
    /// The mapped (and redacted) row, exactly as it would be sent.
    pub row: Box<RawValue>,
}

impl DeadLetter {
    /// A dead letter stamped with the current time.
    pub fn now(table: &str, stream: &str, reason: String, row: Box<RawValue>) -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self {
            time: format_unix_millis(millis),
            table: table.to_string(),
            stream: stream.to_string(),
            reason,
            status: None,
            error_code: None,
            error_body: None,
            row,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("dead-letter store {path}: {error}; check dlq.dir and its permissions")]
    Io { path: PathBuf, error: io::Error },
    #[error("dead-letter store {path}, line {line}: {error}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        error: String,
    },
    #[error("table name {0:?} can't name a dead-letter file (letters, digits and '_' only)")]
    BadTable(String),
}

/// Per-table totals for `dlq list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLetters {
    pub table: String,
    pub rows: usize,
    pub bytes: u64,
}

pub struct DeadLetterStore {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DlqError + '_ {
    move |error| DlqError::Io {
        path: path.to_path_buf(),
        error,
    }
}

impl DeadLetterStore {
    /// Opens (creating it 0700) the store's directory.
    pub fn open(dir: &Path) -> Result<Self, DlqError> {
        crate::state::private_fs::private_dir(dir).map_err(io_err(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn file_of(&self, table: &str) -> Result<PathBuf, DlqError> {
        if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(DlqError::BadTable(table.to_string()));
        }
        Ok(self.dir.join(format!("{table}.ndjson")))
    }

    /// Appends letters (of any tables) durably: written, flushed and synced before returning.
    pub fn append(&self, letters: &[DeadLetter]) -> Result<(), DlqError> {
        let mut tables: Vec<&str> = letters.iter().map(|l| l.table.as_str()).collect();
        tables.sort_unstable();
        tables.dedup();
        for table in tables {
            let path = self.file_of(table)?;
            let mut file = crate::state::private_fs::append(&path).map_err(io_err(&path))?;
            let mut buf = Vec::new();
            for letter in letters.iter().filter(|l| l.table == table) {
                serde_json::to_writer(&mut buf, letter).map_err(|e| DlqError::Io {
                    path: path.clone(),
                    error: io::Error::other(e),
                })?;
                buf.push(b'\n');
            }
            file.write_all(&buf).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Tables with dead letters, with their counts, in name order.
    pub fn list(&self) -> Result<Vec<TableLetters>, DlqError> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_err(&self.dir))?.path();
            let Some(table) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ndjson"))
                .filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            else {
                continue;
            };
            let file = File::open(&path).map_err(io_err(&path))?;
            let bytes = file.metadata().map_err(io_err(&path))?.len();
            let rows = BufReader::new(file).lines().count();
            out.push(TableLetters {
                table: table.to_string(),
                rows,
                bytes,
            });
        }
        out.sort_by(|a, b| a.table.cmp(&b.table));
        Ok(out)
    }

    /// Every dead letter of `table`, in the order they were written.
    pub fn read(&self, table: &str) -> Result<Vec<DeadLetter>, DlqError> {
        self.read_path(&self.file_of(table)?)
    }

    fn replaying_of(&self, table: &str) -> Result<PathBuf, DlqError> {
        Ok(self.file_of(table)?.with_extension("ndjson.replaying"))
    }

    /// Starts a replay: moves `table`'s letters aside (rows refused again during the replay go to
    /// a fresh file) and returns them. A replay cut short by a crash is picked up again here.
    pub fn take(&self, table: &str) -> Result<Vec<DeadLetter>, DlqError> {
        let path = self.file_of(table)?;
        let replaying = self.replaying_of(table)?;
        if path.exists() {
            if replaying.exists() {
                let more = fs::read(&path).map_err(io_err(&path))?;
                let mut file = OpenOptions::new()
                    .append(true)
                    .open(&replaying)
                    .map_err(io_err(&replaying))?;
                file.write_all(&more).map_err(io_err(&replaying))?;
                file.sync_all().map_err(io_err(&replaying))?;
                fs::remove_file(&path).map_err(io_err(&path))?;
            } else {
                fs::rename(&path, &replaying).map_err(io_err(&path))?;
            }
        }
        self.read_path(&replaying)
    }

    /// Ends a replay whose rows were all delivered or dead-lettered again.
    pub fn finish_replay(&self, table: &str) -> Result<(), DlqError> {
        let replaying = self.replaying_of(table)?;
        match fs::remove_file(&replaying) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&replaying)(e)),
        }
    }

    fn read_path(&self, path: &Path) -> Result<Vec<DeadLetter>, DlqError> {
        let path = path.to_path_buf();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut out = Vec::new();
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io_err(&path))?;
            if line.trim().is_empty() {
                continue;
            }
            out.push(serde_json::from_str(&line).map_err(|e| DlqError::Corrupt {
                path: path.clone(),
                line: i + 1,
                error: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Removes `table`'s letters once they were replayed; `still_refused` are written back.
    pub fn replace(&self, table: &str, still_refused: &[DeadLetter]) -> Result<(), DlqError> {
        let path = self.file_of(table)?;
        let tmp = self.dir.join(format!("{table}.ndjson.tmp"));
        {
            let mut file = crate::state::private_fs::private_options()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            for letter in still_refused {
                let line = serde_json::to_string(letter).map_err(|e| DlqError::Io {
                    path: tmp.clone(),
                    error: io::Error::other(e),
                })?;
                writeln!(file, "{line}").map_err(io_err(&tmp))?;
            }
            file.sync_all().map_err(io_err(&tmp))?;
        }
        if still_refused.is_empty() {
            fs::remove_file(&tmp).map_err(io_err(&tmp))?;
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(&path)(e)),
            }
        } else {
            fs::rename(&tmp, &path).map_err(io_err(&path))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(table: &str, row: &str) -> DeadLetter {
        let mut l = DeadLetter::now(
            table,
            &format!("Custom-{table}"),
            "400 from the service".into(),
            RawValue::from_string(row.to_string()).unwrap(),
        );
        l.status = Some(400);
        l.error_code = Some("InvalidColumn".into());
        l.error_body = Some(r#"{"error":{"code":"InvalidColumn"}}"#.into());
        l
    }

    #[test]
    fn append_list_read_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(&dir.path().join("dlq")).unwrap();
        store
            .append(&[
                letter("A_CL", r#"{"x":1}"#),
                letter("B_CL", r#"{"y":2}"#),
                letter("A_CL", r#"{"x":3}"#),
            ])
            .unwrap();
        let listed = store.list().unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|t| (t.table.as_str(), t.rows))
                .collect::<Vec<_>>(),
            [("A_CL", 2), ("B_CL", 1)]
        );
        let a = store.read("A_CL").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].row.get(), r#"{"x":3}"#);
        assert_eq!(a[0].status, Some(400));
        assert!(a[0].time.ends_with('Z'));
        store.replace("A_CL", &a[1..]).unwrap();
        assert_eq!(store.read("A_CL").unwrap().len(), 1);
        store.replace("A_CL", &[]).unwrap();
        assert!(store.read("A_CL").unwrap().is_empty());
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("dlq");
        let store = DeadLetterStore::open(&root).unwrap();
        store.append(&[letter("A_CL", "{}")]).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("A_CL.ndjson")), 0o600);
    }

    #[test]
    fn table_names_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.append(&[letter("../x", "{}")]),
            Err(DlqError::BadTable(_))
        ));
    }

    #[test]
    fn a_corrupt_line_is_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(dir.path()).unwrap();
        store.append(&[letter("A_CL", "{}")]).unwrap();
        let path = dir.path().join("A_CL.ndjson");
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("{not json\n");
        fs::write(&path, text).unwrap();
        let err = store.read("A_CL").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
