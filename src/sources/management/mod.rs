//! The Office 365 Management Activity API source: the unified audit log of many tenants,
//! collected continuously, deduplicated by record `Id`, with positions committed only after
//! delivery.
//!
//! Start reading at `collector`; `client` speaks the API, `tracker` decides how far a position
//! may move, `positions` and `seen` keep state on disk, `journal` commits it for every tenant
//! at once, `rate` and `lag` watch the pace.

pub mod client;
mod collector;
pub mod config;
pub mod journal;
pub mod lag;
pub mod positions;
pub mod rate;
pub mod seen;
pub mod tracker;

pub use client::now_millis;
pub use collector::{
    BlobDedupe, Collector, CollectorError, CollectorOptions, Counters, TenantReport,
};
pub use config::{ManagementConfig, TenantConfig};
