//! `dlq list|replay`: the dead-letter store.

use std::process::ExitCode;

use clap::Subcommand;
use m365_sentinel::state::dlq::DeadLetterStore;

use super::shared::{
    Common, EXIT_REJECTED, init_logging, load, refuse_problems, runtime, sink_from,
};

#[derive(Subcommand)]
pub enum DlqAction {
    /// Tables with dead letters, and how many.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Send them again (after fixing the DCR or permissions); rows refused again stay.
    Replay {
        #[command(flatten)]
        common: Common,
        /// Only this table (e.g. OfficeActivity_CL).
        #[arg(long)]
        table: Option<String>,
    },
}

pub fn list(common: &Common) -> anyhow::Result<ExitCode> {
    let setup = load(common)?;
    let store = DeadLetterStore::open(&setup.config.dlq.dir)?;
    let tables = store.list()?;
    if tables.is_empty() {
        println!("no dead letters in {}", setup.config.dlq.dir.display());
    }
    for t in tables {
        println!("{:<32} {:>9} rows {:>12} bytes", t.table, t.rows, t.bytes);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn replay(common: &Common, table: Option<String>) -> anyhow::Result<ExitCode> {
    let setup = load(common)?;
    refuse_problems(common, &setup)?;
    init_logging(&setup.config.log.level, setup.config.log.format);
    let (sink, targets, store) = sink_from(&setup)?;
    let replayed = runtime()?.block_on(m365_sentinel::run::replay(
        std::sync::Arc::new(setup),
        &store,
        sink.clone(),
        targets,
        table.as_deref(),
    ))?;
    for r in &replayed {
        println!("{}: {} row(s) replayed", r.table, r.rows);
    }
    let again = sink.stats().dead_lettered;
    if again > 0 {
        println!("{again} row(s) refused again, back in the store");
        return Ok(ExitCode::from(EXIT_REJECTED));
    }
    Ok(ExitCode::SUCCESS)
}
