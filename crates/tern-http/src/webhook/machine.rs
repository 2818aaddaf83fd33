//! One webhook's deliveries, sans-IO: in order, one request at a time;
//! what an answer means (delivered, failed for good, or to try again);
//! when to try again (exponential backoff with jitter, at least what a
//! `Retry-After` asks). Time and randomness are inputs; tested in virtual
//! time.
//!
//! | answer | verdict |
//! |---|---|
//! | 2xx | delivered |
//! | connection error, timeout, 5xx, 408, 429 | again, after a backoff (429/503: at least `Retry-After`) |
//! | any other status (3xx, 4xx) | failed: counted, reported, never retried |

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How retries are spaced: the async client's reconnection delays
/// (`initial * 2^n`, at most `max`, with jitter between half and all).
pub use tern_tokio::Backoff;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP status, with the `Retry-After` it carried.
    Status(u16, Option<Duration>),
    /// No answer: the connection failed or the request timed out.
    Error(String),
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T> {
    /// Delivered (2xx).
    Delivered(T),
    /// Failed for good (a status that retrying will not change).
    Failed(T, String),
    /// Tried again at this time.
    Retry(Instant),
}

/// What the outbox has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Delivered.
    pub delivered: u64,
    /// Failed for good.
    pub failed: u64,
    /// Attempts that will be made again.
    pub retries: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// One webhook's deliveries.
#[derive(Debug)]
pub struct Outbox<T> {
    queue: VecDeque<T>,
    backoff: Backoff,
    /// The front item is being tried.
    in_flight: bool,
    /// Failed attempts of the front item so far.
    failed: u32,
    /// Not before this time may the front item be tried again.
    not_before: Option<Instant>,
    counts: Counts,
}

impl<T: Clone> Outbox<T> {
    /// An empty outbox.
    pub fn new(backoff: Backoff) -> Outbox<T> {
        Outbox {
            queue: VecDeque::new(),
            backoff,
            in_flight: false,
            failed: 0,
            not_before: None,
            counts: Counts::default(),
        }
    }

    /// A message to deliver, after those already waiting.
    pub fn push(&mut self, item: T) {
        self.queue.push_back(item);
    }

    /// Messages waiting, the one being tried included.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// What the outbox has done so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// A message failed before it could be tried (its body could not be
    /// made): counted as failed.
    pub fn count_failure(&mut self, why: String) {
        self.counts.failed += 1;
        self.counts.last_error = Some(why);
    }

    /// Whether the front item waits for a retry.
    pub fn retrying(&self) -> bool {
        self.not_before.is_some()
    }

    /// The request to make now, if any: the front item (and how many
    /// attempts failed before), once nothing is in flight and its backoff
    /// is over.
    #[must_use]
    pub fn poll_request(&mut self, now: Instant) -> Option<(T, u32)> {
        if self.in_flight || self.not_before.is_some_and(|t| now < t) {
            return None;
        }
        let item = self.queue.front()?.clone();
        self.in_flight = true;
        self.not_before = None;
        Some((item, self.failed))
    }

    /// When to call [`Outbox::poll_request`] again, if waiting on a backoff.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.not_before.filter(|_| !self.in_flight)
    }

    /// The answer to the request in flight.
    ///
    /// # Panics
    ///
    /// If no request is in flight.
    pub fn handle_answer(&mut self, answer: Answer, now: Instant, random: u64) -> Verdict<T> {
        assert!(self.in_flight, "an answer without a request");
        self.in_flight = false;
        let (retry, why, at_least) = match &answer {
            Answer::Status(s, _) if (200..300).contains(s) => {
                let item = self.pop();
                self.counts.delivered += 1;
                return Verdict::Delivered(item);
            }
            Answer::Status(s, after) if *s >= 500 || *s == 408 || *s == 429 => {
                (true, format!("HTTP {s}"), *after)
            }
            Answer::Status(s, _) => (false, format!("HTTP {s}"), None),
            Answer::Error(e) => (true, e.clone(), None),
        };
        self.counts.last_error = Some(why.clone());
        if !retry {
            let item = self.pop();
            self.counts.failed += 1;
            return Verdict::Failed(item, why);
        }
        self.failed = self.failed.saturating_add(1);
        self.counts.retries += 1;
        let delay = self
            .backoff
            .delay(self.failed - 1, random)
            .max(at_least.unwrap_or_default().min(self.backoff.max));
        let at = now + delay;
        self.not_before = Some(at);
        Verdict::Retry(at)
    }

    fn pop(&mut self) -> T {
        self.failed = 0;
        self.not_before = None;
        self.queue.pop_front().expect("an item in flight")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where virtual time starts.
    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn one_request_at_a_time_in_order() {
        let t0 = start();
        let mut o = Outbox::new(Backoff {
            initial: ms(500),
            max: Duration::from_secs(300),
        });
        o.push(1);
        o.push(2);
        assert_eq!(o.poll_request(t0), Some((1, 0)));
        // Nothing else while one is in flight.
        assert_eq!(o.poll_request(t0), None);
        assert_eq!(
            o.handle_answer(Answer::Status(204, None), t0, 0),
            Verdict::Delivered(1)
        );
        assert_eq!(o.poll_request(t0), Some((2, 0)));
        assert_eq!(
            o.handle_answer(Answer::Status(200, None), t0, 0),
            Verdict::Delivered(2)
        );
        assert_eq!(o.poll_request(t0), None);
        assert_eq!(o.counts().delivered, 2);
    }

    #[test]
    fn server_errors_and_lost_connections_are_retried_with_growing_delays() {
        let t0 = start();
        let b = Backoff {
            initial: ms(100),
            max: ms(1000),
        };
        let mut o = Outbox::new(b);
        o.push("a");
        o.push("b");
        let mut now = t0;
        let mut delays = Vec::new();
        for (i, answer) in [
            Answer::Error("connection refused".into()),
            Answer::Status(500, None),
            Answer::Status(503, None),
            Answer::Status(408, None),
            Answer::Status(502, None),
            Answer::Status(500, None),
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(o.poll_request(now), Some(("a", i as u32)), "attempt {i}");
            // Jitter at its largest: the delay is the whole step.
            let Verdict::Retry(at) = o.handle_answer(answer, now, u64::MAX - 1) else {
                panic!("a retry");
            };
            delays.push(at - now);
            // Not before its time, and "b" never overtakes "a".
            assert_eq!(o.poll_request(at - ms(1)), None);
            assert_eq!(o.poll_timeout(), Some(at));
            now = at;
        }
        // 100, 200, 400, 800, then capped at 1000 (each between half and
        // all of its step).
        let caps = [100, 200, 400, 800, 1000, 1000];
        for (d, cap) in delays.iter().zip(caps) {
            assert!(*d <= ms(cap) && *d >= ms(cap / 2), "{delays:?}");
        }
        assert_eq!(o.poll_request(now), Some(("a", 6)));
        assert_eq!(
            o.handle_answer(Answer::Status(200, None), now, 0),
            Verdict::Delivered("a")
        );
        // The next one starts afresh.
        assert_eq!(o.poll_request(now), Some(("b", 0)));
        assert_eq!(o.counts().retries, 6);
    }

    #[test]
    fn retry_after_is_honoured_within_the_longest_delay() {
        let t0 = start();
        let mut o = Outbox::new(Backoff {
            initial: ms(100),
            max: Duration::from_secs(60),
        });
        o.push(());
        o.poll_request(t0).expect("first attempt");
        let v = o.handle_answer(Answer::Status(429, Some(Duration::from_secs(30))), t0, 0);
        assert_eq!(v, Verdict::Retry(t0 + Duration::from_secs(30)));
        o.poll_request(t0 + Duration::from_secs(30)).expect("due");
        // A hostile Retry-After waits the longest delay, no more.
        let v = o.handle_answer(
            Answer::Status(503, Some(Duration::from_secs(86_400))),
            t0,
            0,
        );
        assert_eq!(v, Verdict::Retry(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn other_client_errors_fail_at_once_and_the_queue_moves_on() {
        let t0 = start();
        let mut o = Outbox::new(Backoff {
            initial: ms(500),
            max: Duration::from_secs(300),
        });
        o.push(1);
        o.push(2);
        assert_eq!(o.poll_request(t0), Some((1, 0)));
        assert_eq!(
            o.handle_answer(Answer::Status(404, None), t0, 0),
            Verdict::Failed(1, "HTTP 404".into())
        );
        assert_eq!(o.poll_request(t0), Some((2, 0)));
        assert_eq!(
            o.handle_answer(Answer::Status(301, None), t0, 0),
            Verdict::Failed(2, "HTTP 301".into())
        );
        assert_eq!(o.counts().failed, 2);
        assert_eq!(o.counts().last_error.as_deref(), Some("HTTP 301"));
        assert!(o.is_empty());
    }
}
