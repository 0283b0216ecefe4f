//! The raw archive ("store first"): every unit a live source hands on, as received and before
//! any rule, written to Azure Blob Storage as gzip JSON Lines, one blob per (tenant, source,
//! hour). It sits between the sources and the front end (`tee`): each unit gets one more
//! acknowledgement handle, released only once its block is committed, so a source's position
//! moves past a unit only when the archive and the spool both hold it.
//!
//! Exactly once per position: a unit's block id is the hash of its position, and a block
//! already committed to the hour's blob is not written again (a unit read again after a crash).
//! Blocks are gzip members, so a blob is valid gzip at every commit, whatever was killed when.

pub mod client;
pub mod config;
pub mod layout;
mod writer;

pub use config::ArchiveConfig;
pub use writer::{Archive, ArchiveStats, start};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    Config(String),
    #[error("archive.auth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("archive blob {blob}: could not {operation} it ({}): {detail}", status.map_or("no answer".to_string(), |s| format!("HTTP {s}")))]
    Blob {
        blob: String,
        operation: &'static str,
        status: Option<u16>,
        detail: String,
    },
    /// Someone else changed the blob since it was listed (its ETag moved).
    #[error("archive blob {blob} changed while being written; reloading its block list")]
    Conflict { blob: String },
}
