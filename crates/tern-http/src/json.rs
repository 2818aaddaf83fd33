//! Messages as JSON: a UTF-8 payload as a string (`payload`), any other
//! as base64 (`payload_base64`); the MQTT 5 properties that were set
//! (correlation data likewise: `correlation_data` or
//! `correlation_data_base64`).
//!
//! ```json
//! {"topic": "home/doorbell/pressed", "payload": "1", "qos": 1, "retain": false,
//!  "content_type": "text/plain", "user_properties": [["room", "hall"]]}
//! ```

use base64::Engine as _;
use serde::Serialize;
use tern_codec::Message;

/// A message, as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct JsonMessage<'a> {
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    qos: u8,
    retain: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_expiry: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_data_base64: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    user_properties: Vec<(&'a str, &'a str)>,
}

impl<'a> JsonMessage<'a> {
    /// `m` as JSON; `retain` as the receiver saw the flag.
    pub(crate) fn new(m: &'a Message) -> JsonMessage<'a> {
        let text = std::str::from_utf8(&m.payload).ok();
        let p = &m.properties;
        let corr_text = p
            .correlation_data
            .as_ref()
            .and_then(|d| std::str::from_utf8(d).ok());
        JsonMessage {
            topic: m.topic.as_str(),
            payload: text,
            payload_base64: text
                .is_none()
                .then(|| base64::engine::general_purpose::STANDARD.encode(&m.payload)),
            qos: m.qos as u8,
            retain: m.retain,
            content_type: p.content_type.as_ref().map(|c| c.as_str()),
            message_expiry: p.message_expiry_interval,
            response_topic: p.response_topic.as_ref().map(|t| t.as_str()),
            correlation_data: corr_text,
            correlation_data_base64: p
                .correlation_data
                .as_ref()
                .filter(|_| corr_text.is_none())
                .map(|d| base64::engine::general_purpose::STANDARD.encode(d)),
            user_properties: p
                .user_properties
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        }
    }
}
