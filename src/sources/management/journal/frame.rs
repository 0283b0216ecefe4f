//! A journal entry on disk: one tenant's commit (its positions and the seen ids it added),
//! framed so that a torn tail (a crash mid-write) is told apart from a whole entry.
//!
//! Frame: payload length (u32 LE), CRC-32 of the payload (u32 LE), payload. Payload: the tenant
//! id (u16 LE length, bytes), the positions as JSON (u32 LE length, bytes), the number of days
//! (u32 LE), then per day its number (i64 LE) and its ids' keys (u32 LE length, bytes: 16 per
//! key, as the day logs hold them).

use crate::sources::management::positions::TenantPositions;

const HEADER: usize = 8;

/// One tenant's commit, as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub positions: TenantPositions,
    /// Per day, the keys committed (16 bytes each).
    pub appends: Vec<(i64, Vec<u8>)>,
}

/// Appends the framed entry to `out`.
pub fn encode(entry: &Entry, out: &mut Vec<u8>) {
    let appends = entry
        .appends
        .iter()
        .map(|(day, keys)| (*day, keys.as_slice()));
    encode_parts(&entry.positions, appends, out);
}

/// Appends the framed entry of these positions and appends to `out`.
pub fn encode_parts<'k>(
    positions: &TenantPositions,
    appends: impl ExactSizeIterator<Item = (i64, &'k [u8])>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    let tenant = positions.tenant_id.as_bytes();
    // Tenant ids are GUIDs (preflight checks) and name the tenant's state files, at most 255
    // bytes: a tenant with a longer one never gets as far as a commit.
    let tenant = &tenant[..tenant.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(tenant.len() as u16).to_le_bytes());
    out.extend_from_slice(tenant);
    let positions = serde_json::to_vec(positions).unwrap_or_default();
    push_len(out, positions.len());
    out.extend_from_slice(&positions);
    push_len(out, appends.len());
    for (day, keys) in appends {
        out.extend_from_slice(&day.to_le_bytes());
        push_len(out, keys.len());
        out.extend_from_slice(keys);
    }
    let payload = &out[start + HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

/// How far a journal file reads: the bytes of its whole entries, and how many after the last
/// one are not a whole entry (a write cut short).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    pub whole_bytes: u64,
    pub torn_bytes: u64,
    /// The reading stopped at a frame whole by its checksum that doesn't decode (another
    /// version's, or damage), not at a torn write.
    pub undecodable: bool,
}

/// Reads entries from the start of `bytes` up to the first that is not whole.
#[cfg(test)]
pub fn read_all(bytes: &[u8]) -> (Vec<Entry>, Read) {
    let mut entries = Vec::new();
    let read = read_each(bytes, bytes.len() as u64, |e| entries.push(e))
        .unwrap_or_else(|_| Read::default());
    (entries, read)
}

/// Hands each whole entry of `file` (`len` bytes long) to `each`, one at a time (memory: one
/// entry), up to the first that is not whole.
pub fn read_each(
    file: impl std::io::Read,
    len: u64,
    mut each: impl FnMut(Entry),
) -> std::io::Result<Read> {
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut at = 0u64;
    let mut payload = Vec::new();
    let mut undecodable = false;
    loop {
        let mut header = [0u8; HEADER];
        if len - at < HEADER as u64 || !read_exact_or_end(&mut reader, &mut header)? {
            break;
        }
        let (size, crc) = header.split_at(4);
        let size = u64::from(u32::from_le_bytes(size.try_into().unwrap_or_default()));
        let crc = u32::from_le_bytes(crc.try_into().unwrap_or_default());
        // A length past the file's end is a torn header, not an allocation to make.
        if size == 0 || size > len - at - HEADER as u64 {
            break;
        }
        payload.resize(size as usize, 0);
        if !read_exact_or_end(&mut reader, &mut payload)? || crc32fast::hash(&payload) != crc {
            break;
        }
        let Some(entry) = decode(&payload) else {
            undecodable = true;
            break;
        };
        each(entry);
        at += HEADER as u64 + size;
    }
    Ok(Read {
        whole_bytes: at,
        torn_bytes: len - at,
        undecodable,
    })
}

/// False at the end of the input before `buf` is full.
fn read_exact_or_end(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn decode(payload: &[u8]) -> Option<Entry> {
    let mut cursor = Cursor { bytes: payload };
    let tenant_len = usize::from(u16::from_le_bytes(cursor.take(2)?.try_into().ok()?));
    let tenant = std::str::from_utf8(cursor.take(tenant_len)?).ok()?;
    let positions_len = cursor.len()?;
    let positions: TenantPositions = serde_json::from_slice(cursor.take(positions_len)?).ok()?;
    if positions.tenant_id != tenant {
        return None;
    }
    let days = cursor.len()?;
    let mut appends = Vec::with_capacity(days.min(1024));
    for _ in 0..days {
        let day = i64::from_le_bytes(cursor.take(8)?.try_into().ok()?);
        let n = cursor.len()?;
        // Whole keys only: a day log must stay aligned.
        if n % 16 != 0 {
            return None;
        }
        appends.push((day, cursor.take(n)?.to_vec()));
    }
    cursor
        .bytes
        .is_empty()
        .then_some(Entry { positions, appends })
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.bytes.split_at_checked(n)?;
        self.bytes = rest;
        Some(head)
    }

    fn len(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::management::positions::ContentPosition;
    use std::collections::BTreeMap;

    fn entry(tenant: &str, committed: i64, keys: &[u8]) -> Entry {
        Entry {
            positions: TenantPositions {
                tenant_id: tenant.into(),
                content_types: BTreeMap::from([(
                    "Audit.Exchange".to_string(),
                    ContentPosition {
                        committed: Some(committed),
                        done: BTreeMap::from([("blob-1".to_string(), committed + 5)]),
                        subscription_started: None,
                    },
                )]),
            },
            appends: vec![(20_000, keys.to_vec()), (20_001, vec![9; 16])],
        }
    }

    #[test]
    fn entries_read_back_and_a_torn_or_altered_tail_is_not_an_entry() {
        let a = entry("tenant-a", 1_700_000_000_000, &[1; 32]);
        let b = entry("tenant-b", 1_700_000_060_000, &[2; 16]);
        let mut bytes = Vec::new();
        encode(&a, &mut bytes);
        encode(&b, &mut bytes);
        let whole = bytes.len();
        let (entries, read) = read_all(&bytes);
        assert_eq!(entries, vec![a.clone(), b.clone()]);
        assert_eq!((read.whole_bytes, read.torn_bytes), (whole as u64, 0));
        // A third entry cut short at every length reads as the two whole ones.
        let mut third = Vec::new();
        encode(&entry("tenant-c", 1, &[3; 16]), &mut third);
        for cut in 1..third.len() {
            let mut torn = bytes.clone();
            torn.extend_from_slice(&third[..cut]);
            let (entries, read) = read_all(&torn);
            assert_eq!(entries.len(), 2, "cut at {cut}");
            assert_eq!(read.torn_bytes, cut as u64);
        }
        // One byte changed inside b: only a is whole.
        let mut altered = bytes.clone();
        altered[whole - 3] ^= 0x40;
        assert_eq!(read_all(&altered).0, vec![a]);
        // Zeros (a preallocated or sparse tail) end the entries too.
        let bytes_before_zeros = bytes.clone();
        let mut zeros = bytes;
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(read_all(&zeros).0.len(), 2);
        // A header claiming more than the file holds is torn, not a 4 GiB allocation.
        let mut huge = bytes_before_zeros;
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5]);
        assert_eq!(read_all(&huge).0.len(), 2);
    }
}
