//! m365-sentinel: collects the Microsoft 365 unified audit log and Defender for Office 365 email
//! events, maps them into Sentinel table shapes and delivers them to a Log Analytics workspace.
//!
//! Data flows one way: `sources` → `decode` → `route` → `map` → `sinks::batch` → sink.
//! See ARCHITECTURE.md for the map of modules.

pub mod ack;
pub mod auth;
pub mod config;
pub mod content;
pub mod decode;
pub mod dlq;
pub mod http_client;
pub mod map;
pub mod pipeline;
pub mod preflight;
pub mod private_fs;
pub mod record;
pub mod redact;
pub mod route;
pub mod run;
pub mod schema;
pub mod shutdown;
pub mod sinks;
pub mod sources;
pub mod spool;
pub mod stats;
pub mod telemetry;
