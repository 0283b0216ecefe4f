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

/// What a journal file holds: its whole entries, and how many bytes after the last one are not
/// a whole entry (a write cut short).
#[derive(Debug, Default)]
pub struct Read {
    pub entries: Vec<Entry>,
    pub whole_bytes: usize,
    pub torn_bytes: usize,
}

/// Reads entries from the start of `bytes` up to the first that is not whole.
pub fn read_all(bytes: &[u8]) -> Read {
    let mut read = Read::default();
    let mut at = 0;
    while let Some((entry, next)) = read_one(bytes, at) {
        read.entries.push(entry);
        at = next;
    }
    read.whole_bytes = at;
    read.torn_bytes = bytes.len() - at;
    read
}

fn read_one(bytes: &[u8], at: usize) -> Option<(Entry, usize)> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let payload = bytes.get(at + HEADER..at + HEADER + len)?;
    if len == 0 || crc32fast::hash(payload) != crc {
        return None;
    }
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
        appends.push((day, cursor.take(n)?.to_vec()));
    }
    cursor
        .bytes
        .is_empty()
        .then_some((Entry { positions, appends }, at + HEADER + len))
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
        let read = read_all(&bytes);
        assert_eq!(read.entries, vec![a.clone(), b.clone()]);
        assert_eq!((read.whole_bytes, read.torn_bytes), (whole, 0));
        // A third entry cut short at every length reads as the two whole ones.
        let mut third = Vec::new();
        encode(&entry("tenant-c", 1, &[3; 16]), &mut third);
        for cut in 1..third.len() {
            let mut torn = bytes.clone();
            torn.extend_from_slice(&third[..cut]);
            let read = read_all(&torn);
            assert_eq!(read.entries.len(), 2, "cut at {cut}");
            assert_eq!(read.torn_bytes, cut);
        }
        // One byte changed inside b: only a is whole.
        let mut altered = bytes.clone();
        altered[whole - 3] ^= 0x40;
        let read = read_all(&altered);
        assert_eq!(read.entries, vec![a]);
        // Zeros (a preallocated or sparse tail) end the entries too.
        let mut zeros = bytes;
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(read_all(&zeros).entries.len(), 2);
    }
}
