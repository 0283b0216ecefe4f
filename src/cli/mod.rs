//! One module per command; `shared` holds what several of them use.

pub mod check;
pub mod content;
pub mod dlq;
pub mod dry_run;
pub mod run;
pub mod schema;
pub mod shared;
