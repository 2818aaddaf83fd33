//! Questions an embedding asks the core directly, not as a client: what a
//! management or HTTP adapter shows. The core answers them, with its
//! policies; the adapter only carries the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::{Message, ProtocolVersion, QoS, ReasonCode, TopicFilter, TopicName};

use super::Broker;
use crate::policy::{ClientInfo, Verdict};
use crate::router::Report;
use crate::session::{Envelope, Session};

/// A session, as a management view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Its client id.
    pub client_id: String,
    /// The user name it authenticated with.
    pub username: Option<String>,
    /// Whether a connection holds it now.
    pub connected: bool,
    /// The protocol version of its last connection.
    pub version: ProtocolVersion,
    /// Its subscriptions and their maximum QoS.
    pub subscriptions: Vec<(TopicFilter, QoS)>,
    /// Messages queued for it (in memory and in the store).
    pub queued: usize,
    /// QoS 1/2 messages sent to it and not yet acknowledged.
    pub inflight: usize,
    /// Offline: how long until it expires (`None`: connected, or never).
    pub expires_in: Option<Duration>,
    /// Offline: how long ago its connection ended, where its expiry says
    /// (`None`: connected, or a session that never expires).
    pub offline_for: Option<Duration>,
}

/// The retained messages a query found.
#[derive(Debug, Clone, Default)]
pub struct RetainedAnswer {
    /// The messages, by topic.
    pub messages: Vec<Arc<Envelope>>,
    /// More matched than the query's limit.
    pub truncated: bool,
}

impl Broker {
    /// The retained messages matching `filter`, as `client` may read them:
    /// the authorization policy's verdict on subscribing to `filter` (a
    /// policy that would ask is a refusal here), at most `limit` of them
    /// in topic order. Expired messages are left out.
    ///
    /// # Errors
    ///
    /// The reason code of a refusal (`NotAuthorized`).
    pub fn retained(
        &mut self,
        client: &ClientInfo,
        filter: &TopicFilter,
        limit: usize,
        now: Instant,
    ) -> Result<RetainedAnswer, ReasonCode> {
        match self.authz.subscribe(client, filter) {
            Verdict::Allow => {}
            Verdict::Deny(code) => return Err(code),
            Verdict::Ask => return Err(ReasonCode::NotAuthorized),
        }
        Ok(self.retained_matching(filter, limit, now))
    }

    /// The retained messages matching `filter`, at most `limit` in topic
    /// order, expired ones left out, with no policy asked: for the
    /// embedding's own use (its adapters' configuration under `$tern/`).
    pub fn retained_matching(
        &self,
        filter: &TopicFilter,
        limit: usize,
        now: Instant,
    ) -> RetainedAnswer {
        let mut messages = Vec::new();
        self.routing.retained.for_each_match(filter, |_, m| {
            if !m.expired(now) {
                messages.push(m.clone());
            }
        });
        messages.sort_unstable_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
        let truncated = messages.len() > limit;
        messages.truncate(limit);
        RetainedAnswer {
            messages,
            truncated,
        }
    }

    /// The sessions by client id, from the first after `after` (all from
    /// the start if `None`), at most `limit`.
    pub fn sessions(&self, after: Option<&str>, limit: usize, now: Instant) -> Vec<SessionInfo> {
        let mut ids: Vec<(&str, &Session)> = self
            .sessions
            .values()
            .map(|s| (s.client.client_id.as_str(), &**s))
            .filter(|(id, _)| after.is_none_or(|a| *id > a))
            .collect();
        ids.sort_unstable_by(|a, b| a.0.cmp(b.0));
        ids.truncate(limit);
        ids.into_iter().map(|(_, s)| self.info(s, now)).collect()
    }

    /// One session, by client id.
    pub fn session(&self, client_id: &str, now: Instant) -> Option<SessionInfo> {
        let sid = self
            .by_client_id
            .get(client_id.as_bytes(), &self.sessions)?;
        Some(self.info(&self.sessions[&sid], now))
    }

    fn info(&self, s: &Session, now: Instant) -> SessionInfo {
        let flow = s.flow();
        let expires_in = match (s.conn, s.expires_at) {
            (None, Some(at)) => Some(self.epoch.instant(at).saturating_duration_since(now)),
            _ => None,
        };
        let offline_for = expires_in
            .filter(|_| s.expiry != u32::MAX)
            .map(|left| Duration::from_secs(s.expiry.into()).saturating_sub(left));
        SessionInfo {
            client_id: s.client.client_id.clone(),
            username: s.client.username.clone(),
            connected: s.conn.is_some(),
            version: s.version,
            subscriptions: s
                .subscriptions
                .iter()
                .map(|(f, sub)| (f.clone(), sub.options.qos))
                .collect(),
            queued: flow.queued(),
            inflight: flow.inflight.len(),
            expires_in,
            offline_for,
        }
    }

    /// Disconnects the client holding `client_id`'s session (5.0:
    /// DISCONNECT 0x98 Administrative action; its will is published, as
    /// for any connection the server ends), and with `discard` ends the
    /// session too. Whether there was such a session.
    pub fn kick(&mut self, client_id: &str, discard: bool, now: Instant) -> bool {
        let Some(sid) = self.by_client_id.get(client_id.as_bytes(), &self.sessions) else {
            return false;
        };
        if let Some(conn) = self.sessions[&sid].conn {
            self.disconnect(conn, ReasonCode::AdministrativeAction, now);
        }
        if discard {
            self.end_session(sid, now);
        }
        true
    }

    /// Clears `topic`'s retained message, as publishing an empty retained
    /// message to it would (subscribers get the empty message; every
    /// instance forgets it; the store too), without the ACL: an
    /// administrator's act. Whether there was one.
    pub fn clear_retained(&mut self, topic: &TopicName, now: Instant) -> bool {
        let existed = self.routing.retained.get(topic).is_some();
        let msg = Arc::new(Envelope::from(
            Message::new(topic.clone(), Bytes::new()).with_retain(true),
        ));
        let _ = self.retain(&msg, true);
        self.route(&msg, self.local_scope(), now);
        if self.config.forward {
            self.out.reports.push_back(Report::Published(msg));
        }
        existed
    }
}
