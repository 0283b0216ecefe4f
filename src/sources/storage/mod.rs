//! Defender email events from the Streaming API's Storage export: `config` (the account and
//! how to sign in), `client` (the Blob service REST calls), `signature` (Shared Key),
//! `positions` (bytes safe per blob, on disk), `collector` (the polling reader).

pub mod client;
mod collector;
pub mod config;
mod positions;
pub mod signature;

pub use collector::{StorageOptions, StorageSource, blob_hour};
pub use config::StorageConfig;
