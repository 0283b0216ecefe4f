//! One module per command that needs more than a few lines of glue.

pub mod content;
