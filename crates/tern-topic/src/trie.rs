//! The pieces both indexes are built from: interned topic levels, and the
//! compact child table of a trie node.

use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use hashbrown::{HashMap, HashTable};

/// "No node", "no label": ids are indexes, and this one is never used.
pub(crate) const NONE: u32 = u32::MAX;

/// The hasher of every table in the indexes: fast, and seeded by the
/// embedding so that the same seed gives the same iteration order (the
/// broker is deterministic) while a random seed per process keeps crafted
/// topic levels from colliding on purpose.
pub(crate) type Hasher = FixedState;

/// Topic levels, stored once each and named by a `u32`.
///
/// Device fleets repeat the same levels under many parents (`temp` under a
/// million devices, `17` under every site); interning stores each once and
/// lets the trie compare `u32`s. Labels are reference-counted so that
/// churning filters (`clients/{uuid}/cmd`) do not grow the table forever.
pub(crate) struct Interner {
    table: HashTable<u32>,
    labels: Vec<Label>,
    free: Vec<u32>,
    hasher: Hasher,
}

struct Label {
    text: Box<[u8]>,
    refs: u32,
}

impl Interner {
    pub(crate) fn new(hasher: Hasher) -> Interner {
        Interner {
            table: HashTable::new(),
            labels: Vec::new(),
            free: Vec::new(),
            hasher,
        }
    }

    /// The id of `level`, if any node uses it.
    #[inline]
    pub(crate) fn lookup(&self, level: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(level);
        self.table
            .find(hash, |&id| &*self.labels[id as usize].text == level)
            .copied()
    }

    /// The id of `level`, creating it if needed, with one more reference.
    pub(crate) fn acquire(&mut self, level: &[u8]) -> u32 {
        let hash = self.hasher.hash_one(level);
        let labels = &mut self.labels;
        if let Some(&id) = self
            .table
            .find(hash, |&id| &*labels[id as usize].text == level)
        {
            labels[id as usize].refs += 1;
            return id;
        }
        let label = Label {
            text: level.into(),
            refs: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                labels[id as usize] = label;
                id
            }
            None => {
                labels.push(label);
                (labels.len() - 1) as u32
            }
        };
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, id, |&id| hasher.hash_one(&*labels[id as usize].text));
        id
    }

    /// Drops one reference to `id`, forgetting the label at zero.
    pub(crate) fn release(&mut self, id: u32) {
        let label = &mut self.labels[id as usize];
        label.refs -= 1;
        if label.refs > 0 {
            return;
        }
        let text = std::mem::take(&mut label.text);
        let hash = self.hasher.hash_one(&*text);
        if let Ok(entry) = self.table.find_entry(hash, |&other| other == id) {
            entry.remove();
        }
        self.free.push(id);
    }

    /// The text of a label.
    pub(crate) fn text(&self, id: u32) -> &[u8] {
        &self.labels[id as usize].text
    }

    /// Number of distinct labels held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

/// Up to this many children are kept in a vector and searched linearly.
const FEW: usize = 12;

/// The literal-level children of a node: label id to node id. Most nodes of
/// a large trie have one child, so that case needs no allocation.
pub(crate) enum Children {
    None,
    One(u32, u32),
    Few(Vec<(u32, u32)>),
    Many(Box<HashMap<u32, u32, Hasher>>),
}

impl Children {
    #[inline]
    pub(crate) fn get(&self, label: u32) -> Option<u32> {
        match self {
            Children::None => None,
            Children::One(l, n) => (*l == label).then_some(*n),
            Children::Few(v) => v.iter().find(|(l, _)| *l == label).map(|&(_, n)| n),
            Children::Many(m) => m.get(&label).copied(),
        }
    }

    /// Adds a child the caller knows is absent.
    pub(crate) fn insert(&mut self, label: u32, node: u32, hasher: &Hasher) {
        match self {
            Children::None => *self = Children::One(label, node),
            Children::One(l, n) => *self = Children::Few(vec![(*l, *n), (label, node)]),
            Children::Few(v) if v.len() < FEW => v.push((label, node)),
            Children::Few(v) => {
                let mut m = HashMap::with_capacity_and_hasher(v.len() * 2, hasher.clone());
                m.extend(v.iter().copied());
                m.insert(label, node);
                *self = Children::Many(Box::new(m));
            }
            Children::Many(m) => {
                m.insert(label, node);
            }
        }
    }

    pub(crate) fn remove(&mut self, label: u32) {
        match self {
            Children::None => {}
            Children::One(l, _) => {
                if *l == label {
                    *self = Children::None;
                }
            }
            Children::Few(v) => {
                v.retain(|(l, _)| *l != label);
                if v.len() == 1 {
                    *self = Children::One(v[0].0, v[0].1);
                }
            }
            Children::Many(m) => {
                m.remove(&label);
                if m.len() <= FEW / 2 {
                    *self = Children::Few(m.iter().map(|(&l, &n)| (l, n)).collect());
                }
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Children::None)
    }

    /// Calls `f(label, node)` for every child.
    pub(crate) fn for_each(&self, mut f: impl FnMut(u32, u32)) {
        match self {
            Children::None => {}
            Children::One(l, n) => f(*l, *n),
            Children::Few(v) => v.iter().for_each(|&(l, n)| f(l, n)),
            Children::Many(m) => m.iter().for_each(|(&l, &n)| f(l, n)),
        }
    }
}

/// Trie nodes (or shared groups) in one vector, named by `u32` index;
/// freed slots are reused.
pub(crate) struct Arena<N> {
    nodes: Vec<N>,
    free: Vec<u32>,
}

impl<N> Arena<N> {
    /// An empty arena.
    pub(crate) fn empty() -> Arena<N> {
        Arena {
            nodes: Vec::new(),
            free: Vec::new(),
        }
    }

    /// An arena holding only `root`, at index 0.
    pub(crate) fn new(root: N) -> Arena<N> {
        Arena {
            nodes: vec![root],
            free: Vec::new(),
        }
    }

    pub(crate) fn alloc(&mut self, node: N) -> u32 {
        match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// Frees `id`, overwriting it with `empty` so its tables are dropped now
    /// rather than when the slot is reused.
    pub(crate) fn free(&mut self, id: u32, empty: N) {
        self.nodes[id as usize] = empty;
        self.free.push(id);
    }

    /// Nodes in use.
    pub(crate) fn live(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

impl<N> std::ops::Index<u32> for Arena<N> {
    type Output = N;
    #[inline]
    fn index(&self, id: u32) -> &N {
        &self.nodes[id as usize]
    }
}

impl<N> std::ops::IndexMut<u32> for Arena<N> {
    #[inline]
    fn index_mut(&mut self, id: u32) -> &mut N {
        &mut self.nodes[id as usize]
    }
}

/// What the nodes of both tries have: a constructor and literal children.
pub(crate) trait TrieNode {
    /// A node with no children and nothing stored, under `parent`.
    fn empty(parent: u32, label: u32) -> Self;
    fn children(&self) -> &Children;
    fn children_mut(&mut self) -> &mut Children;
}

/// The child of `id` for the literal `level`, created if it is missing.
pub(crate) fn literal_child<N: TrieNode>(
    nodes: &mut Arena<N>,
    interner: &mut Interner,
    hasher: &Hasher,
    id: u32,
    level: &[u8],
) -> u32 {
    let found = interner
        .lookup(level)
        .and_then(|label| nodes[id].children().get(label));
    if let Some(child) = found {
        return child;
    }
    let label = interner.acquire(level);
    let child = nodes.alloc(N::empty(id, label));
    nodes[id].children_mut().insert(label, child, hasher);
    child
}

/// Frees node `id`, the literal child `label` of `parent`, and the
/// reference it held on its label.
pub(crate) fn unlink_literal<N: TrieNode>(
    nodes: &mut Arena<N>,
    interner: &mut Interner,
    parent: u32,
    label: u32,
    id: u32,
) {
    nodes[parent].children_mut().remove(label);
    interner.release(label);
    // Drop the node's (empty) tables now rather than when the slot is reused.
    nodes.free(id, N::empty(NONE, NONE));
}

/// Splits a topic or filter into levels (empty levels included).
#[inline]
pub(crate) fn levels(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b'/')
}
