//! Shared subscriptions (MQTT 5.0 §4.8.2): members of a group take turns.

/// Names a shared group within the [`SubscriptionIndex`](crate::SubscriptionIndex)
/// that returned it. Valid until the index next changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(pub(crate) u32);

/// The members of one shared subscription: a share name and a filter.
pub struct SharedGroup<K, V> {
    name: Box<str>,
    filter: Box<str>,
    members: Vec<(K, V)>,
    cursor: usize,
    /// The next group subscribed at the same filter, or `NONE`.
    pub(crate) next: u32,
}

impl<K, V> SharedGroup<K, V> {
    pub(crate) fn new(name: &str, filter: &str, next: u32) -> Self {
        SharedGroup {
            name: name.into(),
            filter: filter.into(),
            members: Vec::new(),
            cursor: 0,
            next,
        }
    }

    /// The share name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The filter the group shares (without `$share/{name}/`).
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// The members and their subscription values, in subscription order.
    pub fn members(&self) -> &[(K, V)] {
        &self.members
    }
}

impl<K: PartialEq, V> SharedGroup<K, V> {
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.members.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                self.members.push((key, value));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let at = self.members.iter().position(|(k, _)| k == key)?;
        // `remove`, not `swap_remove`: round robin keeps its order.
        let (_, v) = self.members.remove(at);
        if at < self.cursor {
            self.cursor -= 1;
        }
        Some(v)
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub(crate) fn pick(&mut self, picker: &mut impl SharedPicker<K, V>) -> Option<&(K, V)> {
        if self.members.is_empty() {
            return None;
        }
        let at = picker.pick(&self.members, &mut self.cursor)?;
        self.members.get(at)
    }
}

/// A strategy choosing which member of a shared group gets a message.
///
/// `members` is never empty; `cursor` is the group's own state, kept
/// between picks (round robin uses it). Return the index of the member, or
/// `None` to deliver to nobody (say, every member is offline and the policy
/// drops).
pub trait SharedPicker<K, V> {
    /// Chooses a member.
    fn pick(&mut self, members: &[(K, V)], cursor: &mut usize) -> Option<usize>;
}

/// Members in turn, in the order they subscribed.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

impl<K, V> SharedPicker<K, V> for RoundRobin {
    fn pick(&mut self, members: &[(K, V)], cursor: &mut usize) -> Option<usize> {
        let at = *cursor % members.len();
        *cursor = at + 1;
        Some(at)
    }
}

/// The same member for the same hash, e.g. of the publisher's client id or
/// of the topic, so related messages stay in order at one consumer.
#[derive(Debug, Clone, Copy)]
pub struct Sticky(pub u64);

impl<K, V> SharedPicker<K, V> for Sticky {
    fn pick(&mut self, members: &[(K, V)], _: &mut usize) -> Option<usize> {
        Some((self.0 % members.len() as u64) as usize)
    }
}

/// A uniformly random member, from a generator seeded by the caller so that
/// runs are reproducible (xorshift64*).
#[derive(Debug, Clone)]
pub struct SeededRandom {
    state: u64,
}

impl SeededRandom {
    /// A generator starting from `seed` (0 is replaced by a fixed constant).
    pub fn new(seed: u64) -> Self {
        SeededRandom {
            state: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
        }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl<K, V> SharedPicker<K, V> for SeededRandom {
    fn pick(&mut self, members: &[(K, V)], _: &mut usize) -> Option<usize> {
        Some((self.next_u64() % members.len() as u64) as usize)
    }
}

/// Any closure over the members is a strategy, e.g. least in-flight:
/// `|m: &[(Session, Opts)], _: &mut usize| m.iter().enumerate().min_by_key(|(_, (s, _))| inflight(s)).map(|(i, _)| i)`.
impl<K, V, F> SharedPicker<K, V> for F
where
    F: FnMut(&[(K, V)], &mut usize) -> Option<usize>,
{
    fn pick(&mut self, members: &[(K, V)], cursor: &mut usize) -> Option<usize> {
        self(members, cursor)
    }
}
