//! `run`: collect (the live sources, or files once) and deliver to the workspace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use m365_sentinel::run::{Delivery, RunOptions};
use m365_sentinel::state::spool::Spool;

use super::pass::{LiveMode, Pass, pass, reads_live};
use super::shared::{
    Common, EXIT_REJECTED, init_logging, load, refuse_problems, report_sources, runtime, sink_from,
    stop_on_signal,
};

pub fn run(common: &Common, input: Vec<PathBuf>, once: bool) -> anyhow::Result<ExitCode> {
    let setup = Arc::new(load(common)?);
    refuse_problems(common, &setup)?;
    init_logging(&setup.config.log.level, setup.config.log.format);
    let management = reads_live(&setup, &input);
    let (sink, targets, _) = sink_from(&setup)?;
    let spool = if setup.config.spool.enabled {
        Some(Spool::open(&setup.config.spool, &setup.schemas.streams())?)
    } else {
        None
    };
    let rt = runtime()?;
    let (trigger, shutdown) = m365_sentinel::ops::shutdown::channel();
    rt.spawn(stop_on_signal(trigger));
    let options = RunOptions::from_config(&setup.config, shutdown);
    let mut telemetry = m365_sentinel::ops::telemetry::Telemetry::new(
        sink.clone(),
        options.live.clone(),
        setup.config.batch.max_body_bytes,
    );
    telemetry.spool = spool.clone();
    telemetry.policy = Some(setup.policy.clone());
    telemetry.archive = setup
        .config
        .archive
        .is_some()
        .then(|| options.archive.clone());
    // Credentials are tried at once (then every 30 s until they work), so /readyz says
    // "not ready" for a wrong secret before anything is read.
    let checking = sink.clone();
    rt.spawn(async move {
        while !checking.check_credentials().await {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
    let boards = options.boards.clone();
    let listen = setup.config.metrics.listen.clone();
    let delivery = Delivery::Workspace {
        sink,
        targets,
        spool,
    };
    let mode = LiveMode {
        persist: true,
        once,
    };
    let Pass { stats, reports } = pass(&rt, &setup, input, mode, delivery, options, |sources| {
        if let Some(sources) = sources {
            telemetry.lag = sources.management.as_ref().map(|c| c.lag.clone());
            telemetry.collector = sources.counters();
            telemetry.sources = sources.statuses();
            telemetry.recent = Some(sources.recent.clone());
            boards.set(m365_sentinel::ops::health::Boards {
                lag: telemetry.lag.clone(),
                sources: telemetry.sources.clone(),
            });
        }
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
    })?;
    // Threads still reading (stdin, a fetch in flight) must not hold the exit.
    rt.shutdown_timeout(Duration::from_secs(2));
    let s = &stats.sink;
    // The connector's own health rows are told apart from the data.
    let health_rows = setup
        .schemas
        .health_table()
        .and_then(|i| {
            s.delivered_by_table
                .get(&setup.schemas.tables[i].output_table)
        })
        .copied()
        .unwrap_or(0);
    println!(
        "{}{} row(s) mapped, {} input record(s) refused; delivered {} row(s) (and {health_rows} health row(s)) in {} request(s) ({} bytes gzip of {}), {} retries, {} dead-lettered",
        if management {
            String::new()
        } else {
            format!("read {} file(s); ", stats.input.files)
        },
        stats.input.rows(),
        stats.input.rejected_total(),
        s.delivered_rows.saturating_sub(health_rows),
        s.requests,
        s.bytes_sent,
        s.bytes_uncompressed,
        s.retries,
        s.dead_lettered
    );
    for (category, n) in &stats.input.skipped {
        println!("skipped {n} row(s) of {category} (defender.unknown_categories: skip)");
    }
    for r in &stats.input.policy {
        println!(
            "policy rule {} ({} on {}): matched {} row(s), removed {}, {} bytes removed, {} moved, {} added",
            r.rule,
            r.action,
            r.table,
            r.matched,
            r.removed_rows,
            r.removed_bytes,
            r.moved_bytes,
            r.added_bytes
        );
    }
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
