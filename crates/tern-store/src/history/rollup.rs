//! Numbers from payloads, and buckets of them: a plain number, or a JSON
//! field chosen with a JSON pointer; a bucket's count, sum, minimum and
//! maximum, with when each extreme occurred. Pure: no storage, no clock.

/// The number a payload carries: the whole payload as a number (`21.5`,
/// ` 3 `), or with `pointer` the JSON value it points to (a number, or a
/// string that is one). Infinities and NaN are not numbers here.
pub fn value_of(payload: &[u8], pointer: Option<&str>) -> Option<f64> {
    let v = match pointer {
        None => std::str::from_utf8(payload)
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()?,
        Some(p) => {
            let json: serde_json::Value = serde_json::from_slice(payload).ok()?;
            match json.pointer(p)? {
                serde_json::Value::Number(n) => n.as_f64()?,
                serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
                _ => return None,
            }
        }
    };
    v.is_finite().then_some(v)
}

/// The numbers of one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Where the interval starts, milliseconds since the Unix epoch.
    pub start: u64,
    /// How many numbers.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// The smallest.
    pub min: f64,
    /// When the smallest was recorded (the first time, if repeated).
    pub min_at: u64,
    /// The largest.
    pub max: f64,
    /// When the largest was recorded (the first time, if repeated).
    pub max_at: u64,
}

/// Encoded size of a bucket (its start is the key's).
pub(crate) const ENCODED: usize = 40;

impl Bucket {
    /// A bucket of one number.
    pub fn of(start: u64, value: f64, at: u64) -> Bucket {
        Bucket {
            start,
            count: 1,
            sum: value,
            min: value,
            min_at: at,
            max: value,
            max_at: at,
        }
    }

    /// The mean.
    pub fn avg(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// Takes in one more number.
    pub fn add(&mut self, value: f64, at: u64) {
        self.merge(&Bucket::of(self.start, value, at));
    }

    /// Takes in another bucket's numbers (an extreme that ties keeps the
    /// earlier time).
    pub fn merge(&mut self, o: &Bucket) {
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = Bucket {
                start: self.start,
                ..*o
            };
            return;
        }
        self.count += o.count;
        self.sum += o.sum;
        if o.min < self.min || (o.min == self.min && o.min_at < self.min_at) {
            self.min = o.min;
            self.min_at = o.min_at;
        }
        if o.max > self.max || (o.max == self.max && o.max_at < self.max_at) {
            self.max = o.max;
            self.max_at = o.max_at;
        }
    }

    /// An empty bucket.
    pub fn empty(start: u64) -> Bucket {
        Bucket {
            start,
            count: 0,
            sum: 0.0,
            min: 0.0,
            min_at: 0,
            max: 0.0,
            max_at: 0,
        }
    }

    pub(crate) fn encode(&self) -> [u8; ENCODED] {
        let mut b = [0u8; ENCODED];
        b[0..8].copy_from_slice(&self.count.to_be_bytes());
        b[8..16].copy_from_slice(&self.sum.to_be_bytes());
        b[16..24].copy_from_slice(&self.min.to_be_bytes());
        b[24..28].copy_from_slice(&offset(self.start, self.min_at).to_be_bytes());
        b[28..36].copy_from_slice(&self.max.to_be_bytes());
        b[36..40].copy_from_slice(&offset(self.start, self.max_at).to_be_bytes());
        b
    }

    pub(crate) fn decode(start: u64, b: &[u8]) -> Option<Bucket> {
        let b: &[u8; ENCODED] = b.try_into().ok()?;
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let f64_at = |i: usize| f64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Some(Bucket {
            start,
            count: u64_at(0),
            sum: f64_at(8),
            min: f64_at(16),
            min_at: start + u64::from(u32_at(24)),
            max: f64_at(28),
            max_at: start + u64::from(u32_at(36)),
        })
    }
}

/// When within its (stored, minute) bucket something happened.
fn offset(start: u64, at: u64) -> u32 {
    u32::try_from(at.saturating_sub(start)).unwrap_or(u32::MAX)
}

/// The start of the interval of `step` milliseconds (aligned to the
/// epoch) that holds `t`.
pub fn align(t: u64, step: u64) -> u64 {
    t - t % step.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_come_from_plain_payloads_and_json_pointers() {
        assert_eq!(value_of(b"21.5", None), Some(21.5));
        assert_eq!(value_of(b" -3\n", None), Some(-3.0));
        assert_eq!(value_of(b"warm", None), None);
        assert_eq!(value_of(b"NaN", None), None);
        assert_eq!(value_of(b"inf", None), None);
        assert_eq!(value_of(&[0xff], None), None);
        let j = br#"{"temp": 19.25, "hum": "55", "ok": true, "deep": {"v": [1, 2]}}"#;
        assert_eq!(value_of(j, Some("/temp")), Some(19.25));
        assert_eq!(value_of(j, Some("/hum")), Some(55.0));
        assert_eq!(value_of(j, Some("/ok")), None);
        assert_eq!(value_of(j, Some("/deep/v/1")), Some(2.0));
        assert_eq!(value_of(j, Some("/missing")), None);
        assert_eq!(value_of(b"not json", Some("/temp")), None);
    }

    #[test]
    fn buckets_keep_count_sum_and_when_the_extremes_were() {
        let mut b = Bucket::of(60_000, 5.0, 60_100);
        b.add(2.0, 60_200);
        b.add(9.0, 60_300);
        b.add(2.0, 60_400); // a tie keeps the first time
        assert_eq!((b.count, b.sum), (4, 18.0));
        assert_eq!(
            (b.min, b.min_at, b.max, b.max_at),
            (2.0, 60_200, 9.0, 60_300)
        );
        assert_eq!(b.avg(), 4.5);
        let mut e = Bucket::empty(0);
        e.merge(&b);
        assert_eq!((e.start, e.count, e.min_at), (0, 4, 60_200));
        let back = Bucket::decode(60_000, &b.encode()).expect("decodes");
        assert_eq!(back, b);
        assert_eq!(align(125_000, 60_000), 120_000);
    }
}
