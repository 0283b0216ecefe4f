//! The consuming thread: a librdkafka consumer in the configured group, handing each message on
//! as a [`Unit`] and committing, per partition, the offsets below which every message is
//! durable downstream.
//!
//! It runs on its own thread because librdkafka's callbacks (rebalances, OAUTHBEARER token
//! refreshes) run inside `poll` and may block. When the mapper is behind, the thread waits
//! for it without polling (backpressure reaches the broker as fetches that stop).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::config::{EventHubAuth, EventHubConfig, StartFrom};
use super::context::{HubContext, TokenSource, report_error};
use super::tracks::Tracks;
use crate::ack::Ack;
use crate::ops::shutdown::Shutdown;
use crate::record::{Position, RejectReason, Rejected};
use crate::sources::recent::RecentRows;
use crate::sources::status::SourceStatus;
use crate::sources::unit::{Dedupe, Origin, Unit};

const POLL: Duration = Duration::from_millis(100);
/// `--once` and dry-run give up when the brokers give neither a message nor a partition end
/// for this long (unreachable, or refusing the sign-in).
const ONCE_STALL: Duration = Duration::from_secs(120);
/// How long `--once` and dry-run wait for a first OAUTHBEARER token before their metadata
/// requests (librdkafka asks for tokens only while the client is polled).
const TOKEN_WAIT: Duration = Duration::from_secs(30);
/// How often a thread waiting for room in the intake checks for a stop.
const FULL_WAIT: Duration = Duration::from_millis(500);
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// At a stop, how long the thread waits for messages in flight to become durable before its
/// last commit.
const STOP_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum EventHubError {
    #[error("{label}: {detail}")]
    Setup { label: String, detail: String },
    #[error("{label}: {detail}")]
    Kafka { label: String, detail: String },
}

pub struct HubOptions {
    /// False in dry-run: nothing is committed.
    pub persist: bool,
    /// Read each partition from the group's committed offset to its end at start, then stop
    /// (`--once`, dry-run), without joining the group.
    pub once: bool,
    pub shutdown: Shutdown,
    /// Set when the run has ended: no more rows will become durable.
    pub run_ended: Shutdown,
    pub recent: RecentRows,
    pub runtime: tokio::runtime::Handle,
    /// The HTTP client Entra token requests go through.
    pub http: reqwest::Client,
}

/// A running Event Hubs source.
pub struct EventHubSource {
    pub label: String,
    pub status: Arc<SourceStatus>,
    thread: std::thread::JoinHandle<Result<(), EventHubError>>,
}

impl EventHubSource {
    pub fn start(
        config: &EventHubConfig,
        options: HubOptions,
        out: mpsc::Sender<Unit>,
    ) -> Result<Self, EventHubError> {
        let label = config.label();
        let status = Arc::new(SourceStatus::default());
        let tracks = Arc::new(Mutex::new(Tracks::new(!options.once)));
        let token = match &config.auth {
            EventHubAuth::Entra(entra) => Some(TokenSource {
                credential: entra
                    .build(&options.http)
                    .map_err(|e| setup(&label, e.to_string()))?,
                scope: config.token_scope(),
                runtime: options.runtime.clone(),
            }),
            _ => None,
        };
        let context = HubContext {
            label: label.clone(),
            topic: config.event_hub.clone(),
            tracks: tracks.clone(),
            persist: options.persist,
            token,
            token_ready: std::sync::atomic::AtomicBool::new(false),
            status: status.clone(),
        };
        let consumer: BaseConsumer<HubContext> = client_config(config, &label, options.once)?
            .create_with_context(context)
            .map_err(|e| {
                setup(
                    &label,
                    format!("the Kafka client could not be created: {e}"),
                )
            })?;
        let reader = Reader {
            label: label.clone(),
            topic: config.event_hub.clone(),
            start_from: config.start_from,
            commit_interval: Duration::from_millis(config.commit_interval_ms),
            consumer,
            tracks,
            status: status.clone(),
            options,
            out,
        };
        let thread = std::thread::Builder::new()
            .name(format!("eventhub-{}", config.event_hub))
            .spawn(move || reader.run())
            .map_err(|e| setup(&label, format!("no thread: {e}")))?;
        Ok(Self {
            label,
            status,
            thread,
        })
    }

    /// Waits for the thread (it ends at a stop, or at the partitions' ends with `once`); the
    /// errors that stopped it or kept it from reading.
    pub async fn finish(self) -> Vec<String> {
        let label = self.label;
        let status = self.status;
        let joined = tokio::task::spawn_blocking(move || self.thread.join()).await;
        let mut errors = Vec::new();
        match joined {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => errors.push(e.to_string()),
            Ok(Err(panic)) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                errors.push(format!("{label}: the consuming thread failed: {why}"));
            }
            Err(e) => errors.push(format!("{label}: the consuming thread failed: {e}")),
        }
        if let Some(failure) = status.failure() {
            errors.push(failure);
        }
        errors
    }
}

fn setup(label: &str, detail: String) -> EventHubError {
    EventHubError::Setup {
        label: label.to_string(),
        detail,
    }
}

fn client_config(
    config: &EventHubConfig,
    label: &str,
    once: bool,
) -> Result<ClientConfig, EventHubError> {
    let mut c = ClientConfig::new();
    // Cooperative rebalancing: a replica joining or leaving moves only the partitions that
    // change owner; the others keep being read (and committed) through the rebalance.
    c.set("partition.assignment.strategy", "cooperative-sticky");
    for (key, value) in &config.librdkafka {
        c.set(key, value);
    }
    // rdkafka derives librdkafka's log level from the `log` crate, which this binary doesn't
    // use: set it here (debug when librdkafka's `debug` property asks for it).
    c.set_log_level(if config.librdkafka.contains_key("debug") {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Info
    });
    let session = config.session_timeout_ms;
    c.set("bootstrap.servers", &config.bootstrap_servers)
        .set("group.id", &config.consumer_group)
        .set("client.id", "m365-sentinel")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match config.start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        )
        .set("enable.partition.eof", if once { "true" } else { "false" })
        .set("session.timeout.ms", session.to_string())
        .set("max.poll.interval.ms", "600000")
        .set("heartbeat.interval.ms", (session / 3).max(100).to_string());
    match &config.auth {
        EventHubAuth::ConnectionString {
            connection_string_file,
        } => {
            let secret = std::fs::read_to_string(connection_string_file).map_err(|e| {
                setup(
                    label,
                    format!(
                        "auth.connection_string_file {}: {e}",
                        connection_string_file.display()
                    ),
                )
            })?;
            let secret = secret.trim();
            if !secret.starts_with("Endpoint=") {
                return Err(setup(
                    label,
                    format!(
                        "auth.connection_string_file {} does not hold a connection string (Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...)",
                        connection_string_file.display()
                    ),
                ));
            }
            c.set("security.protocol", "SASL_SSL")
                .set("sasl.mechanism", "PLAIN")
                .set("sasl.username", "$ConnectionString")
                .set("sasl.password", secret);
        }
        EventHubAuth::Entra(_) => {
            c.set("security.protocol", "SASL_SSL")
                .set("sasl.mechanism", "OAUTHBEARER");
        }
        EventHubAuth::Plaintext => {
            c.set("security.protocol", "PLAINTEXT");
        }
    }
    Ok(c)
}

struct Reader {
    label: String,
    topic: String,
    start_from: StartFrom,
    commit_interval: Duration,
    consumer: BaseConsumer<HubContext>,
    tracks: Arc<Mutex<Tracks>>,
    status: Arc<SourceStatus>,
    options: HubOptions,
    out: mpsc::Sender<Unit>,
}

impl Reader {
    fn run(self) -> Result<(), EventHubError> {
        let mut ends = if self.options.once {
            Some(self.assign_to_ends()?)
        } else {
            self.consumer
                .subscribe(&[self.topic.as_str()])
                .map_err(|e| self.kafka(format!("subscribe: {e}")))?;
            None
        };
        let mut last_commit = Instant::now();
        let mut last_progress = Instant::now();
        loop {
            if self.options.shutdown.is_set() {
                break;
            }
            if ends.is_some() && last_progress.elapsed() >= ONCE_STALL {
                return Err(self.kafka(format!(
                    "no message and no partition end for {} s; {}",
                    ONCE_STALL.as_secs(),
                    self.status
                        .last_error()
                        .unwrap_or_else(|| "the brokers did not answer".into())
                )));
            }
            if last_commit.elapsed() >= self.commit_interval {
                self.commit(CommitMode::Async);
                last_commit = Instant::now();
            }
            if ends.as_ref().is_some_and(HashMap::is_empty) {
                break;
            }
            let Some(polled) = self.consumer.poll(POLL) else {
                continue;
            };
            let message = match polled {
                Ok(message) => message,
                // The end of a partition, as it was when reached: `--once` and dry-run are done
                // with it (brokers' watermarks are not always message offsets + 1).
                Err(KafkaError::PartitionEOF(partition)) => {
                    last_progress = Instant::now();
                    if let Some(ends) = ends.as_mut() {
                        ends.remove(&partition);
                    }
                    continue;
                }
                Err(e) => {
                    report_error(&self.status, &self.label, &e, "while fetching");
                    continue;
                }
            };
            let (partition, offset) = (message.partition(), message.offset());
            last_progress = Instant::now();
            if ends.as_ref().is_some_and(|e| !e.contains_key(&partition)) {
                continue;
            }
            let Some(epoch) = self
                .tracks
                .lock()
                .ok()
                .and_then(|mut t| t.fetched(partition, offset))
            else {
                continue;
            };
            self.status.units.fetch_add(1, Ordering::Relaxed);
            let unit = self.unit(partition, epoch, offset, message.payload());
            drop(message);
            if !self.hand_on(partition, epoch, offset, unit) {
                // The run is stopping: what is not handed on is read again next time.
                break;
            }
        }
        self.finish()
    }

    /// Hands a message to the mapper, waiting while it is behind; false once the run stops.
    ///
    /// While it waits the thread does not poll: librdkafka's own threads keep the group
    /// session alive, and `max.poll.interval.ms` (10 minutes) bounds how long the mapper may
    /// stall (a full spool) before the group hands these partitions to another replica.
    fn hand_on(&self, partition: i32, epoch: u64, offset: i64, unit: Unit) -> bool {
        let permit = match self.out.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => return false,
            Err(mpsc::error::TrySendError::Full(())) => loop {
                if self.options.shutdown.is_set() {
                    return false;
                }
                // The timer is made inside the runtime: this thread has none of its own.
                let wait = async { tokio::time::timeout(FULL_WAIT, self.out.reserve()).await };
                match self.options.runtime.block_on(wait) {
                    Ok(Ok(permit)) => break permit,
                    Ok(Err(_)) => return false,
                    Err(_) => {}
                }
            },
        };
        if let Ok(mut t) = self.tracks.lock() {
            t.sent(partition, epoch, offset);
        }
        permit.send(unit);
        true
    }

    fn unit(&self, partition: i32, epoch: u64, offset: i64, payload: Option<&[u8]>) -> Unit {
        let pos = Position::new(
            format!("{} partition {partition} offset {offset}", self.label).into(),
            1,
        );
        let tracks = self.tracks.clone();
        let ack = Ack::hold(move || {
            if let Ok(mut t) = tracks.lock() {
                t.done(partition, epoch, offset);
            }
        });
        let content = match payload {
            None | Some([]) => Err(Rejected {
                pos: pos.clone(),
                reason: RejectReason::Unreadable(
                    "an empty Event Hubs message; Defender sends {\"records\":[...]}".into(),
                ),
                raw: Vec::new(),
            }),
            Some(bytes) => String::from_utf8(bytes.to_vec()).map_err(|e| {
                let offset = e.utf8_error().valid_up_to();
                Rejected {
                    pos: pos.clone(),
                    reason: RejectReason::InvalidUtf8 { offset },
                    raw: e.into_bytes(),
                }
            }),
        };
        Unit {
            content,
            pos,
            ack,
            dedupe: Dedupe::Recent(self.options.recent.clone()),
            origin: Origin {
                tenant: self.label.clone().into(),
                source: "eventhubs".into(),
                created_ms: None,
            },
        }
    }

    fn commit(&self, mode: CommitMode) {
        if !self.options.persist {
            return;
        }
        let offsets = self
            .tracks
            .lock()
            .map(|mut t| t.take_commits())
            .unwrap_or_default();
        if offsets.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in offsets {
            let _ = list.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        let committed = list.count();
        match self.consumer.commit(&list, mode) {
            Ok(()) if matches!(mode, CommitMode::Sync) => self.status.committed(committed),
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(source = %self.label, "offset commit failed: {e}; retried at the next interval");
                if let Ok(mut t) = self.tracks.lock() {
                    for element in list.elements() {
                        t.commit_failed(element.partition());
                    }
                }
            }
        }
    }

    /// Stopping (a signal, the end of `--once`): waits a while for what was handed on to become
    /// durable, keeping the group session alive, commits it, and leaves the group.
    fn finish(self) -> Result<(), EventHubError> {
        let Reader {
            label,
            consumer,
            tracks,
            options,
            out,
            ..
        } = self;
        // The mapper sees the end of this source's input.
        drop(out);
        if options.persist {
            let deadline = Instant::now() + STOP_WAIT;
            loop {
                let in_flight = tracks.lock().map_or(0, |t| t.all_in_flight());
                if in_flight == 0 {
                    break;
                }
                if Instant::now() >= deadline || options.run_ended.is_set() {
                    tracing::warn!(
                        source = %label,
                        in_flight,
                        "stopping with messages not yet durable: they are read again at the next start"
                    );
                    break;
                }
                // Serves the group session; fetched messages are left for the next start.
                let _ = consumer.poll(Duration::from_millis(20));
            }
            let offsets = tracks
                .lock()
                .map(|mut t| t.take_commits())
                .unwrap_or_default();
            let mut list = TopicPartitionList::new();
            for (partition, offset) in offsets {
                let topic = consumer.context().topic.clone();
                let _ = list.add_partition_offset(&topic, partition, Offset::Offset(offset));
            }
            if list.count() > 0 {
                if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                    tracing::warn!(source = %label, "last offset commit failed: {e}; the next start re-reads from the previous one");
                } else {
                    consumer.context().status.committed(list.count());
                }
            }
        }
        if !options.once {
            consumer.unsubscribe();
        }
        Ok(())
    }

    /// `--once` and dry-run: every partition from the group's committed offset (or
    /// `start_from`) to its end now, assigned by hand so running replicas are not disturbed.
    fn assign_to_ends(&self) -> Result<HashMap<i32, i64>, EventHubError> {
        if self.consumer.context().token.is_some() {
            let deadline = Instant::now() + TOKEN_WAIT;
            while !self.consumer.context().token_ready.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && !self.options.shutdown.is_set()
            {
                // Serves the token refresh; no partition is assigned yet, so no message comes.
                let _ = self.consumer.poll(Duration::from_millis(100));
            }
        }
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
            .map_err(|e| self.kafka(format!("metadata: {e}")))?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| {
                self.kafka(format!(
                    "no event hub {:?} in the namespace; check event_hub",
                    self.topic
                ))
            })?;
        let mut all = TopicPartitionList::new();
        for p in topic.partitions() {
            all.add_partition(&self.topic, p.id());
        }
        let committed = self
            .consumer
            .committed_offsets(all, METADATA_TIMEOUT)
            .map_err(|e| self.kafka(format!("committed offsets: {e}")))?;
        let mut assign = TopicPartitionList::new();
        let mut start_at_end = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for element in committed.elements_for_topic(&self.topic) {
            let partition = element.partition();
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)
                .map_err(|e| self.kafka(format!("partition {partition} offsets: {e}")))?;
            // The end is found by librdkafka's end-of-partition event, not by the watermark
            // (brokers' watermarks are not always message offsets + 1); they only tell an empty
            // partition, or one read to its end already.
            let start = match element.offset() {
                Offset::Offset(o) if o >= high => continue,
                Offset::Offset(o) => Offset::Offset(o),
                _ if high <= low => continue,
                _ if self.start_from == StartFrom::Earliest => Offset::Beginning,
                _ => {
                    // `latest` with nothing committed: this pass starts the group at the end
                    // now, so the next pass reads what came after.
                    let _ = start_at_end.add_partition_offset(
                        &self.topic,
                        partition,
                        Offset::Offset(high),
                    );
                    continue;
                }
            };
            let _ = assign.add_partition_offset(&self.topic, partition, start);
            ends.insert(partition, high);
        }
        if self.options.persist && start_at_end.count() > 0 {
            self.consumer
                .commit(&start_at_end, CommitMode::Sync)
                .map_err(|e| self.kafka(format!("committing the starting offsets: {e}")))?;
        }
        self.consumer
            .assign(&assign)
            .map_err(|e| self.kafka(format!("assign: {e}")))?;
        tracing::info!(source = %self.label, partitions = ends.len(), "reading each partition to its end");
        Ok(ends)
    }

    fn kafka(&self, detail: String) -> EventHubError {
        EventHubError::Kafka {
            label: self.label.clone(),
            detail,
        }
    }
}
