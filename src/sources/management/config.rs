//! What the Management Activity API source is told: the tenants, their clouds and credentials,
//! and how hard to poll them.

use std::path::PathBuf;

use serde::Deserialize;

use crate::auth::{Cloud, CredentialConfig};

/// The five content types of the unified audit log.
pub const ALL_CONTENT_TYPES: [&str; 5] = [
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
];

/// The API keeps content listable for 7 days after it became available.
pub const AVAILABILITY_HOURS: u64 = 7 * 24;

/// Which Microsoft 365 cloud a tenant lives in: decides the API host (also the token audience)
/// and the login host. (Management Activity API reference, "Activity API operations".)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum M365Cloud {
    #[default]
    Commercial,
    Gcc,
    GccHigh,
    Dod,
}

impl M365Cloud {
    pub fn api_host(self) -> &'static str {
        match self {
            Self::Commercial => "manage.office.com",
            Self::Gcc => "manage-gcc.office.com",
            Self::GccHigh => "manage.office365.us",
            Self::Dod => "manage.protection.apps.mil",
        }
    }

    /// The Entra cloud that issues its tokens (GCC is served by the commercial login host).
    pub fn entra_cloud(self) -> Cloud {
        match self {
            Self::Commercial | Self::Gcc => Cloud::Public,
            Self::GccHigh | Self::Dod => Cloud::UsGovernment,
        }
    }

    /// The token scope: the API host is the audience.
    pub fn scope(self) -> String {
        format!("https://{}/.default", self.api_host())
    }
}

/// One tenant to collect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's GUID (its directory id).
    pub tenant_id: String,
    /// A label for logs and metrics; the tenant id when unset.
    #[serde(default)]
    pub name: Option<String>,
    /// The publisher's tenant GUID, sent on every call so throttling counts against a pool of
    /// its own instead of the pool shared by all callers without one.
    pub publisher_identifier: String,
    #[serde(default)]
    pub cloud: M365Cloud,
    /// Overrides the API root `https://<api host>` (private endpoints, tests).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Overrides the cloud's login host.
    #[serde(default)]
    pub authority_host: Option<String>,
    /// Content types to collect; all five when unset.
    #[serde(default)]
    pub content_types: Option<Vec<String>>,
    /// The identity used for this tenant (an app consented in it).
    pub credential: CredentialConfig,
}

impl TenantConfig {
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.tenant_id)
    }

    pub fn content_types(&self) -> Vec<String> {
        self.content_types
            .clone()
            .unwrap_or_else(|| ALL_CONTENT_TYPES.iter().map(|s| (*s).to_string()).collect())
    }

    pub fn endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.cloud.api_host()))
    }
}

/// Deduplication of records by `Id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    /// Days of record ids kept, counted from the content's creation; at least the 7 days the
    /// API serves content for, plus a margin.
    pub retention_days: u32,
    /// A ceiling on ids kept per tenant; beyond it the oldest day is dropped early, with a
    /// warning (duplicates become possible, loss does not).
    pub max_ids_per_tenant: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            retention_days: 8,
            max_ids_per_tenant: 20_000_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagementConfig {
    pub tenants: Vec<TenantConfig>,
    /// Positions and seen record ids: a persistent volume in Kubernetes.
    pub state_dir: PathBuf,
    /// Time between two listings of the same content type once caught up.
    pub poll_interval_ms: u64,
    /// How far back a first start lists (at most 168 h, the API's limit).
    pub initial_lookback_hours: u64,
    /// Each listing starts this far before the committed position, to catch blobs the service
    /// lists late; blobs already handled are skipped, not fetched again.
    pub relist_overlap_minutes: u64,
    /// Content blobs fetched at once per tenant.
    pub blob_concurrency: usize,
    /// Client-side ceiling of requests per tenant per minute (the API's baseline is 2,000).
    pub requests_per_minute: u32,
    pub dedupe: DedupeConfig,
    /// The shortest time between two writes of a tenant's positions: completions arriving
    /// meanwhile share one write. After a crash, rows acknowledged in the last interval are
    /// sent again (on top of those in flight).
    pub commit_interval_ms: u64,
    /// Allows `http://127.0.0.1` endpoints (the emulator); HTTPS is required otherwise.
    pub allow_plain_http_loopback: bool,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        Self {
            tenants: Vec::new(),
            state_dir: PathBuf::from("state"),
            poll_interval_ms: 60_000,
            initial_lookback_hours: AVAILABILITY_HOURS,
            relist_overlap_minutes: 60,
            blob_concurrency: 8,
            requests_per_minute: 2_000,
            dedupe: DedupeConfig::default(),
            commit_interval_ms: 250,
            allow_plain_http_loopback: false,
        }
    }
}

impl ManagementConfig {
    /// Problems a start-up must refuse, each naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial_lookback_hours == 0 || self.initial_lookback_hours > AVAILABILITY_HOURS {
            return Err(format!(
                "management_api.initial_lookback_hours is {}; it must be between 1 and {AVAILABILITY_HOURS} (the API serves 7 days)",
                self.initial_lookback_hours
            ));
        }
        if self.relist_overlap_minutes > AVAILABILITY_HOURS * 60 {
            return Err(format!(
                "management_api.relist_overlap_minutes is {}; it must be at most {} (7 days)",
                self.relist_overlap_minutes,
                AVAILABILITY_HOURS * 60
            ));
        }
        if self.commit_interval_ms > 60_000 {
            return Err("management_api.commit_interval_ms must be at most 60000".into());
        }
        if self.poll_interval_ms < 100 || self.poll_interval_ms > 86_400_000 {
            return Err(
                "management_api.poll_interval_ms must be between 100 and 86400000 (a day)".into(),
            );
        }
        if self.dedupe.retention_days < 7 || self.dedupe.retention_days > 366 {
            return Err("management_api.dedupe.retention_days must be between 7 (duplicates can come back for as long as content is served) and 366".into());
        }
        if self.blob_concurrency == 0 || self.requests_per_minute == 0 {
            return Err(
                "management_api.blob_concurrency and requests_per_minute must be at least 1".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let at = format!("management_api.tenants[{i}]");
            if !is_guid(&t.tenant_id) {
                return Err(format!("{at}.tenant_id must be the tenant's GUID"));
            }
            if !seen.insert(t.tenant_id.to_ascii_lowercase()) {
                return Err(format!("{at}: tenant {} is listed twice", t.tenant_id));
            }
            if !is_guid(&t.publisher_identifier) {
                return Err(format!(
                    "{at}.publisher_identifier must be a GUID (your own tenant's id, as publisher)"
                ));
            }
            for ct in t.content_types() {
                if !ALL_CONTENT_TYPES.contains(&ct.as_str()) {
                    return Err(format!(
                        "{at}.content_types: {ct:?} is not one of {}",
                        ALL_CONTENT_TYPES.join(", ")
                    ));
                }
            }
            let credential_tenant = match &t.credential {
                CredentialConfig::ClientSecret { tenant_id, .. }
                | CredentialConfig::ClientCertificate { tenant_id, .. } => Some(tenant_id),
                CredentialConfig::WorkloadIdentity { tenant_id, .. } => tenant_id.as_ref(),
                CredentialConfig::ManagedIdentity { .. } => None,
            };
            if credential_tenant.is_some_and(|c| !c.eq_ignore_ascii_case(&t.tenant_id)) {
                return Err(format!(
                    "{at}.credential.tenant_id differs from tenant_id: the token must come from the tenant being read (the API answers AF20010 otherwise)"
                ));
            }
        }
        Ok(())
    }
}

pub fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}
