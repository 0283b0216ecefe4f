//! `schema dcr|kql`: the Azure-side definitions generated from the schemas.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use super::shared::{Common, load};

#[derive(Subcommand)]
pub enum SchemaAction {
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
    /// The analytics rules on the health table (stopped reporting, lag over 24 hours, failing,
    /// dead letters growing) as an ARM template.
    Rules {
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
    },
}

pub fn schema(action: SchemaAction) -> anyhow::Result<ExitCode> {
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
        SchemaAction::Rules { out } => {
            let template =
                m365_sentinel::ops::health_rules::template().map_err(|e| anyhow::anyhow!(e))?;
            (out, serde_json::to_string_pretty(&template)? + "\n")
        }
    };
    match out {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
