//! What the commands share: the common arguments, loading, the runtime and logging, the sink
//! built from the config, the live sources, their summaries and the exit statuses.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use m365_sentinel::config::LogFormat;
use m365_sentinel::ops::shutdown::Shutdown;
use m365_sentinel::pipeline::Setup;
use m365_sentinel::sinks::workspace::{Api, Target, WorkspaceSink};
use m365_sentinel::sources::live::{LiveOptions, LiveSources, SourceReport};
use m365_sentinel::sources::management::Counters;
use m365_sentinel::sources::unit::Unit;
use m365_sentinel::state::dlq::DeadLetterStore;

/// Exit status when the run completed but some records were rejected (see rejected.ndjson).
pub const EXIT_REJECTED: u8 = 3;
/// How long the sources get to stop (commit their last positions) once the run ended.
pub const SOURCES_STOP: Duration = Duration::from_secs(30);
/// Exit status of a `--once` pass (or dry-run) in which some tenants could not be collected.
pub const EXIT_TENANTS_FAILED: u8 = 4;

#[derive(clap::Args)]
pub struct Common {
    /// Configuration file (YAML); without it, defaults plus M365_SENTINEL__* variables.
    #[arg(long, short = 'c', env = "M365_SENTINEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Schema directory (table schemas, enums.yaml, redaction.yaml); overrides schemas_dir.
    #[arg(long)]
    pub schemas: Option<PathBuf>,
}

/// The workspace sink and each table's target, from the config.
pub fn sink_from(
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
            let credential = sink_credential(config, credential_config, &client)?;
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

/// The sink's credential, its token requests going through `http` (proxy and CA settings).
pub fn sink_credential(
    sink: &m365_sentinel::config::SinkConfig,
    credential: &m365_sentinel::auth::CredentialConfig,
    http: &reqwest::Client,
) -> anyhow::Result<Arc<dyn azure_core::credentials::TokenCredential>> {
    let transport = azure_core::http::Transport::new(Arc::new(http.clone()));
    Ok(m365_sentinel::auth::credential(
        credential,
        sink.cloud,
        sink.authority_host.as_deref(),
        Some(transport),
    )?)
}

/// `--input` when given, else the config's `input.paths`; one of them must name something.
pub fn inputs_or_config(input: Vec<PathBuf>, setup: &Setup) -> anyhow::Result<Vec<PathBuf>> {
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
pub fn start_sources(
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

pub fn print_summaries(
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

pub fn collection_summary(c: &Counters) -> String {
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
pub fn report_sources(reports: Option<&[SourceReport]>) -> Option<ExitCode> {
    let failed: Vec<&SourceReport> = reports?.iter().filter(|r| !r.errors.is_empty()).collect();
    for report in &failed {
        for error in &report.errors {
            eprintln!("error: {error}");
        }
    }
    (!failed.is_empty()).then(|| {
        println!(
            "{} source(s) failed: not collected, or their collection state not saved (see the errors above); the others were collected",
            failed.len()
        );
        ExitCode::from(EXIT_TENANTS_FAILED)
    })
}

/// Sets the shutdown flag on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
pub async fn stop_on_signal(trigger: m365_sentinel::ops::shutdown::Trigger) {
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

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn init_logging(level: &str, format: LogFormat) {
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

/// Every start-up refusal (`preflight`), all listed at once on stderr; an error when any.
pub fn refuse_problems(common: &Common, setup: &Setup) -> anyhow::Result<()> {
    let problems = m365_sentinel::ops::preflight::check(&setup.config, &setup.schemas);
    if problems.is_empty() {
        return Ok(());
    }
    let origin = common
        .config
        .as_ref()
        .map_or_else(|| "configuration".to_string(), |p| p.display().to_string());
    for problem in &problems {
        eprintln!("error: {origin}: {problem}");
    }
    anyhow::bail!(
        "{} problem(s) in {origin} (listed above); `m365-sentinel check` lists them without starting anything",
        problems.len()
    )
}

pub fn load(common: &Common) -> anyhow::Result<Setup> {
    Ok(Setup::load(
        common.config.as_deref(),
        common.schemas.as_deref(),
        std::env::vars(),
    )?)
}
