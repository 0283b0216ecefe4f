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
    let top = ["tests/", "scripts/", "helm/", "benches/", "schemas/"];
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
