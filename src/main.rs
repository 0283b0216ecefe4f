//! The m365-sentinel command line: argument parsing and dispatch; each command lives in `cli/`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

use cli::dlq::DlqAction;
use cli::schema::SchemaAction;
use cli::shared::Common;

#[derive(Parser)]
#[command(
    name = "m365-sentinel",
    version,
    about = "Collects the Microsoft 365 unified audit log and Defender for Office 365 email events \
             into Sentinel-shaped Log Analytics tables.",
    after_help = "Exit status: 0 success; 1 error (config, schemas, I/O); 2 usage error; \
                  3 completed, but records were rejected; 4 some tenants could not be collected (or their state saved); \
                  5 verify found a chain not whole.\n\
                  Environment: M365_SENTINEL__SECTION__KEY=value overrides config keys."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Reads the delivered rows back (Log Analytics Query API) and recomputes their integrity
    /// chains: missing, altered and forked rows, duplicates. Exit 0 only when whole, 5 if not.
    Verify {
        #[command(flatten)]
        common: Common,
        /// Only these tables (e.g. OfficeActivity_CL); default all.
        #[arg(long = "table", short = 't')]
        tables: Vec<String>,
        /// Only rows with TimeGenerated at or after this time (ISO 8601).
        #[arg(long)]
        since: Option<String>,
        /// Checkpoints younger than this many minutes are not held against the chain: rows
        /// take a few minutes to become queryable after the workspace accepted them.
        #[arg(long, default_value_t = 15)]
        settle_minutes: u64,
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

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::DryRun { common, input, out } => cli::dry_run::dry_run(&common, input, out),
        Command::Run {
            common,
            input,
            once,
        } => cli::run::run(&common, input, once),
        Command::Check { common } => cli::check::check(&common),
        Command::Schema { action } => cli::schema::schema(action),
        Command::Content {
            action: ContentAction::Rewrite { common, args },
        } => cli::content::rewrite(&cli::shared::load(&common)?, args),
        Command::Dlq {
            action: DlqAction::List { common },
        } => cli::dlq::list(&common),
        Command::Dlq {
            action: DlqAction::Replay { common, table },
        } => cli::dlq::replay(&common, table),
        Command::Verify {
            common,
            tables,
            since,
            settle_minutes,
        } => cli::verify::verify(&common, tables, since, settle_minutes),
    }
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
