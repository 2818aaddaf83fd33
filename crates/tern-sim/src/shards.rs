//! The instances of [`Sim::sharded`]: broker instances sharing the
//! production [`Router`] (the shards of one server), and how a message
//! crosses between them.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use tern_broker::router::{Forward, InstanceId, Router};
use tern_broker::Config;

use crate::Sim;

/// What the instances of [`Sim::sharded`] share: the router, and the
/// messages it forwarded to each instance that has not taken them yet.
#[derive(Debug)]
pub(crate) struct Fabric {
    router: Router,
    inboxes: BTreeMap<InstanceId, VecDeque<Forward>>,
}

impl Sim {
    /// `n` broker instances with `config` (each its own `shard`, with
    /// `forward` on) sharing one [`Router`], as the shards of a server: a
    /// message published on one reaches the others' subscribers, each
    /// message of a shared group spread over several goes to one member,
    /// and every instance keeps the retained set. Messages for an instance
    /// arrive when it is next driven (any call on its `Sim` that reads or
    /// sends).
    pub fn sharded(n: u16, config: Config) -> Vec<Sim> {
        let ids: Vec<_> = (0..n).map(InstanceId).collect();
        let fabric = Rc::new(RefCell::new(Fabric {
            router: Router::new(ids.iter().copied()),
            inboxes: BTreeMap::new(),
        }));
        // One clock for all: messages carry instants from one to another.
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        ids.into_iter()
            .map(|id| {
                let mut sim = Sim::starting_at(
                    Config {
                        shard: id.0,
                        forward: true,
                        ..config.clone()
                    },
                    start,
                );
                sim.fabric = Some((id, fabric.clone()));
                sim
            })
            .collect()
    }

    /// This instance's place among those of [`Sim::sharded`].
    pub fn instance(&self) -> Option<InstanceId> {
        self.fabric.as_ref().map(|(id, _)| *id)
    }

    /// Checks the shared router's index against what the instances
    /// reported.
    ///
    /// # Panics
    ///
    /// If it does not agree.
    pub fn check_router(&self) {
        if let Some((_, f)) = &self.fabric {
            if let Err(e) = f.borrow().router.check_invariants() {
                panic!("router invariant broken: {e}");
            }
        }
    }

    /// Reports go to the router (before the transmits, as the call
    /// contract says), and what it forwards to this instance is taken in:
    /// whatever it decides for this instance at once, for the others when
    /// they are next driven. Returns whether anything happened.
    pub(crate) fn route(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut forwards = Vec::new();
            let mut reported = false;
            while let Some(r) = self.broker.poll_report() {
                reported = true;
                match &self.fabric {
                    Some((me, f)) => f.borrow_mut().router.handle_report(*me, r, &mut forwards),
                    None => self.reports.push(r),
                }
            }
            let Some((me, f)) = &self.fabric else {
                return any || reported;
            };
            let me = *me;
            {
                let mut f = f.borrow_mut();
                for fwd in forwards {
                    f.inboxes.entry(fwd.to).or_default().push_back(fwd);
                }
            }
            let mine: Vec<_> = f
                .borrow_mut()
                .inboxes
                .entry(me)
                .or_default()
                .drain(..)
                .collect();
            if mine.is_empty() && !reported {
                return any;
            }
            any = true;
            for fwd in mine {
                self.broker.handle_forward(fwd, self.now);
            }
        }
    }
}
