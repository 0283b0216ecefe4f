//! Sinks: where request bodies go. Dry-run writes them to disk; the workspace sinks come next.

pub mod archive;
pub mod batch;
pub mod data_collector;
pub mod dry_run;
pub mod logs_ingestion;
pub mod retry;
pub mod workspace;
