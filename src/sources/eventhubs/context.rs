//! librdkafka's callbacks: logs into tracing, errors into the source's status, Entra tokens for
//! OAUTHBEARER, and the rebalance rule: before partitions are given up, wait briefly for the
//! messages handed on to become durable, then commit what is.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::tracks::Tracks;
use crate::sources::status::SourceStatus;

/// How long a revoke waits for messages in flight before committing what is safe: short, so
/// the group's rebalance is not held up; what is not safe by then is read again by the next
/// owner (counted as duplicates there, or skipped by the dedupe window here).
const REVOKE_WAIT: Duration = Duration::from_secs(10);

pub struct TokenSource {
    pub credential: Arc<dyn TokenCredential>,
    pub scope: String,
    pub runtime: tokio::runtime::Handle,
}

pub struct HubContext {
    pub label: String,
    pub topic: String,
    pub tracks: Arc<Mutex<Tracks>>,
    /// False in dry-run: nothing is committed.
    pub persist: bool,
    pub token: Option<TokenSource>,
    /// Set once an OAUTHBEARER token was handed to librdkafka.
    pub token_ready: std::sync::atomic::AtomicBool,
    pub status: Arc<SourceStatus>,
}

impl ClientContext for HubContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let source = &self.label;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(source, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(source, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(source, facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(source, facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        report_error(&self.status, &self.label, &error, reason);
    }

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let Some(source) = &self.token else {
            return Err("OAUTHBEARER needs auth.kind: entra".into());
        };
        // librdkafka calls this on the consuming thread, which is not a runtime thread.
        let token = source
            .runtime
            .block_on(source.credential.get_token(&[source.scope.as_str()], None))
            .map_err(|e| {
                let message = format!(
                    "{}: no Entra token for {}: {e}; check auth.credential and that the identity has the role Azure Event Hubs Data Receiver",
                    self.label, source.scope
                );
                self.status.auth_refused(&message);
                message
            })?;
        self.status.auth_works();
        self.token_ready.store(true, Ordering::Relaxed);
        Ok(OAuthToken {
            token: token.token.secret().to_string(),
            principal_name: String::new(),
            lifetime_ms: token.expires_on.unix_timestamp().saturating_mul(1000),
        })
    }
}

impl ConsumerContext for HubContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let partitions: Vec<i32> = list
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let deadline = Instant::now() + REVOKE_WAIT;
        let mut waiting = self.in_flight(&partitions);
        while waiting > 0 && Instant::now() < deadline && !consumer.assignment_lost() {
            std::thread::sleep(Duration::from_millis(20));
            waiting = self.in_flight(&partitions);
        }
        let mut commit = TopicPartitionList::new();
        if let Ok(mut tracks) = self.tracks.lock() {
            for &partition in &partitions {
                if let Some(offset) = tracks.revoked(partition) {
                    let _ =
                        commit.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
                }
            }
        }
        tracing::info!(
            source = %self.label,
            ?partitions,
            still_in_flight = waiting,
            "partitions given up to the group: committing what is durable first"
        );
        if self.persist && commit.count() > 0 && !consumer.assignment_lost() {
            match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => self.status.committed(commit.count()),
                Err(e) => tracing::warn!(
                    source = %self.label,
                    "commit before giving partitions up failed: {e}; their next owner re-reads from the last commit (duplicates, nothing lost)"
                ),
            }
        }
        self.status.rebalances.fetch_add(1, Ordering::Relaxed);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions: Vec<i32> = list
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                if let Ok(mut tracks) = self.tracks.lock() {
                    for &partition in &partitions {
                        tracks.assigned(partition);
                    }
                }
                tracing::info!(source = %self.label, ?partitions, "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(source = %self.label, "rebalance failed: {e}; the group retries")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.status.committed(offsets.count()),
            Err(e) => {
                tracing::warn!(source = %self.label, "offset commit failed: {e}; retried at the next interval");
                if let Ok(mut tracks) = self.tracks.lock() {
                    for e in offsets.elements_for_topic(&self.topic) {
                        tracks.commit_failed(e.partition());
                    }
                }
            }
        }
    }
}

impl HubContext {
    fn in_flight(&self, partitions: &[i32]) -> usize {
        self.tracks.lock().map_or(0, |t| t.in_flight(partitions))
    }
}

/// A librdkafka error: a refused sign-in is an error naming what to check; the rest (brokers
/// unreachable for a moment, ...) are warnings, since librdkafka retries them.
pub fn report_error(status: &SourceStatus, label: &str, error: &KafkaError, reason: &str) {
    let refused = matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
    );
    if refused {
        status.auth_refused(&format!(
            "{label}: the namespace refused the sign-in ({reason}); check auth: the connection string file (a namespace or event hub connection string with Listen rights) or the Entra identity's role Azure Event Hubs Data Receiver"
        ));
    } else {
        status.retrying(&format!("{label}: {error}: {reason}"));
    }
}
