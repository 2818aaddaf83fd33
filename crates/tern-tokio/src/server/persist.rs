//! Persistence: one writer thread owns the store. Shards send it the
//! changes of each round; it writes everything that has arrived as one
//! batch with one fsync (group commit) and tells each shard how far its
//! changes are durable, which lets the acknowledgements of those rounds
//! out. A shard never waits for the disk: it goes on serving while the
//! writer writes.
//!
//! In relaxed mode a shard releases its acknowledgements as soon as it has
//! handed the changes over, and the writer syncs every `flush` interval:
//! up to that much of acknowledged state is lost if the power goes.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_broker::durable::{Change, Fetch};
use tern_store::{Loaded, Store, StoreError};
use tracing::{error, info, warn};

use super::inbox::{ShardTx, ToShard};
use super::now;

/// Where and how the server keeps its durable state.
#[derive(Clone)]
pub struct Persistence {
    /// The store, opened: the server loads it at startup and writes every
    /// change to it.
    pub store: Arc<Mutex<Box<dyn Store>>>,
    /// `None`: every acknowledgement waits for its fsync. `Some(d)`:
    /// acknowledge before the fsync and sync every `d` (losing up to `d`
    /// of acknowledged state on power loss).
    pub relaxed: Option<Duration>,
}

impl std::fmt::Debug for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persistence")
            .field("relaxed", &self.relaxed)
            .finish_non_exhaustive()
    }
}

/// A round's changes of one shard.
pub(super) struct Batch {
    pub(super) shard: usize,
    pub(super) changes: Vec<(u64, Change)>,
}

/// What the writer is sent.
pub(super) enum ToWriter {
    Batch(Batch),
    /// A shard's broker asks for a session's next queued messages.
    Fetch {
        shard: usize,
        fetch: Fetch,
    },
    /// Write what is left, sync, and stop; reply when done.
    Stop(std::sync::mpsc::Sender<()>),
}

/// Reads the store back, saying what could not be read.
pub(super) fn load(p: &Persistence) -> std::io::Result<Loaded> {
    let mut store = p.store.lock().unwrap_or_else(|e| e.into_inner());
    // Sessions come back offline, when a broker holds none of their queue
    // in memory: the store reads what is in flight, and counts the rest.
    let loaded = guarded(|| store.load(0)).map_err(|e| std::io::Error::other(e.to_string()))?;
    for problem in &loaded.problems {
        warn!(%problem, "left out of the store: cannot be read");
    }
    info!(
        sessions = loaded.sessions.len(),
        retained = loaded.retained.len(),
        dropped = loaded.problems.len(),
        "store loaded"
    );
    Ok(loaded)
}

/// Starts the writer thread.
pub(super) fn spawn(
    p: &Persistence,
    rx: Receiver<ToWriter>,
    shards: Arc<Vec<ShardTx>>,
) -> std::io::Result<()> {
    let writer = Writer {
        store: p.store.clone(),
        flush: p.relaxed,
        shards,
        failing: None,
    };
    std::thread::Builder::new()
        .name("tern-store".into())
        .spawn(move || writer.run(rx))?;
    Ok(())
}

/// Changes taken from the shards and not yet written, in the order they
/// arrived, and the number of the last change of each shard among them.
struct Pending {
    changes: Vec<(u64, Change)>,
    upto: Vec<u64>,
}

struct Writer {
    store: Arc<Mutex<Box<dyn Store>>>,
    /// Relaxed: how often to sync.
    flush: Option<Duration>,
    shards: Arc<Vec<ShardTx>>,
    /// Since when writes fail.
    failing: Option<Instant>,
}

/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How long without a batch before the store is given time for its upkeep.
const IDLE: Duration = Duration::from_secs(2);

impl Writer {
    fn run(mut self, rx: Receiver<ToWriter>) {
        // Changes taken from the shards and not yet written, in order.
        let mut pending = Pending {
            changes: Vec::new(),
            upto: vec![0; self.shards.len()],
        };
        let mut stop = None;
        let mut fetches = Vec::new();
        let mut last_sync = now();
        // Whether the store was written since it last had time for its
        // upkeep, and when it last heard from a shard.
        let mut written = false;
        let mut last_heard = now();
        loop {
            let wait = match (self.failing, self.flush) {
                _ if !pending.changes.is_empty() || !fetches.is_empty() => Some(RETRY),
                (_, Some(f)) => Some(f.saturating_sub(last_sync.elapsed())),
                _ if written => Some(IDLE),
                _ => None,
            };
            let first = match wait {
                Some(d) => rx.recv_timeout(d),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match first {
                Ok(msg) => {
                    last_heard = now();
                    self.take(msg, &mut pending, &mut fetches, &mut stop)
                }
                Err(RecvTimeoutError::Timeout) => {
                    if written && pending.changes.is_empty() && last_heard.elapsed() >= IDLE {
                        // Quiet: give back what churn left free (the
                        // shards go on; what they send waits for it).
                        written = false;
                        self.maintain();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Everything that arrived meanwhile joins the same write.
            while let Ok(msg) = rx.try_recv() {
                self.take(msg, &mut pending, &mut fetches, &mut stop);
            }
            if !pending.changes.is_empty() {
                self.write(&mut pending);
                written = true;
            }
            if pending.changes.is_empty() {
                // What was asked for after those changes can be read now.
                self.answer(&mut fetches);
            }
            if self.flush.is_some_and(|f| last_sync.elapsed() >= f) || stop.is_some() {
                self.sync();
                last_sync = now();
            }
            if let Some(done) = stop.take() {
                if !pending.changes.is_empty() {
                    // Stopping with a store that cannot write: what it
                    // could not take was never acknowledged.
                    error!(
                        changes = pending.changes.len(),
                        "stopped with changes the store could not write"
                    );
                }
                let _ = done.send(());
                return;
            }
        }
    }

    fn take(
        &mut self,
        msg: ToWriter,
        pending: &mut Pending,
        fetches: &mut Vec<(usize, Fetch)>,
        stop: &mut Option<Sender<()>>,
    ) {
        match msg {
            ToWriter::Fetch { shard, fetch } => fetches.push((shard, fetch)),
            ToWriter::Batch(mut b) => {
                if let Some(&(n, _)) = b.changes.last() {
                    pending.upto[b.shard] = pending.upto[b.shard].max(n);
                }
                pending.changes.append(&mut b.changes);
            }
            ToWriter::Stop(done) => *stop = Some(done),
        }
    }

    /// Writes every pending batch as one, durable unless relaxed; on
    /// success tells each shard how far its changes are.
    fn write(&mut self, pending: &mut Pending) {
        let result = {
            let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            guarded(|| store.commit(&pending.changes, self.flush.is_none()))
        };
        match result {
            Ok(()) => {
                if let Some(since) = self.failing.take() {
                    info!(after = ?since.elapsed(), "the store takes changes again");
                }
                for (shard, n) in pending.upto.iter_mut().enumerate() {
                    if *n > 0 && self.flush.is_none() {
                        let _ = self.shards[shard].send(ToShard::Persisted(*n));
                    }
                    *n = 0;
                }
                pending.changes.clear();
            }
            Err(e) => {
                if self.failing.is_none() {
                    error!(error = %e, "the store cannot write: connections are closed with Quota exceeded until it can");
                    self.failing = Some(now());
                    for tx in self.shards.iter() {
                        let _ = tx.send(ToShard::StoreFailed);
                    }
                }
            }
        }
    }

    /// Reads what each fetch asks for and sends it to its shard; one the
    /// store cannot read now is tried again later (an empty answer would
    /// say there is no more).
    fn answer(&mut self, fetches: &mut Vec<(usize, Fetch)>) {
        if fetches.is_empty() {
            return;
        }
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        fetches.retain(|(shard, f)| match guarded(|| store.fetch(&f.client_id, f.from, f.max)) {
            Ok(deliveries) => {
                let _ = self.shards[*shard].send(ToShard::Fetched {
                    session: f.session,
                    deliveries,
                });
                false
            }
            Err(e) => {
                error!(error = %e, client_id = %f.client_id, "the store cannot read queued messages");
                true
            }
        });
    }

    fn maintain(&mut self) {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let (before, started) = (store.size(), now());
        match guarded(|| store.maintain()) {
            Ok(true) => info!(
                before = before,
                after = store.size(),
                ms = started.elapsed().as_millis() as u64,
                "store compacted"
            ),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "the store could not compact"),
        }
    }

    fn sync(&mut self) {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = guarded(|| store.sync()) {
            error!(error = %e, "the store cannot sync");
        }
    }
}

/// Runs a store operation; an engine that panics (redb does on a page it
/// finds damaged) is an error like any other, not the end of the writer.
fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(StoreError::Damaged(format!(
            "the store's engine failed: {why}"
        )))
    })
}
