//! The `broker_script` harness: arbitrary scripts of packets, raw bytes,
//! closes and clock steps from several clients against one broker core,
//! through tern-sim.
//!
//! Nothing may panic, and after every step tern-sim checks the broker's
//! invariants (in flight within the window, no packet id twice, queues,
//! subscriptions and retained messages within their limits, tables that
//! agree), and decodes every byte the broker sent (a malformed packet from
//! the broker is a crash).
//!
//! # Input format
//!
//! ```text
//! byte 0     configuration: bit 0 tight limits, bit 1 ask the embedding
//!            for every decision, bit 2 forward (sharding) on,
//!            bits 3-4 queue policy and QoS 0 queueing, bit 5 `$SYS` on,
//!            bit 6 durable (the disk checked against the broker)
//! byte 1..   operations, each an opcode byte and its arguments
//! ```

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use bytes::Bytes;
use tern_broker::policy::AskEmbedding;
use tern_broker::{AuthStep, Config, QueueFullPolicy};
use tern_codec::{
    Ack, Auth, AuthProperties, Connect, Disconnect, MqttString, Packet, PacketId, ProtocolVersion,
    Publish, QoS, QosPid, ReasonCode, RetainHandling, Subscribe, SubscribeFilter,
    SubscriptionOptions, TopicFilter, TopicName, Unsubscribe, Will,
};
use tern_sim::{ClientRef, Sim};

const TOPICS: [&str; 6] = ["a", "a/b", "a/b/c", "$SYS/x", "b", "a//b"];
const FILTERS: [&str; 9] = [
    "a",
    "a/+",
    "a/#",
    "#",
    "+/b",
    "$share/g/a/#",
    "$share/h/#",
    "$SYS/#",
    "b",
];
const IDS: [&str; 4] = ["c0", "c1", "c2", ""];

/// Reads the script's bytes.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn config(b: u8) -> Config {
    let mut c = Config::default();
    if b & 1 != 0 {
        c.max_inflight = 2;
        c.max_queued_messages = 3;
        c.max_queued_bytes = 64;
        c.receive_maximum = 2;
        c.max_subscriptions = 3;
        c.max_retained_messages = 2;
        c.max_retained_bytes = 40;
        c.topic_alias_maximum = 2;
        c.max_packet_size = 128;
        c.max_connections = 5;
        c.maximum_qos = QoS::AtLeastOnce;
    }
    c.forward = b & 4 != 0;
    c.queue_full = if b & 8 != 0 {
        QueueFullPolicy::DropOldest
    } else {
        QueueFullPolicy::DropNewest
    };
    c.queue_qos0_offline = b & 16 != 0;
    // `$SYS` every 10 virtual seconds makes long scripts slow; a few keep it.
    c.sys_interval = (b & 32 != 0).then(|| Duration::from_secs(60));
    // Durable: every change goes to tern-sim's disk, which must hold what
    // the broker holds after every step.
    c.durable = b & 64 != 0;
    // And a connected session holds at most two queued messages in memory:
    // the rest go to the disk and come back.
    c.queue_window = 2;
    c
}

fn pid(b: u8) -> PacketId {
    PacketId::new(u16::from(b % 4) + 1).expect("non-zero")
}

fn qos(b: u8) -> QoS {
    QoS::from_u8(b % 3).expect("0..=2")
}

fn packet(r: &mut Reader<'_>, v: ProtocolVersion) -> Option<Packet> {
    let kind = r.byte()?;
    let a = r.byte().unwrap_or(0);
    let b = r.byte().unwrap_or(0);
    Some(match kind % 12 {
        0 => {
            let mut c = Connect::new(v, MqttString::from_static(IDS[usize::from(a % 4)]));
            c.clean_start = a & 4 != 0;
            c.keep_alive = u16::from(b % 4) * 5;
            if v.is_v5() {
                c.properties.session_expiry_interval =
                    [None, Some(0), Some(30), Some(u32::MAX)][usize::from(b >> 2 & 3)];
                c.properties.receive_maximum = NonZeroU16::new(u16::from(b >> 4 & 3));
                c.properties.topic_alias_maximum = Some(u16::from(a >> 6));
                c.properties.maximum_packet_size = NonZeroU32::new(u32::from(b >> 6) * 40);
            }
            if a & 8 != 0 {
                let mut w = Will {
                    topic: TopicName::from_static(TOPICS[usize::from(a >> 4) % TOPICS.len()]),
                    payload: Bytes::from_static(b"will"),
                    qos: qos(b),
                    retain: b & 0x80 != 0,
                    properties: Default::default(),
                };
                if v.is_v5() {
                    w.properties.will_delay_interval = Some(u32::from(b % 3) * 10);
                }
                c.will = Some(w);
            }
            if a & 0x80 != 0 && v.is_v5() {
                c.properties.authentication_method = Some(MqttString::from_static("M"));
            }
            Packet::from(c)
        }
        1 | 2 => {
            let q = qos(a);
            let qp = match q {
                QoS::AtMostOnce => QosPid::AtMostOnce,
                QoS::AtLeastOnce => QosPid::AtLeastOnce(pid(b)),
                QoS::ExactlyOnce => QosPid::ExactlyOnce(pid(b)),
            };
            let topic = TopicName::from_static(TOPICS[usize::from(a >> 2) % TOPICS.len()]);
            let len = usize::from(b >> 2) * 3;
            let mut p = Publish::new(topic, qp, Bytes::from(vec![b'x'; len]));
            p.retain = a & 0x20 != 0;
            p.dup = a & 0x40 != 0 && q != QoS::AtMostOnce;
            if v.is_v5() && a & 0x80 != 0 {
                p.properties.topic_alias = NonZeroU16::new(u16::from(b & 3));
                if b & 0x40 != 0 && p.properties.topic_alias.is_some() {
                    p.topic = TopicName::empty();
                }
                p.properties.message_expiry_interval = Some(u32::from(b % 5));
            }
            Packet::Publish(p)
        }
        3 => {
            let mut options = SubscriptionOptions::new(qos(b));
            if v.is_v5() {
                options.no_local = b & 4 != 0;
                options.retain_as_published = b & 8 != 0;
                options.retain_handling = match b >> 4 & 3 {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendIfNew,
                    _ => RetainHandling::DoNotSend,
                };
            }
            let filter = TopicFilter::from_static(FILTERS[usize::from(a) % FILTERS.len()]);
            if filter.is_shared() {
                options.no_local = false;
            }
            let mut s = Subscribe {
                packet_id: pid(a),
                filters: vec![SubscribeFilter { filter, options }],
                properties: Default::default(),
            };
            if v.is_v5() {
                s.properties.subscription_identifier = NonZeroU32::new(u32::from(b >> 6));
            }
            Packet::Subscribe(s)
        }
        4 => Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(a),
            filters: vec![TopicFilter::from_static(
                FILTERS[usize::from(b) % FILTERS.len()],
            )],
            properties: Default::default(),
        }),
        5 => Packet::PubAck(Ack::new(pid(a))),
        6 => Packet::PubRec(Ack::new(pid(a))),
        7 => Packet::PubRel(Ack::new(pid(a))),
        8 => Packet::PubComp(Ack::new(pid(a))),
        9 => Packet::PingReq,
        10 => {
            let mut d = Disconnect::new(if a & 1 != 0 {
                ReasonCode::DisconnectWithWillMessage
            } else {
                ReasonCode::Success
            });
            if v.is_v5() && a & 2 != 0 {
                d.properties.session_expiry_interval = Some(u32::from(b));
            }
            Packet::Disconnect(d)
        }
        _ => Packet::Auth(Auth {
            reason_code: if a & 1 != 0 {
                ReasonCode::ReAuthenticate
            } else {
                ReasonCode::ContinueAuthentication
            },
            properties: AuthProperties {
                authentication_method: Some(MqttString::from_static("M")),
                ..Default::default()
            },
        }),
    })
}

/// Answers what a well-behaved client answers: PUBACK / PUBREC for QoS 1/2
/// PUBLISH, PUBCOMP for PUBREL, PUBREL for PUBREC.
fn respond(sim: &mut Sim, c: ClientRef) {
    for p in sim.take(c) {
        let reply = match p {
            Packet::Publish(p) => match p.qos {
                QosPid::AtMostOnce => None,
                QosPid::AtLeastOnce(id) => Some(Packet::PubAck(Ack::new(id))),
                QosPid::ExactlyOnce(id) => Some(Packet::PubRec(Ack::new(id))),
            },
            Packet::PubRel(a) => Some(Packet::PubComp(Ack::new(a.packet_id))),
            Packet::PubRec(a) => Some(Packet::PubRel(Ack::new(a.packet_id))),
            _ => None,
        };
        if let Some(r) = reply {
            send(sim, c, &r);
        }
    }
}

fn send(sim: &mut Sim, c: ClientRef, p: &Packet) {
    // Packets a version cannot carry (AUTH on 3.1.1) are skipped.
    if let Ok(bytes) = p.to_bytes(sim.version(c)) {
        sim.send_bytes(c, &bytes);
    }
}

/// Runs one script.
pub fn run_script(data: &[u8]) {
    let mut r = Reader(data);
    let Some(flags) = r.byte() else { return };
    // With forwarding, the instance shares the production Router (its
    // shared groups take their turns through it, and every step checks the
    // router's index too).
    let mut sim = if flags & 4 != 0 {
        Sim::sharded(1, config(flags)).remove(0)
    } else {
        Sim::new(config(flags))
    };
    if flags & 2 != 0 {
        sim.broker.set_authenticator(AskEmbedding);
        sim.broker.set_authorizer(AskEmbedding);
    }
    let mut clients: Vec<ClientRef> = Vec::new();
    let mut steps = 0;
    while let Some(op) = r.byte() {
        steps += 1;
        if steps > 2000 {
            break;
        }
        let pick = |r: &mut Reader<'_>, clients: &[ClientRef]| {
            let b = r.byte().unwrap_or(0);
            (!clients.is_empty()).then(|| clients[usize::from(b) % clients.len()])
        };
        match op % 8 {
            0 if clients.len() < 8 => {
                let v = [
                    ProtocolVersion::V3_1,
                    ProtocolVersion::V3_1_1,
                    ProtocolVersion::V5,
                ][usize::from(r.byte().unwrap_or(2) % 3)];
                if let Some(c) = sim.try_client(v) {
                    clients.push(c);
                }
            }
            1 | 2 => {
                let Some(c) = pick(&mut r, &clients) else {
                    continue;
                };
                if let Some(p) = packet(&mut r, sim.version(c)) {
                    send(&mut sim, c, &p);
                }
            }
            3 => {
                let Some(c) = pick(&mut r, &clients) else {
                    continue;
                };
                let n = usize::from(r.byte().unwrap_or(0) % 32);
                let raw = r.bytes(n).to_vec();
                sim.send_bytes(c, &raw);
            }
            4 => {
                if let Some(c) = pick(&mut r, &clients) {
                    sim.kill(c);
                }
            }
            5 => {
                let d = u64::from(r.byte().unwrap_or(0));
                sim.advance(Duration::from_millis(d * d * 10));
            }
            6 => {
                if let Some(c) = pick(&mut r, &clients) {
                    respond(&mut sim, c);
                }
            }
            _ => {
                let b = r.byte().unwrap_or(0);
                sim.set_chunk(if b & 0x80 != 0 {
                    Some(usize::from(b & 7) + 1)
                } else {
                    None
                });
                for req in sim.take_requests() {
                    // Some codes fit no packet they may end up in: the
                    // broker must adapt them, not panic.
                    let code = [
                        ReasonCode::NotAuthorized,
                        ReasonCode::Banned,
                        ReasonCode::ServerBusy,
                        ReasonCode::Success,
                        ReasonCode::GrantedQoS2,
                    ][usize::from(b >> 3) % 5];
                    let step = match b % 4 {
                        0 => AuthStep::Success(None),
                        1 => AuthStep::Fail(code),
                        2 => AuthStep::Success(Some(Bytes::from_static(b"ok"))),
                        _ => AuthStep::Continue(Bytes::from_static(b"c")),
                    };
                    sim.answer_auth(req.token, step);
                }
            }
        }
    }
    // Winding down: every timer runs out, every session ends or expires.
    sim.advance(Duration::from_secs(3600));
}

/// Hand-made scripts for the seed corpus.
pub fn seed_scripts() -> Vec<Vec<u8>> {
    vec![
        // Two 5.0 clients connect, one subscribes, the other publishes at
        // each QoS, the subscriber answers, time passes.
        vec![
            0, 0, 2, 0, 2, 1, 0, 0, 4, 0, 1, 1, 0, 4, 0, 1, 0, 3, 2, 0, 1, 1, 1, 4, 8, 1, 1, 1, 8,
            9, 6, 0, 5, 40, 4, 0, 5, 200,
        ],
        // Tight limits, 3.1.1 persistent sessions, a dropped link, queued
        // messages, reconnect.
        vec![
            1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 1, 0, 3, 2, 1, 4, 0, 1, 1, 1, 4, 8, 1, 1, 2, 8, 9, 1, 1,
            1, 12, 10, 0, 0, 1, 1, 0, 0, 6, 0, 5, 100,
        ],
        // Ask the embedding for everything.
        vec![2, 0, 2, 1, 0, 0, 4, 0, 7, 0, 1, 0, 3, 1, 0, 7, 1, 5, 255],
    ]
}
