//! Retained messages, wills, wildcards, shared subscriptions, No Local,
//! subscription identifiers, topic aliases, properties, CONNACK
//! capabilities, `$SYS`.

use std::num::NonZeroU16;
use std::time::Duration;

use bytes::Bytes;
use tern_broker::Config;
use tern_codec::{
    Disconnect, MqttString, Packet, QoS, ReasonCode, RetainHandling, SubscriptionOptions,
};
use tern_sim::Sim;

use crate::common::*;

fn opts(q: u8) -> SubscriptionOptions {
    SubscriptionOptions::new(qos(q))
}

#[test]
fn retained_message_is_set_replaced_and_cleared() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        let p = connected(&mut sim, v, "p", true);
        sim.send(p, retained("r/1", 0, 0, "first"));
        sim.send(p, retained("r/1", 0, 0, "second"));
        sim.send(p, retained("r/2", 1, 1, "other"));

        let s = connected(&mut sim, v, "s", true);
        sim.send(s, subscribe(1, &[("r/1", 1)]));
        expect_suback(&mut sim, s);
        let m = expect_publish(&mut sim, s);
        assert!(
            m.retain,
            "{v}: retained messages sent on subscribe keep RETAIN"
        );
        assert_eq!(&m.payload[..], b"second");
        expect_nothing(&mut sim, s);

        // An empty retained payload clears it, and is forwarded as usual.
        sim.send(p, retained("r/1", 0, 0, ""));
        let cleared = expect_publish(&mut sim, s);
        assert!(cleared.payload.is_empty());
        let late = connected(&mut sim, v, "late", true);
        sim.send(late, subscribe(1, &[("r/#", 1)]));
        expect_suback(&mut sim, late);
        assert_eq!(payloads(&mut sim, late), ["other"]);
        assert_eq!(sim.broker.stats().retained, 1);
    }
}

#[test]
fn retained_delivery_honours_retain_handling() {
    let mut sim = Sim::default();
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, retained("r", 0, 0, "kept"));
    let s = connected(&mut sim, V5, "s", true);

    // 1: only for a subscription that did not exist.
    let mut o = opts(0);
    o.retain_handling = RetainHandling::SendIfNew;
    sim.send(s, subscribe_opts(1, &[("r", o)]));
    expect_suback(&mut sim, s);
    assert_eq!(payloads(&mut sim, s), ["kept"]);
    sim.send(s, subscribe_opts(2, &[("r", o)]));
    expect_suback(&mut sim, s);
    expect_nothing(&mut sim, s);

    // 0: every time.
    sim.send(s, subscribe_opts(3, &[("r", opts(0))]));
    expect_suback(&mut sim, s);
    assert_eq!(payloads(&mut sim, s), ["kept"]);

    // 2: never.
    o.retain_handling = RetainHandling::DoNotSend;
    sim.send(s, subscribe_opts(4, &[("r/#", o)]));
    expect_suback(&mut sim, s);
    expect_nothing(&mut sim, s);
}

#[test]
fn retain_as_published_keeps_the_flag_on_live_messages() {
    let mut sim = Sim::default();
    let plain = subscriber(&mut sim, V5, "plain", "r", 0);
    let rap = connected(&mut sim, V5, "rap", true);
    let mut o = opts(0);
    o.retain_as_published = true;
    sim.send(rap, subscribe_opts(1, &[("r", o)]));
    expect_suback(&mut sim, rap);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, retained("r", 0, 0, "x"));
    assert!(!expect_publish(&mut sim, plain).retain);
    assert!(expect_publish(&mut sim, rap).retain);
}

#[test]
fn retained_messages_are_not_sent_to_shared_subscriptions() {
    let mut sim = Sim::default();
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, retained("r", 0, 0, "kept"));
    let s = connected(&mut sim, V5, "s", true);
    sim.send(s, subscribe(1, &[("$share/g/r", 0)]));
    expect_suback(&mut sim, s);
    expect_nothing(&mut sim, s);
}

#[test]
fn will_is_published_when_the_link_drops() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        let s = subscriber(&mut sim, v, "s", "will/#", 1);
        let c = sim.client(v);
        sim.connect_with(c, with_will(v, "dev", "will/dev"));
        sim.kill(c);
        let m = expect_publish(&mut sim, s);
        assert_eq!(m.topic, "will/dev");
        assert_eq!(m.qos.qos(), QoS::AtLeastOnce, "{v}");
    }
}

#[test]
fn will_is_not_published_after_a_normal_disconnect() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        let s = subscriber(&mut sim, v, "s", "will/#", 1);
        let c = sim.client(v);
        sim.connect_with(c, with_will(v, "dev", "will/dev"));
        sim.send(c, Disconnect::new(ReasonCode::Success));
        assert!(!sim.is_open(c));
        expect_nothing(&mut sim, s);
    }
}

#[test]
fn disconnect_with_will_message_publishes_the_will_on_v5() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "will/#", 1);
    let c = sim.client(V5);
    sim.connect_with(c, with_will(V5, "dev", "will/dev"));
    sim.send(c, Disconnect::new(ReasonCode::DisconnectWithWillMessage));
    assert_eq!(payloads(&mut sim, s), ["gone"]);
}

#[test]
fn will_is_published_on_keep_alive_timeout() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V3, "s", "will/#", 0);
    let mut cn = with_will(V3, "dev", "will/dev");
    cn.keep_alive = 4;
    let c = sim.client(V3);
    sim.connect_with(c, cn);
    sim.advance(Duration::from_secs(6));
    assert!(!sim.is_open(c));
    assert_eq!(payloads(&mut sim, s), ["gone"]);
}

#[test]
fn will_is_published_on_a_protocol_error() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "will/#", 0);
    let c = sim.client(V5);
    sim.connect_with(c, with_will(V5, "dev", "will/dev"));
    sim.send_bytes(c, &[0xf0, 0]); // AUTH without enhanced authentication
    assert_eq!(payloads(&mut sim, s), ["gone"]);
}

#[test]
fn a_will_on_a_sys_topic_is_not_published() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "$SYS/fake/#", 0);
    let c = sim.client(V5);
    let mut cn = with_will(V5, "dev", "$SYS/fake/dev");
    cn.will.as_mut().expect("will").retain = true;
    sim.connect_with(c, cn);
    sim.kill(c);
    expect_nothing(&mut sim, s);
    assert!(sim.broker.export_retained().iter().all(|r| !r
        .message
        .topic
        .as_str()
        .starts_with("$SYS/fake")));
}

#[test]
fn delayed_will_is_cancelled_by_a_reconnect() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "will/#", 0);
    let mut cn = with_will(V5, "dev", "will/dev");
    cn.clean_start = false;
    cn.properties.session_expiry_interval = Some(3600);
    cn.will
        .as_mut()
        .expect("will")
        .properties
        .will_delay_interval = Some(30);
    let c = sim.client(V5);
    sim.connect_with(c, cn.clone());
    sim.kill(c);
    sim.advance(Duration::from_secs(29));
    expect_nothing(&mut sim, s);
    let c = sim.client(V5);
    cn.will = None;
    assert!(sim.connect_with(c, cn).session_present);
    sim.advance(Duration::from_secs(60));
    expect_nothing(&mut sim, s);
}

#[test]
fn delayed_will_is_published_after_the_delay() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "will/#", 0);
    let mut cn = with_will(V5, "dev", "will/dev");
    cn.properties.session_expiry_interval = Some(3600);
    cn.will
        .as_mut()
        .expect("will")
        .properties
        .will_delay_interval = Some(30);
    let c = sim.client(V5);
    sim.connect_with(c, cn);
    sim.kill(c);
    sim.advance(Duration::from_millis(29_999));
    expect_nothing(&mut sim, s);
    sim.advance(Duration::from_millis(1));
    assert_eq!(payloads(&mut sim, s), ["gone"]);
}

#[test]
fn delayed_will_is_published_when_the_session_ends_first() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "will/#", 0);
    let mut cn = with_will(V5, "dev", "will/dev");
    cn.properties.session_expiry_interval = Some(10);
    cn.will
        .as_mut()
        .expect("will")
        .properties
        .will_delay_interval = Some(300);
    let c = sim.client(V5);
    sim.connect_with(c, cn);
    sim.kill(c);
    sim.advance(Duration::from_secs(10));
    assert_eq!(payloads(&mut sim, s), ["gone"]);
}

#[test]
fn retained_will_is_stored() {
    let mut sim = Sim::default();
    let mut cn = with_will(V3, "dev", "presence/dev");
    cn.will.as_mut().expect("will").retain = true;
    let c = sim.client(V3);
    sim.connect_with(c, cn);
    sim.kill(c);
    let s = connected(&mut sim, V3, "s", true);
    sim.send(s, subscribe(1, &[("presence/+", 0)]));
    expect_suback(&mut sim, s);
    let m = expect_publish(&mut sim, s);
    assert!(m.retain);
    assert_eq!(&m.payload[..], b"gone");
}

#[test]
fn will_takes_over_with_the_session() {
    // A takeover closes the old connection abnormally: its will goes out.
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V3, "s", "will/#", 0);
    let c = sim.client(V3);
    sim.connect_with(c, with_will(V3, "dev", "will/dev"));
    connected(&mut sim, V3, "dev", true);
    assert_eq!(payloads(&mut sim, s), ["gone"]);
}

#[test]
fn wildcards_match_by_the_spec() {
    let mut sim = Sim::default();
    let s = connected(&mut sim, V3, "s", true);
    sim.send(
        s,
        subscribe(1, &[("home/+/temp", 0), ("alarm/#", 0), ("#", 0)]),
    );
    expect_suback(&mut sim, s);
    let p = connected(&mut sim, V3, "p", true);
    for t in [
        "home/kitchen/temp",
        "alarm",
        "alarm/door/open",
        "other",
        "$SYS/x",
    ] {
        sim.send(p, publish(t, 0, 0, t));
    }
    // `#` matches all but `$`-topics; overlaps deliver once. (Clients may
    // not publish to `$SYS` at all.)
    assert_eq!(
        payloads(&mut sim, s),
        ["home/kitchen/temp", "alarm", "alarm/door/open", "other"]
    );
}

#[test]
fn shared_subscription_delivers_each_message_to_one_member() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        let a = subscriber(&mut sim, v, "a", "$share/g/jobs/#", 1);
        let b = subscriber(&mut sim, v, "b", "$share/g/jobs/#", 1);
        let plain = subscriber(&mut sim, v, "plain", "jobs/#", 0);
        let p = connected(&mut sim, v, "p", true);
        for i in 0..6 {
            sim.send(p, publish("jobs/x", 1, i + 1, &i.to_string()));
        }
        let ga = payloads(&mut sim, a);
        let gb = payloads(&mut sim, b);
        assert_eq!(ga.len() + gb.len(), 6, "{v}");
        assert_eq!(ga.len(), 3, "round robin");
        assert_eq!(payloads(&mut sim, plain).len(), 6);
    }
}

#[test]
fn no_local_suppresses_a_clients_own_messages() {
    let mut sim = Sim::default();
    let c = connected(&mut sim, V5, "c", true);
    let mut o = opts(0);
    o.no_local = true;
    sim.send(c, subscribe_opts(1, &[("t", o)]));
    expect_suback(&mut sim, c);
    let other = subscriber(&mut sim, V5, "other", "t", 0);
    sim.send(c, publish("t", 0, 0, "mine"));
    expect_nothing(&mut sim, c);
    assert_eq!(payloads(&mut sim, other), ["mine"]);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t", 0, 0, "theirs"));
    assert_eq!(payloads(&mut sim, c), ["theirs"]);
}

#[test]
fn subscription_identifiers_are_sent_with_matching_messages() {
    let mut sim = Sim::default();
    let s = connected(&mut sim, V5, "s", true);
    sim.send(s, subscribe_with_id(1, "a/+", 0, 7));
    expect_suback(&mut sim, s);
    sim.send(s, subscribe_with_id(2, "a/#", 0, 9));
    expect_suback(&mut sim, s);
    sim.send(s, subscribe(3, &[("a/b", 0)]));
    expect_suback(&mut sim, s);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("a/b", 0, 0, "x"));
    let m = expect_publish(&mut sim, s);
    let mut ids: Vec<u32> = m
        .properties
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [7, 9]);
}

#[test]
fn subscription_identifiers_can_be_turned_off() {
    let cfg = Config {
        subscription_identifiers: false,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let s = sim.client(V5);
    let ack = sim.connect(s, "s", true);
    assert_eq!(
        ack.properties.subscription_identifiers_available,
        Some(false)
    );
    sim.send(s, subscribe_with_id(1, "a", 0, 7));
    expect_disconnect(&mut sim, s, ReasonCode::SubscriptionIdentifiersNotSupported);
}

#[test]
fn inbound_topic_alias_is_set_then_used() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "long/topic/name", 0);
    let p = sim.client(V5);
    let ack = sim.connect(p, "p", true);
    assert_eq!(ack.properties.topic_alias_maximum, Some(64));
    let mut first = publish("long/topic/name", 0, 0, "1");
    first.properties.topic_alias = NonZeroU16::new(3);
    sim.send(p, first);
    let mut second = publish("x", 0, 0, "2");
    second.topic = tern_codec::TopicName::empty();
    second.properties.topic_alias = NonZeroU16::new(3);
    sim.send(p, second);
    let got = sim.take(s);
    assert_eq!(got.len(), 2);
    for m in got {
        let Packet::Publish(m) = m else { panic!() };
        assert_eq!(m.topic, "long/topic/name");
        assert_eq!(m.properties.topic_alias, None);
    }
}

#[test]
fn topic_alias_above_the_maximum_is_0x94() {
    let mut sim = Sim::default();
    let p = connected(&mut sim, V5, "p", true);
    let mut m = publish("t", 0, 0, "x");
    m.properties.topic_alias = NonZeroU16::new(65);
    sim.send(p, m);
    expect_disconnect(&mut sim, p, ReasonCode::TopicAliasInvalid);
}

#[test]
fn unknown_topic_alias_is_a_protocol_error() {
    let mut sim = Sim::default();
    let p = connected(&mut sim, V5, "p", true);
    let mut m = publish("t", 0, 0, "x");
    m.topic = tern_codec::TopicName::empty();
    m.properties.topic_alias = NonZeroU16::new(1);
    sim.send(p, m);
    expect_disconnect(&mut sim, p, ReasonCode::ProtocolError);
}

#[test]
fn outbound_topic_aliases_are_used_when_the_client_allows_them() {
    let mut sim = Sim::default();
    let mut cn = connect(V5, "s", true);
    cn.properties.topic_alias_maximum = Some(1);
    let s = sim.client(V5);
    sim.connect_with(s, cn);
    sim.send(s, subscribe(1, &[("t/#", 0)]));
    expect_suback(&mut sim, s);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t/a", 0, 0, "1"));
    sim.send(p, publish("t/a", 0, 0, "2"));
    sim.send(p, publish("t/b", 0, 0, "3"));
    let a1 = expect_publish(&mut sim, s);
    assert_eq!(a1.topic, "t/a");
    assert_eq!(a1.properties.topic_alias, NonZeroU16::new(1));
    let a2 = expect_publish(&mut sim, s);
    assert!(a2.topic.is_empty());
    assert_eq!(a2.properties.topic_alias, NonZeroU16::new(1));
    // Only one alias allowed: the next topic goes out in full.
    let b = expect_publish(&mut sim, s);
    assert_eq!(b.topic, "t/b");
    assert_eq!(b.properties.topic_alias, None);
}

#[test]
fn application_properties_pass_through_untouched() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "req", 1);
    let p = connected(&mut sim, V5, "p", true);
    let mut m = publish("req", 1, 1, "{}");
    let pr = &mut m.properties;
    pr.payload_format_indicator = Some(true);
    pr.content_type = Some(MqttString::from_static("application/json"));
    pr.response_topic = Some(topic("resp/p"));
    pr.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
    pr.user_properties = vec![
        (MqttString::from_static("k"), MqttString::from_static("v1")),
        (MqttString::from_static("k"), MqttString::from_static("v2")),
    ];
    let sent = m.properties.clone();
    sim.send(p, m);
    let got = expect_publish(&mut sim, s);
    assert_eq!(got.properties, sent);
}

fn restricted() -> Config {
    Config {
        maximum_qos: QoS::AtLeastOnce,
        retain_available: false,
        wildcard_subscriptions: false,
        shared_subscriptions: false,
        ..Config::default()
    }
}

#[test]
fn connack_advertises_what_is_turned_off() {
    let mut sim = Sim::new(restricted());
    let c = sim.client(V5);
    let ack = sim.connect(c, "c", true);
    let p = &ack.properties;
    assert_eq!(p.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.wildcard_subscription_available, Some(false));
    assert_eq!(p.shared_subscription_available, Some(false));
    // QoS 2 is granted as 1.
    sim.send(c, subscribe(1, &[("a", 2)]));
    assert_eq!(expect_suback(&mut sim, c), [ReasonCode::GrantedQoS1]);
}

#[test]
fn using_what_connack_said_is_unavailable_disconnects_on_v5() {
    let mut sim = Sim::new(restricted());
    let c = connected(&mut sim, V5, "c", true);
    sim.send(c, subscribe(1, &[("a", 0), ("$share/g/a", 0)]));
    expect_disconnect(&mut sim, c, ReasonCode::SharedSubscriptionsNotSupported);
    let c = connected(&mut sim, V5, "c", true);
    sim.send(c, subscribe(1, &[("a/+", 0)]));
    expect_disconnect(&mut sim, c, ReasonCode::WildcardSubscriptionsNotSupported);
    let c = connected(&mut sim, V5, "c", true);
    sim.send(c, retained("a", 0, 0, "x"));
    expect_disconnect(&mut sim, c, ReasonCode::RetainNotSupported);
}

#[test]
fn unavailable_features_are_refused_per_filter_on_v311() {
    let mut sim = Sim::new(restricted());
    let c = connected(&mut sim, V3, "c", true);
    sim.send(c, subscribe(1, &[("a/+", 0), ("$share/g/a", 0), ("a", 2)]));
    // 3.1.1 has one failure code, 0x80.
    assert_eq!(
        expect_suback(&mut sim, c),
        [
            ReasonCode::UnspecifiedError,
            ReasonCode::UnspecifiedError,
            ReasonCode::GrantedQoS1,
        ]
    );
}

#[test]
fn a_will_beyond_the_servers_capabilities_is_refused() {
    let mut sim = Sim::new(restricted());
    let mut cn = with_will(V5, "dev", "will/dev");
    cn.will.as_mut().expect("will").qos = QoS::ExactlyOnce;
    let c = sim.client(V5);
    assert_eq!(
        sim.connect_with(c, cn).reason_code,
        ReasonCode::QoSNotSupported
    );
    let mut cn = with_will(V5, "dev", "will/dev");
    cn.will.as_mut().expect("will").retain = true;
    let c = sim.client(V5);
    assert_eq!(
        sim.connect_with(c, cn).reason_code,
        ReasonCode::RetainNotSupported
    );
    // 3.1.1 has no such codes: "server unavailable" (3) stands for them.
    let mut cn = with_will(V3, "dev", "will/dev");
    cn.will.as_mut().expect("will").retain = true;
    let c = sim.client(V3);
    assert_eq!(
        sim.connect_with(c, cn).reason_code,
        ReasonCode::ServerUnavailable
    );
}

#[test]
fn publishing_above_maximum_qos_is_0x9b() {
    let cfg = Config {
        maximum_qos: QoS::AtMostOnce,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let c = connected(&mut sim, V5, "c", true);
    sim.send(c, publish("t", 1, 1, "x"));
    expect_disconnect(&mut sim, c, ReasonCode::QoSNotSupported);
}

#[test]
fn subscription_limit_answers_0x97() {
    let cfg = Config {
        max_subscriptions: 2,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let c = connected(&mut sim, V5, "c", true);
    sim.send(c, subscribe(1, &[("a", 0), ("b", 0), ("c", 0), ("a", 1)]));
    assert_eq!(
        expect_suback(&mut sim, c),
        [
            ReasonCode::Success,
            ReasonCode::Success,
            ReasonCode::QuotaExceeded,
            ReasonCode::GrantedQoS1,
        ]
    );
}

#[test]
fn unsubscribe_reports_what_existed() {
    let mut sim = Sim::default();
    let c = subscriber(&mut sim, V5, "c", "a", 0);
    sim.send(c, unsubscribe(2, &["a", "b"]));
    let Some(Packet::UnsubAck(a)) = sim.recv(c) else {
        panic!("expected UNSUBACK")
    };
    assert_eq!(
        a.reason_codes,
        [ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
    );
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("a", 0, 0, "x"));
    expect_nothing(&mut sim, c);
}

#[test]
fn sys_topics_are_published_at_the_interval() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V3, "s", "$SYS/#", 0);
    let all = subscriber(&mut sim, V3, "all", "#", 0);
    sim.advance(Duration::from_secs(10));
    let got: Vec<_> = sim
        .take(s)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.topic.to_string(), p.payload)),
            _ => None,
        })
        .collect();
    let get = |t: &str| {
        got.iter()
            .find(|(topic, _)| topic == t)
            .map(|(_, p)| String::from_utf8(p.to_vec()).expect("utf-8"))
    };
    assert_eq!(get("$SYS/broker/clients/connected").as_deref(), Some("2"));
    assert_eq!(get("$SYS/broker/uptime").as_deref(), Some("10 seconds"));
    assert!(get("$SYS/broker/version").is_some_and(|v| v.starts_with("tern")));
    assert_eq!(get("$SYS/broker/subscriptions/count").as_deref(), Some("2"));
    // `#` does not match `$SYS`.
    expect_nothing(&mut sim, all);
    // Retained: a late subscriber gets them at once.
    let late = connected(&mut sim, V3, "late", true);
    sim.send(late, subscribe(1, &[("$SYS/broker/uptime", 0)]));
    expect_suback(&mut sim, late);
    assert_eq!(payloads(&mut sim, late), ["10 seconds"]);
}

#[test]
fn sys_topics_can_be_turned_off() {
    let cfg = Config {
        sys_interval: None,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let s = subscriber(&mut sim, V3, "s", "$SYS/#", 0);
    sim.advance(Duration::from_secs(100));
    expect_nothing(&mut sim, s);
    assert_eq!(sim.broker.poll_timeout(), None);
}

#[test]
fn clients_cannot_publish_to_sys() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "$SYS/#", 0);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("$SYS/broker/uptime", 1, 1, "fake"));
    let Some(Packet::PubAck(a)) = sim.recv(p) else {
        panic!("expected PUBACK")
    };
    assert_eq!(a.reason_code, ReasonCode::NotAuthorized);
    expect_nothing(&mut sim, s);
}

#[test]
fn expired_retained_messages_are_not_sent_and_are_forgotten() {
    let mut sim = Sim::default();
    let p = connected(&mut sim, V5, "p", true);
    let mut m = retained("r", 0, 0, "brief");
    m.properties.message_expiry_interval = Some(5);
    sim.send(p, m);
    sim.send(p, retained("q", 0, 0, "lasting"));
    sim.advance(Duration::from_secs(2));
    let s = connected(&mut sim, V5, "s", true);
    sim.send(s, subscribe(1, &[("r", 0)]));
    expect_suback(&mut sim, s);
    let got = expect_publish(&mut sim, s);
    // The remaining lifetime is forwarded.
    assert_eq!(got.properties.message_expiry_interval, Some(3));
    sim.advance(Duration::from_secs(3));
    sim.send(s, subscribe(2, &[("#", 0)]));
    expect_suback(&mut sim, s);
    assert_eq!(payloads(&mut sim, s), ["lasting"]);
    assert_eq!(sim.broker.stats().retained, 1);
}

#[test]
fn topic_length_and_depth_limits_are_enforced() {
    let cfg = Config {
        max_topic_levels: 3,
        max_topic_length: 16,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let c = connected(&mut sim, V5, "c", true);
    sim.send(
        c,
        subscribe(1, &[("a/b/c/d", 0), ("a/b/c", 0), (&"x".repeat(17), 0)]),
    );
    assert_eq!(
        expect_suback(&mut sim, c),
        [
            ReasonCode::TopicFilterInvalid,
            ReasonCode::Success,
            ReasonCode::TopicFilterInvalid
        ]
    );
    sim.send(c, publish("a/b/c/d", 1, 1, "deep"));
    let Some(Packet::PubAck(a)) = sim.recv(c) else {
        panic!("expected PUBACK")
    };
    assert_eq!(a.reason_code, ReasonCode::TopicNameInvalid);
}

#[test]
fn shared_subscription_prefers_connected_members() {
    let mut sim = Sim::default();
    let away = connected(&mut sim, V3, "away", false);
    sim.send(away, subscribe(1, &[("$share/g/t", 1)]));
    expect_suback(&mut sim, away);
    sim.kill(away);
    let here = subscriber(&mut sim, V3, "here", "$share/g/t", 1);
    let p = connected(&mut sim, V3, "p", true);
    for i in 1..=4 {
        sim.send(p, publish("t", 1, i, &i.to_string()));
    }
    assert_eq!(payloads(&mut sim, here), ["1", "2", "3", "4"]);
    let away = sim.client(V3);
    sim.connect(away, "away", false);
    expect_nothing(&mut sim, away);
}

#[test]
fn an_alias_on_a_packet_too_large_to_send_is_not_used_later() {
    let mut sim = Sim::default();
    let mut cn = connect(V5, "s", true);
    cn.properties.topic_alias_maximum = Some(4);
    cn.properties.maximum_packet_size = std::num::NonZeroU32::new(40);
    let s = sim.client(V5);
    sim.connect_with(s, cn);
    sim.send(s, subscribe(1, &[("t", 0)]));
    expect_suback(&mut sim, s);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t", 0, 0, &"x".repeat(60)));
    sim.send(p, publish("t", 0, 0, "small"));
    let m = expect_publish(&mut sim, s);
    // The first packet was dropped: the alias is set by this one.
    assert_eq!(m.topic, "t");
    assert_eq!(m.properties.topic_alias, NonZeroU16::new(1));
}
