//! Running the process: start-up checks, the SIGTERM flag, counters and the summary table, and
//! the health and metrics endpoint.

pub mod cost;
pub mod health;
pub mod health_rules;
pub mod preflight;
pub mod shutdown;
pub mod stats;
pub mod telemetry;
