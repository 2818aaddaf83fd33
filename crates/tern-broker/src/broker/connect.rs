//! CONNECT and CONNACK: client ids, takeover and resume, keep alive, the
//! authentication policy and enhanced authentication (5.0 AUTH).

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Instant;

use bytes::Bytes;
use tern_codec::{
    Auth, AuthProperties, ConnAck, Connect, MqttString, Packet, PacketType, ProtocolVersion, QoS,
    ReasonCode,
};

use super::conn::{Held, Phase};
use super::{compact_will, fit, refusal, Broker, BrokerEvent, ConnId, SessionId, Token};
use crate::policy::{AuthStep, Credentials, Verdict};
use crate::session::{Session, SessionWill};

/// What an accepted CONNECT was given, for its CONNACK.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    /// The session expiry the client asked for.
    requested: u32,
    /// The one it got.
    expiry: u32,
    /// The keep alive it got.
    keep_alive: u16,
}

/// Client ids and topics only trusted connections may use
/// ([`Broker::set_trusted`]): the broker's own sessions, and the topics
/// its adapters keep their configuration in.
pub const RESERVED_PREFIX: &str = "$tern/";

impl Broker {
    pub(super) fn on_connect(&mut self, conn: ConnId, mut connect: Connect, now: Instant) {
        // (The connection took its version from the decoder.)
        let v = connect.protocol;
        let mut assigned = false;
        // MQTT 3.1: a client id of 1 to 23 characters, nothing else.
        if v == ProtocolVersion::V3_1 && !(1..=23).contains(&connect.client_id.len()) {
            return self.refuse(conn, ReasonCode::ClientIdentifierNotValid, now);
        }
        // Client identifier rules: [MQTT-3.1.3-6], [MQTT-3.1.3-8].
        if connect.client_id.is_empty() {
            if v.is_v5() || connect.clean_start {
                connect.client_id = self.assign_client_id();
                assigned = true;
            } else {
                return self.refuse(conn, ReasonCode::ClientIdentifierNotValid, now);
            }
        }
        // [MQTT-3.1.3-5]: 1 to 23 bytes are always allowed.
        if connect.client_id.len() > self.config.max_client_id_len.max(23) {
            return self.refuse(conn, ReasonCode::ClientIdentifierNotValid, now);
        }
        // The broker's own sessions (`$tern/...`) are for trusted
        // connections: a client taking one over would get what it queued.
        let trusted = self.conns[&conn].auth.as_ref().is_some_and(|a| a.trusted);
        if connect.client_id.as_str().starts_with(RESERVED_PREFIX) && !trusted {
            return self.refuse(conn, ReasonCode::ClientIdentifierNotValid, now);
        }
        if let Some(w) = &connect.will {
            if w.qos > self.config.maximum_qos {
                return self.refuse(conn, ReasonCode::QoSNotSupported, now);
            }
            if w.retain && !self.config.retain_available {
                return self.refuse(conn, ReasonCode::RetainNotSupported, now);
            }
        }
        if let Some(id) = self.conns[&conn]
            .auth
            .as_ref()
            .and_then(|a| a.identity.clone())
        {
            connect.username = Some(id);
            connect.password = None;
            return self.connect_decided(conn, connect, assigned, Verdict::Allow, now);
        }
        if self.conns[&conn].auth.as_ref().is_some_and(|a| a.trusted) {
            return self.connect_decided(conn, connect, assigned, Verdict::Allow, now);
        }
        let credentials = Credentials {
            client_id: connect.client_id.as_str().to_owned(),
            username: connect.username.as_ref().map(|u| u.as_str().to_owned()),
            password: connect.password.clone(),
            method: connect
                .properties
                .authentication_method
                .as_ref()
                .map(|m| m.as_str().to_owned()),
            data: connect.properties.authentication_data.clone(),
        };
        let c = self.conns.get_mut(&conn).expect("connection exists");
        if let Some(m) = &connect.properties.authentication_method {
            c.auth_mut().method = Some(m.clone());
        }
        match self.authn.authenticate(&credentials) {
            Verdict::Ask => {
                let token = self.token(conn);
                let c = self.conns.get_mut(&conn).expect("connection exists");
                c.held = Some(Box::new((
                    token,
                    Held::Connect(Box::new(connect), assigned),
                )));
                self.out
                    .events
                    .push_back(BrokerEvent::Authenticate { token, credentials });
            }
            v => self.connect_decided(conn, connect, assigned, v, now),
        }
    }

    pub(super) fn refuse(&mut self, conn: ConnId, code: ReasonCode, now: Instant) {
        let code = fit(code, PacketType::ConnAck);
        let ack = ConnAck {
            reason_code: code,
            ..ConnAck::new(false)
        };
        self.send(conn, &ack.into());
        self.close(conn, code, true, now);
    }

    pub(super) fn connect_decided(
        &mut self,
        conn: ConnId,
        connect: Connect,
        assigned: bool,
        v: Verdict,
        now: Instant,
    ) {
        if let Verdict::Deny(code) = v {
            return self.refuse(conn, refusal(code, PacketType::ConnAck), now);
        }
        let Some((sid, session_present)) = self.session_for(&connect, now) else {
            return self.refuse(conn, ReasonCode::QuotaExceeded, now);
        };
        let accepted = self.attach(conn, sid, &connect, now);
        // The CONNACK waits for the session's record to be durable.
        self.record_session(sid);
        let assigned = assigned && connect.protocol.is_v5();
        let ack = self.connack(conn, &connect, session_present, assigned, accepted);
        self.send(conn, &ack.into());
        self.out.events.push_back(BrokerEvent::Connected {
            conn,
            client_id: connect.client_id.as_str().to_owned(),
            session_present,
        });
        self.publish_presence(sid, true, now);
        if session_present {
            self.resend_inflight(conn, sid, now);
        }
        self.drain_queue(sid, now);
    }

    /// The session an accepted CONNECT gets, and whether it was resumed:
    /// a connection holding it is taken over ([MQTT-3.1.4-3]), a clean
    /// start ends it. `None` when a new one would exceed the session limit.
    fn session_for(&mut self, connect: &Connect, now: Instant) -> Option<(SessionId, bool)> {
        let id = connect.client_id.as_bytes();
        if let Some(sid) = self.by_client_id.get(id, &self.sessions) {
            if let Some(old) = self.sessions[&sid].conn {
                self.disconnect(old, ReasonCode::SessionTakenOver, now);
            }
        }
        // The takeover may have ended the old session (expiry 0).
        let existing = self.by_client_id.get(id, &self.sessions);
        match existing {
            Some(sid) if !connect.clean_start => return Some((sid, true)),
            Some(sid) => self.end_session(sid, now),
            None => {}
        }
        if self.sessions.len() >= self.config.max_sessions {
            return None;
        }
        let sid = self.new_session_id();
        // Its own copy of the id, not a slice of the read buffer.
        let id = connect.client_id.as_str().to_owned();
        let session = Session::new(id, connect.protocol);
        self.sessions.insert(sid, Box::new(session));
        self.by_client_id.insert(sid, &self.sessions);
        Some((sid, false))
    }

    /// Binds `conn` to session `sid` with what `connect` asked for, within
    /// the configured limits.
    fn attach(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        connect: &Connect,
        now: Instant,
    ) -> Accepted {
        let version = connect.protocol;
        // Session expiry: 3.1.1 persistent sessions ask for "forever".
        let requested = if version.is_v5() {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = requested.min(self.config.max_session_expiry);
        let client_window = connect
            .properties
            .receive_maximum
            .map_or(u16::MAX, NonZeroU16::get);
        let s = self.sessions.get_mut(&sid).expect("session exists");
        s.conn = Some(conn);
        s.version = version;
        s.expiry = expiry;
        s.expires_at = None;
        // A new connection cancels a pending will: [MQTT-3.1.3-9].
        s.will = connect
            .will
            .as_ref()
            .map(|w| SessionWill::new(compact_will(w)));
        s.client.username = connect.username.as_ref().map(|u| u.as_str().to_owned());
        s.trusted = self.conns[&conn].auth.as_ref().is_some_and(|a| a.trusted);
        let s = self.sessions.get_mut(&sid).expect("session exists");
        s.window = client_window.min(self.config.max_inflight).max(1);

        let keep_alive = self.keep_alive_for(version, connect.keep_alive);
        let c = self.conns.get_mut(&conn).expect("connection exists");
        c.phase = Phase::Active(sid);
        c.keep_alive = keep_alive;
        let alias_out_max = connect.properties.topic_alias_maximum.unwrap_or(0);
        if alias_out_max > 0 {
            c.aliases.get_or_insert_with(Box::default).out_max = alias_out_max;
        }
        c.max_packet_out = connect
            .properties
            .maximum_packet_size
            .map_or(u32::MAX, NonZeroU32::get);
        let epoch = self.epoch;
        if let Some(ka) = c
            .keep_alive()
            .filter(|ka| now + *ka < epoch.instant(c.timer))
        {
            // Sooner than the CONNECT deadline, whose entry would check it.
            self.conn_timers.remove(&(c.timer, conn));
            c.timer = epoch.stamp(now + ka);
            self.conn_timers.insert((c.timer, conn));
        }
        Accepted {
            requested,
            expiry,
            keep_alive,
        }
    }

    /// The CONNACK of an accepted CONNECT; on 5.0, with what the server
    /// supports and what it changed of the client's requests.
    fn connack(
        &mut self,
        conn: ConnId,
        connect: &Connect,
        session_present: bool,
        assigned: bool,
        accepted: Accepted,
    ) -> ConnAck {
        let mut ack = ConnAck::new(session_present);
        if !connect.protocol.is_v5() {
            return ack;
        }
        let p = &mut ack.properties;
        let cfg = &self.config;
        if assigned {
            p.assigned_client_identifier = Some(connect.client_id.clone());
        }
        if accepted.requested != accepted.expiry {
            p.session_expiry_interval = Some(accepted.expiry);
        }
        p.receive_maximum = NonZeroU16::new(cfg.receive_maximum).filter(|r| r.get() != u16::MAX);
        if cfg.maximum_qos != QoS::ExactlyOnce {
            p.maximum_qos = Some(cfg.maximum_qos);
        }
        if !cfg.retain_available {
            p.retain_available = Some(false);
        }
        p.maximum_packet_size = NonZeroU32::new(cfg.max_packet_size);
        if cfg.topic_alias_maximum > 0 {
            p.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        }
        if !cfg.wildcard_subscriptions {
            p.wildcard_subscription_available = Some(false);
        }
        if !cfg.subscription_identifiers {
            p.subscription_identifiers_available = Some(false);
        }
        if !cfg.shared_subscriptions {
            p.shared_subscription_available = Some(false);
        }
        if cfg.server_keep_alive.is_some() || accepted.keep_alive != connect.keep_alive {
            p.server_keep_alive = Some(accepted.keep_alive);
        }
        let c = self.conns.get_mut(&conn).expect("connection exists");
        p.authentication_method = c.auth_method();
        // Authentication Data only makes sense within a method.
        let data = c.auth.as_mut().and_then(|a| a.success_data.take());
        p.authentication_data = data.filter(|_| p.authentication_method.is_some());
        ack
    }

    /// The keep alive a client asking for `asked` gets: the server's if it
    /// sets one, the cap if it asks for more or for none; on 5.0 only, which
    /// can say so in CONNACK (3.1.1 clients keep their own).
    pub(super) fn keep_alive_for(&self, version: ProtocolVersion, asked: u16) -> u16 {
        if !version.is_v5() {
            return asked;
        }
        match (self.config.server_keep_alive, self.config.max_keep_alive) {
            (Some(k), _) => k,
            (None, Some(max)) if asked == 0 || asked > max => max,
            _ => asked,
        }
    }

    /// An AUTH from the client: the next step of an exchange, or the start
    /// of a re-authentication ([MQTT-4.12.0-*]).
    pub(super) fn on_auth(&mut self, conn: ConnId, a: Auth, now: Instant) {
        let c = self.conns.get_mut(&conn).expect("connection exists");
        let Some(method) = c.auth_method() else {
            // [MQTT-4.12.0-6]: AUTH without a method at CONNECT.
            return self.protocol_error(conn, ReasonCode::ProtocolError, now);
        };
        if a.properties.authentication_method.as_ref() != Some(&method) {
            // [MQTT-4.12.0-5]: the method cannot change.
            return self.protocol_error(conn, ReasonCode::ProtocolError, now);
        }
        let reauthenticate = match (a.reason_code, &c.phase) {
            (ReasonCode::ContinueAuthentication, Phase::AwaitConnect) => false,
            (ReasonCode::ContinueAuthentication, Phase::Active(_)) if c.reauth_waiting() => false,
            (ReasonCode::ReAuthenticate, Phase::Active(_)) if !c.reauth_waiting() => true,
            _ => return self.protocol_error(conn, ReasonCode::ProtocolError, now),
        };
        let held = match c.auth.as_mut().and_then(|a| {
            a.reauth_waiting = false;
            a.connect.take()
        }) {
            Some((connect, assigned)) => Held::Connect(connect, assigned),
            None => Held::Reauth,
        };
        let client_id = match (&held, &c.phase) {
            (Held::Connect(connect, _), _) => connect.client_id.as_str().to_owned(),
            (_, Phase::Active(sid)) => self.sessions[sid].client.client_id.clone(),
            (_, Phase::AwaitConnect) => String::new(),
        };
        let token = self.token(conn);
        let c = self.conns.get_mut(&conn).expect("connection exists");
        c.held = Some(Box::new((token, held)));
        self.out.events.push_back(BrokerEvent::AuthContinue {
            token,
            client_id,
            method: method.as_str().to_owned(),
            data: a.properties.authentication_data,
            reauthenticate,
        });
    }

    pub(super) fn send_auth(&mut self, conn: ConnId, code: ReasonCode, data: Option<Bytes>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let auth = Auth {
            reason_code: code,
            properties: AuthProperties {
                authentication_method: c.auth_method(),
                authentication_data: data,
                ..AuthProperties::default()
            },
        };
        self.send(conn, &Packet::Auth(auth));
    }

    pub(super) fn answer_held(&mut self, token: Token, step: AuthStep, now: Instant) {
        let Some(c) = self.conns.get_mut(&token.conn) else {
            return;
        };
        match c.held.take().map(|b| *b) {
            Some((t, held)) if t == token => {
                let v = match &step {
                    AuthStep::Success(_) => Verdict::Allow,
                    AuthStep::Fail(code) => Verdict::Deny(*code),
                    AuthStep::Continue(_) => Verdict::Ask,
                };
                match held {
                    Held::Connect(connect, assigned) => match step {
                        // A challenge needs a method the client chose (5.0).
                        AuthStep::Continue(_) if c.auth_method().is_none() => {
                            let deny = Verdict::Deny(ReasonCode::BadAuthenticationMethod);
                            self.connect_decided(token.conn, *connect, assigned, deny, now)
                        }
                        AuthStep::Continue(data) => {
                            c.auth_mut().connect = Some((connect, assigned));
                            self.send_auth(
                                token.conn,
                                ReasonCode::ContinueAuthentication,
                                Some(data),
                            );
                        }
                        AuthStep::Success(data) => {
                            c.auth_mut().success_data = data;
                            self.connect_decided(token.conn, *connect, assigned, v, now)
                        }
                        AuthStep::Fail(_) => {
                            self.connect_decided(token.conn, *connect, assigned, v, now)
                        }
                    },
                    Held::Reauth => match step {
                        AuthStep::Continue(data) => {
                            c.auth_mut().reauth_waiting = true;
                            self.send_auth(
                                token.conn,
                                ReasonCode::ContinueAuthentication,
                                Some(data),
                            );
                        }
                        AuthStep::Success(data) => {
                            self.send_auth(token.conn, ReasonCode::Success, data);
                        }
                        AuthStep::Fail(code) => {
                            let code = refusal(code, PacketType::Disconnect);
                            self.disconnect(token.conn, code, now)
                        }
                    },
                    _ if v == Verdict::Ask => {
                        // A challenge answers only an authentication.
                        self.protocol_error(
                            token.conn,
                            ReasonCode::ImplementationSpecificError,
                            now,
                        )
                    }
                    Held::Publish(p, topic) => self.publish_decided(token.conn, p, topic, v, now),
                    Held::Subscribe {
                        packet,
                        next,
                        mut codes,
                    } => {
                        let code = self.grant(token.conn, &packet, next, v);
                        codes.push(code);
                        self.subscribe_from(token.conn, packet, next + 1, codes, now);
                    }
                }
            }
            other => c.held = other.map(Box::new),
        }
    }

    /// A client id no session uses: `tern-`, the shard and a counter, in
    /// hex ([MQTT-3.1.3-6]: unique on this server).
    pub(super) fn assign_client_id(&mut self) -> MqttString {
        loop {
            let n = self.next_assigned_id;
            self.next_assigned_id += 1;
            let id = format!("tern-{:04x}{:012x}", self.config.shard, n);
            if self
                .by_client_id
                .get(id.as_bytes(), &self.sessions)
                .is_none()
            {
                return MqttString::from_str(&id).expect("ascii id");
            }
        }
    }
}
