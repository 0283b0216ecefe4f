//! `run`: collect (the live sources, or files once) and deliver to the workspace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use m365_sentinel::run::{Intake, RunOptions, run as deliver_input};
use m365_sentinel::sources::live::LiveSources;
use m365_sentinel::state::spool::Spool;

use super::shared::{
    Common, EXIT_REJECTED, SOURCES_STOP, init_logging, inputs_or_config, load, print_summaries,
    refuse_problems, report_sources, runtime, sink_from, start_sources, stop_on_signal,
};

pub fn run(common: &Common, input: Vec<PathBuf>, once: bool) -> anyhow::Result<ExitCode> {
    let setup = Arc::new(load(common)?);
    refuse_problems(common, &setup)?;
    init_logging(&setup.config.log.level, setup.config.log.format);
    let management = input.is_empty() && LiveSources::configured(&setup.config);
    let (sink, targets, _) = sink_from(&setup)?;
    let sink_config = setup.config.sink.clone().context("sink")?;
    let spool = if setup.config.spool.enabled {
        let streams: Vec<String> = setup
            .schemas
            .tables
            .iter()
            .map(|t| t.stream.clone())
            .collect();
        Some(Spool::open(&setup.config.spool, &streams)?)
    } else {
        None
    };
    let rt = runtime()?;
    let (trigger, shutdown) = m365_sentinel::ops::shutdown::channel();
    rt.spawn(stop_on_signal(trigger));
    let live = Arc::new(m365_sentinel::ops::telemetry::LiveCounts::default());
    let mut telemetry = m365_sentinel::ops::telemetry::Telemetry::new(
        sink.clone(),
        live.clone(),
        setup.config.batch.max_body_bytes,
    );
    telemetry.spool = spool.clone();
    let options = RunOptions {
        flush_delay: Duration::from_millis(sink_config.flush_delay_ms.max(1)),
        concurrency: sink_config.concurrency,
        dlq_dir: setup.config.dlq.dir.clone(),
        spool,
        shutdown: shutdown.clone(),
        shutdown_deadline: Duration::from_secs(sink_config.shutdown_deadline_secs),
        live,
    };
    // Credentials are tried at once (then every 30 s until they work), so /readyz says
    // "not ready" for a wrong secret before anything is read.
    let checking = sink.clone();
    rt.spawn(async move {
        while !checking.check_credentials().await {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
    let listen = setup.config.metrics.listen.clone();
    let serve = |telemetry: m365_sentinel::ops::telemetry::Telemetry| -> anyhow::Result<()> {
        if let Some(addr) = &listen {
            let listener = rt
                .block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("metrics.listen {addr}: cannot listen there"))?;
            rt.spawn(m365_sentinel::ops::telemetry::serve(
                listener,
                Arc::new(telemetry),
            ));
        }
        Ok(())
    };
    let (stats, reports) = if management {
        let (end_run, run_ended) = m365_sentinel::ops::shutdown::channel();
        let (sources, units) =
            rt.block_on(async { start_sources(&setup, true, once, shutdown, run_ended) })?;
        telemetry.lag = sources.management.as_ref().map(|c| c.lag.clone());
        telemetry.collector = sources.counters();
        telemetry.sources = sources.statuses();
        telemetry.recent = Some(sources.recent.clone());
        serve(telemetry)?;
        rt.block_on(async {
            let counters = sources.counters();
            let statuses = sources.statuses();
            let recent = sources.recent.clone();
            let finishing = tokio::spawn(sources.finish());
            let stats =
                deliver_input(setup.clone(), Intake::Units(units), sink, targets, options).await;
            // Sources waiting for their last rows to become durable wait no longer.
            end_run.stop();
            // A source whose broker or service stopped answering must not hold the
            // exit past Kubernetes' grace period.
            let reports = match tokio::time::timeout(SOURCES_STOP, finishing).await {
                Ok(done) => done.context("the sources' task failed")?,
                Err(_) => vec![m365_sentinel::sources::live::SourceReport {
                    source: "sources".into(),
                    errors: vec![format!(
                        "a source did not stop within {} s; its positions are as last committed",
                        SOURCES_STOP.as_secs()
                    )],
                }],
            };
            let stats = stats?;
            print_summaries(counters.as_deref(), &statuses, &recent);
            anyhow::Ok((stats, Some(reports)))
        })?
    } else {
        serve(telemetry)?;
        let inputs = inputs_or_config(input, &setup)?;
        let stats = rt.block_on(deliver_input(
            setup.clone(),
            Intake::Files(inputs),
            sink,
            targets,
            options,
        ))?;
        (stats, None)
    };
    // Threads still reading (stdin, a fetch in flight) must not hold the exit.
    rt.shutdown_timeout(Duration::from_secs(2));
    let s = &stats.sink;
    println!(
        "{}{} row(s) mapped, {} input record(s) refused; delivered {} row(s) in {} request(s) ({} bytes gzip of {}), {} retries, {} dead-lettered",
        if management {
            String::new()
        } else {
            format!("read {} file(s); ", stats.input.files)
        },
        stats.input.rows(),
        stats.input.rejected_total(),
        s.delivered_rows,
        s.requests,
        s.bytes_sent,
        s.bytes_uncompressed,
        s.retries,
        s.dead_lettered
    );
    if stats.stopped {
        println!(
            "stopped on a signal; what was not delivered stays in {} and goes first at the next start",
            if setup.config.spool.enabled {
                "the spool"
            } else {
                "its source (positions were not committed past it)"
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(code) = report_sources(reports.as_deref()) {
        return Ok(code);
    }
    if stats.input.rejected_total() > 0 || s.dead_lettered > 0 {
        println!(
            "refused input: {}; dead letters: m365-sentinel dlq list",
            setup
                .config
                .dlq
                .dir
                .join(m365_sentinel::run::REJECTED_INPUT_FILE)
                .display()
        );
        return Ok(ExitCode::from(EXIT_REJECTED));
    }
    Ok(ExitCode::SUCCESS)
}
