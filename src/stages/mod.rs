//! The pure stages between a source and a sink: a unit of text is decoded into records, each
//! routed to its table, mapped to a row (the schemas), with secrets masked on the way.

pub mod decode;
pub mod map;
pub mod policy;
pub mod redact;
pub mod route;
