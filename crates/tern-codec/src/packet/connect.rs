//! CONNECT (§3.1 of 5.0, §3.1 of 3.1.1, and the MQIsdp variant of 3.1).

use bytes::{BufMut, Bytes};
use tern_topic::TopicName;

use super::Body;
use crate::primitives::{
    binary, end, fail, length_prefixed, put_prefixed, string, topic_name, u16_, u8_, Res,
};
use crate::properties::check_binary;
use crate::{
    ConnectProperties, DecodeError, EncodeError, MqttString, ProtocolVersion, QoS, WillProperties,
};

/// CONNECT: the first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol version; CONNECT is always encoded in its own.
    pub protocol: ProtocolVersion,
    /// Clean Start (5.0) or Clean Session (3.1.1).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns keepalive off.
    pub keep_alive: u16,
    /// The client identifier; may be empty (the server assigns one).
    pub client_id: MqttString,
    /// The will message, if any.
    pub will: Option<Will>,
    /// The user name, if any.
    pub username: Option<MqttString>,
    /// The password, if any.
    pub password: Option<Bytes>,
    /// Properties (5.0 only).
    pub properties: ConnectProperties,
}

/// The will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic the will is published to.
    pub topic: TopicName,
    /// The will's payload.
    pub payload: Bytes,
    /// QoS of the will message.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
    /// Will properties (5.0 only).
    pub properties: WillProperties,
}

impl Connect {
    /// A CONNECT with a client id, clean start, keep alive of 60 s, and
    /// nothing else.
    pub fn new(protocol: ProtocolVersion, client_id: MqttString) -> Connect {
        Connect {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id,
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }
    }

    pub(crate) fn decode(body: &Bytes) -> Result<Connect, DecodeError> {
        let (i, c) = parse(body, body)?;
        end(i)?;
        Ok(c)
    }
}

const USERNAME: u8 = 0x80;
const PASSWORD: u8 = 0x40;
const WILL_RETAIN: u8 = 0x20;
const WILL_QOS: u8 = 0x18;
const WILL: u8 = 0x04;
const CLEAN: u8 = 0x02;
const RESERVED: u8 = 0x01;

/// Reads the protocol name and level, which decide the version.
fn protocol(i: &[u8]) -> Res<'_, ProtocolVersion> {
    let (i, name) = length_prefixed(i)?;
    let (i, level) = u8_(i)?;
    let version = match (name, level) {
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT", _) | (b"MQIsdp", _) => {
            return fail(DecodeError::UnsupportedProtocolVersion(level))
        }
        _ => return fail(DecodeError::InvalidProtocolName),
    };
    Ok((i, version))
}

fn parse<'a>(buf: &Bytes, i: &'a [u8]) -> Res<'a, Connect> {
    let (i, protocol) = protocol(i)?;
    let v5 = protocol.is_v5();
    let (i, flags) = u8_(i)?;
    if flags & RESERVED != 0 {
        return fail(DecodeError::ReservedConnectFlag);
    }
    let will_qos = (flags & WILL_QOS) >> 3;
    if flags & WILL == 0 && flags & (WILL_QOS | WILL_RETAIN) != 0 {
        return fail(DecodeError::WillFlagsWithoutWill);
    }
    let Some(will_qos) = QoS::from_u8(will_qos) else {
        return fail(DecodeError::InvalidQoS);
    };
    if !v5 && flags & PASSWORD != 0 && flags & USERNAME == 0 {
        return fail(DecodeError::PasswordWithoutUsername);
    }
    let (i, keep_alive) = u16_(i)?;
    let (i, properties) = if v5 {
        ConnectProperties::parse(buf, i)?
    } else {
        (i, ConnectProperties::default())
    };
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return fail(DecodeError::InvalidPropertyValue(0x16));
    }
    let (i, client_id) = string(buf, i)?;
    let (i, will) = if flags & WILL != 0 {
        let (i, properties) = if v5 {
            WillProperties::parse(buf, i)?
        } else {
            (i, WillProperties::default())
        };
        let (i, topic) = topic_name(buf, i)?;
        let (i, payload) = binary(buf, i)?;
        let will = Will {
            topic,
            payload,
            qos: will_qos,
            retain: flags & WILL_RETAIN != 0,
            properties,
        };
        (i, Some(will))
    } else {
        (i, None)
    };
    let (i, username) = if flags & USERNAME != 0 {
        let (i, u) = string(buf, i)?;
        (i, Some(u))
    } else {
        (i, None)
    };
    let (i, password) = if flags & PASSWORD != 0 {
        let (i, p) = binary(buf, i)?;
        (i, Some(p))
    } else {
        (i, None)
    };
    let connect = Connect {
        protocol,
        clean_start: flags & CLEAN != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    };
    Ok((i, connect))
}

impl Connect {
    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_start {
            flags |= CLEAN;
        }
        if let Some(will) = &self.will {
            flags |= WILL | (will.qos as u8) << 3;
            if will.retain {
                flags |= WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= USERNAME;
        }
        if self.password.is_some() {
            flags |= PASSWORD;
        }
        flags
    }
}

impl Body for Connect {
    fn check(&self, v: ProtocolVersion) -> Result<(), EncodeError> {
        if !v.is_v5() && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::PasswordWithoutUsername);
        }
        if let Some(p) = &self.password {
            check_binary(p)?;
        }
        if let Some(w) = &self.will {
            check_binary(&w.payload)?;
            if w.topic.is_empty() {
                return Err(EncodeError::EmptyTopicWithoutAlias);
            }
            if v.is_v5() {
                w.properties.check()?;
            }
        }
        if v.is_v5() {
            self.properties.check()?;
        }
        Ok(())
    }

    fn body_len(&self, v: ProtocolVersion) -> usize {
        let mut n = 2 + v.protocol_name().len() + 1 + 1 + 2 + 2 + self.client_id.len();
        if v.is_v5() {
            n += self.properties.wire_len();
        }
        if let Some(w) = &self.will {
            if v.is_v5() {
                n += w.properties.wire_len();
            }
            n += 2 + w.topic.len() + 2 + w.payload.len();
        }
        if let Some(u) = &self.username {
            n += 2 + u.len();
        }
        if let Some(p) = &self.password {
            n += 2 + p.len();
        }
        n
    }

    fn put_body<B: BufMut>(&self, v: ProtocolVersion, out: &mut B) {
        put_prefixed(out, v.protocol_name().as_bytes());
        out.put_u8(v.level());
        out.put_u8(self.flags());
        out.put_u16(self.keep_alive);
        if v.is_v5() {
            self.properties.put(out);
        }
        put_prefixed(out, self.client_id.as_bytes());
        if let Some(w) = &self.will {
            if v.is_v5() {
                w.properties.put(out);
            }
            put_prefixed(out, w.topic.as_bytes());
            put_prefixed(out, &w.payload);
        }
        if let Some(u) = &self.username {
            put_prefixed(out, u.as_bytes());
        }
        if let Some(p) = &self.password {
            put_prefixed(out, p);
        }
    }
}
