//! Where the tests find the third-party servers and tools they run: the overriding environment
//! variable first, then the copy `scripts/test` installs under `.tools/` (or `.venv/`), then PATH.
//! A missing one stops the test at once with one line naming it and the command that installs
//! it, before anything is started (no backtrace of a refused connection).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A server or tool installed by `scripts/test` (versions pinned in `scripts/tools.sh`).
pub struct Tool {
    /// What it is, as the message names it.
    pub name: &'static str,
    /// The variable that points at another copy.
    pub env: &'static str,
    /// Where `scripts/test` installs it, relative to the repository.
    pub installed: &'static str,
    /// The executable's name on PATH, if it may be taken from there.
    pub on_path: Option<&'static str>,
}

pub const TANSU: Tool = Tool {
    name: "tansu (the Kafka-protocol broker of the Event Hubs tests)",
    env: "TANSU_BIN",
    installed: ".tools/tansu/bin/tansu",
    on_path: Some("tansu"),
};

pub const AZURITE: Tool = Tool {
    name: "Azurite (the Blob service emulator of the Storage tests)",
    env: "AZURITE_BIN",
    installed: ".tools/azurite/node_modules/.bin/azurite-blob",
    on_path: Some("azurite-blob"),
};

pub const KQL_ANALYZER: Tool = Tool {
    name: "Microsoft's KQL analyzer (npm @kusto/language-service-next, for the content tests)",
    env: "KQL_ANALYZER_JS",
    installed: ".tools/kusto/node_modules/@kusto/language-service-next/Kusto.Language.Bridge.js",
    on_path: None,
};

pub const CHART_PYTHON: Tool = Tool {
    name: "the chart tools (helm-python-sdk, kubernetes-validate in .venv)",
    env: "CHART_PYTHON",
    installed: ".venv/bin/python",
    on_path: None,
};

/// The repository root (the tests' working tree).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The tool's executable, or the one-line reason it is not there and how to install it.
pub fn locate(
    tool: &Tool,
    root: &Path,
    env_value: Option<OsString>,
    path_var: Option<OsString>,
) -> Result<PathBuf, String> {
    if let Some(value) = env_value {
        let bin = PathBuf::from(value);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!(
                "missing: {}; {}={} does not exist: unset it and run `scripts/test`, which installs it into {}",
                tool.name,
                tool.env,
                bin.display(),
                tool.installed
            ))
        };
    }
    let installed = root.join(tool.installed);
    if installed.is_file() {
        return Ok(installed);
    }
    let from_path = tool.on_path.and_then(|exe| {
        path_var.and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(exe))
                .find(|candidate| candidate.is_file())
        })
    });
    from_path.ok_or_else(|| {
        format!(
            "missing: {}; run `scripts/test` (installs it into {} and runs the suite), or set {}",
            tool.name, tool.installed, tool.env
        )
    })
}

/// The tool's executable; a missing one fails the calling test with the one-line reason.
pub fn require(tool: &Tool) -> PathBuf {
    match locate(
        tool,
        repo_root(),
        std::env::var_os(tool.env),
        std::env::var_os("PATH"),
    ) {
        Ok(bin) => bin,
        // The one line, and no backtrace even with RUST_BACKTRACE set: resume_unwind fails the
        // test without running the panic hook.
        Err(reason) => {
            eprintln!("{reason}");
            std::panic::resume_unwind(Box::new(reason))
        }
    }
}
