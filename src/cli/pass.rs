//! One pass of the pipeline as `run` and `dry-run` start it: the live sources when they are
//! configured and no `--input` was given, else the files; then `run::run` with the command's
//! delivery, and the sources' stop and reports.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use m365_sentinel::pipeline::{Intake, Setup};
use m365_sentinel::run::{Delivery, RunOptions, RunStats, run};
use m365_sentinel::sources::live::{LiveSources, SourceReport};

use super::shared::{SOURCES_STOP, inputs_or_config, print_summaries, start_sources};

/// How the live sources run in this pass.
pub struct LiveMode {
    /// False for dry-run: positions are read but never written.
    pub persist: bool,
    /// One pass over what is available now, then stop.
    pub once: bool,
}

pub struct Pass {
    pub stats: RunStats,
    /// Each live source's outcome; None when files were read.
    pub reports: Option<Vec<SourceReport>>,
}

/// True when a pass reads the live sources rather than files.
pub fn reads_live(setup: &Setup, input: &[PathBuf]) -> bool {
    input.is_empty() && LiveSources::configured(&setup.config)
}

/// Runs one pass. `attach` sees the live sources (None for files) once they are started and
/// before anything is delivered: the metrics endpoint is set up there.
pub fn pass(
    rt: &tokio::runtime::Runtime,
    setup: &Arc<Setup>,
    input: Vec<PathBuf>,
    mode: LiveMode,
    delivery: Delivery,
    options: RunOptions,
    attach: impl FnOnce(Option<&LiveSources>) -> anyhow::Result<()>,
) -> anyhow::Result<Pass> {
    if !reads_live(setup, &input) {
        attach(None)?;
        let inputs = inputs_or_config(input, setup)?;
        let pipeline = run(setup.clone(), Intake::Files(inputs), delivery, options);
        let stats = rt.block_on(on_a_worker(pipeline))?;
        return Ok(Pass {
            stats,
            reports: None,
        });
    }
    let (end_run, run_ended) = m365_sentinel::ops::shutdown::channel();
    let shutdown = options.shutdown.clone();
    let (sources, units) =
        rt.block_on(async { start_sources(setup, mode.persist, mode.once, shutdown, run_ended) })?;
    attach(Some(&sources))?;
    rt.block_on(async {
        let counters = sources.counters();
        let statuses = sources.statuses();
        let recent = sources.recent.clone();
        let finishing = tokio::spawn(sources.finish());
        // The raw archive sits between the sources and the front end (never in a dry-run).
        let (units, archive) = match &setup.config.archive {
            Some(config) if mode.persist => {
                let http = m365_sentinel::http_client::build(&setup.config.http)?;
                let (units, archive) = m365_sentinel::sinks::archive::start(
                    config,
                    &http,
                    units,
                    options.archive.clone(),
                    options.shutdown.clone(),
                    mode.once,
                )?;
                (units, Some(archive))
            }
            _ => (units, None),
        };
        let stats = on_a_worker(run(setup.clone(), Intake::Units(units), delivery, options)).await;
        // The last units' positions commit only once their blocks are in the archive.
        if let Some(archive) = archive {
            let archive_stats = archive.stats.clone();
            if tokio::time::timeout(SOURCES_STOP, archive.finish()).await.is_err() {
                tracing::warn!(
                    "the archive did not finish within {} s; its last units are read again next time",
                    SOURCES_STOP.as_secs()
                );
            }
            println!("{}", archive_stats.summary());
            if archive_stats.gave_up.load(std::sync::atomic::Ordering::Relaxed) {
                end_run.stop();
                let why = archive_stats.failure().unwrap_or_default();
                anyhow::bail!(
                    "the raw archive could not write ({why}); units not archived were not committed and are read again by the next pass"
                );
            }
        }
        // Sources waiting for their last rows to become durable wait no longer.
        end_run.stop();
        // A source whose broker or service stopped answering must not hold the exit past
        // Kubernetes' grace period.
        let reports = match tokio::time::timeout(SOURCES_STOP, finishing).await {
            Ok(done) => done.context("the sources' task failed")?,
            Err(_) => vec![SourceReport {
                source: "sources".into(),
                errors: vec![format!(
                    "a source did not stop within {} s; its positions are as last committed",
                    SOURCES_STOP.as_secs()
                )],
            }],
        };
        let stats = stats?;
        print_summaries(counters.as_deref(), &statuses, &recent);
        Ok(Pass {
            stats,
            reports: Some(reports),
        })
    })
}

/// Runs the pipeline's central loop as a task on the runtime's workers. Under `block_on` it
/// would run on the main thread, a third thread on top of the workers, and every hand-off
/// between them (rows in, acknowledgements back) a cross-thread wake-up: at 500 tenants the
/// main thread's futex calls and context switches were 11% of the connector's perf samples.
async fn on_a_worker<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, m365_sentinel::run::RunError>> + Send + 'static,
) -> anyhow::Result<T> {
    match tokio::spawn(work).await {
        Ok(result) => Ok(result?),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(anyhow::anyhow!("the pipeline's task was cancelled: {e}")),
    }
}
