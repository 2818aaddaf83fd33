//! Instants in half the space, for what every connection keeps.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

/// An instant as nanoseconds after its broker's [`Epoch`]: 8 bytes, and
/// `Option<Stamp>` too, where an `Instant` takes 16. Connections and their
/// timers keep a few each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Stamp(NonZeroU64);

/// The base of a broker's stamps: 2^62 ns (146 years) before it started
/// where the platform's clock allows, so every instant from then until 438
/// years after the start converts exactly, both ways and in order.
/// (Instants outside saturate.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch(Instant);

impl Epoch {
    pub fn new(started: Instant) -> Epoch {
        let base = [1 << 62, 1 << 50, 1 << 30, 1]
            .into_iter()
            .find_map(|n| started.checked_sub(Duration::from_nanos(n)));
        Epoch(base.unwrap_or(started))
    }

    #[inline]
    pub fn stamp(self, t: Instant) -> Stamp {
        let d = t.saturating_duration_since(self.0);
        let n = d
            .as_secs()
            .checked_mul(1_000_000_000)
            .and_then(|n| n.checked_add(u64::from(d.subsec_nanos())))
            .unwrap_or(u64::MAX);
        Stamp(NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN))
    }

    #[inline]
    pub fn instant(self, s: Stamp) -> Instant {
        self.0 + Duration::from_nanos(s.0.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_order() {
        // An origin, as the simulation takes one.
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        let e = Epoch::new(start);
        let times = [
            start,
            start + Duration::from_nanos(1),
            start + Duration::from_secs(90),
            start + Duration::from_secs(u64::from(u32::MAX)),
        ];
        for w in times.windows(2) {
            assert!(e.stamp(w[0]) < e.stamp(w[1]));
        }
        for t in times {
            assert_eq!(e.instant(e.stamp(t)), t);
        }
    }
}
