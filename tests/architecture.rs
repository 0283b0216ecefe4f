//! ARCHITECTURE.md matches the tree: every top-level folder of src/ is in it, and every path it
//! names exists.

use std::path::Path;

fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn architecture_names_every_folder_and_only_paths_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let names = backticked(&doc);
    for entry in std::fs::read_dir(root.join("src")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            let folder = format!("{}/", entry.file_name().to_string_lossy());
            assert!(
                names.iter().any(|n| n.starts_with(&folder)),
                "src/{folder} is not in ARCHITECTURE.md"
            );
        }
    }
    let top = [
        "tests/", "scripts/", "helm/", "benches/", "schemas/", "rules/",
    ];
    let mut checked = 0;
    for name in names {
        let path = name.split_whitespace().next().unwrap_or("");
        // `.tools/`, `.venv/`: made by scripts/test, not part of the tree.
        let looks_like_path = path.contains('/')
            && !path.starts_with('.')
            && (path.ends_with('/') || path.ends_with(".rs"))
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_/.-".contains(c));
        if !looks_like_path {
            continue;
        }
        let in_src = root
            .join("src")
            .join(path.strip_prefix("src/").unwrap_or(path));
        let at_root = top.iter().any(|t| path.starts_with(t)) && root.join(path).exists();
        assert!(
            in_src.exists() || at_root,
            "ARCHITECTURE.md names `{path}`, which does not exist"
        );
        checked += 1;
    }
    assert!(checked > 30, "{checked} paths checked");
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path, text));
        }
    }
    out
}

/// One wiring: the front end is started in one place (`run::run`), and the commands reach it
/// only through `run::run` (or `run::replay` and `run::dry_run`, which call it). A second
/// wiring would have to call `drive` itself, or hand-build a consumer in `cli/`.
#[test]
fn every_command_runs_the_one_pipeline_builder() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&src);
    let callers: Vec<String> = files
        .iter()
        .filter(|(_, text)| text.contains("drive(&") || text.contains("pipeline::drive("))
        .map(|(path, _)| path.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    assert_eq!(
        callers,
        ["run/mod.rs"],
        "only run::run starts the front end"
    );
    let run_mod = std::fs::read_to_string(src.join("run/mod.rs")).unwrap();
    for helper in ["pub fn dry_run(", "pub async fn replay("] {
        let body = run_mod.split(helper).nth(1).expect(helper);
        let body = body.split("\n}\n").next().unwrap();
        assert!(body.contains("run(setup"), "{helper} goes through run()");
    }
    for (path, text) in files.iter().filter(|(p, _)| p.starts_with(src.join("cli"))) {
        for private in ["process_unit", "DryRunSink", "BodyBuilder", "Spool::reader"] {
            assert!(
                !text.contains(private),
                "{} wires {private} itself instead of plugging a delivery into run::run",
                path.display()
            );
        }
    }
    let wiring = [
        "run(setup.clone(), Intake::Files",
        "run(setup.clone(), Intake::Units",
    ];
    let pass = std::fs::read_to_string(src.join("cli/pass.rs")).unwrap();
    for call in wiring {
        assert!(pass.contains(call), "cli/pass.rs: {call}");
    }
    for command in ["cli/run.rs", "cli/dry_run.rs"] {
        let text = std::fs::read_to_string(src.join(command)).unwrap();
        assert!(
            text.contains("pass(&rt, &setup"),
            "{command} runs the shared pass"
        );
    }
}
