//! A small state file replaced often and durably without creating a file each time.
//!
//! `write_atomic` (temporary file, fsync, rename, directory fsync) allocates an inode per
//! write; with hundreds of tenants committing positions every 250 ms, inode allocation and
//! the directory flushes were the largest kernel cost of collection. Here the content lives in
//! two slots, `NAME.0` and `NAME.1`, written in turn in place (one positioned write and one
//! `fdatasync`). Each slot starts with a header line `#slot SEQ LEN CRC`, the CRC-32 covering
//! the sequence number and the body. A crash can tear only the slot being written; the other
//! holds the previous version whole, and a read takes the intact slot with the higher
//! sequence. Files are created 0600 once, with one directory flush.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::private_fs;

const MAGIC: &str = "#slot ";

/// What a slot pair holds on disk.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotRead {
    /// Neither slot exists.
    Missing,
    /// The newest intact version.
    Found(Vec<u8>),
    /// A slot exists but none is intact (not a torn write: both were damaged).
    Damaged(String),
}

pub struct SlotFile {
    paths: [PathBuf; 2],
    /// The sequence number of the next write; its slot is `seq % 2`.
    seq: u64,
    /// Whether each slot's name is known to be on disk (its directory flushed after creation).
    /// Files are opened per write, not kept open: hundreds of tenants would otherwise hold
    /// two descriptors each.
    named: [bool; 2],
}

impl SlotFile {
    /// The slot pair `dir/NAME.0`, `dir/NAME.1`, and what it holds. Reading only: nothing is
    /// created until the first [`SlotFile::replace`].
    pub fn open(dir: &Path, name: &str) -> io::Result<(Self, SlotRead)> {
        let paths = [dir.join(format!("{name}.0")), dir.join(format!("{name}.1"))];
        let mut newest: Option<(u64, Vec<u8>)> = None;
        let mut problems = Vec::new();
        let mut existing = 0;
        for path in &paths {
            let bytes = match read(path) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue,
                Err(e) => return Err(e),
            };
            existing += 1;
            match parse(&bytes) {
                Ok((seq, body)) => {
                    if newest.as_ref().is_none_or(|(s, _)| seq > *s) {
                        newest = Some((seq, body.to_vec()));
                    }
                }
                Err(problem) => problems.push(format!("{}: {problem}", path.display())),
            }
        }
        let second_exists = paths[1].exists();
        let (seq, found) = match newest {
            Some((seq, body)) => (seq + 1, SlotRead::Found(body)),
            None if existing == 0 => (0, SlotRead::Missing),
            // Only the very first write goes to slot 0 with no slot 1 yet: torn, it never held
            // anything durable.
            None if existing == 1 && !second_exists => (0, SlotRead::Missing),
            None => (0, SlotRead::Damaged(problems.join("; "))),
        };
        // Each slot's directory entry is flushed once per process: a file left by a process
        // that crashed before flushing it may not be on disk yet.
        let named = [false, false];
        Ok((Self { paths, seq, named }, found))
    }

    /// Makes `body` the content, durably: when this returns Ok, a crash reads `body` back.
    pub fn replace(&mut self, body: &[u8]) -> io::Result<()> {
        let slot = (self.seq % 2) as usize;
        let mut bytes = format!(
            "{MAGIC}{} {} {:08x}\n",
            self.seq,
            body.len(),
            checksum(self.seq, body)
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        self.write_slot(slot, &bytes)?;
        if !self.named[slot] {
            let dir = self.paths[slot].parent().unwrap_or(Path::new("."));
            private_fs::sync_dir(dir)?;
            self.named[slot] = true;
        }
        self.seq += 1;
        Ok(())
    }

    fn write_slot(&self, slot: usize, bytes: &[u8]) -> io::Result<()> {
        let file = private_fs::private_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.paths[slot])?;
        write_all_at(&file, bytes)?;
        file.set_len(bytes.len() as u64)?;
        file.sync_data()
    }

    /// Both slot paths (to remove the pair, or name it in an error).
    pub fn paths(&self) -> &[PathBuf; 2] {
        &self.paths
    }
}

fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => {
            file.read_to_end(&mut bytes)?;
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The sequence and body of an intact slot, or what is wrong with it.
fn parse(bytes: &[u8]) -> Result<(u64, &[u8]), String> {
    let Some(end) = memchr::memchr(b'\n', bytes) else {
        return Err("no header line (a write cut short)".into());
    };
    let header = std::str::from_utf8(&bytes[..end]).map_err(|_| "header is not text")?;
    let fields = header
        .strip_prefix(MAGIC)
        .ok_or("header does not start with #slot")?;
    let mut parts = fields.split(' ');
    let (Some(seq), Some(len), Some(crc), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("header {header:?} is not `#slot SEQ LEN CRC`"));
    };
    let seq: u64 = seq.parse().map_err(|_| format!("sequence {seq:?}"))?;
    let len: usize = len.parse().map_err(|_| format!("length {len:?}"))?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| format!("checksum {crc:?}"))?;
    let body = bytes
        .get(end + 1..)
        .and_then(|rest| rest.get(..len))
        .ok_or_else(|| {
            format!("body shorter than the {len} bytes its header says (a write cut short)")
        })?;
    if checksum(seq, body) != crc {
        return Err("checksum mismatch (a write cut short, or the file was edited)".into());
    }
    Ok((seq, body))
}

fn checksum(seq: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

#[cfg(unix)]
fn write_all_at(file: &File, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(bytes, 0)
}

#[cfg(not(unix))]
fn write_all_at(mut file: &File, bytes: &[u8]) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(0))?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopen(dir: &Path) -> SlotRead {
        SlotFile::open(dir, "state").unwrap().1
    }

    #[test]
    fn the_newest_write_is_read_back_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, found) = SlotFile::open(dir.path(), "state").unwrap();
        assert_eq!(found, SlotRead::Missing);
        for i in 0..5u8 {
            file.replace(&vec![b'a' + i; 10 + usize::from(i)]).unwrap();
            assert_eq!(
                reopen(dir.path()),
                SlotRead::Found(vec![b'a' + i; 10 + usize::from(i)])
            );
        }
        // A reopened pair goes on from its newest sequence.
        let (mut file, _) = SlotFile::open(dir.path(), "state").unwrap();
        file.replace(b"short").unwrap();
        assert_eq!(reopen(dir.path()), SlotRead::Found(b"short".to_vec()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for path in file.paths() {
                let mode = std::fs::metadata(path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", path.display());
            }
        }
    }

    #[test]
    fn a_torn_write_falls_back_to_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = SlotFile::open(dir.path(), "state").unwrap();
        file.replace(b"first version").unwrap();
        file.replace(b"second version, longer").unwrap();
        // The third write goes to slot 0: cut it short at every length.
        let slot0 = dir.path().join("state.0");
        let mut third = SlotFile::open(dir.path(), "state").unwrap().0;
        third.replace(b"third").unwrap();
        let whole = std::fs::read(&slot0).unwrap();
        for cut in 0..whole.len() {
            std::fs::write(&slot0, &whole[..cut]).unwrap();
            assert_eq!(
                reopen(dir.path()),
                SlotRead::Found(b"second version, longer".to_vec()),
                "cut at {cut}"
            );
        }
        // A new body over an old, longer one: the old tail is not taken for content.
        let mut stale = b"#slot 2 5 00000000\nthirdversion".to_vec();
        stale.truncate(whole.len() + 3);
        std::fs::write(&slot0, &stale).unwrap();
        assert_eq!(
            reopen(dir.path()),
            SlotRead::Found(b"second version, longer".to_vec())
        );
    }

    #[test]
    fn a_first_write_cut_short_reads_as_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.0"), b"#slot 0 10 0").unwrap();
        assert_eq!(reopen(dir.path()), SlotRead::Missing);
        let (mut file, _) = SlotFile::open(dir.path(), "state").unwrap();
        file.replace(b"first").unwrap();
        assert_eq!(reopen(dir.path()), SlotRead::Found(b"first".to_vec()));
    }

    #[test]
    fn both_slots_damaged_is_reported_with_the_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.0"), b"garbage").unwrap();
        std::fs::write(dir.path().join("state.1"), b"#slot 1 3 0\nabc").unwrap();
        match reopen(dir.path()) {
            SlotRead::Damaged(why) => {
                assert!(why.contains("state.0") && why.contains("state.1"), "{why}");
                assert!(why.contains("checksum mismatch"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }
}
