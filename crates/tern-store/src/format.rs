//! How the durable state is laid out as keys and values: one table per
//! kind of record, keys that sort a session's records together, values
//! that start with a format byte. Messages and wills are kept as MQTT 5.0
//! PUBLISH packets, encoded and decoded by tern-codec: every property
//! survives, and the format is one the project already tests to the
//! letter.
//!
//! Decoding never panics: a record that cannot be read is an error the
//! loader reports, with the table and key it came from.

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tern_broker::durable::{InflightStage, StoredDelivery, StoredRetained, StoredSubscription};
use tern_broker::Envelope;
use tern_codec::{
    Decoder, Message, MqttString, Packet, PacketId, ProtocolVersion, Publish, PublishProperties,
    QoS, QosPid, RetainHandling, SubscriptionOptions, TopicFilter, TopicName, Will, WillProperties,
};

/// The tables of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// A session's record, by client id.
    Sessions,
    /// Subscriptions, by client id and filter.
    Subscriptions,
    /// Messages for sessions, by client id and message id.
    Messages,
    /// Where a message in flight stands, by client id and message id.
    Inflight,
    /// Inbound QoS 2 packet ids awaiting PUBREL, by client id and id.
    Qos2,
    /// Retained messages, by topic.
    Retained,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 6] = [
        Table::Sessions,
        Table::Subscriptions,
        Table::Messages,
        Table::Inflight,
        Table::Qos2,
        Table::Retained,
    ];

    /// The table's name in the engine.
    pub fn name(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::Subscriptions => "subscriptions",
            Table::Messages => "messages",
            Table::Inflight => "inflight",
            Table::Qos2 => "qos2",
            Table::Retained => "retained",
        }
    }

    /// The tables that hold a session's records beside its own.
    pub const OF_SESSION: [Table; 4] = [
        Table::Subscriptions,
        Table::Messages,
        Table::Inflight,
        Table::Qos2,
    ];
}

/// The format byte every value starts with.
const FORMAT: u8 = 1;

/// What a record could not be read as.
pub type Bad = &'static str;

/// The prefix of every key of a session's records: its client id,
/// length-prefixed, so that one session's keys never prefix another's.
pub fn session_prefix(client_id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + client_id.len() + 8);
    k.put_u16(client_id.len() as u16);
    k.extend_from_slice(client_id);
    k
}

/// Splits a session record's key into client id and the rest.
pub fn split_key(key: &[u8]) -> Result<(MqttString, &[u8]), Bad> {
    if key.len() < 2 {
        return Err("key too short");
    }
    let n = usize::from(u16::from_be_bytes([key[0], key[1]]));
    let id = key.get(2..2 + n).ok_or("key too short")?;
    let id = std::str::from_utf8(id).map_err(|_| "client id not UTF-8")?;
    let id = MqttString::from_str(id).map_err(|_| "client id invalid")?;
    Ok((id, &key[2 + n..]))
}

/// The key of a message (or its in-flight state): client id and id.
pub fn message_key(client_id: &[u8], id: u64) -> Vec<u8> {
    let mut k = session_prefix(client_id);
    k.put_u64(id);
    k
}

/// The key of a subscription.
pub fn subscription_key(client_id: &[u8], filter: &TopicFilter) -> Vec<u8> {
    let mut k = session_prefix(client_id);
    k.extend_from_slice(filter.as_bytes());
    k
}

/// The key of an inbound QoS 2 packet id.
pub fn qos2_key(client_id: &[u8], packet_id: u16) -> Vec<u8> {
    let mut k = session_prefix(client_id);
    k.put_u16(packet_id);
    k
}

/// A session's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// User name of its last connection.
    pub username: Option<String>,
    /// Protocol version of its last connection.
    pub version: ProtocolVersion,
    /// Session Expiry Interval, seconds.
    pub expiry: u32,
    /// When it ends (wall clock), offline.
    pub expires_at: Option<u64>,
    /// When its will is due (wall clock), offline.
    pub will_at: Option<u64>,
    /// Its will.
    pub will: Option<Will>,
}

/// Encodes a session's record.
pub fn session(r: &SessionRecord) -> Vec<u8> {
    let mut v = vec![FORMAT];
    v.put_u8(r.version.level());
    v.put_u32(r.expiry);
    put_opt_u64(&mut v, r.expires_at);
    put_opt_u64(&mut v, r.will_at);
    match &r.username {
        Some(u) => {
            v.put_u8(1);
            put_bytes(&mut v, u.as_bytes());
        }
        None => v.put_u8(0),
    }
    match &r.will {
        Some(w) => {
            v.put_u8(1);
            v.put_u32(w.properties.will_delay_interval.unwrap_or(0));
            v.put_u8(u8::from(w.properties.will_delay_interval.is_some()));
            let m = Message {
                topic: w.topic.clone(),
                payload: w.payload.clone(),
                qos: w.qos,
                retain: w.retain,
                properties: PublishProperties {
                    payload_format_indicator: w.properties.payload_format_indicator,
                    message_expiry_interval: w.properties.message_expiry_interval,
                    content_type: w.properties.content_type.clone(),
                    response_topic: w.properties.response_topic.clone(),
                    correlation_data: w.properties.correlation_data.clone(),
                    user_properties: w.properties.user_properties.clone(),
                    ..PublishProperties::default()
                },
            };
            put_message(&mut v, &m);
        }
        None => v.put_u8(0),
    }
    v
}

/// Decodes a session's record.
pub fn session_of(mut b: &[u8]) -> Result<SessionRecord, Bad> {
    format(&mut b)?;
    let version = match u8_of(&mut b)? {
        3 => ProtocolVersion::V3_1,
        4 => ProtocolVersion::V3_1_1,
        5 => ProtocolVersion::V5,
        _ => return Err("unknown protocol version"),
    };
    let expiry = u32_of(&mut b)?;
    let expires_at = opt_u64_of(&mut b)?;
    let will_at = opt_u64_of(&mut b)?;
    let username = match u8_of(&mut b)? {
        0 => None,
        _ => Some(
            std::str::from_utf8(bytes_of(&mut b)?)
                .map_err(|_| "user name not UTF-8")?
                .to_owned(),
        ),
    };
    let will = match u8_of(&mut b)? {
        0 => None,
        _ => {
            let delay = u32_of(&mut b)?;
            let has_delay = u8_of(&mut b)? != 0;
            let m = message_of(&mut b)?;
            let p = m.properties;
            Some(Will {
                topic: m.topic,
                payload: m.payload,
                qos: m.qos,
                retain: m.retain,
                properties: WillProperties {
                    will_delay_interval: has_delay.then_some(delay),
                    payload_format_indicator: p.payload_format_indicator,
                    message_expiry_interval: p.message_expiry_interval,
                    content_type: p.content_type,
                    response_topic: p.response_topic,
                    correlation_data: p.correlation_data,
                    user_properties: p.user_properties,
                },
            })
        }
    };
    end(b)?;
    Ok(SessionRecord {
        username,
        version,
        expiry,
        expires_at,
        will_at,
        will,
    })
}

/// Encodes a subscription's options and identifier.
pub fn subscription(s: &StoredSubscription) -> Vec<u8> {
    let o = s.options;
    let mut v = vec![FORMAT];
    v.put_u8(
        o.qos as u8
            | u8::from(o.no_local) << 2
            | u8::from(o.retain_as_published) << 3
            | (o.retain_handling as u8) << 4,
    );
    v.put_u32(s.id.map_or(0, NonZeroU32::get));
    v
}

/// Decodes a subscription, its filter from its key.
pub fn subscription_of(filter: &[u8], mut b: &[u8]) -> Result<StoredSubscription, Bad> {
    format(&mut b)?;
    let o = u8_of(&mut b)?;
    let id = NonZeroU32::new(u32_of(&mut b)?);
    end(b)?;
    let filter = std::str::from_utf8(filter).map_err(|_| "filter not UTF-8")?;
    let filter = TopicFilter::new(filter).map_err(|_| "filter invalid")?;
    let retain_handling = match (o >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err("retain handling invalid"),
    };
    Ok(StoredSubscription {
        filter,
        options: SubscriptionOptions {
            qos: QoS::from_u8(o & 0b11).ok_or("QoS invalid")?,
            no_local: o & 0b100 != 0,
            retain_as_published: o & 0b1000 != 0,
            retain_handling,
        },
        id,
    })
}

/// Encodes a message for a session (its id is in the key).
pub fn delivery(d: &StoredDelivery) -> Vec<u8> {
    delivery_sent(d, None)
}

/// Encodes a message for a session and, when it was sent in the batch that
/// queued it, where it stands in flight (a row of [`Table::Inflight`], if
/// there is one, says more recently).
pub fn delivery_sent(d: &StoredDelivery, sent: Option<(u16, InflightStage)>) -> Vec<u8> {
    let mut v = vec![FORMAT];
    // Right after the format byte, so that a loader can tell a message in
    // flight from a queued one without decoding it.
    match sent {
        Some((pid, stage)) => {
            v.put_u8(stage_byte(stage));
            v.put_u16(pid);
        }
        None => v.put_u8(0),
    }
    v.put_u8(d.qos as u8);
    v.put_u8(u8::from(d.retain));
    put_opt_u64(&mut v, d.expires_at);
    v.put_u8(d.subscription_ids.len().min(255) as u8);
    for id in d.subscription_ids.iter().take(255) {
        v.put_u32(id.get());
    }
    put_message(&mut v, &d.message.message);
    v
}

/// Whether an encoded message says it was sent (without decoding it).
pub fn delivery_is_sent(v: &[u8]) -> bool {
    v.get(1).is_some_and(|&b| b != 0)
}

/// A message for a session and where it stood in flight, if it was sent.
pub type Delivery = (StoredDelivery, Option<(u16, InflightStage)>);

/// Decodes a message for a session.
pub fn delivery_of(id: u64, mut b: &[u8]) -> Result<Delivery, Bad> {
    format(&mut b)?;
    let sent = match u8_of(&mut b)? {
        0 => None,
        stage => {
            let stage = stage_of(stage)?;
            let pid = u16_of(&mut b)?;
            if pid == 0 {
                return Err("packet id 0");
            }
            Some((pid, stage))
        }
    };
    let qos = QoS::from_u8(u8_of(&mut b)?).ok_or("QoS invalid")?;
    let retain = u8_of(&mut b)? != 0;
    let expires_at = opt_u64_of(&mut b)?;
    let n = u8_of(&mut b)?;
    let mut subscription_ids = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        subscription_ids.push(NonZeroU32::new(u32_of(&mut b)?).ok_or("subscription id 0")?);
    }
    let message = message_of(&mut b)?;
    end(b)?;
    let d = StoredDelivery {
        id,
        message: Arc::new(Envelope::from(message)),
        expires_at,
        qos,
        retain,
        subscription_ids,
    };
    Ok((d, sent))
}

fn stage_byte(stage: InflightStage) -> u8 {
    match stage {
        InflightStage::AwaitPubAck => 1,
        InflightStage::AwaitPubRec => 2,
        InflightStage::AwaitPubComp => 3,
    }
}

fn stage_of(b: u8) -> Result<InflightStage, Bad> {
    match b {
        1 => Ok(InflightStage::AwaitPubAck),
        2 => Ok(InflightStage::AwaitPubRec),
        3 => Ok(InflightStage::AwaitPubComp),
        _ => Err("in-flight stage invalid"),
    }
}

/// Encodes where a message in flight stands.
pub fn inflight(packet_id: u16, stage: InflightStage) -> Vec<u8> {
    let mut v = vec![FORMAT];
    v.put_u16(packet_id);
    v.put_u8(stage_byte(stage));
    v
}

/// Decodes where a message in flight stands.
pub fn inflight_of(mut b: &[u8]) -> Result<(u16, InflightStage), Bad> {
    format(&mut b)?;
    let pid = u16_of(&mut b)?;
    let stage = stage_of(u8_of(&mut b)?)?;
    end(b)?;
    if pid == 0 {
        return Err("packet id 0");
    }
    Ok((pid, stage))
}

/// Encodes a retained message (its topic is the key).
pub fn retained(r: &StoredRetained) -> Vec<u8> {
    let mut v = vec![FORMAT];
    put_opt_u64(&mut v, r.expires_at);
    put_message(&mut v, &r.message.message);
    v
}

/// Decodes a retained message.
pub fn retained_of(mut b: &[u8]) -> Result<StoredRetained, Bad> {
    format(&mut b)?;
    let expires_at = opt_u64_of(&mut b)?;
    let message = message_of(&mut b)?;
    end(b)?;
    Ok(StoredRetained {
        message: Arc::new(Envelope::from(message)),
        expires_at,
    })
}

/// A message as a length-prefixed MQTT 5.0 PUBLISH (QoS 1/2 ones with
/// packet id 1: the id is the session's business, not the message's).
pub(crate) fn put_message(v: &mut Vec<u8>, m: &Message) {
    let pid = PacketId::new(1).expect("non-zero");
    let qos = match m.qos {
        QoS::AtMostOnce => QosPid::AtMostOnce,
        QoS::AtLeastOnce => QosPid::AtLeastOnce(pid),
        QoS::ExactlyOnce => QosPid::ExactlyOnce(pid),
    };
    let p = Publish {
        dup: false,
        qos,
        retain: m.retain,
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        properties: m.properties.clone(),
    };
    let len = p.encoded_len(ProtocolVersion::V5);
    v.put_u32(len as u32);
    let mut buf = BytesMut::with_capacity(len);
    p.encode(ProtocolVersion::V5, &mut buf)
        .expect("a stored message encodes");
    v.extend_from_slice(&buf);
}

pub(crate) fn message_of(b: &mut &[u8]) -> Result<Message, Bad> {
    let n = u32_of(b)? as usize;
    if b.len() < n {
        return Err("message truncated");
    }
    let mut packet = BytesMut::from(&b[..n]);
    b.advance(n);
    let mut decoder = Decoder::client(ProtocolVersion::V5);
    match decoder.decode(&mut packet) {
        Ok(Some(Packet::Publish(p))) if packet.is_empty() => Ok(Message::from(p)),
        _ => Err("message is no PUBLISH"),
    }
}

fn put_opt_u64(v: &mut Vec<u8>, x: Option<u64>) {
    match x {
        Some(x) => {
            v.put_u8(1);
            v.put_u64(x);
        }
        None => v.put_u8(0),
    }
}

fn put_bytes(v: &mut Vec<u8>, b: &[u8]) {
    v.put_u16(b.len().min(usize::from(u16::MAX)) as u16);
    v.extend_from_slice(&b[..b.len().min(usize::from(u16::MAX))]);
}

fn format(b: &mut &[u8]) -> Result<(), Bad> {
    match u8_of(b)? {
        FORMAT => Ok(()),
        _ => Err("unknown format"),
    }
}

fn end(b: &[u8]) -> Result<(), Bad> {
    if b.is_empty() {
        Ok(())
    } else {
        Err("trailing bytes")
    }
}

fn u8_of(b: &mut &[u8]) -> Result<u8, Bad> {
    if b.is_empty() {
        return Err("truncated");
    }
    Ok(b.get_u8())
}

fn u16_of(b: &mut &[u8]) -> Result<u16, Bad> {
    if b.len() < 2 {
        return Err("truncated");
    }
    Ok(b.get_u16())
}

fn u32_of(b: &mut &[u8]) -> Result<u32, Bad> {
    if b.len() < 4 {
        return Err("truncated");
    }
    Ok(b.get_u32())
}

fn opt_u64_of(b: &mut &[u8]) -> Result<Option<u64>, Bad> {
    match u8_of(b)? {
        0 => Ok(None),
        _ if b.len() >= 8 => Ok(Some(b.get_u64())),
        _ => Err("truncated"),
    }
}

fn bytes_of<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], Bad> {
    let n = usize::from(u16_of(b)?);
    if b.len() < n {
        return Err("truncated");
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

/// A topic name from a key.
pub fn topic_of(key: &[u8]) -> Result<TopicName, Bad> {
    TopicName::from_bytes(Bytes::copy_from_slice(key)).map_err(|_| "topic invalid")
}
