//! The legacy HTTP Data Collector API sink (support ended 2026-09-14; ingestion still works for
//! TLS 1.2+ clients). Off by default: prefer the Logs Ingestion API. `SharedKey` HMAC-SHA256
//! signature, `Log-Type` per table, `x-ms-date`, `time-generated-field`, optional
//! `x-ms-AzureResourceId`; 30 MB per post, 32 KB per field (the service cuts longer values).

pub mod signature;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Deserialize;

use crate::schema::TableSchema;
use crate::sinks::batch::Body;
use crate::stages::decode::Fields;
use crate::stages::map::json::{push_compact, push_json_string};

/// Per post.
pub const MAX_POST_BYTES: usize = 30_000_000;
/// Per field value.
pub const MAX_FIELD_BYTES: usize = 32 * 1024;
/// `TimeGenerated` is a reserved name here; rows carry it under this name, and the
/// `time-generated-field` header points the service at it.
pub const TIME_FIELD: &str = "EventTime";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataCollectorConfig {
    pub workspace_id: String,
    /// The workspace's primary or secondary key (base64), from a file or an environment variable.
    #[serde(default)]
    pub shared_key_file: Option<PathBuf>,
    #[serde(default)]
    pub shared_key_env: Option<String>,
    /// Fills `_ResourceId` so rows show in resource-context queries.
    #[serde(default)]
    pub azure_resource_id: Option<String>,
    /// Default: `https://<workspace>.ods.opinsights.azure.com` (`.us`, `.cn` by cloud).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub allow_plain_http_loopback: bool,
    /// Sentinel table → Log-Type; default the output table without `_CL` (the service adds it).
    #[serde(default)]
    pub log_types: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataCollectorError {
    #[error("data_collector: Log-Type {0:?} must be letters, digits and '_', at most 100")]
    LogType(String),
    #[error("data_collector: {0}")]
    Config(String),
    #[error(transparent)]
    Signature(#[from] signature::SignatureError),
}

/// `Log-Type` rules: letters, digits and underscore, at most 100 characters.
pub fn check_log_type(log_type: &str) -> Result<(), DataCollectorError> {
    let ok = !log_type.is_empty()
        && log_type.len() <= 100
        && log_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then_some(())
        .ok_or_else(|| DataCollectorError::LogType(log_type.to_string()))
}

impl DataCollectorConfig {
    pub fn log_type(&self, table: &TableSchema) -> Result<String, DataCollectorError> {
        let log_type = self
            .log_types
            .get(&table.table)
            .cloned()
            .unwrap_or_else(|| {
                table
                    .output_table
                    .strip_suffix("_CL")
                    .unwrap_or(&table.output_table)
                    .to_string()
            });
        check_log_type(&log_type)?;
        Ok(log_type)
    }

    pub fn url(&self, host_suffix: &str) -> Result<reqwest::Url, DataCollectorError> {
        let base = match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("https://{}.{host_suffix}", self.workspace_id),
        };
        let url = reqwest::Url::parse(&base)
            .and_then(|u| u.join("api/logs?api-version=2016-04-01"))
            .map_err(|e| DataCollectorError::Config(format!("endpoint {base:?}: {e}")))?;
        let loopback = url
            .host_str()
            .is_some_and(|h| h == "127.0.0.1" || h == "localhost");
        if url.scheme() != "https" && !(self.allow_plain_http_loopback && loopback) {
            return Err(DataCollectorError::Config(format!(
                "endpoint {base:?} must be https (TLS 1.2+ is required by the service)"
            )));
        }
        Ok(url)
    }

    pub fn shared_key(&self) -> Result<String, DataCollectorError> {
        match (&self.shared_key_file, &self.shared_key_env) {
            (Some(path), None) => std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    DataCollectorError::Config(format!("shared_key_file {}: {e}", path.display()))
                }),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                DataCollectorError::Config(format!("shared_key_env {var} is not set"))
            }),
            _ => Err(DataCollectorError::Config(
                "give exactly one of shared_key_file and shared_key_env".into(),
            )),
        }
    }
}

/// RFC 1123 date for `x-ms-date`, e.g. `Mon, 04 Apr 2016 08:00:00 GMT`.
pub fn rfc1123(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = secs.div_euclid(86_400);
    let stamp = crate::stages::map::datetime::format_unix_millis(secs * 1000);
    // stamp: YYYY-MM-DDTHH:MM:SS.mmmZ
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month = match &stamp[5..7] {
        "01" => "Jan",
        "02" => "Feb",
        "03" => "Mar",
        "04" => "Apr",
        "05" => "May",
        "06" => "Jun",
        "07" => "Jul",
        "08" => "Aug",
        "09" => "Sep",
        "10" => "Oct",
        "11" => "Nov",
        _ => "Dec",
    };
    format!(
        "{weekday}, {} {month} {} {} GMT",
        &stamp[8..10],
        &stamp[0..4],
        &stamp[11..19]
    )
}

/// The body as the Data Collector API wants it: `TimeGenerated` renamed to [`TIME_FIELD`].
pub fn request_body(body: &Body) -> Vec<u8> {
    let mut out = String::with_capacity(body.bytes.len() + 16 * body.rows());
    out.push('[');
    for i in 0..body.rows() {
        if i > 0 {
            out.push(',');
        }
        let row = String::from_utf8_lossy(body.row(i));
        match Fields::parse(&row) {
            Ok(fields) => {
                out.push('{');
                for (n, (key, value)) in fields.0.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    push_json_string(
                        &mut out,
                        if key == "TimeGenerated" {
                            TIME_FIELD
                        } else {
                            key
                        },
                    );
                    out.push(':');
                    push_compact(&mut out, value.get());
                }
                out.push('}');
            }
            // Rows come from the mapper and always parse; keep one that didn't as it was.
            Err(_) => out.push_str(&row),
        }
    }
    out.push(']');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::batch::BodyBuilder;

    #[test]
    fn dates_are_rfc1123() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_459_756_800);
        assert_eq!(rfc1123(at), "Mon, 04 Apr 2016 08:00:00 GMT");
    }

    #[test]
    fn log_types() {
        assert!(check_log_type("OfficeActivity").is_ok());
        assert!(check_log_type("Bad-Name").is_err());
        assert!(check_log_type(&"a".repeat(101)).is_err());
    }

    #[test]
    fn time_generated_is_renamed() {
        let mut b = BodyBuilder::new(1000);
        b.push(br#"{"TimeGenerated":"2026-01-01T00:00:00Z","A":{"x":1}}"#)
            .unwrap();
        let body = b.take().unwrap();
        assert_eq!(
            String::from_utf8(request_body(&body)).unwrap(),
            r#"[{"EventTime":"2026-01-01T00:00:00Z","A":{"x":1}}]"#
        );
    }
}
