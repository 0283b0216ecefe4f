//! `verify`: reads the delivered rows back from the workspace and recomputes their chains;
//! exit 0 only when every chain is whole.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use m365_sentinel::integrity::verify::{
    ChainReport, QueryClient, TableReport, VerifyOptions, verify_table,
};

use super::shared::{Common, init_logging, load, runtime};

/// Exit status when verify found a chain not whole (missing, altered, forked rows, unknown
/// keys, or rows without a chain).
pub const EXIT_NOT_WHOLE: u8 = 5;

pub fn verify(
    common: &Common,
    tables: Vec<String>,
    since: Option<String>,
    settle_minutes: u64,
) -> anyhow::Result<ExitCode> {
    let setup = load(common)?;
    init_logging(&setup.config.log.level, setup.config.log.format);
    let integrity = &setup.config.integrity;
    let keys = integrity
        .keyring()?
        .context("integrity.keys_dir is not set: verify needs the chain keys (old ones too)")?;
    let workspace = integrity.workspace_id.as_deref().context(
        "integrity.workspace_id is not set: the Workspace ID (a GUID) of the workspace to read back",
    )?;
    let sink = setup.config.sink.as_ref().context(
        "verify signs in with sink.credential: add the sink section (the identity needs Log Analytics Reader on the workspace)",
    )?;
    let credential_config = sink
        .credential
        .as_ref()
        .context("sink.credential is not set")?;
    let since = since
        .map(|t| {
            let mut out = String::new();
            m365_sentinel::stages::map::datetime::push_utc(&mut out, &t)
                .then_some(out)
                .with_context(|| {
                    format!("--since {t:?} is not an ISO 8601 time, e.g. 2026-12-01T00:00:00Z")
                })
        })
        .transpose()?;
    let chosen: Vec<usize> = if tables.is_empty() {
        (0..setup.schemas.tables.len()).collect()
    } else {
        tables
            .iter()
            .map(|name| {
                setup.schemas.table_by_name(name).with_context(|| {
                    format!("--table {name}: no such table in the schemas (e.g. OfficeActivity_CL)")
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let http = m365_sentinel::http_client::build(&setup.config.http)?;
    let credential = super::shared::sink_credential(sink, credential_config, &http)?;
    let (endpoint, scope) = integrity.query_api(sink.cloud);
    let client = QueryClient::new(
        http,
        credential,
        &endpoint,
        workspace,
        &scope,
        setup.config.retry_policy(),
    );
    let mut options = VerifyOptions {
        since,
        page_rows: integrity.page_rows(),
        checkpoints: BTreeMap::new(),
    };
    let health = setup
        .schemas
        .health_table()
        .map(|i| setup.schemas.tables[i].output_table.clone());
    let now = m365_sentinel::sources::management::client::now_millis();
    let settle = i64::try_from(settle_minutes.saturating_mul(60_000)).unwrap_or(i64::MAX);
    let before =
        m365_sentinel::stages::map::datetime::format_unix_millis(now.saturating_sub(settle));
    let reports = runtime()?.block_on(async {
        if let Some(health) = &health {
            options.checkpoints =
                m365_sentinel::integrity::verify::checkpoints(&client, health, &before).await?;
        }
        let mut reports = Vec::new();
        for &t in &chosen {
            let schema = &setup.schemas.tables[t];
            reports.push(verify_table(&client, &keys, schema, &options).await?);
        }
        Ok::<_, anyhow::Error>(reports)
    })?;
    let mut whole = true;
    for report in &reports {
        print!("{}", describe_table(report));
        whole &= report.is_whole();
    }
    if whole {
        println!("verify: every chain is whole");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("verify: NOT whole (see above)");
        Ok(ExitCode::from(EXIT_NOT_WHOLE))
    }
}

/// At most this many examples per finding.
const EXAMPLES: usize = 10;

fn list<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    let mut out: Vec<String> = items.iter().take(EXAMPLES).map(show).collect();
    if items.len() > EXAMPLES {
        out.push(format!("... {} more", items.len() - EXAMPLES));
    }
    out.join(", ")
}

fn describe_chain(c: &ChainReport) -> String {
    let mut out = format!(
        "  chain {}: sequence {}..{}, {} row(s): {}\n",
        c.stream,
        c.first,
        c.last,
        c.rows,
        if c.is_whole() { "whole" } else { "NOT whole" }
    );
    if c.starts_late {
        out.push_str("    starts after --since: the link into its first row is not checked\n");
    }
    if !c.missing.is_empty() {
        let _ = writeln!(
            out,
            "    missing: {} sequence number(s): {}",
            c.missing_count(),
            list(&c.missing, |(a, b)| if a == b {
                a.to_string()
            } else {
                format!("{a}..{b}")
            })
        );
    }
    if !c.altered.is_empty() {
        let _ = writeln!(
            out,
            "    altered (hash does not match content and place): {} row(s): {}",
            c.altered.len(),
            list(&c.altered, u64::to_string)
        );
    }
    if !c.forks.is_empty() {
        let _ = writeln!(
            out,
            "    forked (two different rows at one sequence number): {}",
            list(&c.forks, u64::to_string)
        );
    }
    if let Some(seq) = c.checkpoint_mismatch {
        let _ = writeln!(
            out,
            "    sequence {seq} does not carry the hash the connector checkpointed for it: the chain from there on was written again"
        );
    }
    if !c.unknown_keys.is_empty() {
        let _ = writeln!(
            out,
            "    sealed with a key not in integrity.keys_dir: {}",
            list(&c.unknown_keys, |(s, k)| format!("{s} ({k})"))
        );
    }
    if !c.duplicates.is_empty() {
        let copies: u64 = c.duplicates.iter().map(|(_, n)| n).sum();
        let _ = writeln!(
            out,
            "    duplicates (the same row sent again; not damage): {copies} extra cop(ies) at {} sequence number(s): {}",
            c.duplicates.len(),
            list(&c.duplicates, |(s, n)| format!("{s} (+{n})"))
        );
    }
    out
}

fn describe_table(r: &TableReport) -> String {
    let rows: u64 = r.chains.iter().map(|c| c.rows).sum::<u64>() + r.unchained;
    let mut out = format!(
        "{}: {} chain(s), {rows} row(s): {}\n",
        r.table,
        r.chains.len(),
        if r.is_whole() { "whole" } else { "NOT whole" }
    );
    if r.absent {
        out.push_str("  the workspace has no such table (not deployed: `schema dcr`)\n");
    }
    for c in &r.chains {
        out.push_str(&describe_chain(c));
    }
    if r.unchained > 0 {
        let _ = writeln!(
            out,
            "  rows without a chain (sent before integrity was on, or not by this connector): {} (TimeGenerated of the first: {})",
            r.unchained,
            r.unchained_examples.join(", ")
        );
    }
    out
}
