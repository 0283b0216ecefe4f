//! Sources: where raw records come from. Each yields units of text with their positions.

pub mod file;
pub mod management;
