//! The application message: what a client publishes and what a subscriber
//! gets, whatever the packet that carried it.

use bytes::Bytes;

use crate::{Publish, PublishProperties, QoS, TopicName};

/// An application message: topic, payload, QoS, RETAIN and the MQTT 5.0
/// properties. The client publishes and receives these, and the broker
/// routes them (inside its `Envelope`).
///
/// ```
/// use tern_codec::{Message, QoS, TopicName};
///
/// let m = Message::new(TopicName::new("home/doorbell/pressed")?, "1")
///     .with_qos(QoS::AtLeastOnce)
///     .with_retain(true);
/// assert_eq!(&m.payload[..], b"1");
/// # Ok::<(), tern_codec::TopicError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic, in full (topic aliases belong to a connection, not to the
    /// message).
    pub topic: TopicName,
    /// The payload.
    pub payload: Bytes,
    /// The QoS.
    pub qos: QoS,
    /// The RETAIN flag.
    pub retain: bool,
    /// MQTT 5.0 properties. Those that belong to one connection or one
    /// delivery (topic alias, subscription identifiers) are set by whoever
    /// sends the PUBLISH, not taken from here.
    pub properties: PublishProperties,
}

impl Message {
    /// A QoS 0 message, not retained, without properties.
    pub fn new(topic: TopicName, payload: impl Into<Bytes>) -> Message {
        Message {
            topic,
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: PublishProperties::default(),
        }
    }

    /// The same message with QoS `qos`.
    #[must_use]
    pub fn with_qos(mut self, qos: QoS) -> Message {
        self.qos = qos;
        self
    }

    /// The same message with the RETAIN flag set to `retain`.
    #[must_use]
    pub fn with_retain(mut self, retain: bool) -> Message {
        self.retain = retain;
        self
    }
}

impl From<Publish> for Message {
    /// The message a PUBLISH carries (its packet id and DUP flag belong to
    /// the packet).
    fn from(p: Publish) -> Message {
        Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos.qos(),
            retain: p.retain,
            properties: p.properties,
        }
    }
}
