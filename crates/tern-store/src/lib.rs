//! The durable store of a Tern broker: the changes the broker core reports
//! ([`tern_broker::durable::Change`]) written in batches and made durable
//! with one fsync each, and read back at startup.
//!
//! [`Store`] is the boundary the server writes through; [`KvStore`] puts
//! it on any ordered key-value [`Engine`] with atomic batches, with one
//! table per kind of record ([`format`](mod@format)). A store is checked against the
//! core's own reference copy of the state ([`tern_broker::durable::Image`]):
//! after the same changes, [`Store::load`] gives what the image gives.
//!
//! ```
//! use tern_store::{KvStore, MemEngine, Store};
//!
//! let mut store = KvStore::new(MemEngine::default());
//! // The server commits each round's changes (here: none), durably...
//! store.commit(&[], true)?;
//! // ...and loads everything back at startup (of each session's queue, the
//! // first 100 messages: the rest on request), with what it could not read.
//! let loaded = store.load(100)?;
//! assert!(loaded.sessions.is_empty() && loaded.problems.is_empty());
//! # Ok::<(), tern_store::StoreError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod format;
#[cfg(feature = "redb")]
pub mod history;
mod kv;
mod load;
#[cfg(feature = "redb")]
mod redb;
mod removals;

pub use kv::{Engine, KvStore, MemEngine, Op};
#[cfg(feature = "redb")]
pub use redb::{RedbEngine, FILE};

/// Opens the store in `dir` on redb (created if there is none).
#[cfg(feature = "redb")]
pub fn open(dir: &std::path::Path) -> Result<KvStore<RedbEngine>, StoreError> {
    Ok(KvStore::new(RedbEngine::open(dir)?))
}

use tern_broker::durable::{Change, StoredDelivery, StoredRetained, StoredSession};
use tern_codec::MqttString;

/// Where a broker's durable state is kept.
pub trait Store: Send {
    /// Writes `changes` (numbered, in order, as the core reported them) as
    /// one atomic batch; with `sync`, durable (fsync) when this returns.
    fn commit(&mut self, changes: &[(u64, Change)], sync: bool) -> Result<(), StoreError>;

    /// Makes everything committed so far durable.
    fn sync(&mut self) -> Result<(), StoreError>;

    /// Reads back what is stored: the sessions and retained messages to
    /// import, and every record that could not be read (which is left out,
    /// not guessed at). Of each session's queued messages the first
    /// `window` are read; the rest stay in the store, counted in
    /// [`StoredSession::spilled`], for [`Store::fetch`].
    fn load(&mut self, window: usize) -> Result<Loaded, StoreError>;

    /// The queued messages (not those in flight) of the session of
    /// `client_id` from id `from` on, in id order, at most `max`: the
    /// answer to a broker's [`Fetch`](tern_broker::durable::Fetch), reading
    /// what was committed before it.
    fn fetch(
        &mut self,
        client_id: &MqttString,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredDelivery>, StoreError>;

    /// Bytes the store holds on disk (0 when it cannot tell).
    fn size(&self) -> u64 {
        0
    }

    /// Gives back the space that churn left free, when the store holds
    /// more than twice its live data; returns whether it did. It may take
    /// a while (redb: about 10 ms per MB live): call it when idle.
    fn maintain(&mut self) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// What a store holds, as read back.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The sessions, to import.
    pub sessions: Vec<StoredSession>,
    /// The retained messages, to import.
    pub retained: Vec<StoredRetained>,
    /// Records that could not be read, and why.
    pub problems: Vec<Problem>,
}

/// A record that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Its table.
    pub table: &'static str,
    /// Its key, as text (bytes that are not UTF-8 replaced).
    pub key: String,
    /// What was wrong.
    pub reason: &'static str,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}: {}", self.table, self.key, self.reason)
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The engine could not read or write (a full disk among others).
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    /// The store cannot be opened: damaged beyond what loading skips.
    #[error("store damaged: {0}")]
    Damaged(String),
}
