//! Typed configuration: a YAML file, overridden by environment variables, validated up front.
//! Unknown keys are errors (a typo must not silently fall back to a default), and error messages
//! never echo a value, since a misplaced secret would otherwise end up in a log.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::sinks::batch::DEFAULT_MAX_BODY_BYTES;
use crate::sources::file::FileOptions;
use crate::stages::map::MapOptions;
use crate::stages::redact::RuleSpec;

/// Prefix of environment overrides: `M365_SENTINEL__BATCH__MAX_BODY_BYTES=500000` sets
/// `batch.max_body_bytes`. Double underscores separate levels; names are lowercased.
pub const ENV_PREFIX: &str = "M365_SENTINEL__";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of table schemas, enums.yaml and redaction.yaml; the embedded copy when unset.
    #[serde(default)]
    pub schemas_dir: Option<PathBuf>,
    #[serde(default)]
    pub input: InputConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub redaction: RedactionConfig,
    #[serde(default)]
    pub dry_run: DryRunConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Where `run` delivers; required by `run` and `dlq replay`.
    #[serde(default)]
    pub sink: Option<SinkConfig>,
    #[serde(default)]
    pub dlq: DlqConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    /// The Office 365 Management Activity API: tenants to collect the audit log of.
    #[serde(default)]
    pub management_api: crate::sources::management::ManagementConfig,
    /// Defender email events from the Streaming API's exports (event hubs, storage accounts).
    #[serde(default)]
    pub defender: crate::sources::defender::DefenderConfig,
    /// The on-disk queue between mapping and delivery (`run`).
    #[serde(default)]
    pub spool: crate::state::spool::SpoolConfig,
    /// Chains over the delivered rows (`verify`).
    #[serde(default)]
    pub integrity: crate::integrity::IntegrityConfig,
    /// Health rows in the workspace (M365SentinelHealth_CL).
    #[serde(default)]
    pub health: crate::ops::health::HealthConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Prices for the dry-run's cost report.
    #[serde(default)]
    pub cost: crate::ops::cost::CostConfig,
    /// The raw archive: every record as received, to Blob Storage (`run` with live sources).
    #[serde(default)]
    pub archive: Option<crate::sinks::archive::ArchiveConfig>,
}

/// The health and metrics endpoint of `run`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` serving /healthz, /readyz and /metrics (e.g. `0.0.0.0:9464`); off when unset.
    pub listen: Option<String>,
}

/// The workspace side: the Logs Ingestion API and the identity that may write to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The Logs Ingestion API (the default, and the one to use).
    #[serde(default)]
    pub logs_ingestion: Option<crate::sinks::logs_ingestion::LogsIngestionConfig>,
    /// The legacy Data Collector API (retired 2026-09-14): instead of logs_ingestion.
    #[serde(default)]
    pub data_collector: Option<crate::sinks::data_collector::DataCollectorConfig>,
    /// The identity for the Logs Ingestion API.
    #[serde(default)]
    pub credential: Option<crate::auth::CredentialConfig>,
    #[serde(default)]
    pub cloud: crate::auth::Cloud,
    /// Overrides the cloud's login host (sovereign and private clouds).
    #[serde(default)]
    pub authority_host: Option<String>,
    /// Requests in flight at once, per stream.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// A partly filled body is sent this long after its first row.
    #[serde(default = "default_flush_delay_ms")]
    pub flush_delay_ms: u64,
    /// On SIGTERM, requests in flight get this long to finish (under Kubernetes' 30 s grace
    /// period); what is not delivered by then stays in the spool.
    #[serde(default = "default_shutdown_deadline_secs")]
    pub shutdown_deadline_secs: u64,
}

fn default_shutdown_deadline_secs() -> u64 {
    25
}

fn default_concurrency() -> usize {
    4
}

fn default_flush_delay_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlqConfig {
    /// Dead letters (rows the service refused for good) and refused input records.
    pub dir: PathBuf,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("dead-letters"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Extra CA certificates (PEM) trusted for every outbound connection, token requests
    /// included: TLS-inspecting proxies. HTTPS_PROXY and NO_PROXY are honoured as they are.
    pub ca_bundle: Option<PathBuf>,
    /// Per-request timeout.
    pub timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            ca_bundle: None,
            timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub min_delay_ms: u64,
    /// The longest wait between attempts, unless the service's Retry-After asks for more.
    pub max_delay_secs: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            min_delay_ms: 500,
            max_delay_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Files or directories read when no --input is given; `-` is stdin.
    pub paths: Vec<PathBuf>,
    pub max_record_bytes: usize,
    pub max_document_bytes: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        let file = FileOptions::default();
        Self {
            paths: Vec::new(),
            max_record_bytes: file.max_record_bytes,
            max_document_bytes: file.max_document_bytes,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Request body limit, uncompressed and compressed.
    pub max_body_bytes: usize,
    /// Longest field value; longer values are truncated with a marker.
    pub max_field_bytes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_field_bytes: MapOptions::default().max_field_bytes,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// Rules added to those of redaction.yaml.
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DryRunConfig {
    pub out_dir: PathBuf,
}

impl Default for DryRunConfig {
    fn default() -> Self {
        Self {
            out_dir: PathBuf::from("dry-run-out"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter: error, warn, info, debug, trace, or per-module directives.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Replaces quoted values in deserializer messages ("invalid type: string \"...\"").
fn hide_values(message: &str) -> String {
    // serde's wording: invalid type: integer `5`, invalid value: string "x", unknown variant `y`.
    let re = regex::Regex::new(
        r#"(integer|floating point|boolean|string|char|variant|value) (?:`[^`]*`|"(?:[^"\\]|\\.)*")"#,
    );
    match re {
        Ok(re) => re.replace_all(message, "$1 (value not shown)").into_owned(),
        Err(_) => message.to_string(),
    }
}

fn set_path(
    root: &mut yaml_serde::Value,
    path: &[String],
    value: yaml_serde::Value,
) -> Result<(), String> {
    let mut node = root;
    for (i, key) in path.iter().enumerate() {
        if node.is_null() {
            *node = yaml_serde::Value::Mapping(Default::default());
        }
        let map = node
            .as_mapping_mut()
            .ok_or_else(|| format!("{} is not a section", path[..i].join(".")))?;
        let k = yaml_serde::Value::String(key.clone());
        if i + 1 == path.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map.entry(k).or_insert(yaml_serde::Value::Null);
    }
    Ok(())
}

impl Config {
    /// Loads `path` (or the defaults) and applies `M365_SENTINEL__*` overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (origin, text) = match path {
            Some(p) => (
                format!("config file {}", p.display()),
                std::fs::read_to_string(p).map_err(|error| ConfigError::Read {
                    path: p.to_path_buf(),
                    error,
                })?,
            ),
            None => ("default config".to_string(), String::new()),
        };
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.clone(),
            message: hide_values(&message),
        };
        let mut value: yaml_serde::Value = if text.trim().is_empty() {
            yaml_serde::Value::Mapping(Default::default())
        } else {
            yaml_serde::from_str(&text).map_err(|e| invalid(e.to_string()))?
        };
        let mut overrides = Vec::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if keys.iter().any(String::is_empty) {
                return Err(invalid(format!(
                    "environment variable {name}: empty key segment"
                )));
            }
            // Values are read as YAML (numbers, booleans, [lists]); one that then fails to fit a
            // text setting (out_dir: 12345) is retried as the text it was.
            let parsed: yaml_serde::Value =
                yaml_serde::from_str(&raw).unwrap_or(yaml_serde::Value::String(raw.clone()));
            set_path(&mut value, &keys, parsed)
                .map_err(|m| invalid(format!("environment variable {name}: {m}")))?;
            overrides.push((name, keys, raw, false));
        }
        let config: Config = loop {
            // serde_path_to_error names the offending key (batch.max_body_bytes), which
            // yaml_serde cannot do for a value tree built from file and environment together.
            let e = match serde_path_to_error::deserialize(value.clone()) {
                Ok(config) => break config,
                Err(e) => e,
            };
            let path = e.path().to_string();
            let retry = overrides.iter_mut().find(|(_, keys, raw, retried)| {
                !*retried
                    && keys.join(".") == path
                    && !matches!(
                        yaml_serde::from_str::<yaml_serde::Value>(raw),
                        Ok(yaml_serde::Value::String(_)) | Err(_)
                    )
            });
            if let Some((_, keys, raw, retried)) = retry {
                *retried = true;
                set_path(&mut value, keys, yaml_serde::Value::String(raw.clone()))
                    .map_err(&invalid)?;
                continue;
            }
            let mut message = if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            };
            if !overrides.is_empty() {
                let names: Vec<&str> = overrides.iter().map(|(n, ..)| n.as_str()).collect();
                message.push_str(&format!(
                    " (environment overrides applied: {})",
                    names.join(", ")
                ));
            }
            return Err(invalid(message));
        };
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Every section's problem at once (each section stops at its first), one per line.
    fn validate(&self) -> Result<(), String> {
        let problems: Vec<String> = [
            self.validate_limits(),
            self.validate_sink(),
            self.management_api.validate(),
            self.defender.validate(),
            self.spool.validate(),
            self.integrity.validate(),
            self.health.validate(),
            self.archive.as_ref().map_or(Ok(()), |a| a.validate()),
            self.validate_log(),
        ]
        .into_iter()
        .filter_map(Result::err)
        .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n  "))
        }
    }

    fn validate_limits(&self) -> Result<(), String> {
        let b = &self.batch;
        if !(1024..=DEFAULT_MAX_BODY_BYTES).contains(&b.max_body_bytes) {
            return Err(format!(
                "batch.max_body_bytes is {}; it must be between 1024 and {DEFAULT_MAX_BODY_BYTES} (the Logs Ingestion API takes at most 1 MB per call)",
                b.max_body_bytes
            ));
        }
        if !(1024..=65_536).contains(&b.max_field_bytes) {
            return Err(format!(
                "batch.max_field_bytes is {}; it must be between 1024 and 65536 (the service cuts fields at 64 KB)",
                b.max_field_bytes
            ));
        }
        if self.input.max_record_bytes < 1024 || self.input.max_document_bytes < 1024 {
            return Err(
                "input.max_record_bytes and input.max_document_bytes must be at least 1024".into(),
            );
        }
        Ok(())
    }

    fn validate_sink(&self) -> Result<(), String> {
        let b = &self.batch;
        if let Some(sink) = &self.sink {
            match (&sink.logs_ingestion, &sink.data_collector, &sink.credential) {
                (Some(_), None, Some(_)) => {}
                (Some(_), None, None) => {
                    return Err("sink.logs_ingestion needs sink.credential (client_secret, workload_identity or managed_identity)".into());
                }
                (None, Some(_), _) => {
                    if b.max_field_bytes > crate::sinks::data_collector::MAX_FIELD_BYTES {
                        return Err(format!(
                            "the Data Collector API cuts fields at 32 KB: set batch.max_field_bytes to at most {}",
                            crate::sinks::data_collector::MAX_FIELD_BYTES
                        ));
                    }
                }
                _ => {
                    return Err(
                        "sink needs exactly one of logs_ingestion and data_collector".into(),
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_log(&self) -> Result<(), String> {
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(
                "log.level is not a valid filter; use error, warn, info, debug, trace or tracing directives such as m365_sentinel=debug".into(),
            );
        }
        Ok(())
    }

    pub fn retry_policy(&self) -> crate::sinks::retry::RetryPolicy {
        crate::sinks::retry::RetryPolicy {
            min_delay: std::time::Duration::from_millis(self.retry.min_delay_ms.max(1)),
            max_delay: std::time::Duration::from_secs(self.retry.max_delay_secs.max(1)),
        }
    }

    pub fn file_options(&self) -> FileOptions {
        FileOptions {
            max_record_bytes: self.input.max_record_bytes,
            max_document_bytes: self.input.max_document_bytes,
        }
    }

    pub fn map_options(&self) -> MapOptions {
        MapOptions {
            max_field_bytes: self.batch.max_field_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_and_env_overrides() {
        let c = load("batch:\n  max_body_bytes: 500000\n", &[]).unwrap();
        assert_eq!(c.batch.max_body_bytes, 500_000);
        assert_eq!(c.batch.max_field_bytes, 64_000);
        let c = load(
            "batch:\n  max_body_bytes: 500000\n",
            &[
                ("M365_SENTINEL__BATCH__MAX_BODY_BYTES", "400000"),
                ("M365_SENTINEL__LOG__FORMAT", "json"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.batch.max_body_bytes, 400_000);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn env_values_that_look_like_numbers_still_fill_text_settings() {
        let c = load("", &[("M365_SENTINEL__DRY_RUN__OUT_DIR", "12345")]).unwrap();
        assert_eq!(c.dry_run.out_dir, PathBuf::from("12345"));
        let c = load("", &[("M365_SENTINEL__INPUT__MAX_RECORD_BYTES", "2048")]).unwrap();
        assert_eq!(c.input.max_record_bytes, 2048);
    }

    #[test]
    fn unknown_keys_are_errors_from_file_and_env() {
        let e = load("batch:\n  max_body_byte: 5\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_body_byte") && e.contains("c.yaml"), "{e}");
        let e = load("", &[("M365_SENTINEL__BATCH__NOPE", "1")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope") && e.contains("M365_SENTINEL__BATCH__NOPE"),
            "{e}"
        );
    }

    #[test]
    fn limits_are_enforced() {
        let e = load("batch:\n  max_body_bytes: 2000000\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("batch.max_body_bytes") && e.contains("1000000"),
            "{e}"
        );
    }

    #[test]
    fn values_are_never_echoed_in_errors() {
        let e = load("batch:\n  max_body_bytes: \"hunter2-secret\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("max_body_bytes"), "{e}");
        let e = load(
            "",
            &[("M365_SENTINEL__BATCH__MAX_FIELD_BYTES", "s3cr3t-value")],
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    const TENANT_YAML: &str = "management_api:\n  tenants:\n    - tenant_id: 7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d\n      publisher_identifier: 99999999-8888-4777-8666-555555555555\n      cloud: gcc_high\n      content_types: [Audit.Exchange, DLP.All]\n      credential:\n        kind: client_secret\n        tenant_id: 7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d\n        client_id: 0f0e0d0c-0b0a-4909-8887-868584838281\n        secret_file: /run/secrets/m365\n";

    #[test]
    fn management_tenants_load_with_their_cloud_and_content_types() {
        let c = load(TENANT_YAML, &[]).unwrap();
        let t = &c.management_api.tenants[0];
        assert_eq!(t.content_types(), ["Audit.Exchange", "DLP.All"]);
        assert_eq!(t.endpoint(), "https://manage.office365.us");
        assert_eq!(t.cloud.scope(), "https://manage.office365.us/.default");
        assert_eq!(t.cloud.entra_cloud(), crate::auth::Cloud::UsGovernment);
        assert_eq!(c.management_api.requests_per_minute, 2_000);
        assert_eq!(c.management_api.initial_lookback_hours, 168);
    }

    #[test]
    fn every_section_s_problem_is_named_at_once() {
        let e = load(
            "batch:\n  max_body_bytes: 10\nlog:\n  level: \"=bad=\"\nspool:\n  max_bytes: 1\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("batch.max_body_bytes"), "{e}");
        assert!(e.contains("log.level"), "{e}");
        assert!(e.contains("spool."), "{e}");
        assert_eq!(e.lines().count(), 3, "{e}");
    }

    #[test]
    fn management_mistakes_are_named() {
        let cases = [
            (
                TENANT_YAML.replace("[Audit.Exchange, DLP.All]", "[Audit.Exchnage]"),
                "content_types",
            ),
            (
                TENANT_YAML.replace(
                    "        tenant_id: 7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                    "        tenant_id: 00000000-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                ),
                "AF20010",
            ),
            (
                format!("{TENANT_YAML}  initial_lookback_hours: 200\n"),
                "initial_lookback_hours",
            ),
            (
                TENANT_YAML.replace("gcc_high", "gcc_medium"),
                "management_api.tenants[0].cloud",
            ),
        ];
        for (yaml, expected) in cases {
            let e = load(&yaml, &[]).unwrap_err().to_string();
            assert!(e.contains(expected), "{expected}: {e}");
        }
        // GUID forms are found with every other start-up problem, by `preflight`.
        let config = load(
            &TENANT_YAML.replace("99999999-8888-4777-8666-555555555555", "contoso"),
            &[],
        )
        .unwrap();
        let schemas = crate::schema::SchemaSet::embedded().unwrap();
        let problems = crate::ops::preflight::check(&config, &schemas);
        assert!(
            problems
                .iter()
                .any(|p| p.key == "management_api.tenants[0].publisher_identifier"),
            "{problems:?}"
        );
    }
}
