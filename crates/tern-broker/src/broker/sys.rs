//! The counters, and the `$SYS` topics that publish them.

use std::sync::Arc;
use std::time::Instant;

use tern_codec::TopicName;

use super::conn::Phase;
use super::routing::Scope;
use super::Broker;
use crate::session::Envelope;
use crate::Message;

/// Counters, as `$SYS` publishes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections that completed CONNECT and are open.
    pub clients_connected: usize,
    /// Sessions, connected or not.
    pub sessions: usize,
    /// PUBLISH packets received.
    pub messages_received: u64,
    /// PUBLISH packets sent.
    pub messages_sent: u64,
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Messages dropped because a queue was full.
    pub messages_dropped: u64,
    /// Subscriptions held.
    pub subscriptions: usize,
    /// Retained messages held.
    pub retained: usize,
}

impl std::ops::Add for Stats {
    type Output = Stats;

    /// The counters of two broker instances together.
    fn add(self, o: Stats) -> Stats {
        Stats {
            clients_connected: self.clients_connected + o.clients_connected,
            sessions: self.sessions + o.sessions,
            messages_received: self.messages_received + o.messages_received,
            messages_sent: self.messages_sent + o.messages_sent,
            bytes_received: self.bytes_received + o.bytes_received,
            bytes_sent: self.bytes_sent + o.bytes_sent,
            messages_dropped: self.messages_dropped + o.messages_dropped,
            subscriptions: self.subscriptions + o.subscriptions,
            // Every instance holds every retained message.
            retained: self.retained.max(o.retained),
        }
    }
}

impl Broker {
    /// Current counters.
    pub fn stats(&self) -> Stats {
        Stats {
            clients_connected: self
                .conns
                .values()
                .filter(|c| matches!(c.phase, Phase::Active(_)))
                .count(),
            sessions: self.sessions.len(),
            subscriptions: self.routing.subs.len(),
            retained: self.routing.retained.len(),
            ..self.stats
        }
    }

    /// Publishes the `$SYS` topics with `st` (retained, QoS 0). The broker
    /// does it by itself every [`Config::sys_interval`](crate::Config::sys_interval); a server running
    /// several instances turns that off and calls this on each with the
    /// sum of their [`Broker::stats`].
    pub fn publish_sys(&mut self, st: &Stats, now: Instant) {
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let values: [(&str, String); 10] = [
            ("$SYS/broker/version", self.config.version.to_owned()),
            ("$SYS/broker/uptime", format!("{uptime} seconds")),
            (
                "$SYS/broker/clients/connected",
                st.clients_connected.to_string(),
            ),
            ("$SYS/broker/clients/total", st.sessions.to_string()),
            (
                "$SYS/broker/messages/received",
                st.messages_received.to_string(),
            ),
            ("$SYS/broker/messages/sent", st.messages_sent.to_string()),
            ("$SYS/broker/bytes/received", st.bytes_received.to_string()),
            ("$SYS/broker/bytes/sent", st.bytes_sent.to_string()),
            (
                "$SYS/broker/subscriptions/count",
                st.subscriptions.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                st.retained.to_string(),
            ),
        ];
        for (topic, value) in values {
            let topic = TopicName::from_static(topic);
            let message = Message::new(topic, value).with_retain(true);
            let msg = Arc::new(Envelope::from(message));
            let _ = self.retain(&msg, false);
            self.route(&msg, Scope::All, now);
        }
    }
}

impl Broker {
    /// A client of session `sid` connected or disconnected: published on
    /// `$SYS/broker/clients/{id}/connected` or `.../disconnected` when
    /// [`Config::presence_events`](crate::Config::presence_events) is on,
    /// to every shard like any message.
    pub(super) fn publish_presence(
        &mut self,
        sid: crate::SessionId,
        connected: bool,
        now: Instant,
    ) {
        if !self.config.presence_events {
            return;
        }
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let id = s.client.client_id.as_str();
        let what = if connected {
            "connected"
        } else {
            "disconnected"
        };
        let Ok(topic) = TopicName::new(&format!("$SYS/broker/clients/{id}/{what}")) else {
            return;
        };
        let payload = format!(
            "{{\"client_id\":{},\"username\":{}}}",
            json_str(id),
            s.client
                .username
                .as_deref()
                .map_or("null".to_owned(), json_str),
        );
        let msg = Arc::new(Envelope::from(Message::new(topic, payload)));
        self.route(&msg, self.local_scope(), now);
        if self.config.forward {
            self.out
                .reports
                .push_back(crate::router::Report::Published(msg));
        }
    }
}

/// A JSON string.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
