//! Sources: where raw records come from. Files are read to their end; the live sources (the
//! Management Activity API, Event Hubs, Storage append blobs) hand [`unit::Unit`]s to the
//! mapper and move their positions when the units' rows are safe downstream.

pub mod defender;
pub mod eventhubs;
pub mod file;
pub mod live;
pub mod management;
pub mod progress;
pub mod recent;
pub mod status;
pub mod unit;

pub mod storage;
