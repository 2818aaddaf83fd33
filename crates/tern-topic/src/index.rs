//! The subscription index: who matches a topic name, without scanning.

use std::hash::Hash;

use crate::shared::{GroupId, SharedGroup, SharedPicker};
use crate::subs::Subs;
use crate::trie::{
    levels, literal_child, unlink_literal, Arena, Children, Hasher, Interner, TrieNode, NONE,
};
use crate::{TopicFilter, TopicName};

/// Label of a `+` node and of a `#` node; never an interned id.
const PLUS: u32 = NONE - 1;
const HASH: u32 = NONE - 2;
const ROOT: u32 = 0;

struct Node<K, V> {
    children: Children,
    subs: Subs<K, V>,
    parent: u32,
    /// Interned label, or `PLUS` / `HASH`.
    label: u32,
    /// The `+` child and the `#` child, or `NONE`.
    plus: u32,
    hash: u32,
    /// First shared group subscribed here, or `NONE`; groups chain by `next`.
    shared: u32,
}

impl<K, V> TrieNode for Node<K, V> {
    fn children(&self) -> &Children {
        &self.children
    }

    fn children_mut(&mut self) -> &mut Children {
        &mut self.children
    }

    fn empty(parent: u32, label: u32) -> Node<K, V> {
        Node {
            children: Children::None,
            subs: Subs::None,
            parent,
            label,
            plus: NONE,
            hash: NONE,
            shared: NONE,
        }
    }
}

/// Every subscription of a broker, indexed for matching.
///
/// A trie over topic levels: literal levels are interned and looked up by
/// id, `+` and `#` are dedicated children, so a match visits only the
/// branches the topic name can reach. `K` names a subscriber (a session),
/// `V` is what it subscribed with (QoS, no-local, subscription identifier,
/// ...). One subscriber has at most one subscription per filter:
/// subscribing again replaces it ([MQTT-3.8.4-3]).
///
/// Shared subscriptions (`$share/{group}/{filter}`) are kept per group and
/// filter; a match yields each matching group once, and
/// [`SubscriptionIndex::pick`] chooses the member that gets the message.
///
/// Matching follows MQTT 5.0 §4.7: `+` matches one level (possibly empty),
/// `#` matches the parent level and everything below, and a name starting
/// with `$` is not matched by a filter starting with a wildcard.
///
/// The index is deterministic: the same operations with the same seed give
/// the same results in the same order.
///
/// ```
/// use tern_topic::{Matches, SubscriptionIndex, TopicFilter, TopicName};
///
/// let mut index = SubscriptionIndex::new();
/// index.subscribe(&TopicFilter::new("home/+/temp")?, "dashboard", 0u8);
/// index.subscribe(&TopicFilter::new("home/#")?, "logger", 1u8);
/// index.subscribe(&TopicFilter::new("office/#")?, "office", 1u8);
///
/// let mut matches = Matches::new();
/// index.matches(&TopicName::new("home/kitchen/temp")?, &mut matches);
/// let mut who: Vec<_> = matches.subscriptions().iter().map(|(k, _)| *k).collect();
/// who.sort();
/// assert_eq!(who, ["dashboard", "logger"]);
/// # Ok::<(), tern_topic::TopicError>(())
/// ```
pub struct SubscriptionIndex<K, V> {
    nodes: Arena<Node<K, V>>,
    groups: Arena<SharedGroup<K, V>>,
    interner: Interner,
    hasher: Hasher,
    len: usize,
}

impl<K: Clone + Ord + Hash, V: Clone> Default for SubscriptionIndex<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// The seed used by [`SubscriptionIndex::new`] and [`RetainedIndex::new`](crate::RetainedIndex::new).
pub const DEFAULT_SEED: u64 = 0x7465_726e_2d74_6f70;

impl<K: Clone + Ord + Hash, V: Clone> SubscriptionIndex<K, V> {
    /// An empty index hashing with [`DEFAULT_SEED`].
    pub fn new() -> Self {
        Self::with_seed(DEFAULT_SEED)
    }

    /// An empty index whose hash tables use `seed`. A broker facing the
    /// network should pass a random seed, so that nobody can choose topic
    /// levels that collide; tests pass a fixed one.
    pub fn with_seed(seed: u64) -> Self {
        let hasher = Hasher::with_seed(seed);
        SubscriptionIndex {
            nodes: Arena::new(Node::empty(NONE, NONE)),
            groups: Arena::empty(),
            interner: Interner::new(hasher.clone()),
            hasher,
            len: 0,
        }
    }

    /// Number of subscriptions, shared ones included (one per member).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of trie nodes in use, for memory accounting.
    pub fn node_count(&self) -> usize {
        self.nodes.live()
    }

    /// Subscribes `key` to `filter` with `value`. Returns the value it
    /// replaced if `key` was already subscribed to exactly this filter.
    pub fn subscribe(&mut self, filter: &TopicFilter, key: K, value: V) -> Option<V> {
        let node = self.node_for(filter);
        let old = match filter.share_group() {
            None => self.nodes[node].subs.insert(key, value, &self.hasher),
            Some(name) => {
                let group = self.group_for(node, name, filter.filter());
                self.groups[group].insert(key, value)
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`'s subscription to `filter`, returning its value.
    pub fn unsubscribe(&mut self, filter: &TopicFilter, key: &K) -> Option<V> {
        let node = self.find(filter)?;
        let old = match filter.share_group() {
            None => self.nodes[node].subs.remove(key)?,
            Some(name) => {
                let group = self.find_group(node, name)?;
                let old = self.groups[group].remove(key)?;
                if self.groups[group].members().is_empty() {
                    self.remove_group(node, group);
                }
                old
            }
        };
        self.len -= 1;
        self.prune(node);
        Some(old)
    }

    /// `key`'s subscription to exactly `filter`, if any.
    pub fn get(&self, filter: &TopicFilter, key: &K) -> Option<&V> {
        let node = self.find(filter)?;
        match filter.share_group() {
            None => self.nodes[node].subs.get(key),
            Some(name) => {
                let group = self.find_group(node, name)?;
                self.groups[group].get(key)
            }
        }
    }

    /// Collects every subscription matching `topic` into `out` (cleared
    /// first): ordinary subscriptions as `(key, value)` pairs, possibly
    /// several per key when filters overlap (see
    /// [`Matches::per_subscriber`]), and each matching shared group once.
    ///
    /// Allocation-free once `out` has grown to the size of the answer.
    pub fn matches(&self, topic: &TopicName, out: &mut Matches<K, V>) {
        out.clear();
        let name = topic.as_bytes();
        if name.is_empty() {
            return;
        }
        let Matches {
            subscriptions,
            groups,
            levels: path,
            stack,
        } = out;
        path.extend(levels(name).map(|l| self.interner.lookup(l).unwrap_or(NONE)));
        let depth_of_name = path.len() as u32;
        // [MQTT-4.7.2-1]: `$` names are not matched by a leading wildcard.
        let dollar = name[0] == b'$';
        stack.push((ROOT, 0));
        while let Some((id, depth)) = stack.pop() {
            let node = &self.nodes[id];
            let wildcards = depth > 0 || !dollar;
            if node.hash != NONE && wildcards {
                // `#` matches everything below, and the parent level itself.
                self.collect(node.hash, subscriptions, groups);
            }
            if depth == depth_of_name {
                self.collect(id, subscriptions, groups);
                continue;
            }
            if node.plus != NONE && wildcards {
                stack.push((node.plus, depth + 1));
            }
            let label = path[depth as usize];
            if label != NONE {
                if let Some(child) = node.children.get(label) {
                    stack.push((child, depth + 1));
                }
            }
        }
    }

    /// Whether any subscription (ordinary or shared) matches `topic`.
    pub fn has_match(&self, topic: &TopicName, scratch: &mut Matches<K, V>) -> bool {
        self.matches(topic, scratch);
        !scratch.is_empty()
    }

    /// How many members the shared group of `filter` (a `$share/...`
    /// filter) has; 0 for a filter that is not shared or has no group.
    pub fn shared_members(&self, filter: &TopicFilter) -> usize {
        let Some(name) = filter.share_group() else {
            return 0;
        };
        self.find(filter)
            .and_then(|node| self.find_group(node, name))
            .map_or(0, |g| self.groups[g].members().len())
    }

    /// The shared group a match returned.
    ///
    /// # Panics
    ///
    /// If `id` does not come from a match on this index since its last change.
    pub fn group(&self, id: GroupId) -> &SharedGroup<K, V> {
        &self.groups[id.0]
    }

    /// Chooses the member of a shared group that gets a message, with
    /// `picker`'s strategy (round robin, sticky by hash, seeded random, or
    /// your own).
    pub fn pick(&mut self, id: GroupId, picker: &mut impl SharedPicker<K, V>) -> Option<&(K, V)> {
        self.groups[id.0].pick(picker)
    }

    #[inline]
    fn collect(&self, id: u32, out: &mut Vec<(K, V)>, groups: &mut Vec<GroupId>) {
        let node = &self.nodes[id];
        node.subs.extend_into(out);
        let mut g = node.shared;
        while g != NONE {
            groups.push(GroupId(g));
            g = self.groups[g].next;
        }
    }

    /// The node for `filter`'s levels, created as needed.
    fn node_for(&mut self, filter: &TopicFilter) -> u32 {
        let mut id = ROOT;
        for level in levels(filter.filter().as_bytes()) {
            id = match level {
                b"+" => {
                    let plus = self.nodes[id].plus;
                    if plus != NONE {
                        plus
                    } else {
                        let child = self.nodes.alloc(Node::empty(id, PLUS));
                        self.nodes[id].plus = child;
                        child
                    }
                }
                b"#" => {
                    let hash = self.nodes[id].hash;
                    if hash != NONE {
                        hash
                    } else {
                        let child = self.nodes.alloc(Node::empty(id, HASH));
                        self.nodes[id].hash = child;
                        child
                    }
                }
                literal => literal_child(
                    &mut self.nodes,
                    &mut self.interner,
                    &self.hasher,
                    id,
                    literal,
                ),
            };
        }
        id
    }

    /// The node for `filter`'s levels, if it exists.
    fn find(&self, filter: &TopicFilter) -> Option<u32> {
        let mut id = ROOT;
        for level in levels(filter.filter().as_bytes()) {
            let node = &self.nodes[id];
            let next = match level {
                b"+" => node.plus,
                b"#" => node.hash,
                literal => node.children.get(self.interner.lookup(literal)?)?,
            };
            if next == NONE {
                return None;
            }
            id = next;
        }
        Some(id)
    }

    /// Frees `id` and its ancestors for as long as they hold nothing.
    fn prune(&mut self, mut id: u32) {
        while id != ROOT {
            let node = &self.nodes[id];
            let empty = node.subs.is_empty()
                && node.children.is_empty()
                && node.plus == NONE
                && node.hash == NONE
                && node.shared == NONE;
            if !empty {
                return;
            }
            let (parent, label) = (node.parent, node.label);
            match label {
                PLUS | HASH => {
                    let p = &mut self.nodes[parent];
                    if label == PLUS {
                        p.plus = NONE;
                    } else {
                        p.hash = NONE;
                    }
                    self.nodes.free(id, Node::empty(NONE, NONE));
                }
                label => unlink_literal(&mut self.nodes, &mut self.interner, parent, label, id),
            }
            id = parent;
        }
    }

    fn find_group(&self, node: u32, name: &str) -> Option<u32> {
        let mut g = self.nodes[node].shared;
        while g != NONE {
            if self.groups[g].name() == name {
                return Some(g);
            }
            g = self.groups[g].next;
        }
        None
    }

    fn group_for(&mut self, node: u32, name: &str, filter: &str) -> u32 {
        if let Some(g) = self.find_group(node, name) {
            return g;
        }
        let head = self.nodes[node].shared;
        let group = SharedGroup::new(name, filter, head);
        let id = self.groups.alloc(group);
        self.nodes[node].shared = id;
        id
    }

    fn remove_group(&mut self, node: u32, group: u32) {
        let next = self.groups[group].next;
        if self.nodes[node].shared == group {
            self.nodes[node].shared = next;
        } else {
            let mut g = self.nodes[node].shared;
            while self.groups[g].next != group {
                g = self.groups[g].next;
            }
            self.groups[g].next = next;
        }
        self.groups.free(group, SharedGroup::new("", "", NONE));
    }

    #[cfg(test)]
    pub(crate) fn interned_labels(&self) -> usize {
        self.interner.len()
    }
}

/// The answer to [`SubscriptionIndex::matches`], reusable across calls so
/// that matching allocates nothing in the steady state.
pub struct Matches<K, V> {
    subscriptions: Vec<(K, V)>,
    groups: Vec<GroupId>,
    levels: Vec<u32>,
    stack: Vec<(u32, u32)>,
}

impl<K, V> Default for Matches<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> Matches<K, V> {
    /// An empty answer.
    pub fn new() -> Self {
        Matches {
            subscriptions: Vec::new(),
            groups: Vec::new(),
            levels: Vec::new(),
            stack: Vec::new(),
        }
    }

    /// Empties the answer, keeping its memory.
    pub fn clear(&mut self) {
        self.subscriptions.clear();
        self.groups.clear();
        self.levels.clear();
        self.stack.clear();
    }

    /// Whether nothing matched.
    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty() && self.groups.is_empty()
    }

    /// The matching ordinary subscriptions, one entry per matching filter:
    /// a subscriber with overlapping filters appears once per filter.
    pub fn subscriptions(&self) -> &[(K, V)] {
        &self.subscriptions
    }

    /// The matching shared groups, each once.
    pub fn groups(&self) -> &[GroupId] {
        &self.groups
    }
}

impl<K: Ord, V> Matches<K, V> {
    /// The matching subscriptions grouped by subscriber: each item is one
    /// subscriber's matching subscriptions (one per overlapping filter), so
    /// the caller can deliver once with the highest QoS and every
    /// subscription identifier, as MQTT 5.0 §3.3.4 allows. Sorts in place;
    /// no hashing, no allocation.
    pub fn per_subscriber(&mut self) -> impl Iterator<Item = &[(K, V)]> {
        if self.subscriptions.len() > 1 {
            self.subscriptions.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        self.subscriptions.chunk_by(|a, b| a.0 == b.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churned_filters_release_their_labels() {
        let mut index = SubscriptionIndex::new();
        for round in 0..3 {
            for id in 0..100u32 {
                let filter = TopicFilter::new(&format!("clients/{round}-{id}/cmd/+")).unwrap();
                index.subscribe(&filter, id, ());
            }
            assert_eq!(index.interned_labels(), 2 + 100);
            for id in 0..100u32 {
                let filter = TopicFilter::new(&format!("clients/{round}-{id}/cmd/+")).unwrap();
                index.unsubscribe(&filter, &id);
            }
            assert_eq!(index.interned_labels(), 0);
            assert_eq!(index.node_count(), 1);
        }
    }
}
