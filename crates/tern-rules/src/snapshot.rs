//! What survives a restart: each rule's pending waits and sequences, its
//! runs under way, its own state and its record, by rule name. Saved by
//! the embedding whenever [`Engine::take_dirty`] says so; waits are in
//! wall-clock time, so one that ended while the broker was down fires at
//! once on restore. A rule whose text changed keeps its state and record
//! but not its waits and runs (they belonged to the old rule). A schedule
//! missed while down is not made up: it comes round next at its time.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Run, Stats};
use crate::file::RuleSet;
use crate::machine::Machine;
use crate::time::Millis;

/// The engine's durable state (JSON with serde).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// By rule name.
    pub rules: BTreeMap<String, RuleSnapshot>,
}

/// One rule's durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSnapshot {
    digest: u64,
    enabled: bool,
    #[serde(default)]
    machine: Machine,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    runs: Vec<Run>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    state: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    fired_at: Vec<Millis>,
    #[serde(default)]
    stats: Stats,
}

/// A rule as the page and `tern rules` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleInfo {
    /// Its name.
    pub name: String,
    /// Where it is written.
    pub origin: String,
    /// On or off.
    pub enabled: bool,
    /// Its record.
    pub stats: Stats,
    /// What it waits for, in words.
    pub pending: Vec<String>,
    /// Runs of its steps under way.
    pub running: usize,
    /// Its own state.
    pub state: BTreeMap<String, serde_json::Value>,
}

impl Engine {
    /// The durable state now.
    pub fn snapshot(&self) -> Snapshot {
        let rules = self
            .slots
            .iter()
            .map(|s| {
                (
                    s.rule.name.to_string(),
                    RuleSnapshot {
                        digest: s.rule.digest,
                        enabled: s.rule.enabled,
                        machine: s.machine.clone(),
                        runs: s.runs.iter().cloned().collect(),
                        state: s.state.clone(),
                        fired_at: s.fired_at.iter().copied().collect(),
                        stats: s.stats.clone(),
                    },
                )
            })
            .collect();
        Snapshot { rules }
    }

    /// Takes back a saved state at `now` (after [`Engine::new`]); rules
    /// the snapshot does not know start afresh. What is overdue happens at
    /// the next [`Engine::handle_timeout`].
    pub fn restore(&mut self, snap: Snapshot, now: Millis) {
        for (name, r) in snap.rules {
            let Some(i) = self.index_of(&name) else {
                continue;
            };
            let s = &mut self.slots[i];
            s.state = r.state;
            s.stats = r.stats;
            if r.digest == s.rule.digest {
                s.rule.enabled = r.enabled;
                s.machine = r.machine;
                s.runs = VecDeque::from(r.runs);
                s.fired_at = VecDeque::from(r.fired_at);
            }
        }
        self.start(now);
    }

    /// Loads new rules in place of these, keeping what each rule that is
    /// still there holds (as a restart would).
    pub fn reload(&mut self, set: RuleSet, now: Millis) {
        let snap = self.snapshot();
        *self = Engine::new(set, now);
        self.restore(snap, now);
        self.dirty = true;
    }

    /// The rules, in file order, with what each holds.
    pub fn rules(&self) -> Vec<RuleInfo> {
        self.slots
            .iter()
            .map(|s| {
                let mut pending = s.machine.pending(&s.rule.timing);
                if let Some(t) = s.next_at {
                    pending.push(format!("at: next at {t}"));
                }
                RuleInfo {
                    name: s.rule.name.to_string(),
                    origin: s.rule.origin.clone(),
                    enabled: s.rule.enabled,
                    stats: s.stats.clone(),
                    pending,
                    running: s.runs.len(),
                    state: s.state.clone(),
                }
            })
            .collect()
    }
}
