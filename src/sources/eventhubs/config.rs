//! What the Event Hubs source is told: the namespace's Kafka endpoint, the event hub (a Kafka
//! topic), the consumer group and how to sign in.
//!
//! Event Hubs speaks Kafka on `<namespace>.servicebus.windows.net:9093` with SASL_SSL, in the
//! Standard, Premium and Dedicated tiers (not Basic):
//! <https://learn.microsoft.com/azure/event-hubs/azure-event-hubs-kafka-overview>.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::auth::EntraAuth;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventHubConfig {
    /// A name for logs and errors; the event hub's name when unset.
    #[serde(default)]
    pub name: Option<String>,
    /// `<namespace>.servicebus.windows.net:9093`.
    pub bootstrap_servers: String,
    /// The event hub Defender streams to (its Kafka topic).
    pub event_hub: String,
    /// Replicas in one group share the partitions; the group's committed offsets are the
    /// positions.
    #[serde(default = "default_group")]
    pub consumer_group: String,
    pub auth: EventHubAuth,
    /// Where a group with no committed offset starts: `earliest` (everything the hub still
    /// retains: nothing is missed) or `latest`.
    #[serde(default)]
    pub start_from: StartFrom,
    /// A replica silent this long is dropped from the group and its partitions handed on.
    #[serde(default = "default_session_timeout")]
    pub session_timeout_ms: u32,
    /// How often offsets of durable messages are committed.
    #[serde(default = "default_commit_interval")]
    pub commit_interval_ms: u64,
    /// Further librdkafka properties, for what this file has no setting for (e.g.
    /// `ssl.ca.location`). Security and offset properties set here are refused.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventHubAuth {
    /// SASL PLAIN with the user name `$ConnectionString` and a namespace or event hub connection
    /// string (with Listen rights) as the password, read from a file (a mounted Secret).
    ConnectionString { connection_string_file: PathBuf },
    /// SASL OAUTHBEARER with an Entra token for `https://<namespace>/.default`; the identity
    /// needs the role "Azure Event Hubs Data Receiver".
    Entra(EntraAuth),
    /// No TLS and no sign-in: a local Kafka broker only (tests, a lab). Event Hubs refuses it.
    Plaintext,
}

fn default_group() -> String {
    "m365-sentinel".into()
}

fn default_session_timeout() -> u32 {
    30_000
}

fn default_commit_interval() -> u64 {
    1_000
}

/// librdkafka properties this source sets itself: overriding them would break sign-in or the
/// commit-after-durable rule.
const OWN_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
];

impl EventHubConfig {
    pub fn label(&self) -> String {
        format!(
            "event hub {}",
            self.name.as_deref().unwrap_or(self.event_hub.as_str())
        )
    }

    /// The namespace host, from the first bootstrap server.
    pub fn namespace_host(&self) -> &str {
        let first = self
            .bootstrap_servers
            .split(',')
            .next()
            .unwrap_or("")
            .trim();
        first.rsplit_once(':').map_or(first, |(host, _)| host)
    }

    /// The OAUTHBEARER token scope.
    pub fn token_scope(&self) -> String {
        format!("https://{}/.default", self.namespace_host())
    }

    pub fn validate(&self, at: &str) -> Result<(), String> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(format!(
                "{at}.bootstrap_servers: set it to <namespace>.servicebus.windows.net:9093"
            ));
        }
        if self.event_hub.trim().is_empty() {
            return Err(format!("{at}.event_hub: the event hub Defender streams to"));
        }
        if self.consumer_group.trim().is_empty() {
            return Err(format!("{at}.consumer_group must not be empty"));
        }
        if self.session_timeout_ms < 1_000 {
            return Err(format!(
                "{at}.session_timeout_ms: {} is too short (at least 1000)",
                self.session_timeout_ms
            ));
        }
        if let Some(own) = self
            .librdkafka
            .keys()
            .find(|k| OWN_PROPERTIES.contains(&k.as_str()))
        {
            return Err(format!(
                "{at}.librdkafka.{own}: set by the connector itself (use bootstrap_servers, consumer_group, start_from or auth)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> EventHubConfig {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn the_token_scope_is_the_namespace_host() {
        let c = config(
            "bootstrap_servers: contoso-eh.servicebus.windows.net:9093\nevent_hub: defender\nauth: {kind: connection_string, connection_string_file: /run/secrets/eh}\n",
        );
        assert_eq!(
            c.token_scope(),
            "https://contoso-eh.servicebus.windows.net/.default"
        );
        assert_eq!(c.consumer_group, "m365-sentinel");
        assert_eq!(c.label(), "event hub defender");
        assert!(c.validate("x").is_ok());
    }

    #[test]
    fn an_entra_identity_is_read_with_its_credential() {
        let c = config(
            "bootstrap_servers: a.servicebus.windows.net:9093\nevent_hub: d\nauth:\n  kind: entra\n  credential: {kind: managed_identity}\n  cloud: us_government\n",
        );
        let EventHubAuth::Entra(entra) = &c.auth else {
            panic!("{:?}", c.auth);
        };
        assert_eq!(entra.cloud, crate::auth::Cloud::UsGovernment);
        assert!(
            yaml_serde::from_str::<EventHubConfig>(
                "bootstrap_servers: a:9093\nevent_hub: d\nauth: {kind: entra, credential: {kind: managed_identity}, tenant: x}\n"
            )
            .is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn properties_the_connector_owns_are_refused() {
        let c = config(
            "bootstrap_servers: a:9093\nevent_hub: d\nauth: {kind: plaintext}\nlibrdkafka: {enable.auto.commit: 'true'}\n",
        );
        let e = c.validate("defender.event_hubs[0]").unwrap_err();
        assert!(
            e.contains("defender.event_hubs[0].librdkafka.enable.auto.commit"),
            "{e}"
        );
    }
}
