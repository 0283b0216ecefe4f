//! `dry-run`: map the input (or one pass over the live sources) and write the exact bodies.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use m365_sentinel::ops::shutdown::Shutdown;
use m365_sentinel::pipeline::{Intake, dry_run as map_to_files};
use m365_sentinel::sources::live::LiveSources;

use super::shared::{
    Common, EXIT_REJECTED, init_logging, inputs_or_config, load, print_summaries, report_sources,
    runtime, start_sources,
};

pub fn dry_run(
    common: &Common,
    input: Vec<PathBuf>,
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let setup = Arc::new(load(common)?);
    init_logging(&setup.config.log.level, setup.config.log.format);
    let out = out.unwrap_or_else(|| setup.config.dry_run.out_dir.clone());
    let mut reports = None;
    let stats = if input.is_empty() && LiveSources::configured(&setup.config) {
        let rt = runtime()?;
        let (sources, units) = rt.block_on(async {
            start_sources(&setup, false, true, Shutdown::never(), Shutdown::never())
        })?;
        let counters = sources.counters();
        let statuses = sources.statuses();
        let recent = sources.recent.clone();
        let mapping_setup = setup.clone();
        let mapping_out = out.clone();
        let mapping = rt.spawn_blocking(move || {
            map_to_files(&mapping_setup, Intake::Units(units), &mapping_out)
        });
        let (stats, done) = rt.block_on(async {
            let reports = sources.finish().await;
            (mapping.await, reports)
        });
        reports = Some(done);
        print_summaries(counters.as_deref(), &statuses, &recent);
        stats?.context("dry-run failed")?
    } else {
        let inputs = inputs_or_config(input, &setup)?;
        map_to_files(&setup, Intake::Files(inputs), &out).context("dry-run failed")?
    };
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
