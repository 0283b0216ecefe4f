//! The consuming thread: a librdkafka consumer in the configured group, handing each message on
//! as a [`Unit`] and committing, per partition, the offsets below which every message is
//! durable downstream.
//!
//! It runs on its own thread because librdkafka's callbacks (rebalances, OAUTHBEARER token
//! refreshes) run inside `poll` and may block. When the mapper is behind, the thread pauses its
//! partitions and keeps polling, so the group does not think it died.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::config::{EventHubAuth, EventHubConfig, StartFrom};
use super::context::{HubContext, TokenSource, report_error};
use super::tracks::Tracks;
use crate::ack::Ack;
use crate::record::{Position, RejectReason, Rejected};
use crate::shutdown::Shutdown;
use crate::sources::recent::RecentRows;
use crate::sources::status::SourceStatus;
use crate::sources::unit::{Dedupe, Unit};

const POLL: Duration = Duration::from_millis(100);
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
        let tracks = Arc::new(Mutex::new(Tracks::default()));
        let token = match &config.auth {
            EventHubAuth::Entra {
                credential,
                cloud,
                authority_host,
            } => {
                let transport = azure_core::http::Transport::new(Arc::new(options.http.clone()));
                let credential = crate::auth::credential(
                    credential,
                    *cloud,
                    authority_host.as_deref(),
                    Some(transport),
                )
                .map_err(|e| setup(&label, e.to_string()))?;
                Some(TokenSource {
                    credential,
                    scope: config.token_scope(),
                    runtime: options.runtime.clone(),
                })
            }
            _ => None,
        };
        let context = HubContext {
            label: label.clone(),
            topic: config.event_hub.clone(),
            tracks: tracks.clone(),
            persist: options.persist,
            token,
            status: status.clone(),
        };
        let consumer: BaseConsumer<HubContext> = client_config(config, &label)?
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
            Ok(Err(_)) | Err(_) => errors.push(format!("{label}: the consuming thread failed")),
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

fn client_config(config: &EventHubConfig, label: &str) -> Result<ClientConfig, EventHubError> {
    let mut c = ClientConfig::new();
    for (key, value) in &config.librdkafka {
        c.set(key, value);
    }
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
        .set("session.timeout.ms", session.to_string())
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
        EventHubAuth::Entra { .. } => {
            c.set("security.protocol", "SASL_SSL")
                .set("sasl.mechanism", "OAUTHBEARER");
        }
        EventHubAuth::Plaintext => {
            c.set("security.protocol", "PLAINTEXT");
        }
    }
    Ok(c)
}

/// A message read and waiting to be handed on.
struct Waiting {
    partition: i32,
    epoch: u64,
    offset: i64,
    unit: Unit,
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
        let mut waiting: VecDeque<Waiting> = VecDeque::new();
        let mut paused = false;
        let mut last_commit = Instant::now();
        loop {
            if self.options.shutdown.is_set() {
                break;
            }
            if !self.hand_on(&mut waiting) {
                // The run is stopping: what is not handed on is read again next time.
                break;
            }
            if waiting.is_empty() == paused {
                self.pause(!paused);
                paused = !paused;
            }
            if last_commit.elapsed() >= self.commit_interval {
                self.commit(CommitMode::Async);
                last_commit = Instant::now();
            }
            if ends.as_ref().is_some_and(HashMap::is_empty) && waiting.is_empty() {
                break;
            }
            let Some(polled) = self.consumer.poll(POLL) else {
                continue;
            };
            let message = match polled {
                Ok(message) => message,
                Err(e) => {
                    report_error(&self.status, &self.label, &e, "while fetching");
                    continue;
                }
            };
            let (partition, offset) = (message.partition(), message.offset());
            if let Some(ends) = ends.as_mut() {
                match ends.get(&partition) {
                    Some(&end) if offset + 1 >= end => {
                        ends.remove(&partition);
                    }
                    Some(_) => {}
                    None => continue,
                }
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
            waiting.push_back(Waiting {
                partition,
                epoch,
                offset,
                unit,
            });
        }
        drop(waiting);
        self.finish()
    }

    /// Hands waiting messages to the mapper while it has room; false once the run stopped.
    fn hand_on(&self, waiting: &mut VecDeque<Waiting>) -> bool {
        while let Some(next) = waiting.front() {
            let current = self
                .tracks
                .lock()
                .is_ok_and(|t| t.current(next.partition, next.epoch));
            if !current {
                // Its partition was given up meanwhile: its next owner reads it.
                waiting.pop_front();
                continue;
            }
            let permit = match self.out.try_reserve() {
                Ok(permit) => permit,
                Err(mpsc::error::TrySendError::Full(())) => return true,
                Err(mpsc::error::TrySendError::Closed(())) => return false,
            };
            let Some(w) = waiting.pop_front() else {
                return true;
            };
            if let Ok(mut t) = self.tracks.lock() {
                t.sent(w.partition, w.epoch, w.offset);
            }
            permit.send(w.unit);
        }
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
        }
    }

    fn pause(&self, pause: bool) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        if let Err(e) = result {
            tracing::debug!(source = %self.label, "pause/resume: {e}");
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
        let mut ends = HashMap::new();
        for element in committed.elements_for_topic(&self.topic) {
            let partition = element.partition();
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)
                .map_err(|e| self.kafka(format!("partition {partition} offsets: {e}")))?;
            let start = match element.offset() {
                Offset::Offset(o) => o.max(low),
                _ if self.start_from == StartFrom::Earliest => low,
                _ => high,
            };
            if start < high {
                let _ = assign.add_partition_offset(&self.topic, partition, Offset::Offset(start));
                ends.insert(partition, high);
            }
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
