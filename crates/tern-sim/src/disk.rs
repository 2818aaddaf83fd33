//! The disk side of the simulations: whether a store's reference image
//! holds what the broker holds, and the normalisations that comparison
//! needs.

use std::sync::Arc;

use tern_broker::durable::{Image, StoredRetained, StoredSession};
use tern_broker::{Broker, Envelope};

/// Whether `image` (a disk's state after every change of `broker`) holds
/// what the broker holds: the sessions that outlive their connections and
/// the retained messages, value for value. `Err` says what differs: a
/// change the broker made and did not report.
pub fn disk_matches(broker: &Broker, image: &Image, retained: bool) -> Result<(), String> {
    let on_disk: Vec<_> = image
        .sessions()
        .into_iter()
        .map(plain)
        .map(qos1_as_queued)
        .collect();
    let stored: std::collections::BTreeSet<_> =
        on_disk.iter().map(|s| s.client_id.clone()).collect();
    let mut held: Vec<_> = broker
        .export_sessions()
        .into_iter()
        .map(plain)
        .map(qos1_as_queued)
        .collect();
    held.retain(|s| stored.contains(&s.client_id) || s.expiry > 0);
    held.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    // What the broker holds of a queue in memory, the disk holds all of:
    // the rest must be as many as the broker says it spilled.
    let on_disk: Vec<_> = on_disk
        .into_iter()
        .map(|mut s| {
            let Some(h) = held.iter().find(|h| h.client_id == s.client_id) else {
                return s;
            };
            if h.spilled.count > 0 && s.queued.len() >= h.queued.len() {
                let rest = s.queued.split_off(h.queued.len());
                s.spilled.count = rest.len() as u64;
                s.spilled.last_id = rest.last().map_or(0, |d| d.id);
            }
            s
        })
        .collect();
    for h in &mut held {
        // Its size is the broker's estimate; the disk has no such figure.
        h.spilled.bytes = 0;
    }
    if on_disk != held {
        return Err(format!(
            "the disk and the broker differ on sessions:\n disk   {on_disk:?}\n broker {held:?}"
        ));
    }
    if !retained {
        return Ok(());
    }
    let mut held: Vec<_> = broker
        .export_retained()
        .into_iter()
        .map(plain_retained)
        .collect();
    // `$SYS` is the broker's own, made again every interval.
    held.retain(|r| !r.message.topic.as_str().starts_with("$SYS"));
    held.sort_by(|a, b| a.message.topic.cmp(&b.message.topic));
    let on_disk: Vec<_> = image.retained().into_iter().map(plain_retained).collect();
    if on_disk != held {
        let show = |r: &[StoredRetained]| -> Vec<String> {
            r.iter()
                .map(|r| {
                    format!(
                        "{}={:?}@{:?}",
                        r.message.topic, r.message.payload, r.expires_at
                    )
                })
                .collect()
        };
        return Err(format!(
            "the disk and the broker differ on retained messages:\n disk   {:?}\n broker {:?}",
            show(&on_disk),
            show(&held)
        ));
    }
    Ok(())
}

/// A session with its QoS 1 messages in flight counted as queued: a broker
/// stores where those stand only when it shuts down (after a crash they
/// are sent again as new), so while it runs the disk has them queued.
fn qos1_as_queued(mut s: StoredSession) -> StoredSession {
    let (ack, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut s.inflight)
        .into_iter()
        .partition(|(_, stage, _)| *stage == tern_broker::durable::InflightStage::AwaitPubAck);
    s.inflight = rest;
    s.queued.extend(ack.into_iter().map(|(_, _, d)| d));
    s.queued.sort_by_key(|d| d.id);
    s
}

/// A stored session as a store keeps it: its messages without what only
/// this process knows of them (the instant they expire, the session id of
/// their publisher), which the wall-clock expiry stands for.
pub fn plain(mut s: StoredSession) -> StoredSession {
    let d = |d: &mut tern_broker::durable::StoredDelivery| {
        d.message = Arc::new(Envelope::from(d.message.message.clone()));
    };
    s.queued.iter_mut().for_each(d);
    s.inflight.iter_mut().for_each(|(_, _, x)| d(x));
    s
}

/// A retained message as a store keeps it (as [`plain`]).
pub fn plain_retained(r: StoredRetained) -> StoredRetained {
    StoredRetained {
        message: Arc::new(Envelope::from(r.message.message.clone())),
        ..r
    }
}
