//! A sorted run: an immutable file of one day's record-id keys in ascending order, and the
//! small in-memory part that answers "seen?" without holding the keys: a blocked Bloom filter
//! (about 2 bytes a key) and every 128th key (1/8 byte a key).
//!
//! A key the filter rules out was never in the run (a Bloom filter has no false negatives).
//! A key it lets through is confirmed on disk: the sparse keys say which 2 KiB of the file can
//! hold it, one positioned read fetches them, and only an exact 128-bit match counts as seen.
//! So a run never calls a record seen that it does not hold; a failed read counts as not seen
//! (a possible duplicate, never a loss).
//!
//! Layout: a 32-byte header (magic, version, key count, filter blocks), the keys (16 bytes
//! each, little-endian, ascending), the filter, the sparse keys, and a CRC-32 of everything
//! but the keys (a run is written whole, fsynced and renamed into place, so it is never torn;
//! the CRC catches other damage in what is loaded into memory).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[cfg(unix)]
use std::os::unix::fs::FileExt as _;

use super::KEY_BYTES;
use crate::state::private_fs;

const MAGIC: &[u8; 8] = b"M365SEEN";
const VERSION: u32 = 1;
const HEADER_BYTES: u64 = 32;
/// Keys per sparse entry: a confirmation reads at most this many keys (2 KiB).
const SPARSE_EVERY: usize = 128;
/// Filter bits per key and bits set per key, in 512-bit blocks (one cache line): about 0.1%
/// of absent keys pass and cost a read.
const BITS_PER_KEY: usize = 16;
const PROBES: u32 = 8;
const BLOCK_WORDS: usize = 8;

/// The in-memory part of one run file.
pub struct SortedRun {
    path: PathBuf,
    keys: u64,
    filter: Vec<[u64; BLOCK_WORDS]>,
    sparse: Vec<u128>,
    /// Opened at the first confirmation, then kept: only runs that meet duplicates hold one.
    file: Option<File>,
}

/// Two independent 64-bit hashes of a key. Keys are GUIDs or SHA-256 prefixes, close to
/// uniform already; the mixing spreads the fixed version bits of a GUID.
fn hashes(key: u128) -> (u64, u64) {
    fn mix(mut z: u64) -> u64 {
        // splitmix64's finaliser
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let (lo, hi) = (key as u64, (key >> 64) as u64);
    let a = mix(lo ^ mix(hi));
    (a, mix(a ^ 0x9e37_79b9_7f4a_7c15))
}

fn block_of(h: u64, blocks: usize) -> usize {
    ((u128::from(h) * blocks as u128) >> 64) as usize
}

fn bits_of(h: u64) -> impl Iterator<Item = (usize, u64)> {
    (0..PROBES).map(move |i| {
        let bit = (h.rotate_left(i * 9) & 511) as usize;
        (bit / 64, 1u64 << (bit % 64))
    })
}

fn filter_blocks(keys: usize) -> usize {
    (keys * BITS_PER_KEY).div_ceil(BLOCK_WORDS * 64).max(1)
}

fn insert(filter: &mut [[u64; BLOCK_WORDS]], key: u128) {
    let (a, b) = hashes(key);
    let block = block_of(a, filter.len());
    for (word, mask) in bits_of(b) {
        filter[block][word] |= mask;
    }
}

fn damaged(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

impl SortedRun {
    /// Writes `keys` (ascending, no repeats) as the run file `path`: to a temporary name,
    /// fsynced, then renamed into place and the directory fsynced.
    pub fn write(path: &Path, keys: &[u128]) -> io::Result<Self> {
        debug_assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let mut filter = vec![[0u64; BLOCK_WORDS]; filter_blocks(keys.len())];
        let mut sparse = Vec::with_capacity(keys.len().div_ceil(SPARSE_EVERY));
        let tmp = path.with_extension("run.tmp");
        let mut out = io::BufWriter::with_capacity(
            1 << 20,
            private_fs::private_options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?,
        );
        let mut crc = crc32fast::Hasher::new();
        let header = header(keys.len() as u64, filter.len() as u64);
        crc.update(&header);
        out.write_all(&header)?;
        for (i, key) in keys.iter().enumerate() {
            insert(&mut filter, *key);
            if i % SPARSE_EVERY == 0 {
                sparse.push(*key);
            }
            out.write_all(&key.to_le_bytes())?;
        }
        for block in &filter {
            for word in block {
                crc.update(&word.to_le_bytes());
                out.write_all(&word.to_le_bytes())?;
            }
        }
        for key in &sparse {
            crc.update(&key.to_le_bytes());
            out.write_all(&key.to_le_bytes())?;
        }
        out.write_all(&crc.finalize().to_le_bytes())?;
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            private_fs::sync_dir(dir)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            keys: keys.len() as u64,
            filter,
            sparse,
            file: None,
        })
    }

    /// Loads the in-memory part of a run file (not its keys).
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = File::open(path)?;
        let mut header = [0u8; HEADER_BYTES as usize];
        file.read_exact(&mut header)?;
        if &header[..8] != MAGIC || u32_at(&header, 8) != VERSION {
            return Err(damaged(path, "not a seen-id run file of this version"));
        }
        let keys = u64_at(&header, 16);
        let blocks = u64_at(&header, 24);
        if keys > 1 << 40 {
            return Err(damaged(path, "its header names an impossible key count"));
        }
        let sparse_len = keys.div_ceil(SPARSE_EVERY as u64);
        let expected = filter_blocks(keys as usize) as u64;
        let len = file.metadata()?.len();
        // `blocks` is compared before it is multiplied, so a damaged header cannot overflow.
        if blocks != expected {
            return Err(damaged(
                path,
                "its filter size does not match its key count",
            ));
        }
        let tail = blocks * (BLOCK_WORDS as u64 * 8) + sparse_len * KEY_BYTES as u64 + 4;
        if len != HEADER_BYTES + keys * KEY_BYTES as u64 + tail {
            return Err(damaged(path, "its length does not match its header"));
        }
        file.seek(SeekFrom::Start(HEADER_BYTES + keys * KEY_BYTES as u64))?;
        let mut rest = Vec::new();
        file.read_to_end(&mut rest)?;
        // Checked again on what was read: the file could have changed since its length was.
        if rest.len() as u64 != tail {
            return Err(damaged(path, "it changed while being read"));
        }
        let (body, stored_crc) = rest.split_at(rest.len() - 4);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(body);
        if crc.finalize().to_le_bytes() != stored_crc {
            return Err(damaged(path, "its checksum does not match"));
        }
        let (filter_bytes, sparse_bytes) = body.split_at(blocks as usize * BLOCK_WORDS * 8);
        let filter = filter_bytes
            .chunks_exact(BLOCK_WORDS * 8)
            .map(|block| {
                let mut words = [0u64; BLOCK_WORDS];
                for (w, bytes) in words.iter_mut().zip(block.chunks_exact(8)) {
                    *w = u64_at(bytes, 0);
                }
                words
            })
            .collect();
        let sparse = sparse_bytes.chunks_exact(KEY_BYTES).map(key_at).collect();
        Ok(Self {
            path: path.to_path_buf(),
            keys,
            filter,
            sparse,
            file: None,
        })
    }

    pub fn len(&self) -> u64 {
        self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes this run keeps in memory.
    pub fn memory_bytes(&self) -> usize {
        self.filter.len() * BLOCK_WORDS * 8 + self.sparse.len() * KEY_BYTES
    }

    /// True only when the run holds exactly `key`. A read that fails counts as not held.
    pub fn contains(&mut self, key: u128) -> bool {
        self.may_contain(key) && self.confirmed(key)
    }

    /// After [`SortedRun::may_contain`] said yes: whether the file really holds `key`.
    pub fn confirmed(&mut self, key: u128) -> bool {
        match self.confirm(key) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "seen-id run file unreadable; the record is treated as new (a duplicate is possible)");
                false
            }
        }
    }

    /// Branch-free on purpose: the probes of a day's runs then overlap their cache misses
    /// instead of waiting on each other's early exits.
    pub fn may_contain(&self, key: u128) -> bool {
        let (a, b) = hashes(key);
        let block = &self.filter[block_of(a, self.filter.len())];
        bits_of(b).fold(true, |all, (word, mask)| all & (block[word] & mask != 0))
    }

    fn confirm(&mut self, key: u128) -> io::Result<bool> {
        // The chunk whose first key is the last one not above `key`.
        let chunk = match self.sparse.partition_point(|first| *first <= key) {
            0 => return Ok(false),
            n => n - 1,
        };
        let start = (chunk * SPARSE_EVERY) as u64;
        let count = (self.keys - start).min(SPARSE_EVERY as u64) as usize;
        let mut buffer = [0u8; SPARSE_EVERY * KEY_BYTES];
        let bytes = &mut buffer[..count * KEY_BYTES];
        if self.file.is_none() {
            self.file = Some(File::open(&self.path)?);
        }
        let Some(file) = &self.file else {
            return Ok(false);
        };
        read_at(file, bytes, HEADER_BYTES + start * KEY_BYTES as u64)?;
        let (mut low, mut high) = (0, count);
        while low < high {
            let mid = (low + high) / 2;
            let at = key_at(&bytes[mid * KEY_BYTES..]);
            match at.cmp(&key) {
                std::cmp::Ordering::Equal => return Ok(true),
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
            }
        }
        Ok(false)
    }

    /// Every key of the run, ascending (for merging runs).
    pub fn read_keys(&self) -> io::Result<Vec<u128>> {
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(HEADER_BYTES))?;
        let mut bytes = vec![0u8; self.keys as usize * KEY_BYTES];
        file.read_exact(&mut bytes)?;
        let keys: Vec<u128> = bytes.chunks_exact(KEY_BYTES).map(key_at).collect();
        if !keys.windows(2).all(|w| w[0] < w[1]) {
            return Err(damaged(&self.path, "its keys are out of order"));
        }
        Ok(keys)
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    file.read_exact_at(buf, offset)
}

#[cfg(not(unix))]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

fn header(keys: u64, blocks: u64) -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&keys.to_le_bytes());
    h[24..32].copy_from_slice(&blocks.to_le_bytes());
    h
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn key_at(bytes: &[u8]) -> u128 {
    let mut b = [0u8; KEY_BYTES];
    b.copy_from_slice(&bytes[..KEY_BYTES]);
    u128::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys that share everything but their lowest bits, so any filter or index built on a
    /// prefix of the key would confuse them.
    fn near(i: u128) -> u128 {
        (0xdead_beef_u128 << 96) | (i * 2)
    }

    #[test]
    fn a_run_holds_exactly_its_keys_and_never_a_neighbour() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<u128> = (0..10_000).map(near).collect();
        let path = dir.path().join("1.0.run");
        let mut written = SortedRun::write(&path, &keys).unwrap();
        let mut loaded = SortedRun::open(&path).unwrap();
        for run in [&mut written, &mut loaded] {
            assert_eq!(run.len(), 10_000);
            for i in 0..10_000 {
                assert!(run.contains(near(i)), "{i} is in the run");
                // The odd neighbours were never delivered: never "seen".
                assert!(!run.contains(near(i) + 1), "{i}+1 is not");
            }
            assert!(!run.contains(0) && !run.contains(u128::MAX));
        }
        // 2 bytes of filter and 1/8 of sparse key per id, nothing per key beyond that.
        let per_key = loaded.memory_bytes() as f64 / 10_000.0;
        assert!(per_key < 2.3, "{per_key} bytes per key");
    }

    #[test]
    fn absent_keys_rarely_reach_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<u128> = {
            let mut k: Vec<u128> = (0..50_000u128)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
                .collect();
            k.sort_unstable();
            k.dedup();
            k
        };
        let run = SortedRun::write(&dir.path().join("2.0.run"), &keys).unwrap();
        let passed = (0..100_000u128)
            .map(|i| (i + 1) << 70)
            .filter(|k| run.may_contain(*k))
            .count();
        assert!(
            passed < 500,
            "{passed} of 100000 absent keys passed the filter"
        );
    }

    #[test]
    fn a_damaged_run_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("3.0.run");
        SortedRun::write(&path, &[1, 2, 3]).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 10;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = SortedRun::open(&path).err().expect("refused");
        assert!(e.to_string().contains("3.0.run"), "{e}");
        std::fs::write(&path, &bytes[..40]).unwrap();
        assert!(SortedRun::open(&path).is_err());
        // Header fields that would overflow any size computed from them.
        let mut header = bytes.clone();
        header[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &header).unwrap();
        assert!(SortedRun::open(&path).is_err());
        let mut header = bytes;
        header[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &header).unwrap();
        assert!(SortedRun::open(&path).is_err());
    }
}
