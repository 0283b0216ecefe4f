//! The m365-sentinel command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use m365_sentinel::config::LogFormat;
use m365_sentinel::pipeline::{Setup, dry_run};

/// Exit status when the run completed but some records were rejected (see rejected.ndjson).
const EXIT_REJECTED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "m365-sentinel",
    version,
    about = "Collects the Microsoft 365 unified audit log and Defender for Office 365 email events \
             into Sentinel-shaped Log Analytics tables.",
    after_help = "Exit status: 0 success; 1 error (config, schemas, I/O); 2 usage error; \
                  3 completed, but records were rejected.\n\
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
        /// Files or directories to read (gzip detected); `-` reads stdin. Default: input.paths.
        #[arg(long, short = 'i', num_args = 1..)]
        input: Vec<PathBuf>,
        /// Output directory for bodies, rejected.ndjson, notices.ndjson and summary.txt.
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
    },
    /// Validate the configuration and schemas; exit non-zero with every problem found.
    Check {
        #[command(flatten)]
        common: Common,
    },
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
        Command::DryRun { common, input, out } => {
            let setup = load(&common)?;
            init_logging(&setup.config.log.level, setup.config.log.format);
            let inputs = if input.is_empty() {
                setup.config.input.paths.clone()
            } else {
                input
            };
            anyhow::ensure!(
                !inputs.is_empty(),
                "no input: pass --input PATH (a file, a directory, or - for stdin) or set input.paths"
            );
            let out = out.unwrap_or_else(|| setup.config.dry_run.out_dir.clone());
            let stats = dry_run(&setup, &inputs, &out).context("dry-run failed")?;
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
