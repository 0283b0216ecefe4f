//! `content rewrite`: reads Sentinel content, writes it back under `--out` with the table
//! references rewritten, prints a report per file, and with `--arm` one deployable template.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use m365_sentinel::content::deploy::Deployable;
use m365_sentinel::content::references::Finding;
use m365_sentinel::content::{self, Format, Target};
use m365_sentinel::pipeline::Setup;

#[derive(clap::Args)]
pub struct RewriteArgs {
    /// Content files or directories (rule, hunting-query and parser YAML, .kql, ARM .json).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Where the rewritten files go, under the same relative names.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// What the table references become: the `<Table>_All` functions or the `_CL` tables.
    #[arg(long, value_enum, default_value_t = Target::Functions)]
    pub target: Target,
    /// Also write one ARM template with the rewritten rules, hunting queries and functions.
    #[arg(long)]
    pub arm: Option<PathBuf>,
}

/// Rewrites every file it can; exits 1 when any file or query could not be read.
pub fn rewrite(setup: &Setup, args: RewriteArgs) -> anyhow::Result<ExitCode> {
    let names = content::table_names(&setup.schemas, args.target);
    let mut deployable = Deployable::default();
    let (mut files, mut references, mut problems) = (0usize, 0usize, 0usize);
    for (path, relative) in content::input_files(&args.paths) {
        let shown = path.display();
        let outcome = match content::rewrite_file(&path, &names) {
            Ok(outcome) => outcome,
            Err(e) => {
                println!("{shown}: error: {e}");
                problems += 1;
                continue;
            }
        };
        let target = args.out.join(&relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, &outcome.output)
            .with_context(|| format!("writing {}", target.display()))?;
        files += 1;
        if outcome.queries.is_empty() {
            println!("{shown}: no query found");
        }
        for query in &outcome.queries {
            if let Some((line, error)) = &query.error {
                println!("{shown}:{line}: error: {error}");
                problems += 1;
                continue;
            }
            let count = query
                .findings
                .iter()
                .filter(|(_, f)| matches!(f, Finding::Reference { .. }))
                .count();
            references += count;
            println!(
                "{shown}:{}: {}: {count} table reference(s) rewritten",
                query.line, query.field
            );
            for (line, finding) in &query.findings {
                match finding {
                    Finding::Reference { from, to } => println!("  {shown}:{line}: {from} -> {to}"),
                    Finding::Comparison { table, was } => {
                        println!("  {shown}:{line}: `{was}` now matches {table} and its _CL table")
                    }
                    Finding::NameAsData { table, context } => println!(
                        "  {shown}:{line}: check by hand: `{context}` names {table} as text"
                    ),
                    Finding::OtherSource { name } => println!(
                        "  {shown}:{line}: reads {name}, not one of ours: the workspace must have it"
                    ),
                }
            }
        }
        let all_rewritten =
            !outcome.queries.is_empty() && outcome.queries.iter().all(|q| q.error.is_none());
        if args.arm.is_some() && Format::of(&path) == Some(Format::Yaml) && !all_rewritten {
            println!("  {shown}: not in the ARM template: its query was not rewritten");
        } else if args.arm.is_some()
            && Format::of(&path) == Some(Format::Yaml)
            && let Err(why) = deployable.add_yaml(&outcome.output)
        {
            println!("  {shown}: not in the ARM template: {why}");
        }
    }
    if let Some(arm) = &args.arm {
        deployable.add_functions(&setup.schemas);
        let text = serde_json::to_string_pretty(&deployable.template())? + "\n";
        std::fs::write(arm, text).with_context(|| format!("writing {}", arm.display()))?;
        println!(
            "{}: {} analytics rule(s), {} hunting query(ies), {} function(s)",
            arm.display(),
            deployable.rules,
            deployable.hunting_queries,
            deployable.functions
        );
    }
    println!(
        "{files} file(s) written to {}, {references} table reference(s) rewritten, {problems} problem(s)",
        args.out.display()
    );
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
