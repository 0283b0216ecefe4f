//! Defender email events from Event Hubs, through its Kafka endpoint: `config` (what to read and
//! how to sign in), `consumer` (the consuming thread), `context` (librdkafka's callbacks:
//! rebalances, tokens, logs), `tracks` (owned partitions and their safe offsets).

pub mod config;
mod consumer;
mod context;
mod tracks;

pub use config::EventHubConfig;
pub use consumer::{EventHubError, EventHubSource, HubOptions};
