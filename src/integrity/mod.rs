//! Integrity of the delivered log: every row the spool takes gets a place in a per-stream
//! chain (a sequence number and an HMAC-SHA256 over the previous row's hash and the row's
//! canonical bytes), so that `verify` can later read the rows back from the workspace and show
//! that none is missing, altered or forked since delivery.
//!
//! Why the chain is sealed where the spool takes the row: a row is sent only from the spool,
//! so the sequence and hash it carries are durable before it leaves, and a crash's re-sends are
//! the same bytes: a duplicate in the workspace is recognisable as one, never a fork.
//!
//! The hash covers a canonical form of the row rather than its JSON text, because Log
//! Analytics gives rows back in its own spelling (datetimes with seven fraction digits,
//! dynamic values re-serialized, empty strings for missing ones); see `canonical.rs`.

pub mod canonical;
pub mod chain;
pub mod config;
pub mod keys;
pub mod verify;

pub use chain::{Chain, ChainError, Head};
pub use config::IntegrityConfig;
pub use keys::{KeyError, Keyring};

use crate::schema::ColumnType;

/// The chain's columns, added to every table and stream the generated DCR declares.
pub const CHAIN_COLUMNS: [(&str, ColumnType); 4] = [
    (STREAM_COLUMN, ColumnType::String),
    (SEQ_COLUMN, ColumnType::Long),
    (HASH_COLUMN, ColumnType::String),
    (KEY_COLUMN, ColumnType::String),
];

/// The chain a row belongs to: `<chain_id>/<table>` (one per replica and table).
pub const STREAM_COLUMN: &str = "ChainStream";
/// The row's place in its chain, from 1 without gaps.
pub const SEQ_COLUMN: &str = "ChainSeq";
/// HMAC-SHA256 (hex) over the previous row's hash and this row's canonical bytes.
pub const HASH_COLUMN: &str = "ChainHash";
/// Which key made the hash (key rotation: verify holds the old ones too).
pub const KEY_COLUMN: &str = "ChainKeyId";

/// The hash before the first row of a chain.
pub const GENESIS: [u8; 32] = [0; 32];

/// Lowercase hex of a hash.
pub fn hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// The hash a hex text spells, if it is one.
pub fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let nibble = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(nibble(pair[0])? * 16 + nibble(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let mut h = [0u8; 32];
        h[0] = 0xab;
        h[31] = 0x01;
        let text = hex(&h);
        assert_eq!(&text[..2], "ab");
        assert_eq!(parse_hex(&text), Some(h));
        assert_eq!(parse_hex("xyz"), None);
        assert_eq!(parse_hex(&"g".repeat(64)), None);
    }
}
