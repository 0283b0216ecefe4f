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
/// HMAC-SHA256, cut to 128 bits, base64url, over the previous row's hash and this row's
/// canonical bytes.
pub const HASH_COLUMN: &str = "ChainHash";
/// Which key made the hash (key rotation: verify holds the old ones too).
pub const KEY_COLUMN: &str = "ChainKeyId";

/// A chain hash: HMAC-SHA256 cut to its first 128 bits (as HMAC allows: RFC 2104 §5), which
/// keeps forging out of reach and costs each row 22 characters, not 64: the hashes are the one
/// part of a body gzip can't shrink.
pub type Hash = [u8; 16];

/// The hash before the first row of a chain.
pub const GENESIS: Hash = [0; 16];

/// A hash as rows carry it: base64url without padding (22 characters).
pub fn encode_hash(hash: &Hash) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash)
}

/// The hash a row's text spells, if it is one.
pub fn decode_hash(text: &str) -> Option<Hash> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_in_22_characters() {
        let mut h = [0u8; 16];
        h[0] = 0xab;
        h[15] = 0x01;
        let text = encode_hash(&h);
        assert_eq!(text.len(), 22);
        assert_eq!(decode_hash(&text), Some(h));
        assert_eq!(decode_hash("xyz"), None);
        assert_eq!(decode_hash(&"A".repeat(43)), None);
    }
}
