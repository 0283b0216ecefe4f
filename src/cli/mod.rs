//! One module per command; `pass` the pipeline pass `run` and `dry-run` start, `shared` what
//! several of them use.

pub mod check;
pub mod content;
pub mod dlq;
pub mod dry_run;
pub mod pass;
pub mod run;
pub mod schema;
pub mod shared;
pub mod verify;
