//! Authentication and authorization: built-in policies and requests
//! answered by the embedding.

use bytes::Bytes;
use tern_broker::policy::{Access, Acl, AllowAll, AskEmbedding, StaticPasswords};
use tern_broker::{AuthStep, BrokerEvent};
use tern_codec::{Auth, AuthProperties, MqttString, Packet, ProtocolVersion, ReasonCode};
use tern_sim::{ClientRef, Sim};

use crate::common::*;

fn login(
    sim: &mut Sim,
    v: ProtocolVersion,
    id: &str,
    user: &str,
    pw: &str,
) -> (ClientRef, ReasonCode) {
    let mut cn = connect(v, id, true);
    cn.username = Some(MqttString::from_str(user).expect("valid"));
    cn.password = Some(Bytes::copy_from_slice(pw.as_bytes()));
    let c = sim.client(v);
    let ack = sim.connect_with(c, cn);
    (c, ack.reason_code)
}

#[test]
fn static_passwords_accept_and_refuse() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        sim.broker
            .set_authenticator(StaticPasswords::new().user("alice", b"secret"));
        let (c, code) = login(&mut sim, v, "a", "alice", "secret");
        assert_eq!(code, ReasonCode::Success);
        assert!(sim.is_open(c));
        let (c, code) = login(&mut sim, v, "b", "alice", "wrong");
        // 5.0: 0x86; 3.1.1: return code 4, read back as the same reason.
        assert_eq!(code, ReasonCode::BadUserNameOrPassword, "{v}");
        assert!(!sim.is_open(c));
        let c = sim.client(v);
        assert_eq!(
            sim.connect(c, "anon", true).reason_code,
            ReasonCode::NotAuthorized
        );
    }
}

#[test]
fn authentication_can_be_answered_later_by_the_embedding() {
    let mut sim = Sim::default();
    sim.broker.set_authenticator(AskEmbedding);
    let c = sim.client(V5);
    let mut cn = connect(V5, "dev", true);
    cn.username = Some(MqttString::from_static("u"));
    sim.send(c, cn);
    expect_nothing(&mut sim, c);
    // Packets sent meanwhile wait.
    sim.send(c, Packet::PingReq);
    let reqs = sim.take_requests();
    assert_eq!(reqs.len(), 1);
    let BrokerEvent::Authenticate { token, credentials } = &reqs[0].event else {
        panic!("{reqs:?}")
    };
    assert_eq!(credentials.client_id, "dev");
    assert_eq!(credentials.username.as_deref(), Some("u"));
    sim.answer(*token, Ok(()));
    let got = sim.take(c);
    assert!(matches!(got[0], Packet::ConnAck(ref a) if a.reason_code == ReasonCode::Success));
    assert_eq!(got[1], Packet::PingResp);

    let c = sim.client(V5);
    sim.send(c, connect(V5, "dev2", true));
    let token = sim.take_requests()[0].token;
    sim.answer(token, Err(ReasonCode::Banned));
    let Some(Packet::ConnAck(a)) = sim.recv(c) else {
        panic!()
    };
    assert_eq!(a.reason_code, ReasonCode::Banned);
    assert!(!sim.is_open(c));
}

#[test]
fn an_answer_for_a_closed_connection_is_ignored() {
    let mut sim = Sim::default();
    sim.broker.set_authenticator(AskEmbedding);
    let c = sim.client(V5);
    sim.send(c, connect(V5, "dev", true));
    let token = sim.take_requests()[0].token;
    sim.kill(c);
    sim.answer(token, Ok(()));
    assert_eq!(sim.broker.stats().sessions, 0);
}

#[test]
fn acl_denies_publish_and_subscribe() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        sim.broker.set_authorizer(
            Acl::new()
                .allow_all_users("devices/%c/#", Access::ReadWrite)
                .allow_all_users("public/#", Access::Read),
        );
        let c = connected(&mut sim, v, "d1", true);
        sim.send(
            c,
            subscribe(
                1,
                &[("devices/d1/#", 1), ("devices/d2/#", 1), ("public/+", 1)],
            ),
        );
        let denied = if v.is_v5() {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::UnspecifiedError // 0x80 on 3.1.1
        };
        assert_eq!(
            expect_suback(&mut sim, c),
            [ReasonCode::GrantedQoS1, denied, ReasonCode::GrantedQoS1],
            "{v}"
        );
        let watcher = connected(&mut sim, v, "d2", true);
        sim.send(watcher, subscribe(1, &[("devices/d2/#", 0)]));
        expect_suback(&mut sim, watcher);

        sim.send(c, publish("devices/d2/cmd", 1, 5, "nope"));
        let Some(Packet::PubAck(a)) = sim.recv(c) else {
            panic!("expected PUBACK")
        };
        if v.is_v5() {
            assert_eq!(a.reason_code, ReasonCode::NotAuthorized);
        }
        expect_nothing(&mut sim, watcher);
        sim.send(c, publish("public/news", 0, 0, "read only"));
        expect_nothing(&mut sim, watcher);
    }
}

#[test]
fn publish_authorization_can_be_answered_later_and_keeps_order() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "t/#", 1);
    sim.broker.set_authorizer(AskEmbedding);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t/1", 1, 1, "first"));
    sim.send(p, publish("t/2", 1, 2, "second"));
    let reqs = sim.take_requests();
    assert_eq!(reqs.len(), 1, "the second waits for the first");
    let BrokerEvent::AuthorizePublish { token, topic, .. } = &reqs[0].event else {
        panic!()
    };
    assert_eq!(topic, "t/1");
    expect_nothing(&mut sim, s);
    sim.answer(*token, Ok(()));
    assert_eq!(payloads(&mut sim, s), ["first"]);
    let token = sim.take_requests()[0].token;
    sim.answer(token, Err(ReasonCode::NotAuthorized));
    expect_nothing(&mut sim, s);
    let acks = sim.take(p);
    assert_eq!(acks.len(), 2);
    let Packet::PubAck(a) = &acks[1] else {
        panic!()
    };
    assert_eq!(a.reason_code, ReasonCode::NotAuthorized);
}

#[test]
fn subscribe_authorization_can_be_answered_later_per_filter() {
    let mut sim = Sim::default();
    sim.broker.set_authorizer(AskEmbedding);
    let c = connected(&mut sim, V5, "c", true);
    sim.send(c, subscribe(1, &[("a", 1), ("b", 1)]));
    let t1 = sim.take_requests()[0].token;
    sim.answer(t1, Ok(()));
    let t2 = sim.take_requests()[0].token;
    sim.answer(t2, Err(ReasonCode::NotAuthorized));
    assert_eq!(
        expect_suback(&mut sim, c),
        [ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized]
    );
}

fn auth_packet(code: ReasonCode, method: &str, data: &[u8]) -> Packet {
    Packet::Auth(Auth {
        reason_code: code,
        properties: AuthProperties {
            authentication_method: Some(MqttString::from_str(method).expect("valid")),
            authentication_data: Some(Bytes::copy_from_slice(data)),
            ..AuthProperties::default()
        },
    })
}

fn enhanced_connect(method: &str, data: &[u8]) -> tern_codec::Connect {
    let mut cn = connect(V5, "dev", true);
    cn.properties.authentication_method = Some(MqttString::from_str(method).expect("valid"));
    cn.properties.authentication_data = Some(Bytes::copy_from_slice(data));
    cn
}

#[test]
fn enhanced_authentication_with_an_unknown_method_is_0x8c() {
    let mut sim = Sim::default();
    let c = sim.client(V5);
    let ack = sim.connect_with(c, enhanced_connect("SCRAM-SHA-1", b"x"));
    assert_eq!(ack.reason_code, ReasonCode::BadAuthenticationMethod);
    assert!(!sim.is_open(c));
}

#[test]
fn enhanced_authentication_runs_a_challenge_and_response() {
    let mut sim = Sim::default();
    sim.broker.set_authenticator(AskEmbedding);
    let c = sim.client(V5);
    sim.send(c, enhanced_connect("TEST", b"client-first"));
    let req = sim.take_requests().remove(0);
    let BrokerEvent::Authenticate { token, credentials } = req.event else {
        panic!()
    };
    assert_eq!(credentials.method.as_deref(), Some("TEST"));
    assert_eq!(credentials.data.as_deref(), Some(&b"client-first"[..]));
    sim.answer_auth(
        token,
        AuthStep::Continue(Bytes::from_static(b"server-first")),
    );
    assert_eq!(
        sim.recv(c),
        Some(auth_packet(
            ReasonCode::ContinueAuthentication,
            "TEST",
            b"server-first"
        ))
    );

    sim.send(
        c,
        auth_packet(ReasonCode::ContinueAuthentication, "TEST", b"client-final"),
    );
    let req = sim.take_requests().remove(0);
    let BrokerEvent::AuthContinue {
        token,
        data,
        reauthenticate,
        ..
    } = req.event
    else {
        panic!()
    };
    assert_eq!(data.as_deref(), Some(&b"client-final"[..]));
    assert!(!reauthenticate);
    sim.answer_auth(
        token,
        AuthStep::Success(Some(Bytes::from_static(b"server-final"))),
    );
    let Some(Packet::ConnAck(ack)) = sim.recv(c) else {
        panic!("expected CONNACK")
    };
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(
        ack.properties
            .authentication_method
            .as_ref()
            .map(|m| m.as_str()),
        Some("TEST")
    );
    assert_eq!(
        ack.properties.authentication_data.as_deref(),
        Some(&b"server-final"[..])
    );

    // Re-authentication while connected.
    sim.send(c, auth_packet(ReasonCode::ReAuthenticate, "TEST", b"again"));
    let req = sim.take_requests().remove(0);
    let BrokerEvent::AuthContinue {
        token,
        reauthenticate,
        ..
    } = req.event
    else {
        panic!()
    };
    assert!(reauthenticate);
    sim.answer_auth(token, AuthStep::Success(None));
    let Some(Packet::Auth(a)) = sim.recv(c) else {
        panic!("expected AUTH")
    };
    assert_eq!(a.reason_code, ReasonCode::Success);

    // A failed re-authentication disconnects.
    sim.send(c, auth_packet(ReasonCode::ReAuthenticate, "TEST", b"bad"));
    let token = sim.take_requests()[0].token;
    sim.answer_auth(token, AuthStep::Fail(ReasonCode::NotAuthorized));
    assert_eq!(
        sim.recv(c),
        Some(Packet::Disconnect(tern_codec::Disconnect::new(
            ReasonCode::NotAuthorized
        )))
    );
    assert!(!sim.is_open(c));
}

/// A 5.0 client in an enhanced authentication: CONNECT with method TEST,
/// the embedding's challenge sent back; its AUTH is the next step.
fn challenged(sim: &mut Sim) -> ClientRef {
    sim.broker.set_authenticator(AskEmbedding);
    let c = sim.client(V5);
    sim.send(c, enhanced_connect("TEST", b"1"));
    let token = sim.take_requests()[0].token;
    sim.answer_auth(token, AuthStep::Continue(Bytes::from_static(b"2")));
    assert_eq!(
        sim.take(c),
        [auth_packet(
            ReasonCode::ContinueAuthentication,
            "TEST",
            b"2"
        )]
    );
    assert!(sim.is_open(c));
    c
}

#[test]
fn enhanced_authentication_method_cannot_change() {
    let mut sim = Sim::default();
    let c = challenged(&mut sim);
    sim.send(
        c,
        auth_packet(ReasonCode::ContinueAuthentication, "OTHER", b"3"),
    );
    assert!(!sim.is_open(c));
}

#[test]
fn enhanced_authentication_must_finish_before_the_connect_deadline() {
    let mut sim = Sim::default();
    let c = challenged(&mut sim);
    sim.advance(std::time::Duration::from_millis(9_999));
    assert!(sim.is_open(c));
    sim.advance(std::time::Duration::from_millis(1));
    assert!(!sim.is_open(c));
}

#[test]
fn authentication_data_without_a_method_is_not_sent() {
    // Found by the broker_script fuzz target: CONNACK with Authentication
    // Data but no Authentication Method is malformed.
    let mut sim = Sim::default();
    sim.broker.set_authenticator(AskEmbedding);
    let c = sim.client(V5);
    sim.send(c, connect(V5, "dev", true));
    let token = sim.take_requests()[0].token;
    sim.answer_auth(token, AuthStep::Success(Some(Bytes::from_static(b"data"))));
    let Some(Packet::ConnAck(a)) = sim.recv(c) else {
        panic!("expected CONNACK")
    };
    assert_eq!(a.reason_code, ReasonCode::Success);
    assert_eq!(a.properties.authentication_data, None);
}

#[test]
fn a_transport_identity_replaces_the_user_name_and_skips_authentication() {
    let mut sim = Sim::default();
    sim.broker
        .set_authenticator(StaticPasswords::new().user("alice", b"pw"));
    sim.broker.set_authorizer(Acl::new().allow_user(
        "device-7",
        "devices/device-7/#",
        Access::ReadWrite,
    ));
    let c = sim.client(V5);
    let conn = sim.conn(c).expect("open");
    sim.broker.set_identity(conn, "device-7");
    let mut cn = connect(V5, "d7", true);
    cn.username = Some(MqttString::from_static("someone-else"));
    let ack = sim.connect_with(c, cn);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    sim.send(
        c,
        subscribe(1, &[("devices/device-7/#", 0), ("devices/other/#", 0)]),
    );
    assert_eq!(
        expect_suback(&mut sim, c),
        [ReasonCode::Success, ReasonCode::NotAuthorized]
    );
}

#[test]
fn a_request_nobody_answers_is_declined_as_not_authorized() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        sim.broker.set_authenticator(AskEmbedding);
        sim.broker.set_authorizer(AskEmbedding);
        let c = sim.client(v);
        sim.send(c, connect(v, "dev", true));
        let req = sim.take_requests().remove(0);
        // Answered, so that the subscription below can be asked about.
        sim.answer(req.event.token().expect("a request"), Ok(()));
        assert!(matches!(sim.recv(c), Some(Packet::ConnAck(_))));
        sim.send(c, subscribe(1, &[("t", 1)]));
        let req = sim.take_requests().remove(0);
        let now = sim.now();
        sim.broker
            .decline(req.event.token().expect("a request"), now);
        let code = expect_suback(&mut sim, c)[0];
        let want = if v.is_v5() {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::UnspecifiedError // 0x80, the 3.1.1 failure
        };
        assert_eq!(code, want, "{v}");
        // And a CONNECT nobody answers is refused, not left waiting.
        let c = sim.client(v);
        sim.send(c, connect(v, "other", true));
        let req = sim.take_requests().remove(0);
        sim.broker
            .decline(req.event.token().expect("a request"), now);
        let Some(Packet::ConnAck(a)) = sim.recv(c) else {
            panic!("CONNACK")
        };
        assert_eq!(a.reason_code, ReasonCode::NotAuthorized, "{v}");
        assert!(!sim.is_open(c));
    }
}

#[test]
fn the_retained_query_answers_what_the_acl_lets_a_user_read() {
    use std::time::Duration;
    use tern_broker::policy::ClientInfo;
    use tern_codec::TopicFilter;

    let mut sim = Sim::default();
    sim.broker.set_authorizer(
        Acl::new()
            .allow_user("writer", "#", Access::ReadWrite)
            .allow_user("reader", "home/#", Access::Read),
    );
    let (c, code) = login(&mut sim, V5, "w", "writer", "");
    assert_eq!(code, ReasonCode::Success);
    for (i, t) in ["home/b", "home/a", "home/c", "garden/x"]
        .iter()
        .enumerate()
    {
        sim.send(c, retained(t, 0, 0, &i.to_string()));
    }
    let mut short = retained("home/short", 0, 0, "gone soon");
    short.properties.message_expiry_interval = Some(1);
    sim.send(c, short);
    expect_nothing(&mut sim, c);
    let reader = ClientInfo {
        client_id: String::new(),
        username: Some("reader".into()),
    };
    let filter = |f: &str| TopicFilter::new(f).expect("valid");
    let now = sim.now();
    let a = sim
        .broker
        .retained(&reader, &filter("home/#"), 10, now)
        .expect("allowed");
    let topics: Vec<&str> = a.messages.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, ["home/a", "home/b", "home/c", "home/short"]);
    assert!(!a.truncated);
    let a = sim
        .broker
        .retained(&reader, &filter("home/#"), 2, now)
        .expect("allowed");
    assert_eq!(a.messages.len(), 2);
    assert!(a.truncated);
    // Not readable: refused, as a SUBSCRIBE would be.
    assert_eq!(
        sim.broker
            .retained(&reader, &filter("garden/#"), 10, now)
            .map(|a| a.messages.len()),
        Err(ReasonCode::NotAuthorized)
    );
    // An expired message is not among the answers.
    sim.advance(Duration::from_secs(2));
    let now = sim.now();
    let a = sim
        .broker
        .retained(&reader, &filter("home/+"), 10, now)
        .expect("allowed");
    assert_eq!(a.messages.len(), 3);
}

#[test]
fn a_trusted_connection_is_neither_authenticated_nor_authorized() {
    let mut sim = Sim::default();
    sim.broker.set_authenticator(StaticPasswords::new());
    // The ACL allows nothing at all.
    sim.broker.set_authorizer(Acl::new());
    let rec = sim.client(V5);
    let conn = sim.conn(rec).expect("open");
    sim.broker.set_trusted(conn);
    let ack = sim.connect_with(rec, connect(V5, "$tern/recorder", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    sim.send(rec, subscribe(1, &[("#", 1)]));
    assert_eq!(expect_suback(&mut sim, rec), [ReasonCode::GrantedQoS1]);
    sim.send(rec, publish("a/b", 1, 7, "x"));
    // Accepted, and its own message comes back through its subscription.
    let got = sim.take(rec);
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::PubAck(a) if a.reason_code == ReasonCode::Success)),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::Publish(m) if m.topic.as_str() == "a/b")),
        "{got:?}"
    );
    // It may report events under `$SYS`, which clients may not.
    sim.send(rec, publish("$SYS/broker/webhooks/w/failed", 1, 8, "{}"));
    let got = sim.take(rec);
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::PubAck(a) if a.packet_id.get() == 8 && !a.reason_code.is_error())),
        "{got:?}"
    );
    // An untrusted connection may not take its client id over, whoever
    // it is.
    sim.broker.set_authenticator(AllowAll);
    let thief = sim.client(V5);
    let ack = sim.connect_with(thief, connect(V5, "$tern/recorder", false));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(sim.recv(rec).is_none(), "the recorder stays");
    // Nor its topics: `$tern/...` is for trusted connections.
    let other = sim.client(V5);
    assert_eq!(
        sim.connect_with(other, connect(V5, "other", true))
            .reason_code,
        ReasonCode::Success
    );
    sim.send(other, subscribe(1, &[("$tern/#", 1)]));
    assert_eq!(expect_suback(&mut sim, other), [ReasonCode::NotAuthorized]);
    sim.send(other, publish("$tern/webhooks/x", 1, 9, "{}"));
    let Some(Packet::PubAck(a)) = sim.recv(other) else {
        panic!("expected PUBACK")
    };
    assert_eq!(a.reason_code, ReasonCode::NotAuthorized);
}
