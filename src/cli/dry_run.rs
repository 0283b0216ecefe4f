//! `dry-run`: map the input (or one pass over the live sources) and write the exact bodies.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use m365_sentinel::ops::shutdown::Shutdown;
use m365_sentinel::run::{Delivery, RunOptions};

use super::pass::{LiveMode, Pass, pass};
use super::shared::{Common, EXIT_REJECTED, init_logging, load, report_sources, runtime};

pub fn dry_run(
    common: &Common,
    input: Vec<PathBuf>,
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let setup = Arc::new(load(common)?);
    init_logging(&setup.config.log.level, setup.config.log.format);
    let out = out.unwrap_or_else(|| setup.config.dry_run.out_dir.clone());
    let rt = runtime()?;
    // One pass over the live sources, committing nothing.
    let mode = LiveMode {
        persist: false,
        once: true,
    };
    let delivery = Delivery::Files {
        out_dir: out.clone(),
    };
    let options = RunOptions::from_config(&setup.config, Shutdown::never());
    let Pass { stats, reports } =
        pass(&rt, &setup, input, mode, delivery, options, |_| Ok(())).context("dry-run failed")?;
    let stats = stats.input;
    tracing::info!(
        files = stats.files,
        rows = stats.rows(),
        rejected = stats.rejected_total(),
        bodies = stats.bodies(),
        out = %out.display(),
        "dry-run complete"
    );
    print!("{}", stats.render());
    println!("\nbodies and reports written to {}", out.display());
    if let Some(code) = report_sources(reports.as_deref()) {
        return Ok(code);
    }
    if stats.rejected_total() > 0 {
        println!(
            "{} record(s) rejected: see {}",
            stats.rejected_total(),
            out.join(m365_sentinel::sinks::dry_run::REJECTED_FILE)
                .display()
        );
        return Ok(ExitCode::from(EXIT_REJECTED));
    }
    Ok(ExitCode::SUCCESS)
}
