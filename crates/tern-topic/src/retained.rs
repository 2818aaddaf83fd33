//! The retained index: the last retained message of each topic, found by
//! filter without scanning every topic.

use crate::index::DEFAULT_SEED;
use crate::trie::{
    levels, literal_child, unlink_literal, Arena, Children, Hasher, Interner, TrieNode, NONE,
};
use crate::{TopicFilter, TopicName};

const ROOT: u32 = 0;

struct Node<V> {
    children: Children,
    value: Option<Box<Entry<V>>>,
    parent: u32,
    label: u32,
}

struct Entry<V> {
    topic: TopicName,
    value: V,
    weight: usize,
}

impl<V> TrieNode for Node<V> {
    fn children(&self) -> &Children {
        &self.children
    }

    fn children_mut(&mut self) -> &mut Children {
        &mut self.children
    }

    fn empty(parent: u32, label: u32) -> Node<V> {
        Node {
            children: Children::None,
            value: None,
            parent,
            label,
        }
    }
}

/// Retained messages by topic name, queried by topic filter.
///
/// A trie over topic levels: a filter like `home/kitchen/+/temp` walks
/// `home`, `kitchen`, every child, then `temp`, visiting only what can
/// match. Each value carries a weight (say, its payload size) so a broker
/// can enforce a limit on total bytes. Setting a retained message replaces
/// the previous one; a retained PUBLISH with an empty payload clears it
/// ([MQTT-3.3.1-6]), which is [`RetainedIndex::remove`].
///
/// ```
/// use tern_topic::{RetainedIndex, TopicFilter, TopicName};
///
/// let mut retained = RetainedIndex::new();
/// retained.insert(TopicName::new("home/kitchen/temp")?, "21.5", 4);
/// retained.insert(TopicName::new("home/hall/temp")?, "19.0", 4);
/// retained.insert(TopicName::new("$SYS/uptime")?, "42", 2);
///
/// let found = retained.matching(&TopicFilter::new("home/+/temp")?);
/// assert_eq!(found.len(), 2);
/// // `#` does not reach `$` topics.
/// assert_eq!(retained.matching(&TopicFilter::new("#")?).len(), 2);
/// assert_eq!((retained.len(), retained.total_weight()), (3, 10));
/// # Ok::<(), tern_topic::TopicError>(())
/// ```
pub struct RetainedIndex<V> {
    nodes: Arena<Node<V>>,
    interner: Interner,
    hasher: Hasher,
    len: usize,
    weight: usize,
}

impl<V> Default for RetainedIndex<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> RetainedIndex<V> {
    /// An empty index hashing with [`DEFAULT_SEED`].
    pub fn new() -> Self {
        Self::with_seed(DEFAULT_SEED)
    }

    /// An empty index whose hash tables use `seed` (see
    /// [`SubscriptionIndex::with_seed`](crate::SubscriptionIndex::with_seed)).
    pub fn with_seed(seed: u64) -> Self {
        let hasher = Hasher::with_seed(seed);
        RetainedIndex {
            nodes: Arena::new(Node::empty(NONE, NONE)),
            interner: Interner::new(hasher.clone()),
            hasher,
            len: 0,
            weight: 0,
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sum of the weights of the retained messages.
    pub fn total_weight(&self) -> usize {
        self.weight
    }

    /// Sets the retained message of `topic`, returning the one replaced.
    /// The empty topic name is ignored.
    pub fn insert(&mut self, topic: TopicName, value: V, weight: usize) -> Option<V> {
        if topic.is_empty() {
            return None;
        }
        let id = self.node_for(&topic);
        let entry = Box::new(Entry {
            topic,
            value,
            weight,
        });
        self.weight += weight;
        match self.nodes[id].value.replace(entry) {
            Some(old) => {
                self.weight -= old.weight;
                Some(old.value)
            }
            None => {
                self.len += 1;
                None
            }
        }
    }

    /// Clears the retained message of `topic`, returning it.
    pub fn remove(&mut self, topic: &TopicName) -> Option<V> {
        let id = self.find(topic)?;
        let old = self.nodes[id].value.take()?;
        self.len -= 1;
        self.weight -= old.weight;
        self.prune(id);
        Some(old.value)
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &TopicName) -> Option<&V> {
        let id = self.find(topic)?;
        self.nodes[id].value.as_ref().map(|e| &e.value)
    }

    /// Calls `f` with every retained message whose topic matches `filter`
    /// (the inner filter of a shared one), following the rules of
    /// [`TopicFilter::matches`].
    pub fn for_each_match<'a>(
        &'a self,
        filter: &TopicFilter,
        mut f: impl FnMut(&'a TopicName, &'a V),
    ) {
        let filter_levels: Vec<&[u8]> = levels(filter.filter().as_bytes()).collect();
        // (node, depth in the filter)
        let mut stack = vec![(ROOT, 0usize)];
        while let Some((id, depth)) = stack.pop() {
            let node = &self.nodes[id];
            let Some(&level) = filter_levels.get(depth) else {
                if let Some(e) = &node.value {
                    f(&e.topic, &e.value);
                }
                continue;
            };
            // [MQTT-4.7.2-1]: a leading wildcard does not reach `$` topics.
            let skip_dollar = depth == 0;
            match level {
                b"#" => self.subtree(id, skip_dollar, &mut f),
                b"+" => node.children.for_each(|label, child| {
                    if !(skip_dollar && self.interner.text(label).first() == Some(&b'$')) {
                        stack.push((child, depth + 1));
                    }
                }),
                literal => {
                    if let Some(child) = self
                        .interner
                        .lookup(literal)
                        .and_then(|l| node.children.get(l))
                    {
                        stack.push((child, depth + 1));
                    }
                }
            }
        }
    }

    /// Every retained message matching `filter`, as references.
    pub fn matching(&self, filter: &TopicFilter) -> Vec<(&TopicName, &V)> {
        let mut out = Vec::new();
        self.for_each_match(filter, |t, v| out.push((t, v)));
        out
    }

    /// Every value at or below `id` (`#` matches the parent level too).
    /// Calls `f` on every retained message, `$` topics included.
    pub fn for_each<'a>(&'a self, mut f: impl FnMut(&'a TopicName, &'a V)) {
        self.subtree(ROOT, false, &mut f);
    }

    fn subtree<'a>(&'a self, id: u32, skip_dollar: bool, f: &mut impl FnMut(&'a TopicName, &'a V)) {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            let node = &self.nodes[id];
            if let Some(e) = &node.value {
                f(&e.topic, &e.value);
            }
            let top = skip_dollar && id == ROOT;
            node.children.for_each(|label, child| {
                if !(top && self.interner.text(label).first() == Some(&b'$')) {
                    stack.push(child);
                }
            });
        }
    }

    fn node_for(&mut self, topic: &TopicName) -> u32 {
        let mut id = ROOT;
        for level in levels(topic.as_bytes()) {
            id = literal_child(&mut self.nodes, &mut self.interner, &self.hasher, id, level);
        }
        id
    }

    fn find(&self, topic: &TopicName) -> Option<u32> {
        if topic.is_empty() {
            return None;
        }
        let mut id = ROOT;
        for level in levels(topic.as_bytes()) {
            let label = self.interner.lookup(level)?;
            id = self.nodes[id].children.get(label)?;
        }
        Some(id)
    }

    fn prune(&mut self, mut id: u32) {
        while id != ROOT {
            let node = &self.nodes[id];
            if node.value.is_some() || !node.children.is_empty() {
                return;
            }
            let (parent, label) = (node.parent, node.label);
            unlink_literal(&mut self.nodes, &mut self.interner, parent, label, id);
            id = parent;
        }
    }
}
