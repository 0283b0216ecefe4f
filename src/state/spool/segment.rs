//! The on-disk record format of the spool, and the scan that recovers a damaged segment.
//!
//! A segment file is a sequence of records: a 12-byte header (magic, payload length, CRC-32 of
//! length and payload, all little-endian) and the payload (one JSON row). The magic lets a scan
//! find the next record after a damaged one; the CRC tells a whole record from a torn or
//! corrupted one. A torn tail (a crash mid-append) is the common case; a flipped byte (a bad disk)
//! costs only the records it touches.

/// "M3SP".
pub const MAGIC: u32 = 0x5053_334d;
pub const HEADER_BYTES: usize = 12;
/// No row is larger than a request body; anything claiming more is damage.
pub const MAX_PAYLOAD: usize = 4 << 20;

/// Appends one record to `out`.
pub fn encode(out: &mut Vec<u8>, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// The record starting at `at`, if a whole, intact one does: (payload range, end offset).
pub fn record_at(bytes: &[u8], at: usize) -> Option<(std::ops::Range<usize>, usize)> {
    let header = bytes.get(at..at + HEADER_BYTES)?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if word(0) != MAGIC {
        return None;
    }
    let len = word(4) as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let start = at + HEADER_BYTES;
    let payload = bytes.get(start..start + len)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[4..8]);
    crc.update(payload);
    (crc.finalize() == word(8)).then_some((start..start + len, start + len))
}

/// What a scan of a segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Intact records: (payload range, end offset).
    pub records: Vec<(std::ops::Range<usize>, usize)>,
    /// Damaged stretches skipped in the middle: (offset, bytes, records the magic suggests
    /// were there).
    pub damaged: Vec<(usize, usize, usize)>,
    /// Bytes at the end that don't form a whole record (a torn append).
    pub torn_tail: usize,
}

impl Scan {
    /// Records lost to damage, as far as their headers can still be counted (at least one per
    /// damaged stretch, and one for a torn tail).
    pub fn records_lost(&self) -> usize {
        self.damaged
            .iter()
            .map(|(_, _, n)| (*n).max(1))
            .sum::<usize>()
            + usize::from(self.torn_tail > 0)
    }

    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.torn_tail == 0
    }
}

/// Reads every intact record of `bytes` from `from`; after a damaged one, resumes at the next
/// offset where an intact record starts.
pub fn scan(bytes: &[u8], from: usize) -> Scan {
    let mut out = Scan::default();
    let mut at = from;
    while at < bytes.len() {
        if let Some((payload, end)) = record_at(bytes, at) {
            out.records.push((payload, end));
            at = end;
            continue;
        }
        // Damage (or a torn tail): look for the next intact record.
        let magic = MAGIC.to_le_bytes();
        let mut next = None;
        let mut headers = 0;
        let mut probe = at;
        while let Some(found) = memchr::memmem::find(&bytes[probe..], &magic) {
            let candidate = probe + found;
            if candidate > at && record_at(bytes, candidate).is_some() {
                next = Some(candidate);
                break;
            }
            headers += 1;
            probe = candidate + 1;
        }
        match next {
            Some(n) => {
                out.damaged.push((at, n - at, headers));
                at = n;
            }
            None => {
                out.torn_tail = bytes.len() - at;
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(rows: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in rows {
            encode(&mut out, r.as_bytes());
        }
        out
    }

    fn payloads<'a>(bytes: &'a [u8], scan: &Scan) -> Vec<&'a str> {
        scan.records
            .iter()
            .map(|(r, _)| std::str::from_utf8(&bytes[r.clone()]).unwrap())
            .collect()
    }

    #[test]
    fn round_trip() {
        let bytes = segment(&["{\"a\":1}", "{}", "{\"b\":\"x\"}"]);
        let s = scan(&bytes, 0);
        assert!(s.is_clean());
        assert_eq!(payloads(&bytes, &s), ["{\"a\":1}", "{}", "{\"b\":\"x\"}"]);
        assert_eq!(s.records.last().unwrap().1, bytes.len());
    }

    #[test]
    fn a_torn_tail_keeps_every_whole_record() {
        let bytes = segment(&["{\"a\":1}", "{\"b\":2}"]);
        for cut in 1..bytes.len() - 19 {
            let torn = &bytes[..bytes.len() - cut];
            let s = scan(torn, 0);
            assert_eq!(s.records.len(), 1, "cut {cut}");
            assert_eq!(s.torn_tail, torn.len() - 19);
            assert_eq!(s.records_lost(), 1);
        }
    }

    #[test]
    fn a_flipped_byte_costs_only_its_record() {
        let rows = ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"];
        let clean = segment(&rows);
        for at in 0..clean.len() {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x40;
            let s = scan(&bytes, 0);
            let kept = payloads(&bytes, &s);
            assert_eq!(kept.len(), 2, "flip at {at}: {kept:?}");
            assert!(kept.iter().all(|k| rows.contains(k)));
            assert_eq!(s.records_lost(), 1, "flip at {at}: {s:?}");
        }
    }
}
