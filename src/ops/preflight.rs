//! Everything `run` would refuse at start-up, found at once and without a network call or a
//! file written: URL schemes and hosts, DCR immutable ids, GUIDs, readable secret and
//! certificate files, writable state directories, one stream per table. `check` lists every
//! problem; `run` calls the same function first, so it refuses nothing `check` accepted.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::auth::CredentialConfig;
use crate::config::Config;
use crate::schema::SchemaSet;
use crate::sources::eventhubs::config::EventHubAuth;
use crate::sources::storage::config::StorageAuth;

/// One start-up refusal: the setting, what is wrong, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.key, self.problem, self.fix)
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    /// A URL that must be HTTPS (or plain HTTP to loopback when `loopback_ok`).
    fn url(&mut self, key: &str, value: &str, loopback_ok: bool) {
        // A query string may hold a SAS signature: messages show the URL without it.
        let shown = value.split(['?', '#']).next().unwrap_or(value);
        let value = shorten(shown);
        let value = value.as_str();
        let Ok(url) = reqwest::Url::parse(shown) else {
            return self.add(
                key,
                format!("`{value}` is not a URL"),
                "write it as https://host/",
            );
        };
        let host = url.host_str().unwrap_or("");
        if host.is_empty() {
            return self.add(
                key,
                format!("`{value}` has no host"),
                "write it as https://host/",
            );
        }
        let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
        if url.scheme() != "https" && !(loopback_ok && loopback) {
            let fix = if loopback {
                "use https, or set allow_plain_http_loopback: true for a local test endpoint"
            } else {
                "use https: plain HTTP is allowed to 127.0.0.1 only, for tests"
            };
            self.add(key, format!("`{value}` is not HTTPS"), fix);
        }
    }

    fn guid(&mut self, key: &str, value: &str, what: &str) {
        if !is_guid(value) {
            self.add(
                key,
                format!("`{}` is not a GUID", shorten(value)),
                format!("use the {what} (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
            );
        }
    }

    /// A tenant may be named by its GUID or a verified domain (contoso.onmicrosoft.com).
    fn tenant(&mut self, key: &str, value: &str) {
        let domain = value.contains('.') && !value.contains(['/', ' ', ':']);
        if !is_guid(value) && !domain {
            self.add(
                key,
                format!("`{}` is neither a tenant GUID nor a domain", shorten(value)),
                "use the directory (tenant) id from Entra ID's overview page",
            );
        }
    }

    fn readable(&mut self, key: &str, path: &Path) {
        if let Err(e) = std::fs::File::open(path) {
            self.add(
                key,
                format!("{} cannot be read ({e})", path.display()),
                "mount the Secret there, or fix the path",
            );
        }
    }

    /// A directory that will be created or written: it, or its nearest existing ancestor, must
    /// be a directory that is not read-only.
    fn writable_dir(&mut self, key: &str, path: &Path) {
        let mut at = Some(path);
        while let Some(dir) = at {
            if let Ok(meta) = std::fs::metadata(dir) {
                if !meta.is_dir() {
                    self.add(
                        key,
                        format!("{} is not a directory", dir.display()),
                        "point it at a directory on the volume",
                    );
                } else if meta.permissions().readonly() {
                    self.add(
                        key,
                        format!("{} is read-only", dir.display()),
                        "mount a writable volume there",
                    );
                }
                return;
            }
            at = dir.parent().filter(|p| !p.as_os_str().is_empty());
        }
    }

    /// An app registration: its tenant and its application (client) id.
    fn app(&mut self, key: &str, tenant_id: &str, client_id: &str) {
        self.tenant(&format!("{key}.tenant_id"), tenant_id);
        self.guid(
            &format!("{key}.client_id"),
            client_id,
            "application (client) id",
        );
    }

    fn credential(&mut self, key: &str, credential: &CredentialConfig) {
        match credential {
            CredentialConfig::ClientSecret {
                tenant_id,
                client_id,
                secret_file,
                secret_env,
            } => {
                self.app(key, tenant_id, client_id);
                match (secret_file, secret_env) {
                    (Some(file), None) => self.readable(&format!("{key}.secret_file"), file),
                    (None, Some(var)) if std::env::var_os(var).is_none() => self.add(
                        format!("{key}.secret_env"),
                        format!("the variable {var} is not set"),
                        "set it from the Secret, or use secret_file",
                    ),
                    (None, Some(_)) => {}
                    _ => self.add(
                        key,
                        "a client secret needs exactly one of secret_file and secret_env",
                        "keep one of them",
                    ),
                }
            }
            CredentialConfig::ClientCertificate {
                tenant_id,
                client_id,
                certificate_file,
                password_file,
            } => {
                self.app(key, tenant_id, client_id);
                self.readable(&format!("{key}.certificate_file"), certificate_file);
                if let Some(file) = password_file {
                    self.readable(&format!("{key}.password_file"), file);
                }
            }
            CredentialConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => {
                if let Some(t) = tenant_id {
                    self.tenant(&format!("{key}.tenant_id"), t);
                }
                if let Some(c) = client_id {
                    self.guid(&format!("{key}.client_id"), c, "application (client) id");
                }
                if let Some(file) = token_file {
                    self.readable(&format!("{key}.token_file"), file);
                }
            }
            CredentialConfig::ManagedIdentity { client_id } => {
                if let Some(c) = client_id {
                    self.guid(
                        &format!("{key}.client_id"),
                        c,
                        "managed identity's client id",
                    );
                }
            }
        }
    }
}

fn is_guid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A DCR's immutable id: `dcr-` and 32 hexadecimal digits.
pub fn is_dcr_immutable_id(value: &str) -> bool {
    value
        .strip_prefix("dcr-")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Values in messages are settings, not secrets, but a long one is cut.
fn shorten(value: &str) -> String {
    if value.chars().count() > 60 {
        format!("{}...", value.chars().take(60).collect::<String>())
    } else {
        value.to_string()
    }
}

/// Every start-up refusal of `config` with `schemas`, in config order.
pub fn check(config: &Config, schemas: &SchemaSet) -> Vec<Problem> {
    let mut p = Problems::default();
    if let Some(sink) = &config.sink {
        if let Some(li) = &sink.logs_ingestion {
            let mut streams: BTreeMap<(String, String, String), String> = BTreeMap::new();
            for t in &schemas.tables {
                let over = li.tables.get(&t.table).cloned().unwrap_or_default();
                let scope = if li.tables.contains_key(&t.table) {
                    format!("sink.logs_ingestion.tables.{}", t.table)
                } else {
                    "sink.logs_ingestion".to_string()
                };
                let endpoint = over.endpoint.as_deref().unwrap_or(&li.endpoint);
                let dcr = over
                    .dcr_immutable_id
                    .as_deref()
                    .unwrap_or(&li.dcr_immutable_id);
                let stream = over.stream.clone().unwrap_or_else(|| t.stream.clone());
                if t.plan.plan == crate::schema::Plan::Auxiliary {
                    auxiliary(&mut p, sink, li, t, dcr);
                }
                if over.endpoint.is_some() || t.table == schemas.tables[0].table {
                    p.url(
                        &format!("{scope}.endpoint"),
                        endpoint,
                        li.allow_plain_http_loopback,
                    );
                }
                if (over.dcr_immutable_id.is_some() || t.table == schemas.tables[0].table)
                    && !is_dcr_immutable_id(dcr)
                {
                    p.add(
                        format!("{scope}.dcr_immutable_id"),
                        format!("`{}` is not a DCR immutable id", shorten(dcr)),
                        "copy it from the DCR's JSON view or `schema dcr`'s output dcrImmutableId (dcr- and 32 hex digits)",
                    );
                }
                if !stream.starts_with("Custom-") {
                    p.add(
                        format!("{scope}.stream"),
                        format!("`{stream}` is not a custom stream"),
                        "streams of a DCR for custom tables are named Custom-<Table>_CL",
                    );
                }
                let target = (endpoint.to_string(), dcr.to_string(), stream.clone());
                if let Some(other) = streams.insert(target, t.table.clone()) {
                    p.add(
                        format!("{scope}.stream"),
                        format!("{} and {other} would both post to stream {stream} of one DCR", t.table),
                        "give each table its own stream (schemas' `stream`, or tables.<Table>.stream)",
                    );
                }
            }
        }
        if let Some(dc) = &sink.data_collector {
            p.guid(
                "sink.data_collector.workspace_id",
                &dc.workspace_id,
                "workspace id",
            );
            if let Some(file) = &dc.shared_key_file {
                p.readable("sink.data_collector.shared_key_file", file);
            }
            if let Some(endpoint) = &dc.endpoint {
                p.url(
                    "sink.data_collector.endpoint",
                    endpoint,
                    dc.allow_plain_http_loopback,
                );
            }
        }
        if let Some(credential) = &sink.credential {
            p.credential("sink.credential", credential);
        }
        if let Some(host) = &sink.authority_host {
            p.url("sink.authority_host", host, true);
        }
    }
    let management = &config.management_api;
    for (i, t) in management.tenants.iter().enumerate() {
        let key = format!("management_api.tenants[{i}]");
        // The Management API names a tenant by its GUID only (the URL path).
        if !is_guid(&t.tenant_id) {
            p.add(
                format!("{key}.tenant_id"),
                format!("`{}` is not the tenant's GUID", shorten(&t.tenant_id)),
                "use the directory (tenant) id from Entra ID's overview page",
            );
        }
        p.guid(
            &format!("{key}.publisher_identifier"),
            &t.publisher_identifier,
            "your own tenant's id (the API's PublisherIdentifier)",
        );
        if let Some(endpoint) = &t.endpoint {
            p.url(&format!("{key}.endpoint"), endpoint, true);
        }
        if let Some(host) = &t.authority_host {
            p.url(&format!("{key}.authority_host"), host, true);
        }
        p.credential(&format!("{key}.credential"), &t.credential);
    }
    if !management.tenants.is_empty() {
        p.writable_dir("management_api.state_dir", &management.state_dir);
    }
    let defender = &config.defender;
    for (i, hub) in defender.event_hubs.iter().enumerate() {
        let key = format!("defender.event_hubs[{i}].auth");
        match &hub.auth {
            EventHubAuth::ConnectionString {
                connection_string_file,
            } => p.readable(
                &format!("{key}.connection_string_file"),
                connection_string_file,
            ),
            EventHubAuth::Entra(entra) => {
                p.credential(&format!("{key}.credential"), &entra.credential)
            }
            EventHubAuth::Plaintext => {}
        }
    }
    for (i, account) in defender.storage.iter().enumerate() {
        let key = format!("defender.storage[{i}]");
        if let Some(endpoint) = &account.endpoint {
            p.url(
                &format!("{key}.endpoint"),
                endpoint,
                account.allow_plain_http_loopback,
            );
        }
        match &account.auth {
            StorageAuth::SharedKey { key_file } => {
                p.readable(&format!("{key}.auth.key_file"), key_file)
            }
            StorageAuth::Sas { token_file } => {
                p.readable(&format!("{key}.auth.token_file"), token_file)
            }
            StorageAuth::Entra(entra) => {
                p.credential(&format!("{key}.auth.credential"), &entra.credential)
            }
        }
    }
    if !defender.is_empty() {
        p.writable_dir("defender.state_dir", &defender.state_dir);
    }
    if config.spool.enabled {
        p.writable_dir("spool.dir", &config.spool.dir);
    }
    p.writable_dir("dlq.dir", &config.dlq.dir);
    integrity(&mut p, config);
    if let Some(archive) = &config.archive {
        p.url("archive.container_url", &archive.container_url, true);
        if let Some(file) = &archive.sas_file {
            p.readable("archive.sas_file", file);
        }
        if let Some(auth) = &archive.auth {
            p.credential("archive.auth.credential", &auth.credential);
        }
    }
    if let Some(bundle) = &config.http.ca_bundle {
        p.readable("http.ca_bundle", bundle);
    }
    if let Some(listen) = &config.metrics.listen
        && listen.parse::<std::net::SocketAddr>().is_err()
    {
        p.add(
            "metrics.listen",
            format!("`{listen}` is not host:port"),
            "write it as 0.0.0.0:9464",
        );
    }
    p.0
}

/// An Auxiliary table's rows go to a DCR of its own (one that sends to it alone), in a cloud
/// that has the plan (MicrosoftDocs create-custom-table-auxiliary.md: public cloud regions only).
fn auxiliary(
    p: &mut Problems,
    sink: &crate::config::SinkConfig,
    li: &crate::sinks::logs_ingestion::LogsIngestionConfig,
    t: &crate::schema::TableSchema,
    dcr: &str,
) {
    let key = format!("sink.logs_ingestion.tables.{}", t.table);
    let over = li.tables.get(&t.table);
    if over.is_none_or(|o| o.endpoint.is_none()) {
        p.add(
            format!("{key}.endpoint"),
            format!(
                "{} is on the Auxiliary plan; its DCR (kind Direct) has a logs ingestion endpoint of its own",
                t.output_table
            ),
            format!("set it to `schema dcr`'s output logsIngestionEndpoint_{}", t.table),
        );
    }
    let shared = li
        .tables
        .iter()
        .filter(|(name, o)| *name != &t.table && o.dcr_immutable_id.as_deref() == Some(dcr))
        .map(|(name, _)| name.as_str())
        .next();
    if let Some(other) = shared {
        p.add(
            format!("{key}.dcr_immutable_id"),
            format!("{} is on the Auxiliary plan, whose DCR sends to it alone, but {other} posts to that DCR too", t.output_table),
            format!("give each its own DCR (`schema dcr`'s dcrImmutableId_{})", t.table),
        );
    }
    if dcr == li.dcr_immutable_id {
        p.add(
            format!("{key}.dcr_immutable_id"),
            format!(
                "{} is on the Auxiliary plan, whose DCR can send to that table only, but its rows would go to the shared DCR",
                t.output_table
            ),
            format!(
                "deploy `schema dcr`'s template and set {key}.dcr_immutable_id and .endpoint to its outputs dcrImmutableId_{} and logsIngestionEndpoint_{}",
                t.table, t.table
            ),
        );
    }
    if sink.cloud != crate::auth::Cloud::Public {
        p.add(
            key,
            format!(
                "{} is on the Auxiliary plan, which the {:?} cloud does not offer",
                t.output_table, sink.cloud
            ),
            "use plan: Basic for it",
        );
    }
}

/// The chain keys load, and rows can be sealed where they are made durable (the spool).
fn integrity(p: &mut Problems, config: &Config) {
    let integrity = &config.integrity;
    if !integrity.is_enabled() {
        return;
    }
    if let Err(e) = integrity.keyring() {
        p.add(
            "integrity.keys_dir",
            e.to_string(),
            "mount the chain key secret (one file per key id, 32 bytes or more each)",
        );
    }
    if integrity.chain_id().is_none() {
        p.add(
            "integrity.chain_id",
            "no usable chain id: neither set, nor a pod or host name of letters, digits, '-', '_' and '.'",
            "set integrity.chain_id to a name unique to this instance (two instances sharing one would fork each other's chains)",
        );
    }
    if !config.spool.enabled && config.sink.is_some() {
        p.add(
            "integrity.enabled",
            "the integrity chain needs the spool (spool.enabled: false)",
            "turn the spool on: a row's sequence and hash must be durable before it is sent, so a crash re-sends the same row rather than forking the chain",
        );
    }
    if let Some(sink) = &config.sink
        && sink.data_collector.is_some()
    {
        p.add(
            "integrity.enabled",
            "the integrity chain is for sink.logs_ingestion (the Data Collector API renames columns)",
            "move to sink.logs_ingestion, or set integrity.enabled: false",
        );
    }
    if let Some(id) = &integrity.workspace_id {
        p.guid("integrity.workspace_id", id, "the workspace's Workspace ID");
    }
    if let Some(endpoint) = &integrity.query_endpoint {
        p.url("integrity.query_endpoint", endpoint, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_query() {
        let mut p = Problems::default();
        p.url("k", "http://example.com/x?sig=SECRET&sv=1", false);
        assert_eq!(p.0.len(), 1);
        let shown = p.0[0].to_string();
        assert!(shown.contains("http://example.com/x"), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn ids() {
        assert!(is_guid("7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"));
        assert!(!is_guid("x"));
        assert!(!is_guid("7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4"));
        assert!(is_dcr_immutable_id("dcr-0123456789abcdef0123456789abcdef"));
        assert!(!is_dcr_immutable_id("nope"));
    }
}
