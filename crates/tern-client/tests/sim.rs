//! The client against the broker core on a simulated network, in virtual
//! time: no sockets, no sleeps.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tern_broker::Config;
use tern_client::Store as _;
use tern_client::{
    Client, ClientConfig, ClientEvent, Delivery, DisconnectReason, Message, PublishError,
    RequestId, State,
};
use tern_codec::{
    Decoder, Packet, ProtocolVersion, QoS, SubscribeFilter, SubscribeProperties,
    SubscriptionOptions, TopicFilter, TopicName,
};
use tern_sim::{Net, PeerRef};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

fn config(id: &str, version: ProtocolVersion) -> ClientConfig {
    ClientConfig::new(id).with_version(version)
}

/// A client whose session outlives its connections.
fn persistent(id: &str, version: ProtocolVersion) -> ClientConfig {
    let mut c = config(id, version);
    if version.is_v5() {
        c.session_expiry_interval = 3600;
    } else {
        c.clean_start = false;
    }
    c
}

fn topic(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

fn filter(f: &str, qos: QoS) -> SubscribeFilter {
    SubscribeFilter {
        filter: TopicFilter::new(f).unwrap(),
        options: SubscriptionOptions::new(qos),
    }
}

fn connected(net: &mut Net, p: PeerRef) -> bool {
    connected_with(net, p, &mut Vec::new())
}

/// Opens the link and runs the network; the events after `Connected` go to
/// `rest`.
fn connected_with(net: &mut Net, p: PeerRef, rest: &mut Vec<ClientEvent>) -> bool {
    net.open(p);
    net.run();
    let mut events = net.events(p).into_iter();
    match events.next() {
        Some(ClientEvent::Connected {
            session_present, ..
        }) => {
            rest.extend(events);
            session_present
        }
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// Cuts the link; the client reports it.
fn cut(net: &mut Net, p: PeerRef) {
    net.cut(p);
    assert_eq!(
        net.events(p),
        [ClientEvent::Disconnected {
            reason: DisconnectReason::TransportClosed
        }]
    );
}

fn subscribe(net: &mut Net, p: PeerRef, f: &str, qos: QoS) {
    let now = net.now();
    let id = net
        .client(p)
        .subscribe(vec![filter(f, qos)], SubscribeProperties::default(), now)
        .unwrap();
    net.run();
    let events = net.events(p);
    assert!(
        events.iter().any(|e| matches!(e,
            ClientEvent::Subscribed { id: i, reason_codes } if *i == id && !reason_codes[0].is_error())),
        "{events:?}"
    );
}

fn publish(net: &mut Net, p: PeerRef, t: &str, payload: &str, qos: QoS) -> RequestId {
    let now = net.now();
    let m = Message::new(topic(t), Bytes::copy_from_slice(payload.as_bytes())).with_qos(qos);
    net.client(p).publish(m, now).unwrap()
}

fn deliveries(events: &[ClientEvent]) -> Vec<&Delivery> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(d) => Some(d),
            _ => None,
        })
        .collect()
}

fn payloads(events: &[ClientEvent]) -> Vec<String> {
    deliveries(events)
        .iter()
        .map(|d| String::from_utf8(d.message.payload.to_vec()).unwrap())
        .collect()
}

fn outcomes(
    events: &[ClientEvent],
) -> BTreeMap<RequestId, Vec<Result<tern_codec::ReasonCode, PublishError>>> {
    let mut m: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for e in events {
        if let ClientEvent::Published { id, result } = e {
            m.entry(*id).or_default().push(result.clone());
        }
    }
    m
}

/// Decodes the packets of the log that `p` sent (`to_broker`) or received.
fn logged(net: &Net, p: PeerRef, to_broker: bool, version: ProtocolVersion) -> Vec<Packet> {
    let mut out = Vec::new();
    for (who, dir, bytes) in net.log() {
        if *who != p || *dir != to_broker {
            continue;
        }
        let mut d = if to_broker {
            let mut d = Decoder::server();
            d.set_version(version);
            d
        } else {
            Decoder::client(version)
        };
        let mut b = bytes.clone();
        if let Ok(Some(packet)) = d.decode_bytes(&mut b) {
            out.push(packet);
        }
    }
    out
}

#[test]
fn publishes_at_every_qos_reach_a_subscriber_and_complete() {
    for version in [V311, V5] {
        let mut net = Net::default();
        let sub = net.add(Client::new(config("lights", version)));
        let publ = net.add(Client::new(config("doorbell", version)));
        connected(&mut net, sub);
        connected(&mut net, publ);
        subscribe(&mut net, sub, "home/+/pressed", QoS::ExactlyOnce);
        let ids: Vec<_> = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
            .map(|(i, q)| publish(&mut net, publ, "home/doorbell/pressed", &i.to_string(), q))
            .collect();
        net.run();
        let done = outcomes(&net.events(publ));
        for id in &ids {
            assert_eq!(
                done[id],
                vec![Ok(tern_codec::ReasonCode::Success)],
                "{version}"
            );
        }
        let got = net.events(sub);
        assert_eq!(payloads(&got), ["0", "1", "2"], "{version}");
        let qos: Vec<_> = deliveries(&got).iter().map(|d| d.message.qos).collect();
        assert_eq!(qos, [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]);
        assert_eq!(net.client(publ).inflight(), 0);
    }
}

#[test]
fn offline_publishes_wait_in_the_queue_and_go_in_order() {
    let mut net = Net::default();
    let sub = net.add(Client::new(config("sub", V5)));
    connected(&mut net, sub);
    subscribe(&mut net, sub, "q", QoS::AtLeastOnce);
    let publ = net.add(Client::new(config("pub", V5)));
    for i in 0..5 {
        publish(&mut net, publ, "q", &i.to_string(), QoS::AtLeastOnce);
    }
    assert_eq!(net.client(publ).queued(), 5);
    connected(&mut net, publ);
    net.run();
    assert_eq!(payloads(&net.events(sub)), ["0", "1", "2", "3", "4"]);
}

#[test]
fn the_queue_is_bounded_by_its_policy() {
    let mut c = config("pub", V5);
    c.max_queued = 2;
    let mut client = Client::new(c.clone());
    let mut net = Net::default();
    let now = net.now();
    let m = || Message::new(topic("q"), "x").with_qos(QoS::AtLeastOnce);
    client.publish(m(), now).unwrap();
    client.publish(m(), now).unwrap();
    assert_eq!(client.publish(m(), now), Err(PublishError::QueueFull));

    c.queue_policy = tern_client::QueuePolicy::DropOldest;
    let p = net.add(Client::new(c));
    let first = publish(&mut net, p, "q", "0", QoS::AtLeastOnce);
    publish(&mut net, p, "q", "1", QoS::AtLeastOnce);
    publish(&mut net, p, "q", "2", QoS::AtLeastOnce);
    assert_eq!(net.client(p).queued(), 2);
    net.run();
    assert_eq!(
        net.events(p),
        [ClientEvent::Published {
            id: first,
            result: Err(PublishError::Dropped)
        }]
    );
}

#[test]
fn keep_alive_pings_an_idle_server_and_gives_up_on_a_silent_one() {
    let mut c = config("idle", V5);
    c.keep_alive = Duration::from_secs(30);
    c.ping_timeout = Duration::from_secs(5);
    let mut net = Net::default();
    let p = net.add(Client::new(c));
    connected(&mut net, p);
    // Ten idle minutes: PINGREQs keep the connection (the broker would
    // close it after 45 s of silence).
    net.advance(Duration::from_secs(600));
    assert!(net.is_linked(p));
    assert_eq!(net.client(p).state(), State::Connected);
    let pings = logged(&net, p, true, V5)
        .iter()
        .filter(|p| matches!(p, Packet::PingReq))
        .count();
    assert_eq!(pings, 20);
    assert!(net.events(p).is_empty());

    // The server goes silent: no PINGRESP within 5 s of the next PINGREQ.
    net.set_deaf(p, true);
    net.advance(Duration::from_secs(34));
    assert_eq!(net.client(p).state(), State::Connected);
    net.advance(Duration::from_secs(2));
    assert_eq!(net.client(p).state(), State::Disconnected);
    assert_eq!(
        net.events(p),
        [ClientEvent::Disconnected {
            reason: DisconnectReason::KeepAliveTimeout
        }]
    );
}

#[test]
fn a_missing_connack_times_out() {
    let mut c = config("slow", V5);
    c.connect_timeout = Duration::from_secs(3);
    let mut net = Net::default();
    let p = net.add(Client::new(c));
    net.set_deaf(p, true);
    net.open(p);
    net.advance(Duration::from_secs(3));
    assert_eq!(
        net.events(p),
        [ClientEvent::Disconnected {
            reason: DisconnectReason::ConnectTimeout
        }]
    );
}

#[test]
fn reconnect_with_session_resends_unacknowledged_publishes_with_dup() {
    for version in [V311, V5] {
        let mut net = Net::default();
        let sub = net.add(Client::new(persistent("sub", version)));
        connected(&mut net, sub);
        subscribe(&mut net, sub, "t", QoS::AtLeastOnce);
        let publ = net.add(Client::new(persistent("pub", version)));
        connected(&mut net, publ);
        let id = publish(&mut net, publ, "t", "m", QoS::AtLeastOnce);
        // The PUBLISH is lost with the link.
        cut(&mut net, publ);
        assert_eq!(net.client(publ).inflight(), 1);
        let mut rest = Vec::new();
        assert!(connected_with(&mut net, publ, &mut rest), "session present");
        assert_eq!(outcomes(&rest)[&id], [Ok(tern_codec::ReasonCode::Success)]);
        let sent = logged(&net, publ, true, version);
        let dups: Vec<bool> = sent
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.dup),
                _ => None,
            })
            .collect();
        assert_eq!(
            dups,
            [true],
            "{version}: only the resend reached the broker"
        );
        assert_eq!(payloads(&net.events(sub)), ["m"]);
    }
}

#[test]
fn reconnect_without_session_requeues_and_resubscribes() {
    let mut net = Net::default();
    let sub = net.add(Client::new(config("sub", V5)));
    connected(&mut net, sub);
    subscribe(&mut net, sub, "a/#", QoS::AtLeastOnce);
    assert_eq!(net.client(sub).subscriptions().count(), 1);
    cut(&mut net, sub);
    // Clean start: the broker forgot the subscription, the client makes it
    // again before anything else.
    let mut rest = Vec::new();
    assert!(!connected_with(&mut net, sub, &mut rest));
    assert_eq!(
        rest,
        [ClientEvent::Resubscribed {
            results: vec![(
                TopicFilter::new("a/#").unwrap(),
                tern_codec::ReasonCode::GrantedQoS1
            )]
        }]
    );

    let publ = net.add(Client::new(config("pub", V5)));
    connected(&mut net, publ);
    let id = publish(&mut net, publ, "a/b", "x", QoS::AtLeastOnce);
    cut(&mut net, publ);
    // No session on the broker: the message goes again as a new publish.
    let mut rest = Vec::new();
    assert!(!connected_with(&mut net, publ, &mut rest));
    assert_eq!(outcomes(&rest)[&id], [Ok(tern_codec::ReasonCode::Success)]);
    assert_eq!(payloads(&net.events(sub)), ["x"]);
    let dups: Vec<bool> = logged(&net, publ, true, V5)
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.dup),
            _ => None,
        })
        .collect();
    assert_eq!(dups, [false]);
}

#[test]
fn qos2_resend_after_a_drop_between_pubrec_and_pubcomp() {
    for version in [V311, V5] {
        let mut net = Net::default();
        let sub = net.add(Client::new(persistent("sub", version)));
        connected(&mut net, sub);
        subscribe(&mut net, sub, "t", QoS::ExactlyOnce);
        let publ = net.add(Client::new(persistent("pub", version)));
        connected(&mut net, publ);
        let id = publish(&mut net, publ, "t", "once", QoS::ExactlyOnce);
        // PUBLISH to the broker, then PUBREC back, then cut: the PUBREL the
        // client queued is lost.
        let mut seen_pubrec = false;
        while !seen_pubrec {
            assert!(net.step());
            seen_pubrec = logged(&net, publ, false, version)
                .iter()
                .any(|p| matches!(p, Packet::PubRec(_)));
        }
        cut(&mut net, publ);
        let mut rest = Vec::new();
        assert!(connected_with(&mut net, publ, &mut rest));
        assert_eq!(outcomes(&rest)[&id], [Ok(tern_codec::ReasonCode::Success)]);
        // PUBREL went again, and nothing else.
        let sent = logged(&net, publ, true, version);
        assert_eq!(
            sent.iter()
                .filter(|p| matches!(p, Packet::Publish(_)))
                .count(),
            1
        );
        assert_eq!(
            sent.iter()
                .filter(|p| matches!(p, Packet::PubRel(_)))
                .count(),
            1
        );
        assert_eq!(payloads(&net.events(sub)), ["once"]);
    }
}

#[test]
fn flow_control_stops_at_the_servers_receive_maximum() {
    let broker = Config {
        receive_maximum: 3,
        ..Config::default()
    };
    let mut net = Net::new(broker);
    let publ = net.add(Client::new(config("pub", V5)));
    connected(&mut net, publ);
    for i in 0..20 {
        publish(&mut net, publ, "t", &i.to_string(), QoS::AtLeastOnce);
    }
    assert_eq!(net.client(publ).inflight(), 3);
    assert_eq!(net.client(publ).queued(), 17);
    let mut max = 0;
    while net.step() {
        max = max.max(net.client(publ).inflight());
    }
    assert_eq!(max, 3);
    assert_eq!(outcomes(&net.events(publ)).len(), 20);
    assert_eq!(net.client(publ).queued(), 0);
}

#[test]
fn server_limits_refuse_what_it_cannot_take() {
    let broker = Config {
        maximum_qos: QoS::AtLeastOnce,
        retain_available: false,
        max_packet_size: 200,
        ..Config::default()
    };
    let mut net = Net::new(broker);
    let p = net.add(Client::new(config("pub", V5)));
    connected(&mut net, p);
    let now = net.now();
    let c = net.client(p);
    assert_eq!(
        c.publish(
            Message::new(topic("t"), "x").with_qos(QoS::ExactlyOnce),
            now
        ),
        Err(PublishError::QosNotSupported(QoS::AtLeastOnce))
    );
    assert_eq!(
        c.publish(Message::new(topic("t"), "x").with_retain(true), now),
        Err(PublishError::RetainNotSupported)
    );
    let id = c
        .publish(Message::new(topic("t"), vec![0u8; 300]), now)
        .unwrap();
    net.run();
    assert!(matches!(
        &net.events(p)[..],
        [ClientEvent::Published { id: i, result: Err(PublishError::PacketTooLarge { max: 200, .. }) }] if *i == id
    ));
    assert!(net.is_linked(p), "nothing too large was sent");
}

#[test]
fn topic_aliases_both_ways() {
    let broker = Config {
        topic_alias_maximum: 4,
        ..Config::default()
    };
    let mut net = Net::new(broker);
    let mut sc = config("sub", V5);
    sc.topic_alias_maximum = 4;
    let sub = net.add(Client::new(sc));
    connected(&mut net, sub);
    subscribe(&mut net, sub, "sensors/#", QoS::AtMostOnce);
    let mut pc = config("pub", V5);
    pc.use_topic_aliases = true;
    let publ = net.add(Client::new(pc));
    connected(&mut net, publ);
    for i in 0..3 {
        publish(
            &mut net,
            publ,
            "sensors/kitchen/temperature",
            &i.to_string(),
            QoS::AtMostOnce,
        );
    }
    net.run();
    let sent: Vec<(String, Option<u16>)> = logged(&net, publ, true, V5)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                p.topic.as_str().to_owned(),
                p.properties.topic_alias.map(|a| a.get()),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("sensors/kitchen/temperature".to_owned(), Some(1)),
            (String::new(), Some(1)),
            (String::new(), Some(1)),
        ]
    );
    let got = net.events(sub);
    assert_eq!(payloads(&got), ["0", "1", "2"]);
    for d in deliveries(&got) {
        assert_eq!(d.message.topic.as_str(), "sensors/kitchen/temperature");
        assert_eq!(d.message.properties.topic_alias, None);
    }
}

#[test]
fn manual_acks_go_out_in_the_order_messages_came() {
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut sc = config("sub", V5);
        sc.manual_ack = true;
        let mut net = Net::default();
        let sub = net.add(Client::new(sc));
        connected(&mut net, sub);
        subscribe(&mut net, sub, "t", qos);
        let publ = net.add(Client::new(config("pub", V5)));
        connected(&mut net, publ);
        for i in 0..3 {
            publish(&mut net, publ, "t", &i.to_string(), qos);
        }
        net.run();
        let got = net.events(sub);
        let acks: Vec<_> = deliveries(&got).iter().map(|d| d.ack.unwrap()).collect();
        assert_eq!(acks.len(), 3);
        let acked = |net: &Net| -> usize {
            logged(net, sub, true, V5)
                .iter()
                .filter(|p| matches!(p, Packet::PubAck(_) | Packet::PubRec(_)))
                .count()
        };
        let now = net.now();
        assert!(net.client(sub).ack(acks[2], now));
        net.run();
        assert_eq!(acked(&net), 0, "the third waits for the first two");
        assert!(net.client(sub).ack(acks[0], now));
        net.run();
        assert_eq!(acked(&net), 1);
        assert!(net.client(sub).ack(acks[1], now));
        net.run();
        assert_eq!(acked(&net), 3);
        // The identifiers went back in arrival order.
        let received: Vec<u16> = logged(&net, sub, false, V5)
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => p.qos.packet_id().map(|i| i.get()),
                _ => None,
            })
            .collect();
        let answered: Vec<u16> = logged(&net, sub, true, V5)
            .iter()
            .filter_map(|p| match p {
                Packet::PubAck(a) | Packet::PubRec(a) => Some(a.packet_id.get()),
                _ => None,
            })
            .collect();
        assert_eq!(answered, received);
        // The publisher's messages all completed.
        assert_eq!(outcomes(&net.events(publ)).len(), 3);
        assert!(!net.client(sub).ack(acks[0], now), "acked already");
    }
}

#[test]
fn a_server_that_breaks_the_protocol_is_left() {
    // A PUBLISH before CONNACK is a protocol error.
    let (mut client, now) = raw(config("c", V5));
    let p = Packet::Publish(tern_codec::Publish::new(
        topic("t"),
        tern_codec::QosPid::AtMostOnce,
        "x",
    ));
    client.handle_packet(p, now);
    assert_eq!(client.state(), State::Disconnected);
    let out = client.poll_transmit().expect("DISCONNECT");
    assert_eq!(out[0] >> 4, 14);
    assert_eq!(out[2], 0x82);
}

/// Which link a cut-point run cuts.
#[derive(Debug, Clone, Copy)]
enum Which {
    Publisher,
    Subscriber,
    Both,
}

/// The bar: across a cut after every packet of the QoS 1/2 flows, no
/// message the publisher saw acknowledged is lost, every message completes
/// once, and no QoS 2 message reaches the application twice.
fn cut_points(version: ProtocolVersion, qos: QoS, which: Which) -> u64 {
    const N: usize = 3;
    for k in 0.. {
        let mut net = Net::default();
        let sub = net.add(Client::new(persistent("sub", version)));
        let publ = net.add(Client::new(persistent("pub", version)));
        connected(&mut net, sub);
        connected(&mut net, publ);
        subscribe(&mut net, sub, "t/#", qos);
        let base = net.delivered();
        let ids: Vec<_> = (0..N)
            .map(|i| publish(&mut net, publ, &format!("t/{i}"), &i.to_string(), qos))
            .collect();
        let mut pub_events = Vec::new();
        let mut sub_events = Vec::new();
        while net.delivered() - base < k && net.step() {}
        let finished = net.delivered() - base < k;
        if !finished {
            match which {
                Which::Publisher => net.cut(publ),
                Which::Subscriber => net.cut(sub),
                Which::Both => {
                    net.cut(publ);
                    net.cut(sub);
                }
            }
            pub_events.extend(net.events(publ));
            sub_events.extend(net.events(sub));
            for (p, sink) in [(publ, &mut pub_events), (sub, &mut sub_events)] {
                if !net.is_linked(p) {
                    assert!(
                        connected_with(&mut net, p, sink),
                        "{version} {qos:?} {which:?} k={k}: session kept"
                    );
                }
            }
        }
        net.run();
        pub_events.extend(net.events(publ));
        sub_events.extend(net.events(sub));
        let ctx = format!("{version} {qos:?} {which:?} cut after packet {k}");

        let done = outcomes(&pub_events);
        for id in &ids {
            assert_eq!(
                done.get(id).map(Vec::as_slice),
                Some(&[Ok(tern_codec::ReasonCode::Success)][..]),
                "{ctx}: every publish completes once"
            );
        }
        let mut got = payloads(&sub_events);
        if qos == QoS::ExactlyOnce {
            let mut sorted = got.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(
                sorted.len(),
                got.len(),
                "{ctx}: a QoS 2 message came twice: {got:?}"
            );
        }
        got.sort();
        got.dedup();
        let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
        assert_eq!(got, want, "{ctx}: every message arrives");
        assert_eq!(net.client(publ).inflight(), 0, "{ctx}");
        if finished {
            return k;
        }
    }
    unreachable!()
}

#[test]
fn no_loss_and_no_duplicate_across_a_cut_at_every_step() {
    for version in [V311, V5] {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for which in [Which::Publisher, Which::Subscriber, Which::Both] {
                let steps = cut_points(version, qos, which);
                // The flow is long enough for the loop to mean something:
                // 3 messages take 6 (QoS 1) or 12 (QoS 2) packets each way.
                let min = if qos == QoS::ExactlyOnce { 24 } else { 12 };
                assert!(steps >= min, "{version} {qos:?} {which:?}: {steps} steps");
            }
        }
    }
}

/// A client fed packets by hand, for what the broker core would not send.
fn raw(config: ClientConfig) -> (Client, std::time::Instant) {
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    let mut c = Client::new(config);
    c.connect(now);
    c.poll_transmit().expect("CONNECT");
    (c, now)
}

fn sent(c: &mut Client, version: ProtocolVersion) -> Vec<Packet> {
    let mut d = Decoder::server();
    d.set_version(version);
    let mut out = Vec::new();
    while let Some(mut b) = c.poll_transmit() {
        while let Ok(Some(p)) = d.decode_bytes(&mut b) {
            out.push(p);
        }
    }
    out
}

#[test]
fn packet_identifiers_are_never_reused_while_in_flight() {
    let mut cfg = config("ids", V5);
    cfg.max_inflight = u16::MAX;
    cfg.max_queued = 10;
    let (mut c, now) = raw(cfg);
    c.handle_packet(Packet::ConnAck(tern_codec::ConnAck::new(false)), now);
    let _ = c.poll_event();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..u16::MAX {
        c.publish(
            Message::new(topic("t"), "x").with_qos(QoS::AtLeastOnce),
            now,
        )
        .unwrap();
        for p in sent(&mut c, V5) {
            let Packet::Publish(p) = p else { panic!() };
            let id = p.qos.packet_id().unwrap().get();
            assert!(seen.insert(id), "id {id} reused at publish {i}");
        }
    }
    assert_eq!(seen.len(), 65535);
    // Every identifier is taken: the next message waits...
    c.publish(
        Message::new(topic("t"), "y").with_qos(QoS::AtLeastOnce),
        now,
    )
    .unwrap();
    assert!(sent(&mut c, V5).is_empty());
    assert_eq!(c.queued(), 1);
    // ...until an acknowledgement frees one, which it then takes.
    let freed = tern_codec::PacketId::new(777).unwrap();
    c.handle_packet(Packet::PubAck(tern_codec::Ack::new(freed)), now);
    let next = sent(&mut c, V5);
    assert!(matches!(&next[..], [Packet::Publish(p)] if p.qos.packet_id() == Some(freed)));
}

#[test]
fn enhanced_authentication_is_an_exchange_of_auth_packets() {
    let mut cfg = config("auth", V5);
    cfg.authentication_method = Some(tern_codec::MqttString::from_static("SCRAM-SHA-1"));
    cfg.authentication_data = Some(Bytes::from_static(b"client-first"));
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    let mut c = Client::new(cfg);
    c.connect(now);
    let connect = sent(&mut c, V5);
    let Packet::Connect(connect) = &connect[0] else {
        panic!()
    };
    assert_eq!(
        connect
            .properties
            .authentication_method
            .as_ref()
            .map(|m| m.as_str()),
        Some("SCRAM-SHA-1")
    );
    // The server's challenge reaches the application...
    let mut challenge = tern_codec::Auth {
        reason_code: tern_codec::ReasonCode::ContinueAuthentication,
        properties: Default::default(),
    };
    challenge.properties.authentication_method =
        Some(tern_codec::MqttString::from_static("SCRAM-SHA-1"));
    challenge.properties.authentication_data = Some(Bytes::from_static(b"server-first"));
    c.handle_packet(Packet::Auth(challenge.clone()), now);
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Auth {
            reason: challenge.reason_code,
            properties: challenge.properties
        })
    );
    // ...whose answer goes back under the same method.
    c.auth(
        tern_codec::ReasonCode::ContinueAuthentication,
        Some(Bytes::from_static(b"client-final")),
        now,
    );
    let answer = sent(&mut c, V5);
    let [Packet::Auth(a)] = &answer[..] else {
        panic!("{answer:?}")
    };
    assert_eq!(
        a.reason_code,
        tern_codec::ReasonCode::ContinueAuthentication
    );
    assert_eq!(
        a.properties.authentication_data.as_deref(),
        Some(&b"client-final"[..])
    );
    assert_eq!(
        a.properties
            .authentication_method
            .as_ref()
            .map(|m| m.as_str()),
        Some("SCRAM-SHA-1")
    );
    c.handle_packet(Packet::ConnAck(tern_codec::ConnAck::new(false)), now);
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::Connected { .. })
    ));
}

#[test]
fn a_topic_alias_beyond_our_maximum_or_unknown_is_a_protocol_error() {
    for (alias, topic_name, reason) in [
        (5, "t", tern_codec::ReasonCode::TopicAliasInvalid),
        (1, "", tern_codec::ReasonCode::ProtocolError),
    ] {
        let mut cfg = config("alias", V5);
        cfg.topic_alias_maximum = 2;
        let (mut c, now) = raw(cfg);
        c.handle_packet(Packet::ConnAck(tern_codec::ConnAck::new(false)), now);
        let _ = c.poll_event();
        let t = if topic_name.is_empty() {
            TopicName::empty()
        } else {
            topic(topic_name)
        };
        let mut p = tern_codec::Publish::new(t, tern_codec::QosPid::AtMostOnce, "x");
        p.properties.topic_alias = std::num::NonZeroU16::new(alias);
        c.handle_packet(Packet::Publish(p), now);
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Disconnected {
                reason: DisconnectReason::ProtocolError(reason)
            })
        );
        let out = sent(&mut c, V5);
        assert!(matches!(&out[..], [Packet::Disconnect(d)] if d.reason_code == reason));
    }
}

/// A store shared with the test, standing for one that outlives the
/// process (a file, flash).
#[derive(Clone, Default)]
struct Durable(std::sync::Arc<std::sync::Mutex<tern_client::MemoryStore>>);

macro_rules! delegate {
    ($($name:ident(&mut self $(, $a:ident: $t:ty)*) $(-> $r:ty)?;)*) => {
        $(fn $name(&mut self $(, $a: $t)*) $(-> $r)? { self.0.lock().unwrap().$name($($a),*) })*
    };
}

impl tern_client::Store for Durable {
    delegate! {
        push_queued(&mut self, item: tern_client::store::Queued);
        requeue_front(&mut self, items: Vec<tern_client::store::Queued>);
        pop_queued(&mut self) -> Option<tern_client::store::Queued>;
        insert_inflight(&mut self, item: tern_client::store::Inflight);
        release_inflight(&mut self, pid: tern_codec::PacketId);
        set_dup(&mut self, pid: tern_codec::PacketId);
        remove_inflight(&mut self, pid: tern_codec::PacketId) -> Option<tern_client::store::Inflight>;
        clear_inflight(&mut self);
        insert_incoming(&mut self, pid: tern_codec::PacketId);
        remove_incoming(&mut self, pid: tern_codec::PacketId) -> bool;
        clear_incoming(&mut self);
    }
    fn front_qos(&self) -> Option<QoS> {
        self.0.lock().unwrap().front_qos()
    }
    fn newest_queued(&self) -> Option<RequestId> {
        self.0.lock().unwrap().newest_queued()
    }
    fn queued_len(&self) -> usize {
        self.0.lock().unwrap().queued_len()
    }
    fn inflight(&self, pid: tern_codec::PacketId) -> Option<tern_client::store::InflightState> {
        self.0.lock().unwrap().inflight(pid)
    }
    fn inflight_len(&self) -> usize {
        self.0.lock().unwrap().inflight_len()
    }
    fn inflight_in_order(&self) -> Vec<tern_client::store::Inflight> {
        self.0.lock().unwrap().inflight_in_order()
    }
    fn contains_incoming(&self, pid: tern_codec::PacketId) -> bool {
        self.0.lock().unwrap().contains_incoming(pid)
    }
    fn incoming_len(&self) -> usize {
        self.0.lock().unwrap().incoming_len()
    }
}

#[test]
fn a_durable_store_lets_a_restarted_device_keep_its_messages() {
    for version in [V311, V5] {
        let store = Durable::default();
        let mut net = Net::default();
        let sub = net.add(Client::new(persistent("sub", version)));
        connected(&mut net, sub);
        subscribe(&mut net, sub, "dev/#", QoS::ExactlyOnce);
        let device = net.add(Client::with_store(
            persistent("device", version),
            Box::new(store.clone()),
        ));
        connected(&mut net, device);
        // One message in flight (the PUBLISH is lost with the power), then
        // one queued while offline; then the process ends.
        let now = net.now();
        net.client(device)
            .publish(
                Message::new(topic("dev/a"), "in flight").with_qos(QoS::ExactlyOnce),
                now,
            )
            .unwrap();
        net.cut(device);
        net.client(device)
            .publish(
                Message::new(topic("dev/b"), "queued").with_qos(QoS::AtLeastOnce),
                now,
            )
            .unwrap();
        assert_eq!(store.0.lock().unwrap().inflight_len(), 1);
        assert_eq!(store.0.lock().unwrap().queued_len(), 1);
        // A new process: a new client on the same store.
        let restarted = net.add(Client::with_store(
            persistent("device", version),
            Box::new(store.clone()),
        ));
        assert_eq!(net.client(restarted).inflight(), 1);
        assert!(connected(&mut net, restarted), "{version}");
        net.run();
        let mut got = payloads(&net.events(sub));
        got.sort();
        assert_eq!(got, ["in flight", "queued"], "{version}");
        assert_eq!(store.0.lock().unwrap().inflight_len(), 0);
        assert_eq!(store.0.lock().unwrap().queued_len(), 0);
    }
}

#[test]
fn the_will_is_published_when_the_link_dies_and_not_after_disconnect() {
    for version in [V311, V5] {
        let mut net = Net::default();
        let sub = net.add(Client::new(config("phone", version)));
        connected(&mut net, sub);
        subscribe(&mut net, sub, "presence/#", QoS::AtLeastOnce);
        let mut lc = config("lights", version);
        lc.will = Some(tern_codec::Will {
            topic: topic("presence/lights"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        });
        let lights = net.add(Client::new(lc));
        connected(&mut net, lights);
        // A polite DISCONNECT: no will.
        let now = net.now();
        net.client(lights).disconnect(now);
        net.run();
        assert!(payloads(&net.events(sub)).is_empty(), "{version}");
        assert_eq!(
            net.events(lights),
            [ClientEvent::Disconnected {
                reason: DisconnectReason::Local
            }]
        );
        // The power goes: the will.
        connected(&mut net, lights);
        net.cut(lights);
        net.run();
        assert_eq!(payloads(&net.events(sub)), ["gone"], "{version}");
    }
}

fn connack(present: bool, f: impl FnOnce(&mut tern_codec::ConnAckProperties)) -> Packet {
    let mut a = tern_codec::ConnAck::new(present);
    f(&mut a.properties);
    Packet::ConnAck(a)
}

#[test]
fn an_invalid_configuration_is_refused_before_anything_is_sent() {
    let mut cfg = config("c", V311);
    cfg.password = Some(Bytes::from_static(b"secret"));
    let mut c = Client::new(cfg);
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    c.connect(now);
    assert_eq!(c.poll_transmit(), None);
    assert_eq!(c.state(), State::Disconnected);
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Disconnected {
            reason: DisconnectReason::InvalidConfig(
                tern_client::ConfigError::PasswordWithoutUsername
            )
        })
    );
    let invalid =
        DisconnectReason::InvalidConfig(tern_client::ConfigError::PasswordWithoutUsername);
    assert!(
        invalid.is_permanent(),
        "reconnecting cannot fix a configuration"
    );
    assert!(DisconnectReason::Refused(tern_codec::ReasonCode::NotAuthorized).is_permanent());
    assert!(!DisconnectReason::Refused(tern_codec::ReasonCode::ServerBusy).is_permanent());
    assert!(!DisconnectReason::KeepAliveTimeout.is_permanent());
    let mut cfg = config("", V311);
    cfg.clean_start = false;
    assert_eq!(
        cfg.validate(),
        Err(tern_client::ConfigError::EmptyClientIdKeepsNoSession)
    );
}

#[test]
fn session_present_after_a_clean_start_is_a_protocol_error() {
    let (mut c, now) = raw(config("c", V5));
    c.handle_packet(connack(true, |_| {}), now);
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Disconnected {
            reason: DisconnectReason::ProtocolError(tern_codec::ReasonCode::ProtocolError)
        })
    );
}

#[test]
fn a_resumed_session_resends_within_the_new_receive_maximum() {
    let (mut c, now) = raw(persistent("c", V5));
    c.handle_packet(connack(false, |_| {}), now);
    let _ = c.poll_event();
    for i in 0..5 {
        c.publish(
            Message::new(topic("t"), i.to_string()).with_qos(QoS::AtLeastOnce),
            now,
        )
        .unwrap();
    }
    assert_eq!(sent(&mut c, V5).len(), 5);
    c.handle_closed(now);
    let _ = c.poll_event();
    c.connect(now);
    let _ = c.poll_transmit();
    c.handle_packet(
        connack(true, |p| p.receive_maximum = std::num::NonZeroU16::new(2)),
        now,
    );
    let resent = |c: &mut Client| -> Vec<u16> {
        sent(c, V5)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => {
                    assert!(p.dup);
                    p.qos.packet_id().unwrap().get()
                }
                other => panic!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(resent(&mut c), [1, 2]);
    c.handle_packet(
        Packet::PubAck(tern_codec::Ack::new(tern_codec::PacketId::new(1).unwrap())),
        now,
    );
    assert_eq!(resent(&mut c), [3]);
}

#[test]
fn outbound_publishes_carry_no_subscription_identifiers() {
    let (mut c, now) = raw(config("c", V5));
    c.handle_packet(connack(false, |_| {}), now);
    let _ = c.poll_event();
    let mut m = Message::new(topic("t"), "x");
    m.properties
        .subscription_identifiers
        .push(std::num::NonZeroU32::new(7).unwrap());
    c.publish(m, now).unwrap();
    let out = sent(&mut c, V5);
    assert!(
        matches!(&out[..], [Packet::Publish(p)] if p.properties.subscription_identifiers.is_empty())
    );
}

#[test]
fn a_transport_that_takes_nothing_does_not_grow_the_output() {
    let mut cfg = config("c", V5);
    cfg.max_queued = 100;
    let (mut c, now) = raw(cfg);
    c.handle_packet(connack(false, |_| {}), now);
    let _ = c.poll_event();
    let payload = Bytes::from(vec![0u8; 1000]);
    let mut accepted = 0;
    while c
        .publish(Message::new(topic("t"), payload.clone()), now)
        .is_ok()
    {
        accepted += 1;
        assert!(accepted < 10_000, "nothing bounds the output");
    }
    // About 64 KiB encoded, then the queue of 100 filled.
    assert!((150..=200).contains(&accepted), "{accepted}");
    // Taking the output lets the queue move on, in order.
    let first = c.poll_transmit().unwrap();
    assert!(first.len() >= 64 * 1024 && first.len() < 64 * 1024 + 2000);
    assert!(c.queued() < 100);
}

#[test]
fn answers_that_do_not_fit_the_request_are_protocol_errors() {
    let (mut c, now) = raw(config("c", V5));
    c.handle_packet(connack(false, |_| {}), now);
    let _ = c.poll_event();
    c.subscribe(
        vec![filter("a", QoS::AtMostOnce), filter("b", QoS::AtMostOnce)],
        Default::default(),
        now,
    )
    .unwrap();
    let pid = match &sent(&mut c, V5)[..] {
        [Packet::Subscribe(s)] => s.packet_id,
        other => panic!("{other:?}"),
    };
    c.handle_packet(
        Packet::SubAck(tern_codec::SubAck {
            packet_id: pid,
            reason_codes: vec![tern_codec::ReasonCode::Success],
            properties: Default::default(),
        }),
        now,
    );
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Disconnected {
            reason: DisconnectReason::ProtocolError(tern_codec::ReasonCode::ProtocolError)
        })
    );
    // AUTH when CONNECT named no method.
    let (mut c, now) = raw(config("c", V5));
    c.handle_packet(
        Packet::Auth(tern_codec::Auth {
            reason_code: tern_codec::ReasonCode::ContinueAuthentication,
            properties: Default::default(),
        }),
        now,
    );
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::Disconnected {
            reason: DisconnectReason::ProtocolError(_)
        })
    ));
}
