//! m365-sentinel: collects the Microsoft 365 unified audit log and Defender for Office 365 email
//! events, maps them into Sentinel table shapes and delivers them to a Log Analytics workspace.
//!
//! Data flows one way: `sources` → `stages` (decode → route → map, redaction) → `state::spool`
//! → `sinks` (batch → workspace); `run` and `pipeline` wire them, `ops` runs the process.
//! See ARCHITECTURE.md for the map of modules.

pub mod ack;
pub mod auth;
pub mod config;
pub mod content;
pub mod http_client;
pub mod integrity;
pub mod ops;
pub mod pipeline;
pub mod record;
pub mod run;
pub mod schema;
pub mod sinks;
pub mod sources;
pub mod stages;
pub mod state;
