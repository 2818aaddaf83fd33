//! The subscribers of one trie node: small inline, large hashed.

use std::hash::Hash;

use hashbrown::HashMap;

use crate::trie::Hasher;

/// Up to this many subscribers are kept in a vector and searched linearly.
const FEW: usize = 16;

/// Who subscribed with exactly one filter. A single subscriber (the common
/// case in a device fleet) is stored inline, without an allocation.
pub(crate) enum Subs<K, V> {
    None,
    One(K, V),
    Few(Vec<(K, V)>),
    Many(Box<HashMap<K, V, Hasher>>),
}

impl<K: Hash + Eq + Clone, V: Clone> Subs<K, V> {
    /// Adds or replaces `key`'s subscription; returns the one replaced.
    pub(crate) fn insert(&mut self, key: K, value: V, hasher: &Hasher) -> Option<V> {
        match self {
            Subs::None => {
                *self = Subs::One(key, value);
                None
            }
            Subs::One(k, v) if *k == key => Some(std::mem::replace(v, value)),
            Subs::One(..) => {
                let Subs::One(k, v) = std::mem::replace(self, Subs::None) else {
                    unreachable!("matched One above")
                };
                *self = Subs::Few(vec![(k, v), (key, value)]);
                None
            }
            Subs::Few(list) => {
                if let Some((_, v)) = list.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(v, value));
                }
                if list.len() < FEW {
                    list.push((key, value));
                } else {
                    let mut map = HashMap::with_capacity_and_hasher(FEW * 2, hasher.clone());
                    map.extend(list.drain(..));
                    map.insert(key, value);
                    *self = Subs::Many(Box::new(map));
                }
                None
            }
            Subs::Many(map) => map.insert(key, value),
        }
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            Subs::None => None,
            Subs::One(k, _) if k == key => match std::mem::replace(self, Subs::None) {
                Subs::One(_, v) => Some(v),
                _ => unreachable!("matched One above"),
            },
            Subs::One(..) => None,
            Subs::Few(list) => {
                let at = list.iter().position(|(k, _)| k == key)?;
                let (_, v) = list.swap_remove(at);
                if list.len() == 1 {
                    let (k, v) = list.pop().expect("one left");
                    *self = Subs::One(k, v);
                }
                Some(v)
            }
            Subs::Many(map) => {
                let v = map.remove(key);
                if map.len() <= FEW / 2 {
                    *self = Subs::Few(map.drain().collect());
                }
                v
            }
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        match self {
            Subs::None => None,
            Subs::One(k, v) => (k == key).then_some(v),
            Subs::Few(list) => list.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Subs::Many(map) => map.get(key),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Subs::None)
    }

    /// Appends a clone of every subscription to `out`.
    #[inline]
    pub(crate) fn extend_into(&self, out: &mut Vec<(K, V)>) {
        match self {
            Subs::None => {}
            Subs::One(k, v) => out.push((k.clone(), v.clone())),
            Subs::Few(list) => out.extend_from_slice(list),
            Subs::Many(map) => out.extend(map.iter().map(|(k, v)| (k.clone(), v.clone()))),
        }
    }
}
