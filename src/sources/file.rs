//! File and stdin input. Detects per file: gzip or not; NDJSON / JSON Lines (LF or CRLF, one
//! record, array or Event Hubs body per line) streamed line by line, or one JSON document
//! (pretty-printed content blob or Event Hubs body) read whole. A directory means every file in
//! it, recursively, in name order.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;

use crate::record::{Position, RejectReason, Rejected};

/// What the file source hands on: a unit of text to decode, or a refused piece of input.
pub enum Framed<'a> {
    Unit { pos: Position, text: &'a str },
    Rejected(Rejected),
}

#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Longest line accepted in line mode.
    pub max_record_bytes: usize,
    /// Largest single JSON document (a file that is not line-delimited) read into memory.
    pub max_document_bytes: usize,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            max_record_bytes: 64 << 20,
            max_document_bytes: 512 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("input {path}: {error}; check the path and permissions")]
    Open { path: PathBuf, error: io::Error },
}

/// Totals of what was read.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadTotals {
    pub files: u64,
    /// Bytes after decompression.
    pub bytes: u64,
}

/// The name used for standard input in positions and messages.
pub const STDIN: &str = "<stdin>";

/// Directories whose files are never read: the run's own output (a dry-run writing into a
/// directory it also reads would read its growing rejected.ndjson forever).
#[derive(Debug, Default, Clone)]
pub struct Exclude(Vec<PathBuf>);

impl Exclude {
    pub fn new(dirs: &[&Path]) -> Self {
        Self(
            dirs.iter()
                .filter_map(|d| std::fs::canonicalize(d).ok())
                .collect(),
        )
    }

    fn covers(&self, path: &Path) -> bool {
        !self.0.is_empty()
            && std::fs::canonicalize(path).is_ok_and(|p| self.0.iter().any(|d| p.starts_with(d)))
    }
}

/// Expands the input list: `-` is stdin, a directory is every file under it in name order.
pub fn expand_inputs(inputs: &[PathBuf], exclude: &Exclude) -> Result<Vec<PathBuf>, SourceError> {
    let mut files = Vec::new();
    for input in inputs {
        if input.as_os_str() == "-" {
            files.push(input.clone());
            continue;
        }
        let meta = std::fs::metadata(input).map_err(|error| SourceError::Open {
            path: input.clone(),
            error,
        })?;
        if meta.is_dir() {
            walk_dir(input, exclude, &mut files)?;
        } else if exclude.covers(input) {
            tracing::warn!(input = %input.display(), "skipped: it is in the output directory");
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

fn walk_dir(dir: &Path, exclude: &Exclude, files: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    if exclude.covers(dir) {
        tracing::warn!(input = %dir.display(), "skipped: it is the output directory");
        return Ok(());
    }
    let open_err = |error| SourceError::Open {
        path: dir.to_path_buf(),
        error,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(open_err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(open_err)?;
    entries.sort();
    for path in entries {
        // Symlinked directories are not followed, so a link loop cannot trap the walk.
        let meta = std::fs::symlink_metadata(&path).map_err(|error| SourceError::Open {
            path: path.clone(),
            error,
        })?;
        if meta.is_dir() {
            walk_dir(&path, exclude, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

/// Reads every input in order, calling `emit` for each unit or refused piece.
pub fn read_inputs(
    inputs: &[PathBuf],
    options: &FileOptions,
    exclude: &Exclude,
    emit: &mut dyn FnMut(Framed<'_>),
) -> Result<ReadTotals, SourceError> {
    let mut totals = ReadTotals::default();
    for path in expand_inputs(inputs, exclude)? {
        let (name, reader): (Arc<str>, Box<dyn Read>) = if path.as_os_str() == "-" {
            (Arc::from(STDIN), Box::new(io::stdin().lock()))
        } else {
            let file = File::open(&path).map_err(|error| SourceError::Open {
                path: path.clone(),
                error,
            })?;
            (Arc::from(path.display().to_string()), Box::new(file))
        };
        totals.files += 1;
        totals.bytes += read_stream(name, reader, options, emit);
    }
    Ok(totals)
}

enum LineRead {
    Eof,
    Line,
    TooLong,
}

/// Reads up to the next LF into `buf` (without it), refusing lines over `max` bytes.
fn read_line_bounded(r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<LineRead> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok(match (read_any, too_long) {
                (false, _) => LineRead::Eof,
                (true, true) => LineRead::TooLong,
                (true, false) => LineRead::Line,
            });
        }
        read_any = true;
        let (chunk, consumed, done) = match memchr::memchr(b'\n', avail) {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.truncate(4096);
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(consumed);
        if done {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

fn strip_cr(buf: &[u8]) -> &[u8] {
    buf.strip_suffix(b"\r").unwrap_or(buf)
}

/// Reads one stream; returns the bytes read after decompression.
pub fn read_stream(
    name: Arc<str>,
    reader: Box<dyn Read>,
    options: &FileOptions,
    emit: &mut dyn FnMut(Framed<'_>),
) -> u64 {
    let base = Position::new(name, 1);
    let reject = |line: u64, reason: RejectReason, raw: Vec<u8>| {
        Framed::Rejected(Rejected {
            pos: base.at(line, 0),
            reason,
            raw,
        })
    };
    let mut plain = BufReader::with_capacity(256 << 10, reader);
    let is_gzip = match plain.fill_buf() {
        Ok(head) => head.starts_with(&[0x1f, 0x8b]),
        Err(e) => {
            emit(reject(
                0,
                RejectReason::Unreadable(e.to_string()),
                Vec::new(),
            ));
            return 0;
        }
    };
    let mut r: Box<dyn BufRead> = if is_gzip {
        Box::new(BufReader::with_capacity(
            256 << 10,
            MultiGzDecoder::new(plain),
        ))
    } else {
        Box::new(plain)
    };
    tracing::debug!(input = %base.source, gzip = is_gzip, "reading");
    // Byte-order marks: UTF-8's is dropped (PowerShell and Notepad write it); UTF-16 (Windows
    // PowerShell 5's `>` redirection) is refused with the fix, since JSON here must be UTF-8.
    match r.fill_buf() {
        Ok([0xef, 0xbb, 0xbf, ..]) => r.consume(3),
        Ok(head) if head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff]) => {
            emit(reject(
                1,
                RejectReason::Unreadable(
                    "the file is UTF-16 (a byte-order mark says so); re-encode it as UTF-8, \
                     e.g. Out-File -Encoding utf8 or iconv -f UTF-16 -t UTF-8"
                        .into(),
                ),
                Vec::new(),
            ));
            return 0;
        }
        _ => {}
    }

    let mut bytes = 0u64;
    let mut line_no = 0u64;
    let mut emitted = false;
    let mut line_mode = false;
    let mut buf = Vec::new();
    loop {
        let read = match read_line_bounded(r.as_mut(), &mut buf, options.max_record_bytes) {
            Ok(read) => read,
            Err(e) => {
                let what = if is_gzip { "gzip stream" } else { "file" };
                emit(reject(
                    line_no + 1,
                    RejectReason::Unreadable(format!(
                        "{what} unreadable after line {line_no}: {e}; the records before it were kept"
                    )),
                    Vec::new(),
                ));
                return bytes;
            }
        };
        line_no += 1;
        match read {
            LineRead::Eof => break,
            LineRead::TooLong => {
                bytes += options.max_record_bytes as u64;
                emitted = true;
                emit(reject(
                    line_no,
                    RejectReason::LineTooLong {
                        limit: options.max_record_bytes,
                    },
                    std::mem::take(&mut buf),
                ));
                continue;
            }
            LineRead::Line => {}
        }
        bytes += buf.len() as u64 + 1;
        let line = strip_cr(&buf);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let text = match std::str::from_utf8(line) {
            Ok(t) => t,
            Err(_) => {
                // Bytes that are not UTF-8 become U+0001, so only the record holding them is
                // refused (as invalid_utf8) and the line's other records are kept. A first line
                // like that is a JSON line, not the start of a document.
                line_mode = true;
                emitted = true;
                let marked = mark_invalid_utf8(line.to_vec());
                emit(Framed::Unit {
                    pos: base.at(line_no, 0),
                    text: &marked,
                });
                continue;
            }
        };
        if !line_mode {
            // The first line decides: a JSON value cut short by the end of the line opens a
            // multi-line document; anything else (a whole value, or garbage) means JSON Lines.
            let opens_document = matches!(
                serde_json::from_str::<serde::de::IgnoredAny>(text),
                Err(e) if e.is_eof()
            );
            if !opens_document {
                line_mode = true;
            } else {
                let mut doc = std::mem::take(&mut buf);
                doc.push(b'\n');
                let limit = options.max_document_bytes as u64;
                let before = doc.len();
                let result = r.as_mut().take(limit + 1).read_to_end(&mut doc);
                bytes += (doc.len() - before) as u64;
                emit_document(&base.at(line_no, 0), doc, result, options, emit);
                return bytes;
            }
        }
        emitted = true;
        emit(Framed::Unit {
            pos: base.at(line_no, 0),
            text,
        });
    }
    if !emitted {
        emit(reject(1, RejectReason::EmptyInput, Vec::new()));
    }
    bytes
}

/// Replaces each byte sequence that is not UTF-8 with U+0001. A control character is never
/// valid unescaped JSON, so the record holding one fails to parse and is refused alone (decode
/// names the reason invalid_utf8), while the rest of the document is kept.
pub(crate) fn mark_invalid_utf8(mut bytes: Vec<u8>) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes.as_mut_slice();
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                out.push_str(valid);
                return out;
            }
            Err(e) => {
                let (valid, after) = rest.split_at_mut(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                out.push('\u{1}');
                let skip = e.error_len().unwrap_or(after.len()).max(1).min(after.len());
                rest = &mut after[skip..];
            }
        }
    }
}

fn emit_document(
    pos: &Position,
    doc: Vec<u8>,
    read: io::Result<usize>,
    options: &FileOptions,
    emit: &mut dyn FnMut(Framed<'_>),
) {
    let reject = |reason, raw| {
        Framed::Rejected(Rejected {
            pos: pos.clone(),
            reason,
            raw,
        })
    };
    if doc.len() > options.max_document_bytes {
        let mut sample = doc;
        sample.truncate(4096);
        emit(reject(
            RejectReason::Unreadable(format!(
                "JSON document larger than {} bytes (input.max_document_bytes); raise the limit or split the file",
                options.max_document_bytes
            )),
            sample,
        ));
        return;
    }
    let text = match String::from_utf8(doc) {
        Ok(text) => text,
        Err(e) => mark_invalid_utf8(e.into_bytes()),
    };
    emit(Framed::Unit {
        pos: pos.clone(),
        text: &text,
    });
    if let Err(e) = read {
        emit(reject(
            RejectReason::Unreadable(format!("input unreadable part-way: {e}")),
            Vec::new(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn frame(bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        read_stream(
            Arc::from("t"),
            Box::new(io::Cursor::new(bytes.to_vec())),
            &FileOptions {
                max_record_bytes: 64,
                max_document_bytes: 1 << 20,
            },
            &mut |f| match f {
                Framed::Unit { pos, text } => out.push(format!("{}:{text}", pos.line)),
                Framed::Rejected(r) => out.push(format!("{}!{}", r.pos.line, r.reason.code())),
            },
        );
        out
    }

    #[test]
    fn json_lines_crlf_and_blank_lines() {
        assert_eq!(
            frame(b"{\"a\":1}\r\n\r\n{\"b\":2}\r\n"),
            ["1:{\"a\":1}", "3:{\"b\":2}"]
        );
    }

    #[test]
    fn pretty_document_is_one_unit() {
        let got = frame(b"[\n {\"a\":1}\n]\n");
        assert_eq!(got, ["1:[\n {\"a\":1}\n]\n"]);
    }

    #[test]
    fn gzip_is_detected() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"{\"a\":1}\n{\"b\":2}\n").unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(frame(&gz), ["1:{\"a\":1}", "2:{\"b\":2}"]);
        // A corrupt gzip tail keeps what was decoded before it and says so.
        let mut cut = gz.clone();
        cut.truncate(gz.len() - 6);
        let got = frame(&cut);
        assert!(
            got.last().unwrap().ends_with("!unreadable_input"),
            "{got:?}"
        );
    }

    #[test]
    fn byte_order_marks() {
        assert_eq!(frame(b"\xef\xbb\xbf{\"a\":1}\r\n"), ["1:{\"a\":1}"]);
        assert_eq!(frame(b"\xff\xfe{\x00}\x00"), ["1!unreadable_input"]);
    }

    #[test]
    fn bad_lines_get_reasons() {
        let mut input = b"{\"a\":1}\n".to_vec();
        input.extend_from_slice(b"{\"b\":\"\xff\"}\n");
        input.extend_from_slice(&[b'x'; 100]);
        input.extend_from_slice(b"\n{\"c\":3}");
        assert_eq!(
            frame(&input),
            [
                "1:{\"a\":1}",
                "2:{\"b\":\"\u{1}\"}",
                "3!line_too_long",
                "4:{\"c\":3}"
            ]
        );
        assert_eq!(frame(b""), ["1!empty_input"]);
        assert_eq!(frame(b"\n \n"), ["1!empty_input"]);
    }
}
