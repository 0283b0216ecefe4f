//! The m365-sentinel command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use m365_sentinel::config::LogFormat;
use m365_sentinel::dlq::DeadLetterStore;
use m365_sentinel::pipeline::{Setup, dry_run, dry_run_units};
use m365_sentinel::run::{Intake, RunOptions, run as deliver_input};
use m365_sentinel::shutdown::Shutdown;
use m365_sentinel::sinks::workspace::{Api, Target, WorkspaceSink};
use m365_sentinel::sources::live::{LiveOptions, LiveSources, SourceReport};
use m365_sentinel::sources::management::Counters;
use m365_sentinel::sources::unit::Unit;
use m365_sentinel::spool::Spool;

mod cli;

/// Exit status when the run completed but some records were rejected (see rejected.ndjson).
const EXIT_REJECTED: u8 = 3;
/// How long the sources get to stop (commit their last positions) once the run ended.
const SOURCES_STOP: Duration = Duration::from_secs(30);
/// Exit status of a `--once` pass (or dry-run) in which some tenants could not be collected.
const EXIT_TENANTS_FAILED: u8 = 4;

#[derive(Parser)]
#[command(
    name = "m365-sentinel",
    version,
    about = "Collects the Microsoft 365 unified audit log and Defender for Office 365 email events \
             into Sentinel-shaped Log Analytics tables.",
    after_help = "Exit status: 0 success; 1 error (config, schemas, I/O); 2 usage error; \
                  3 completed, but records were rejected; 4 some tenants could not be collected.\n\
                  Environment: M365_SENTINEL__SECTION__KEY=value overrides config keys."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Common {
    /// Configuration file (YAML); without it, defaults plus M365_SENTINEL__* variables.
    #[arg(long, short = 'c', env = "M365_SENTINEL_CONFIG")]
    config: Option<PathBuf>,
    /// Schema directory (table schemas, enums.yaml, redaction.yaml); overrides schemas_dir.
    #[arg(long)]
    schemas: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Map input and write the exact request bodies that would be sent; send nothing.
    #[command(name = "dry-run")]
    DryRun {
        #[command(flatten)]
        common: Common,
        /// Files or directories to read (gzip detected); `-` reads stdin. Default: one pass over
        /// the Management API tenants (no position committed), else input.paths.
        #[arg(long, short = 'i', num_args = 1..)]
        input: Vec<PathBuf>,
        /// Output directory for bodies, rejected.ndjson, notices.ndjson and summary.txt.
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
    },
    /// Collect and deliver to the workspace (the `sink` section of the config): the tenants of
    /// `management_api` continuously, or files given with --input (or input.paths) once.
    Run {
        #[command(flatten)]
        common: Common,
        /// Files or directories to read (gzip detected); `-` reads stdin. Default: the
        /// Management API tenants, else input.paths.
        #[arg(long, short = 'i', num_args = 1..)]
        input: Vec<PathBuf>,
        /// Management API: one pass up to now per tenant and content type, then exit
        /// (a Kubernetes CronJob, a backfill) instead of polling forever.
        #[arg(long)]
        once: bool,
    },
    /// Validate the configuration and schemas; exit non-zero with every problem found.
    Check {
        #[command(flatten)]
        common: Common,
    },
    /// Azure-side definitions generated from the schemas (regenerate after editing them).
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
    },
    /// Sentinel content (rules, hunting queries, parsers, .kql, ARM) made to read our tables.
    Content {
        #[command(subcommand)]
        action: ContentAction,
    },
    /// The dead-letter store: rows the workspace refused for good.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Subcommand)]
enum SchemaAction {
    /// An ARM template: one custom table per schema and a data collection rule (kind Direct)
    /// with a stream and a data flow per table. Deploy with `az deployment group create`.
    Dcr {
        #[command(flatten)]
        common: Common,
        /// Write here instead of stdout.
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
    },
    /// KQL functions `<Table>_All` uniting each Sentinel table with its `_CL` twin.
    Kql {
        #[command(flatten)]
        common: Common,
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ContentAction {
    /// Rewrite the references to the five tables (and nothing else) into `--out`.
    Rewrite {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: cli::content::RewriteArgs,
    },
}

#[derive(Subcommand)]
enum DlqAction {
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

/// The workspace sink and each table's target, from the config.
fn sink_from(
    setup: &Setup,
) -> anyhow::Result<(Arc<WorkspaceSink>, Vec<Target>, Arc<DeadLetterStore>)> {
    let config = setup.config.sink.as_ref().context(
        "no sink configured: add a `sink` section (logs_ingestion endpoint and DCR, credential) to the config",
    )?;
    let client = m365_sentinel::http_client::build(&setup.config.http)?;
    let dlq = Arc::new(DeadLetterStore::open(&setup.config.dlq.dir)?);
    let (api, targets) = match (&config.logs_ingestion, &config.data_collector) {
        (Some(li), _) => {
            let credential_config = config
                .credential
                .as_ref()
                .context("sink.logs_ingestion needs sink.credential")?;
            let transport = azure_core::http::Transport::new(Arc::new(client.clone()));
            let credential = m365_sentinel::auth::credential(
                credential_config,
                config.cloud,
                config.authority_host.as_deref(),
                Some(transport),
            )?;
            let targets = setup
                .schemas
                .tables
                .iter()
                .map(|t| li.target(t))
                .collect::<Result<Vec<_>, _>>()?;
            let api = Api::LogsIngestion {
                credential,
                scope: config.cloud.monitor_scope().to_string(),
            };
            (api, targets)
        }
        (None, Some(dc)) => {
            tracing::warn!(
                "the HTTP Data Collector API is retired (support ended 2026-09-14); move to sink.logs_ingestion"
            );
            let url = dc.url(config.cloud.data_collector_suffix())?;
            let targets = setup
                .schemas
                .tables
                .iter()
                .map(|t| {
                    Ok(Target {
                        url: url.clone(),
                        table: t.output_table.clone(),
                        stream: dc.log_type(t)?,
                    })
                })
                .collect::<Result<Vec<_>, m365_sentinel::sinks::data_collector::DataCollectorError>>()?;
            let api = Api::DataCollector {
                workspace_id: dc.workspace_id.clone(),
                shared_key: dc.shared_key()?,
                azure_resource_id: dc.azure_resource_id.clone(),
            };
            (api, targets)
        }
        (None, None) => anyhow::bail!("sink needs logs_ingestion or data_collector"),
    };
    let sink = WorkspaceSink::new(client, api, setup.config.retry_policy(), dlq.clone());
    Ok((Arc::new(sink), targets, dlq))
}

/// `--input` when given, else the config's `input.paths`; one of them must name something.
fn inputs_or_config(input: Vec<PathBuf>, setup: &Setup) -> anyhow::Result<Vec<PathBuf>> {
    let inputs = if input.is_empty() {
        setup.config.input.paths.clone()
    } else {
        input
    };
    anyhow::ensure!(
        !inputs.is_empty(),
        "no input: pass --input PATH (a file, a directory, or - for stdin) or set input.paths"
    );
    Ok(inputs)
}

/// Starts every configured live source; their units arrive on the returned channel.
/// `persist: false` is dry-run: positions are read but never written, no offset is committed
/// and no subscription is started.
fn start_sources(
    setup: &Setup,
    persist: bool,
    once: bool,
    shutdown: Shutdown,
    run_ended: Shutdown,
) -> anyhow::Result<(LiveSources, tokio::sync::mpsc::Receiver<Unit>)> {
    let config = &setup.config.management_api;
    let (tx, rx) = tokio::sync::mpsc::channel(config.blob_concurrency.max(1) * 2);
    let options = LiveOptions {
        persist,
        once,
        shutdown,
        run_ended,
    };
    let sources = LiveSources::start(&setup.config, options, tx)?;
    Ok((sources, rx))
}

fn print_summaries(
    management: Option<&Counters>,
    statuses: &[(String, Arc<m365_sentinel::sources::status::SourceStatus>)],
    recent: &m365_sentinel::sources::recent::RecentRows,
) {
    if let Some(counters) = management {
        println!("{}", collection_summary(counters));
    }
    for line in LiveSources::summary(statuses, recent) {
        println!("{line}");
    }
}

fn collection_summary(c: &Counters) -> String {
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    format!(
        "management API: {} content blob(s) read, {} duplicate record(s) skipped, {} throttled and {} failed answer(s) retried, {} subscription(s) started, {} expired and {} unreadable blob(s)",
        n(&c.blobs),
        n(&c.duplicates),
        n(&c.throttled),
        n(&c.transient_errors),
        n(&c.subscriptions_started),
        n(&c.expired_blobs),
        n(&c.failed_blobs)
    )
}

/// Prints each source (tenant, event hub, storage account) that could not be collected; the
/// exit status when there is one.
fn report_sources(reports: Option<&[SourceReport]>) -> Option<ExitCode> {
    let failed: Vec<&SourceReport> = reports?.iter().filter(|r| !r.errors.is_empty()).collect();
    for report in &failed {
        for error in &report.errors {
            eprintln!("error: {error}");
        }
    }
    (!failed.is_empty()).then(|| {
        println!(
            "{} source(s) could not be collected (see the errors above); the others were",
            failed.len()
        );
        ExitCode::from(EXIT_TENANTS_FAILED)
    })
}

/// Sets the shutdown flag on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn stop_on_signal(trigger: m365_sentinel::shutdown::Trigger) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("stopping: intake stops, requests in flight get the shutdown deadline");
    trigger.stop();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load(common: &Common) -> anyhow::Result<Setup> {
    Ok(Setup::load(
        common.config.as_deref(),
        common.schemas.as_deref(),
        std::env::vars(),
    )?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { common } => {
            let setup = load(&common)?;
            println!("configuration OK; schemas from {}", setup.schema_origin);
            for t in &setup.schemas.tables {
                println!(
                    "  {:<24} -> {:<28} stream {:<34} {} columns",
                    t.table,
                    t.output_table,
                    t.stream,
                    t.columns.len()
                );
            }
            for t in &setup.config.management_api.tenants {
                println!(
                    "  tenant {:<24} {} via {}: {}",
                    t.label(),
                    t.tenant_id,
                    t.endpoint(),
                    t.content_types().join(", ")
                );
            }
            let rules: Vec<&str> = setup.redactor.rule_names().collect();
            println!(
                "  redaction rules: {}",
                if rules.is_empty() {
                    "none".into()
                } else {
                    rules.join(", ")
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            common,
            input,
            once,
        } => {
            let setup = Arc::new(load(&common)?);
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
            let (trigger, shutdown) = m365_sentinel::shutdown::channel();
            rt.spawn(stop_on_signal(trigger));
            let live = Arc::new(m365_sentinel::telemetry::LiveCounts::default());
            let mut telemetry = m365_sentinel::telemetry::Telemetry::new(
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
            let serve = |telemetry: m365_sentinel::telemetry::Telemetry| -> anyhow::Result<()> {
                if let Some(addr) = &listen {
                    let listener = rt
                        .block_on(tokio::net::TcpListener::bind(addr))
                        .with_context(|| format!("metrics.listen {addr}: cannot listen there"))?;
                    rt.spawn(m365_sentinel::telemetry::serve(
                        listener,
                        Arc::new(telemetry),
                    ));
                }
                Ok(())
            };
            let (stats, reports) = if management {
                let (end_run, run_ended) = m365_sentinel::shutdown::channel();
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
                        deliver_input(setup.clone(), Intake::Units(units), sink, targets, options)
                            .await;
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
        Command::Content {
            action: ContentAction::Rewrite { common, args },
        } => cli::content::rewrite(&load(&common)?, args),
        Command::Schema { action } => {
            let (out, text) = match action {
                SchemaAction::Dcr { common, out } => {
                    let setup = load(&common)?;
                    let template = m365_sentinel::schema::azure::arm_template(&setup.schemas);
                    (out, serde_json::to_string_pretty(&template)? + "\n")
                }
                SchemaAction::Kql { common, out } => {
                    let setup = load(&common)?;
                    (
                        out,
                        m365_sentinel::schema::azure::kql_functions(&setup.schemas),
                    )
                }
            };
            match out {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq {
            action: DlqAction::List { common },
        } => {
            let setup = load(&common)?;
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
        Command::Dlq {
            action: DlqAction::Replay { common, table },
        } => {
            let setup = load(&common)?;
            init_logging(&setup.config.log.level, setup.config.log.format);
            let (sink, targets, store) = sink_from(&setup)?;
            let replayed = runtime()?.block_on(m365_sentinel::run::replay(
                &setup,
                &store,
                &sink,
                &targets,
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
        Command::DryRun { common, input, out } => {
            let setup = Arc::new(load(&common)?);
            init_logging(&setup.config.log.level, setup.config.log.format);
            let out = out.unwrap_or_else(|| setup.config.dry_run.out_dir.clone());
            let mut reports = None;
            let stats = if input.is_empty() && LiveSources::configured(&setup.config) {
                let rt = runtime()?;
                let (sources, mut units) = rt.block_on(async {
                    start_sources(&setup, false, true, Shutdown::never(), Shutdown::never())
                })?;
                let counters = sources.counters();
                let statuses = sources.statuses();
                let recent = sources.recent.clone();
                let mapping_setup = setup.clone();
                let mapping_out = out.clone();
                let mapping = rt.spawn_blocking(move || {
                    dry_run_units(&mapping_setup, &mut units, &mapping_out)
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
                dry_run(&setup, &inputs, &out).context("dry-run failed")?
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
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
