//! A transport connection as the core keeps it: 64 bytes for an idle
//! one, with what few connections need (aliases, a held request,
//! enhanced authentication) boxed.

use std::collections::BTreeMap;
use std::num::NonZeroU16;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::{Connect, MqttString, ProtocolVersion, Publish, ReasonCode, Subscribe, TopicName};

use super::{SessionId, Token};
use crate::stamp::Stamp;

/// A packet held while the embedding decides on it.
#[derive(Debug)]
pub(super) enum Held {
    Connect(Box<Connect>, bool),
    Reauth,
    Publish(Publish, TopicName),
    Subscribe {
        packet: Subscribe,
        next: usize,
        codes: Vec<(ReasonCode, bool)>,
    },
}

#[derive(Debug)]
pub(super) enum Phase {
    AwaitConnect,
    Active(SessionId),
}

/// A connection: 64 bytes, one allocator size class, as every idle
/// connection has one. What few connections need is boxed; the client id
/// and user name are the session's; the decoder is made for each packet
/// from `version` (all it keeps between packets).
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) phase: Phase,
    pub(super) last_packet: Stamp,
    /// When this connection's entry in `conn_timers` is due.
    pub(super) timer: Stamp,
    /// Topic aliases, both ways: boxed, as most connections use none.
    pub(super) aliases: Option<Box<Aliases>>,
    /// Awaiting the embedding's answer: input is not read meanwhile.
    pub(super) held: Option<Box<(Token, Held)>>,
    /// Enhanced authentication and the transport's identity: boxed, as most
    /// connections have neither.
    pub(super) auth: Option<Box<AuthState>>,
    /// Bytes handed out in transmits, not yet reported written.
    pub(super) unwritten: usize,
    pub(super) max_packet_out: u32,
    /// Seconds (the client's or the server's); 0 is off.
    pub(super) keep_alive: u16,
    /// The protocol version, known once a CONNECT was decoded; answers
    /// before that are in 3.1.1 form.
    pub(super) version: Option<ProtocolVersion>,
    /// An answer exceeded the client's Maximum Packet Size.
    pub(super) oversize: bool,
}

/// A connection's topic aliases.
#[derive(Debug, Default)]
pub(super) struct Aliases {
    /// How many of ours the client takes (its Topic Alias Maximum).
    pub(super) out_max: u16,
    /// The client's aliases: topic of alias `i + 1`.
    pub(super) incoming: Vec<Option<TopicName>>,
    /// Ours, as sent to the client.
    pub(super) outgoing: BTreeMap<TopicName, u16>,
}

/// What few connections have: enhanced authentication, a proven identity.
#[derive(Debug, Default)]
pub(super) struct AuthState {
    /// The Authentication Method of an enhanced authentication.
    pub(super) method: Option<MqttString>,
    /// A CONNECT whose enhanced authentication awaits the client's AUTH.
    pub(super) connect: Option<(Box<Connect>, bool)>,
    /// A re-authentication awaits the client's AUTH.
    pub(super) reauth_waiting: bool,
    /// A user name the transport proved (a client certificate).
    pub(super) identity: Option<MqttString>,
    /// The embedding vouches for the connection: no authorization checks.
    pub(super) trusted: bool,
    /// Authentication Data for the CONNACK that ends an exchange.
    pub(super) success_data: Option<Bytes>,
}

impl Conn {
    pub(super) fn version(&self) -> ProtocolVersion {
        self.version.unwrap_or(ProtocolVersion::V3_1_1)
    }

    /// 1.5 times the keep alive; `None` when keep alive is off.
    pub(super) fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// The client's Topic Alias Maximum.
    pub(super) fn alias_out_max(&self) -> u16 {
        self.aliases.as_ref().map_or(0, |a| a.out_max)
    }

    pub(super) fn auth_mut(&mut self) -> &mut AuthState {
        self.auth.get_or_insert_with(Box::default)
    }

    pub(super) fn auth_method(&self) -> Option<MqttString> {
        self.auth.as_ref().and_then(|a| a.method.clone())
    }

    /// A CONNECT's enhanced authentication is under way.
    pub(super) fn auth_exchange(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.connect.is_some())
    }

    pub(super) fn reauth_waiting(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.reauth_waiting)
    }
}

impl Conn {
    /// Gives `p` (a 5.0 PUBLISH to this client) the topic's alias if it
    /// has one, or a new one while the client takes more; a new alias is
    /// returned, to be recorded once the packet is sent.
    pub(super) fn alias_topic(&mut self, p: &mut Publish) -> Option<u16> {
        let max = usize::from(self.alias_out_max());
        let out = &self.aliases.as_ref()?.outgoing;
        if let Some(&a) = out.get(&p.topic) {
            p.topic = TopicName::empty();
            p.properties.topic_alias = NonZeroU16::new(a);
            None
        } else if out.len() < max {
            let new = out.len() as u16 + 1;
            p.properties.topic_alias = NonZeroU16::new(new);
            Some(new)
        } else {
            None
        }
    }

    /// Whether the connection has more unwritten output than `max` allows.
    pub(super) fn congested(&self, max: Option<usize>) -> bool {
        max.is_some_and(|max| self.unwritten >= max)
    }
}
