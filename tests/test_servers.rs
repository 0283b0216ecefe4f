//! The tests that need a third-party server stop at once, with one line naming it and the
//! command that installs it, when it is missing (`tests/common/tools.rs`).

#[allow(dead_code)]
#[path = "common/tools.rs"]
mod tools;

use std::ffi::OsString;

use tools::{AZURITE, CHART_PYTHON, KQL_ANALYZER, TANSU, locate};

fn empty_root() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn a_missing_server_is_named_in_one_line_with_the_command_that_installs_it() {
    let root = empty_root();
    let empty_path = Some(OsString::from(root.path()));
    for tool in [&TANSU, &AZURITE, &CHART_PYTHON, &KQL_ANALYZER] {
        let reason = locate(tool, root.path(), None, empty_path.clone()).unwrap_err();
        assert_eq!(reason.lines().count(), 1, "{reason}");
        assert!(
            reason.starts_with(&format!("missing: {}", tool.name)),
            "{reason}"
        );
        assert!(reason.contains("run `scripts/test`"), "{reason}");
        assert!(reason.contains(tool.installed), "{reason}");
        assert!(reason.contains(tool.env), "{reason}");
    }
}

#[test]
fn an_override_that_points_nowhere_is_named_not_silently_replaced() {
    let root = empty_root();
    // Even with an installed copy present, a wrong override is the user's mistake to hear of.
    let installed = root.path().join(TANSU.installed);
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::write(&installed, "").unwrap();
    let missing = root.path().join("nowhere/tansu");
    let reason = locate(&TANSU, root.path(), Some(missing.clone().into()), None).unwrap_err();
    assert_eq!(reason.lines().count(), 1, "{reason}");
    assert!(reason.contains("TANSU_BIN="), "{reason}");
    assert!(reason.contains(&missing.display().to_string()), "{reason}");
    assert!(reason.contains("scripts/test"), "{reason}");
}

#[test]
fn the_installed_copy_comes_before_path_and_path_is_the_last_resort() {
    let root = empty_root();
    let bin_dir = root.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::write(bin_dir.join("azurite-blob"), "").unwrap();
    let path = Some(OsString::from(&bin_dir));
    assert_eq!(
        locate(&AZURITE, root.path(), None, path.clone()).unwrap(),
        bin_dir.join("azurite-blob")
    );
    let installed = root.path().join(AZURITE.installed);
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::write(&installed, "").unwrap();
    assert_eq!(
        locate(&AZURITE, root.path(), None, path).unwrap(),
        installed
    );
    // The chart's python is never taken from PATH: only .venv has the pinned tools.
    let python_dir = root.path().join("py");
    std::fs::create_dir_all(&python_dir).unwrap();
    std::fs::write(python_dir.join("python"), "").unwrap();
    assert!(locate(&CHART_PYTHON, root.path(), None, Some(python_dir.into())).is_err());
}
