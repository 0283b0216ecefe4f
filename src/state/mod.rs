//! What survives a restart: the spool between mapping and delivery, the dead-letter store, and
//! the private, atomic file writes both use (source positions live with their source).

pub mod dlq;
pub mod private_fs;
pub mod slot_file;
pub mod spool;
