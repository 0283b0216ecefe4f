//! Every tenant's commits in one journal, flushed together. A tenant's commit (its new seen
//! ids and its positions) used to be two fsyncs of its own files: at 500 tenants a pass made
//! about 11,000, each a disk flush (milliseconds on a cloud disk). Here a writer thread gathers
//! the commits that arrive within one commit interval, appends them to `state_dir/journal`
//! and flushes that file once; a commit is durable when its round is.
//!
//! The tenants' own files (the day logs of `seen` and the position slots) are brought up to
//! date at a checkpoint: when the journal passes [`CHECKPOINT_BYTES`] or the writer holds
//! [`PENDING_ID_BYTES`] of ids, when the collector stops, and, after a crash, from the
//! journal's whole entries when the next run opens it. Only after the tenants' files are
//! flushed is the journal emptied (or replaced, whole, by the state of the tenants whose files
//! failed). A crash anywhere in between leaves a journal whole, and replaying it again only
//! appends ids the day logs may hold already (loading skips repeats).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::positions::{PositionStore, TenantPositions};
use super::seen::{SeenFiles, Writes};
use crate::state::private_fs;

pub mod frame;

pub use frame::Entry;

/// The journal's size at which the tenants' files are brought up to date and it is emptied:
/// it bounds the replay after a crash (read an entry at a time at start) and the disk the
/// journal takes.
/// Most of it is positions (every commit carries its tenant's whole positions, about 2.5 KB
/// for five content types), of which the writer keeps only each tenant's last.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// The ids the writer holds in memory (16 bytes each, committed since the last checkpoint, to
/// write into the day logs then) at which it checkpoints too: its memory bound. At 500 tenants
/// a checkpoint costs about three fsyncs a tenant, so one per half a million ids is still
/// several times fewer than the commits' own were (two each, about 11 a tenant per pass).
pub const PENDING_ID_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("state journal {path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// The writer's own message: the journal's path or the tenant whose files failed.
    #[error("state journal: {0}")]
    Write(String),
    #[error("state journal stopped; the collector's state is no longer written")]
    Stopped,
    /// At close: state that reached neither the journal nor the tenants' files, and is lost
    /// with the process.
    #[error(
        "the collection state (positions and seen ids) of {tenants} reached neither the state journal nor the tenants' own files ({error}); this run's records were delivered, but the next run reads their content again from the last state on disk (duplicates in the workspace, nothing lost): give the state volume (management.state_dir) room, or fix its permissions"
    )]
    NotDurable { tenants: String, error: String },
}

/// One tenant's commit and its seen-id files.
pub struct Commit {
    pub files: Arc<Mutex<SeenFiles>>,
    pub writes: Writes,
    pub positions: TenantPositions,
}

/// What the journal did, for the run's log.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Writes and flushes of the journal: one per round of gathered commits.
    pub rounds: AtomicU64,
    pub commits: AtomicU64,
    pub checkpoints: AtomicU64,
}

enum Message {
    Commit(Commit, oneshot::Sender<Result<(), String>>),
    Close(oneshot::Sender<Result<(), JournalError>>),
}

/// The process's journal; its writer thread owns the file.
pub struct StateJournal {
    requests: mpsc::Sender<Message>,
    pub stats: Arc<JournalStats>,
}

/// The journal's file in a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("journal")
}

impl StateJournal {
    /// Opens the journal in `state_dir`, first replaying what an earlier run left in it into
    /// the tenants' files (`seen_dir` names a tenant's seen-id directory), then starts its
    /// writer. `window`: how long a round gathers commits after its first. Returns, per
    /// tenant (lowercase id), what could not be replayed (its files failed: logged, kept in the
    /// journal), for the collector to apply in memory as a dry-run does.
    pub fn open(
        state_dir: &Path,
        store: &Arc<PositionStore>,
        seen_dir: impl Fn(&str) -> PathBuf + Send + 'static,
        window: Duration,
    ) -> Result<(Self, HashMap<String, Entry>), JournalError> {
        let (journal, mut writer) = Self::prepare(state_dir, store, seen_dir, window)?;
        let carried = writer.writer.replay()?;
        writer.start()?;
        Ok((journal, carried))
    }

    /// The journal, and its writer not yet started (commits wait in its queue meanwhile).
    fn prepare(
        state_dir: &Path,
        store: &Arc<PositionStore>,
        seen_dir: impl Fn(&str) -> PathBuf + Send + 'static,
        window: Duration,
    ) -> Result<(Self, Unstarted), JournalError> {
        let path = path(state_dir);
        let shown = path.display().to_string();
        let io = |error| JournalError::Io {
            path: shown.clone(),
            error,
        };
        private_fs::private_dir(state_dir).map_err(io)?;
        let file = private_fs::private_options()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        private_fs::sync_dir(state_dir).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let stats = Arc::new(JournalStats::default());
        let (requests, received) = mpsc::channel();
        let writer = Writer {
            path: shown,
            file_path: path.clone(),
            file,
            len,
            store: store.clone(),
            seen_dir: Box::new(seen_dir),
            checkpoint_bytes: CHECKPOINT_BYTES,
            next_checkpoint: CHECKPOINT_BYTES,
            pending_ids: 0,
            pending_ids_max: PENDING_ID_BYTES,
            pending_ids_due: PENDING_ID_BYTES,
            started: false,
            torn: false,
            window,
            pending: HashMap::new(),
            stats: stats.clone(),
            buffer: Vec::new(),
        };
        Ok((Self { requests, stats }, Unstarted { writer, received }))
    }

    /// Queues the commit at once; the future resolves once the round holding it is flushed.
    pub fn commit(
        &self,
        commit: Commit,
    ) -> impl std::future::Future<Output = Result<(), JournalError>> + use<> {
        let (done, result) = oneshot::channel();
        let sent = self.requests.send(Message::Commit(commit, done));
        async move {
            sent.map_err(|_| JournalError::Stopped)?;
            answer(result.await)
        }
    }

    /// Brings every tenant's files up to date, empties the journal (but for tenants whose files
    /// fail, carried in it: logged, and replayed by the next run) and stops the writer. Fails
    /// only when some state is on disk nowhere ([`JournalError::NotDurable`]).
    pub async fn close(&self) -> Result<(), JournalError> {
        let (done, result) = oneshot::channel();
        self.requests
            .send(Message::Close(done))
            .map_err(|_| JournalError::Stopped)?;
        result.await.map_err(|_| JournalError::Stopped)?
    }
}

fn answer(
    result: Result<Result<(), String>, oneshot::error::RecvError>,
) -> Result<(), JournalError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(JournalError::Write(error)),
        Err(_) => Err(JournalError::Stopped),
    }
}

/// A writer before its thread runs.
struct Unstarted {
    writer: Writer,
    received: mpsc::Receiver<Message>,
}

impl Unstarted {
    fn start(self) -> Result<(), JournalError> {
        let Self {
            mut writer,
            received,
        } = self;
        writer.started = true;
        let path = writer.path.clone();
        std::thread::Builder::new()
            .name("state-journal".into())
            .spawn(move || writer.run(received))
            .map(|_| ())
            .map_err(|error| JournalError::Io { path, error })
    }
}

/// What the journal of `state_dir` holds per tenant (lowercase id), without changing anything:
/// a dry-run applies it in memory, so it skips what a run would.
pub fn recovered(state_dir: &Path) -> Result<HashMap<String, Entry>, JournalError> {
    let path = path(state_dir);
    let io = |error| JournalError::Io {
        path: path.display().to_string(),
        error,
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(error) => return Err(io(error)),
    };
    let len = file.metadata().map_err(io)?.len();
    let mut tenants = HashMap::new();
    frame::read_each(file, len, |entry| fold(&mut tenants, entry)).map_err(io)?;
    Ok(tenants)
}

/// The tenant's positions as the next run starts from them: the journal's last entry for it,
/// or else its position slots (for operators and tests reading where collection stands).
pub fn positions_on_disk(state_dir: &Path, tenant_id: &str) -> Result<TenantPositions, String> {
    let journaled = recovered(state_dir).map_err(|e| e.to_string())?;
    match journaled.get(&tenant_id.to_ascii_lowercase()) {
        Some(entry) => Ok(entry.positions.clone()),
        None => PositionStore::read_only(&state_dir.join("positions"))
            .load(tenant_id)
            .map_err(|e| e.to_string()),
    }
}

/// Adds an entry to its tenant's: the ids of every entry, the positions of the last.
fn fold(tenants: &mut HashMap<String, Entry>, entry: Entry) {
    let key = entry.positions.tenant_id.to_ascii_lowercase();
    match tenants.get_mut(&key) {
        Some(merged) => {
            merged.appends.extend(entry.appends);
            merged.positions = entry.positions;
        }
        None => {
            tenants.insert(key, entry);
        }
    }
}

/// A tenant's commits since the last checkpoint, and its seen-id files: the committer's, or,
/// for a tenant known only from the journal, opened by the replay (and None after it, until
/// the tenant's committer commits).
struct Pending {
    files: Option<Arc<Mutex<SeenFiles>>>,
    writes: Writes,
    positions: TenantPositions,
    /// Whether some of this state is on disk nowhere: a round of its commits failed to be
    /// written, and neither its files nor the journal have taken it since.
    unsaved: bool,
}

impl Pending {
    /// The tenant's ids and positions written to its own files, flushed (ids first). On
    /// failure the ids not written stay pending.
    fn write_out(
        &mut self,
        store: &PositionStore,
        seen_dir: &dyn Fn(&str) -> PathBuf,
    ) -> Result<(), String> {
        let tenant = self.positions.tenant_id.clone();
        let files = match &self.files {
            Some(files) => files.clone(),
            None => {
                let files = SeenFiles::open(&seen_dir(&tenant)).map_err(|e| e.to_string())?;
                // Saving needs the tenant's slots open.
                store.load(&tenant).map_err(|e| e.to_string())?;
                self.files.insert(Arc::new(Mutex::new(files))).clone()
            }
        };
        let writes = std::mem::take(&mut self.writes);
        let written = files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(writes.clone());
        if let Err(e) = written {
            self.writes = writes;
            return Err(e.to_string());
        }
        store.save(&self.positions).map_err(|e| e.to_string())
    }
}

struct Writer {
    /// For messages.
    path: String,
    file_path: PathBuf,
    file: File,
    /// Bytes of whole entries in the file.
    len: u64,
    store: Arc<PositionStore>,
    seen_dir: Box<dyn Fn(&str) -> PathBuf + Send>,
    checkpoint_bytes: u64,
    next_checkpoint: u64,
    /// Bytes of ids in `pending`, and the count at which a checkpoint is due.
    pending_ids: usize,
    pending_ids_max: usize,
    pending_ids_due: usize,
    /// False until the writer's thread runs (its first checkpoint is the replay's).
    started: bool,
    /// Whether the file may end in a torn entry (a failed write could not be cut back): no
    /// entry is appended behind it until the journal is replaced.
    torn: bool,
    window: Duration,
    pending: HashMap<String, Pending>,
    stats: Arc<JournalStats>,
    buffer: Vec<u8>,
}

impl Writer {
    fn run(mut self, received: mpsc::Receiver<Message>) {
        loop {
            // Every sender gone without a close: the collector ended without stopping
            // (a run cut short). What is in the journal is durable; the next run replays it.
            let Ok(first) = received.recv() else { return };
            let mut round = Vec::new();
            let mut close = None;
            let deadline = Instant::now() + self.window;
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    Message::Commit(commit, done) => round.push((commit, done)),
                    Message::Close(done) => {
                        close = Some(done);
                        break;
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                next = if left.is_zero() {
                    received.try_recv().ok()
                } else {
                    received.recv_timeout(left).ok()
                };
            }
            if !round.is_empty() {
                self.write_round(round);
            }
            if let Some(done) = close {
                let _ = done.send(self.close());
                return;
            }
            let due = self.len >= self.next_checkpoint || self.pending_ids >= self.pending_ids_due;
            if due && let Err(error) = self.checkpoint() {
                tracing::error!(journal = %self.path, %error, "checkpoint of the state journal failed; it is kept and tried again later");
            }
        }
    }

    /// Appends the round's commits and flushes them; every commit joins its tenant's pending
    /// state whatever the disk did, so a later checkpoint still writes it. A tenant with state
    /// on disk nowhere (an earlier round failed) has its whole pending state written before
    /// its commit, so a replay of this round alone brings all of it back. When the write
    /// fails, the tenants' own files take over at once, and a commit fails only if its state
    /// reached them neither.
    fn write_round(&mut self, round: Vec<(Commit, oneshot::Sender<Result<(), String>>)>) {
        self.buffer.clear();
        let mut keys: Vec<String> = Vec::with_capacity(round.len());
        for (commit, _) in &round {
            let key = commit.positions.tenant_id.to_ascii_lowercase();
            if let Some(p) = self.pending.get(&key)
                && p.unsaved
                && !keys.contains(&key)
            {
                frame::encode_parts(&p.positions, p.writes.appends(), &mut self.buffer);
            }
            frame::encode_parts(&commit.positions, commit.writes.appends(), &mut self.buffer);
            keys.push(key);
        }
        let result = self.append();
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commits
            .fetch_add(round.len() as u64, Ordering::Relaxed);
        let failed = result.is_err();
        let mut answers = Vec::with_capacity(round.len());
        for ((commit, done), key) in round.into_iter().zip(keys) {
            self.pending_ids += commit
                .writes
                .appends()
                .map(|(_, keys)| keys.len())
                .sum::<usize>();
            match self.pending.get_mut(&key) {
                Some(p) => {
                    p.writes.merge(commit.writes);
                    p.positions = commit.positions;
                    p.files = Some(commit.files);
                    // Written whole in this round, or not at all.
                    p.unsaved = failed;
                }
                None => {
                    self.pending.insert(
                        key.clone(),
                        Pending {
                            files: Some(commit.files),
                            writes: commit.writes,
                            positions: commit.positions,
                            unsaved: failed,
                        },
                    );
                }
            }
            answers.push((key, done));
        }
        if let Err(error) = &result {
            // The file's state after a failed flush is unknown: the tenants' own files take
            // over, and the journal starts again empty.
            if let Err(also) = self.checkpoint() {
                tracing::error!(journal = %self.path, error = %also, "checkpoint after a failed journal write failed too");
            }
            for (key, done) in answers {
                let lost = self.pending.get(&key).is_some_and(|p| p.unsaved);
                let _ = done.send(if lost { Err(error.clone()) } else { Ok(()) });
            }
            return;
        }
        for (_, done) in answers {
            let _ = done.send(Ok(()));
        }
    }

    /// The last checkpoint: an error only for state that is on disk nowhere.
    fn close(&mut self) -> Result<(), JournalError> {
        let checkpointed = self.checkpoint();
        let mut lost: Vec<&str> = self
            .pending
            .values()
            .filter(|p| p.unsaved)
            .map(|p| p.positions.tenant_id.as_str())
            .collect();
        lost.sort_unstable();
        match checkpointed {
            Err(error) if !lost.is_empty() => Err(JournalError::NotDurable {
                tenants: format!("tenant(s) {}", lost.join(", ")),
                error,
            }),
            Err(error) => {
                tracing::error!(journal = %self.path, %error, "the tenants' state files could not all be brought up to date at the end; what they lack stays in the journal, and the next run replays it");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    fn append(&mut self) -> Result<(), String> {
        if self.torn {
            return Err(format!(
                "{}: a failed write could not be cut back; nothing is appended until the journal is replaced",
                self.path
            ));
        }
        let written = self
            .file
            .write_all(&self.buffer)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += self.buffer.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut back to the last whole entry, so later ones are not behind a torn one
                // (if even that fails, nothing is appended until a checkpoint replaces it).
                if let Err(cut) = self.file.set_len(self.len) {
                    self.torn = true;
                    tracing::error!(journal = %self.path, error = %cut, "the state journal could not be cut back after a failed write");
                }
                Err(format!("{}: {e}", self.path))
            }
        }
    }

    /// What an earlier run left in the journal, into the tenants' files: the same as a
    /// checkpoint, of the journal's whole entries (read one at a time). Returns the tenants
    /// whose files failed (kept in the journal, and logged).
    fn replay(&mut self) -> Result<HashMap<String, Entry>, JournalError> {
        if self.len == 0 {
            return Ok(HashMap::new());
        }
        let io = |error| JournalError::Io {
            path: self.path.clone(),
            error,
        };
        let mut tenants = HashMap::new();
        let file = File::open(&self.file_path).map_err(io)?;
        let read =
            frame::read_each(file, self.len, |entry| fold(&mut tenants, entry)).map_err(io)?;
        if read.undecodable {
            // Whole by its checksum but not an entry this version reads (a newer version's,
            // or damage): kept aside for an operator, not silently dropped with what follows.
            let aside = self.file_path.with_extension("unreadable");
            std::fs::copy(&self.file_path, &aside).map_err(io)?;
            tracing::error!(journal = %self.path, kept = %aside.display(), whole_bytes = read.whole_bytes, "the state journal holds an entry this version can't read; the entries before it are replayed, and the file is kept aside (a downgrade? run the version that wrote it once to checkpoint it)");
        } else if read.torn_bytes > 0 {
            tracing::warn!(journal = %self.path, torn_bytes = read.torn_bytes, "the state journal ended in a partial entry (a crash mid-write); its whole entries are replayed");
        }
        // New entries go after the whole ones, never behind a torn one.
        self.file.set_len(read.whole_bytes).map_err(io)?;
        self.len = read.whole_bytes;
        tracing::info!(journal = %self.path, tenants = tenants.len(), "replaying the state journal an earlier run left");
        for entry in tenants.into_values() {
            self.pending_ids += entry.appends.iter().map(|(_, k)| k.len()).sum::<usize>();
            self.pending.insert(
                entry.positions.tenant_id.to_ascii_lowercase(),
                Pending {
                    files: None,
                    writes: Writes::from_appends(entry.appends),
                    positions: entry.positions,
                    unsaved: false,
                },
            );
        }
        if let Err(error) = self.checkpoint() {
            tracing::error!(journal = %self.path, %error, "some tenants' state could not be replayed into their files; it stays in the journal, and those tenants resume from it");
        }
        // The files replay opened are not used again: the tenant's committer brings its own
        // with its first commit (two instances of one tenant's files must not write at once).
        for pending in self.pending.values_mut() {
            pending.files = None;
        }
        Ok(self
            .pending
            .iter()
            .map(|(key, p)| {
                let entry = Entry {
                    positions: p.positions.clone(),
                    appends: p.writes.appends().map(|(d, k)| (d, k.to_vec())).collect(),
                };
                (key.clone(), entry)
            })
            .collect())
    }

    /// Writes every pending tenant's ids and positions to its own files (flushed), then starts
    /// the journal again holding only the tenants whose files failed (their state carried over
    /// as one entry each), so nothing the journal held is forgotten and one tenant's broken
    /// files don't keep the journal growing. A tenant carried over since the replay waits for
    /// its committer's first commit (which brings its files) before it is tried again.
    fn checkpoint(&mut self) -> Result<(), String> {
        let replaying = !self.started;
        let mut first_error = None;
        let mut carried = Vec::new();
        for (key, pending) in &mut self.pending {
            if pending.files.is_none() && !replaying {
                carried.push(key.clone());
                continue;
            }
            if let Err(e) = pending.write_out(&self.store, &*self.seen_dir) {
                let tenant = &pending.positions.tenant_id;
                first_error.get_or_insert(format!("tenant {tenant}: {e}"));
                carried.push(key.clone());
            }
        }
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        // Written out: their state is in their own files now.
        self.pending.retain(|key, _| carried.contains(key));
        self.buffer.clear();
        self.pending_ids = 0;
        for p in self.pending.values() {
            frame::encode_parts(&p.positions, p.writes.appends(), &mut self.buffer);
            self.pending_ids += p.writes.appends().map(|(_, k)| k.len()).sum::<usize>();
        }
        let restarted = self.restart_journal();
        if restarted.is_ok() {
            // The journal holds every tenant's state its files don't, and ends whole.
            self.torn = false;
            for p in self.pending.values_mut() {
                p.unsaved = false;
            }
        }
        // A failure is tried again after as much again, not at every round.
        self.next_checkpoint = self.len + self.checkpoint_bytes;
        self.pending_ids_due = self.pending_ids + self.pending_ids_max;
        restarted?;
        first_error.map_or(Ok(()), Err)
    }

    /// The journal emptied, or replaced by `buffer` (the carried entries) so that a crash
    /// leaves either the old journal or the new one whole: written beside it, flushed,
    /// renamed over it. If that fails, the old journal (which holds everything) stays.
    fn restart_journal(&mut self) -> Result<(), String> {
        let fail = |e: std::io::Error| format!("{}: {e}", self.path);
        if self.buffer.is_empty() {
            self.file.set_len(0).map_err(fail)?;
            self.len = 0;
            return self.file.sync_data().map_err(fail);
        }
        let next = self.file_path.with_extension("next");
        let replaced = (|| {
            let mut file = private_fs::private_options()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&next)?;
            file.write_all(&self.buffer)?;
            file.sync_data()?;
            std::fs::rename(&next, &self.file_path)?;
            private_fs::sync_dir(self.file_path.parent().unwrap_or(Path::new(".")))?;
            private_fs::private_options()
                .read(true)
                .append(true)
                .open(&self.file_path)
        })();
        match replaced {
            Ok(file) => {
                self.file = file;
                self.len = self.buffer.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&next);
                Err(fail(e))
            }
        }
    }
}

#[cfg(test)]
mod tests;
