//! A subscribe stream served from the history: when every filter of a
//! stream names recorded topics, its messages come from the recorder, each
//! with its sequence number as the event id. So a client that reconnects
//! with `Last-Event-ID` (as browsers' EventSource does) resumes where it
//! left off, and `since=` replays history before going live, with no gap
//! and no duplicate: the stream reads the history file from its cursor
//! until it has caught up, then takes the recorder's records as they are
//! written (subscribed to them before its first read, so none falls
//! between), skipping what it already sent. A reader that falls behind
//! the live records reads the file again: it is never cut off and never
//! skips, and holds at most a page of events in memory.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tern_codec::TopicFilter;
use tern_store::history::Record;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::history::Recorded;
use crate::json::JsonMessage;
use crate::sse;

/// Records read from the file at a time.
const PAGE: usize = 256;

/// A stream's place in the history.
pub(crate) struct Replay {
    rec: Arc<Recorded>,
    live: broadcast::Receiver<Arc<Record>>,
    filters: Arc<Vec<TopicFilter>>,
    /// The last sequence number the stream has passed.
    cursor: u64,
    catching_up: bool,
    pending: VecDeque<Bytes>,
    stop: CancellationToken,
    done: bool,
}

/// Where a stream starts.
pub(crate) enum From {
    /// After this event id (`Last-Event-ID`).
    After(u64),
    /// At this time (`since=`, milliseconds since the epoch).
    Time(u64),
    /// Now: live only.
    Now,
}

impl Replay {
    /// A stream of `filters` from `from`; `first` are events to send before
    /// (the retained values).
    pub(crate) async fn start(
        rec: Arc<Recorded>,
        filters: Vec<TopicFilter>,
        from: From,
        first: Vec<Bytes>,
        stop: CancellationToken,
    ) -> std::io::Result<Replay> {
        // Subscribed before the cursor is read: nothing written after it
        // is missed.
        let live = rec.live.subscribe();
        let cursor = match from {
            From::After(seq) => seq,
            From::Time(t) => rec
                .read(move |h| h.seq_before(t))
                .await?
                .map_err(|e| std::io::Error::other(e.to_string()))?,
            From::Now => rec.read(|h| h.last_seq()).await?,
        };
        Ok(Replay {
            rec,
            live,
            filters: Arc::new(filters),
            cursor,
            catching_up: true,
            pending: first.into(),
            stop,
            done: false,
        })
    }

    /// The next event; `None` once the stream is over.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            if self.catching_up {
                if let Err(e) = self.read_page().await {
                    return Some(self.end(&format!("the history cannot be read: {e}")));
                }
                continue;
            }
            let got = tokio::select! {
                () = self.stop.cancelled() => {
                    return Some(self.end("the broker is shutting down"));
                }
                got = self.live.recv() => got,
            };
            match got {
                Ok(r) if r.seq > self.cursor => {
                    self.cursor = r.seq;
                    if self.filters.iter().any(|f| f.matches(&r.message.topic)) {
                        return Some(event(&r));
                    }
                }
                Ok(_) => {}
                // Behind the live records: back to the file.
                Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => return Some(self.end("the recorder stopped")),
            }
        }
    }

    /// Reads a page after the cursor; caught up once the read reaches the
    /// last record written.
    async fn read_page(&mut self) -> std::io::Result<()> {
        let (cursor, filters) = (self.cursor, self.filters.clone());
        let (records, last, newest) = self
            .rec
            .read(move |h| {
                h.after(cursor, &filters, PAGE)
                    .map(|(r, last)| (r, last, h.last_seq()))
            })
            .await?
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.pending.extend(records.iter().map(event));
        self.cursor = self.cursor.max(last);
        if self.cursor >= newest {
            self.catching_up = false;
        }
        Ok(())
    }

    fn end(&mut self, reason: &str) -> Bytes {
        self.done = true;
        let data = serde_json::json!({ "reason": reason }).to_string();
        sse::frame("end", None, &data)
    }
}

fn event(r: &Record) -> Bytes {
    let mut v = serde_json::to_value(JsonMessage::new(&r.message)).unwrap_or_default();
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("time".into(), r.time.into());
    }
    sse::frame("message", Some(r.seq), &v.to_string())
}
