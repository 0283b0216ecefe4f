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
    /// A ceiling on ids kept per tenant (about 2.3 bytes of memory each, see `seen`); beyond
    /// it the oldest day is dropped early, with a warning (duplicates become possible, loss
    /// does not).
    pub max_ids_per_tenant: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            retention_days: 8,
            max_ids_per_tenant: 100_000_000,
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
    /// Content blobs held in memory at once by the whole process (being fetched, or fetched and
    /// waiting for their turn to be mapped), over every tenant: what bounds memory and open
    /// connections when one replica collects hundreds of tenants.
    pub max_blobs_in_flight: usize,
    /// Management API requests on the wire at once, over every tenant (listings, subscription
    /// calls and blob fetches): it bounds the connections the process opens and holds.
    pub max_concurrent_requests: usize,
    /// Client-side ceiling of requests per tenant per minute (the API's baseline is 2,000).
    pub requests_per_minute: u32,
    pub dedupe: DedupeConfig,
    /// The shortest time between two writes of a tenant's positions: completions arriving
    /// meanwhile share one write. After a crash, rows acknowledged in the last interval are
    /// sent again (on top of those in flight).
    pub commit_interval_ms: u64,
    /// Splitting the tenants over several replicas (a StatefulSet): each takes the tenants
    /// whose hash modulo `count` is its ordinal, so no two replicas poll the same tenant.
    pub shard: ShardConfig,
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
            max_blobs_in_flight: 64,
            max_concurrent_requests: 64,
            requests_per_minute: 2_000,
            dedupe: DedupeConfig::default(),
            commit_interval_ms: 250,
            shard: ShardConfig::default(),
            allow_plain_http_loopback: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardConfig {
    /// Replicas sharing the tenants.
    pub count: u32,
    /// This replica's ordinal; when unset, the number after the last '-' of the pod name
    /// (POD_NAME, else HOSTNAME: a StatefulSet names its pods `<name>-<ordinal>`).
    pub index: Option<u32>,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            count: 1,
            index: None,
        }
    }
}

impl ShardConfig {
    /// This replica's (index, count), from the config or the pod name.
    pub fn resolve(&self, pod_name: Option<&str>) -> Result<(u32, u32), String> {
        if self.count <= 1 {
            return Ok((0, 1));
        }
        let index = match self.index {
            Some(i) => i,
            None => pod_name
                .and_then(|n| n.rsplit_once('-'))
                .and_then(|(_, ordinal)| ordinal.parse().ok())
                .ok_or_else(|| {
                    "management_api.shard.count is above 1 but this replica's ordinal is unknown: set management_api.shard.index, or run in a StatefulSet (pod name <name>-<ordinal> in POD_NAME or HOSTNAME)".to_string()
                })?,
        };
        if index >= self.count {
            return Err(format!(
                "management_api.shard.index {index} is not below shard.count {}",
                self.count
            ));
        }
        Ok((index, self.count))
    }
}

/// True when the replica `index` of `count` collects `tenant_id`: a stable hash (SHA-256 of
/// the lowercase id), the same in every replica and every version.
pub fn shard_owns(tenant_id: &str, index: u32, count: u32) -> bool {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(tenant_id.to_ascii_lowercase().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % u64::from(count.max(1)) == u64::from(index)
}

impl ManagementConfig {
    /// Problems a start-up must refuse, each naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.shard.count == 0 {
            return Err("management_api.shard.count must be at least 1".into());
        }
        if let Some(i) = self.shard.index
            && i >= self.shard.count
        {
            return Err(format!(
                "management_api.shard.index {i} is not below shard.count {}",
                self.shard.count
            ));
        }
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
        if self.blob_concurrency == 0
            || self.requests_per_minute == 0
            || self.max_blobs_in_flight == 0
            || self.max_concurrent_requests == 0
        {
            return Err(
                "management_api.blob_concurrency, max_blobs_in_flight, max_concurrent_requests and requests_per_minute must be at least 1".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let at = format!("management_api.tenants[{i}]");
            // The GUID forms of tenant_id and publisher_identifier are checked by `preflight`,
            // with every other start-up problem at once.
            if !seen.insert(t.tenant_id.to_ascii_lowercase()) {
                return Err(format!("{at}: tenant {} is listed twice", t.tenant_id));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tenant_belongs_to_exactly_one_replica() {
        let tenants: Vec<String> = (0..60)
            .map(|i| format!("aaaaaaaa-0000-4000-8000-{i:012}"))
            .collect();
        for count in 1..=4 {
            let mut per_replica = vec![0; count as usize];
            for t in &tenants {
                let owners: Vec<u32> = (0..count).filter(|i| shard_owns(t, *i, count)).collect();
                assert_eq!(owners.len(), 1, "{t} with {count} replicas");
                per_replica[owners[0] as usize] += 1;
            }
            assert!(per_replica.iter().all(|n| *n > 0), "{per_replica:?}");
        }
        // Stable: case does not matter, and the assignment is fixed by the id alone.
        let t = "7D1C2B3A-4E5F-4A6B-8C7D-9E0F1A2B3C4D";
        assert_eq!(shard_owns(t, 0, 3), shard_owns(&t.to_lowercase(), 0, 3));
    }

    #[test]
    fn the_ordinal_comes_from_the_config_or_the_pod_name() {
        let shard = |count, index| ShardConfig { count, index };
        assert_eq!(shard(1, None).resolve(None), Ok((0, 1)));
        assert_eq!(shard(3, None).resolve(Some("m365-sentinel-2")), Ok((2, 3)));
        assert_eq!(
            shard(3, Some(1)).resolve(Some("m365-sentinel-2")),
            Ok((1, 3))
        );
        assert!(
            shard(3, None)
                .resolve(Some("laptop"))
                .unwrap_err()
                .contains("shard.index")
        );
        assert!(shard(3, None).resolve(Some("m365-sentinel-5")).is_err());
    }
}
