//! Vectored writes, and copies of what waits for a slow reader (so that it
//! pins only its own bytes, not the core's shared encoding chunks).

use bytes::{Buf, Bytes};
use std::io::IoSlice;

/// Makes every buffer of `queue` its own allocation (those already are
/// stay as they are).
pub(super) fn own(queue: &mut [Bytes]) {
    for b in queue.iter_mut() {
        *b = owned(std::mem::take(b));
    }
}

/// `b` as its own allocation: itself if it is, a copy if it shares one.
pub(super) fn owned(b: Bytes) -> Bytes {
    if b.is_unique() {
        b
    } else {
        Bytes::copy_from_slice(&b)
    }
}

/// Buffers handed to one vectored write at most.
pub(super) const MAX_SLICES: usize = 64;

/// Fills `slices` with the first buffers of `queue`; returns how many, and
/// their length in bytes.
pub(super) fn io_slices<'a>(queue: &'a [Bytes], slices: &mut [IoSlice<'a>]) -> (usize, usize) {
    let mut len = 0;
    let mut k = 0;
    for (slice, b) in slices.iter_mut().zip(queue.iter()) {
        *slice = IoSlice::new(b);
        len += b.len();
        k += 1;
    }
    (k, len)
}

/// Drops the first `n` bytes of `queue`, which were written. (A queue is
/// a `Vec`, 8 bytes smaller than a `VecDeque` in every idle connection; it
/// is usually written whole, and what is left moves up.)
pub(super) fn advance(queue: &mut Vec<Bytes>, mut n: usize) {
    let mut done = 0;
    for b in queue.iter_mut() {
        if n == 0 {
            break;
        }
        if n >= b.len() {
            n -= b.len();
            done += 1;
        } else {
            b.advance(n);
            n = 0;
        }
    }
    queue.drain(..done);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn what_waits_for_a_slow_reader_stops_sharing_the_cores_chunks() {
        let mut chunk = BytesMut::with_capacity(16 * 1024);
        chunk.extend_from_slice(&[1u8; 100]);
        let a = chunk.split_to(40).freeze();
        let b = chunk.split().freeze();
        let owned = Bytes::from(vec![2u8; 10]);
        let ptr = owned.as_ptr();
        let mut queue = vec![a.clone(), owned, b];
        own(&mut queue);
        assert!(queue.iter_mut().all(|b| b.is_unique()));
        assert_eq!(queue[0], a);
        assert_eq!(queue[1].as_ptr(), ptr, "already its own: not copied");
        assert_eq!(queue[2].len(), 60);
    }
}
