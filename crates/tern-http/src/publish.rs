//! `POST /api/v1/publish/{topic...}`: the body is the payload; QoS,
//! retain and the MQTT 5 properties come from the query string or from
//! `Mqtt-*` headers (the query wins where both are given).
//!
//! | query | header | |
//! |---|---|---|
//! | `qos=0\|1\|2` | `Mqtt-Qos` | default 1 |
//! | `retain=true\|false` | `Mqtt-Retain` | default false; an empty body clears the retained value |
//! | `expiry=SECONDS` | `Mqtt-Message-Expiry` | Message Expiry Interval |
//! | `content_type=...` | `Mqtt-Content-Type`, else `Content-Type` | except curl's default `application/x-www-form-urlencoded` |
//! | `response_topic=...` | `Mqtt-Response-Topic` | |
//! | `correlation_data=...` | `Mqtt-Correlation-Data` | |
//! | `user_property=NAME=VALUE` | `Mqtt-User-Property: NAME=VALUE` | repeatable |
//! | `payload_format=utf8` | `Mqtt-Payload-Format: utf8` | the body must be UTF-8 |
//!
//! At QoS 1 and 2 the answer comes once the broker accepted the message
//! (its PUBACK, or PUBCOMP: with persistence, once it is on disk): 200 with
//! the reason code. At QoS 0 it is 202 once the message is on its way: the
//! broker says nothing of a QoS 0 message.

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::json;
use tern_client::PublishError;
use tern_codec::{Message, MqttString, QoS, ReasonCode, TopicName};
use tern_tokio::ClientError;

use crate::error::ApiError;
use crate::listen::Peer;
use crate::State;

/// The handler.
pub(crate) async fn publish(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    topic: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let user = state.authenticate(&headers, peer).await?;
    let Path(topic) = topic.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let body = body.map_err(|e| {
        ApiError::refused(
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ReasonCode::PacketTooLarge
            } else {
                ReasonCode::MalformedPacket
            },
            e.body_text(),
        )
    })?;
    let message = message(&topic, &query, &headers, body)?;
    let qos = message.qos;
    let client = state.pool.get(&state, &user, peer).await?;
    match client.publish(message).await {
        Ok(code) if qos == QoS::AtMostOnce => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"queued": true, "reason_code": code as u8})),
        )
            .into_response()),
        Ok(code) => Ok(Json(json!({
            "reason_code": code as u8,
            "reason": code.description(),
        }))
        .into_response()),
        Err(e) => Err(publish_error(e)),
    }
}

fn publish_error(e: ClientError) -> ApiError {
    match e {
        ClientError::Publish(PublishError::Rejected(code)) => {
            ApiError::refused(code, "the broker refused the message")
        }
        ClientError::Publish(PublishError::PacketTooLarge { size, max }) => ApiError::refused(
            ReasonCode::PacketTooLarge,
            format!("a PUBLISH of {size} bytes is over the broker's maximum of {max}"),
        ),
        ClientError::Publish(PublishError::QosNotSupported(q)) => ApiError::refused(
            ReasonCode::QoSNotSupported,
            format!("the broker takes QoS {} at most", q as u8),
        ),
        ClientError::Publish(PublishError::RetainNotSupported) => ApiError::refused(
            ReasonCode::RetainNotSupported,
            "the broker does not keep retained messages",
        ),
        ClientError::Publish(PublishError::QueueFull | PublishError::Dropped) => {
            ApiError::refused(ReasonCode::ServerBusy, "too many publishes waiting")
        }
        ClientError::Publish(PublishError::Invalid(why)) => ApiError::bad_request(why),
        other => ApiError::unavailable(format!("the broker did not take the message: {other}")),
    }
}

/// The message a request describes.
fn message(
    topic: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    payload: Bytes,
) -> Result<Message, ApiError> {
    let topic = TopicName::new(topic).map_err(|e| {
        ApiError::refused(
            ReasonCode::TopicNameInvalid,
            format!("{topic:?} is not a topic to publish to: {e}"),
        )
    })?;
    let mut m = Message::new(topic, payload).with_qos(QoS::AtLeastOnce);
    let mut user_properties = Vec::new();
    // Headers first, then the query over them.
    let from_headers = headers.iter().filter_map(|(k, v)| {
        let name = k.as_str().strip_prefix("mqtt-")?;
        Some((name.replace('-', "_"), v.to_str().ok()?.to_owned(), true))
    });
    let from_query = query.iter().map(|(k, v)| (k.clone(), v.clone(), false));
    let mut content_type_set = false;
    for (key, value, header) in from_headers.chain(from_query) {
        let key = match key.as_str() {
            "message_expiry" if header => "expiry",
            k => k,
        };
        let bad = |what: &str| ApiError::bad_request(format!("{key}={value:?}: {what}"));
        match key {
            "qos" => {
                m.qos = match value.as_str() {
                    "0" => QoS::AtMostOnce,
                    "1" => QoS::AtLeastOnce,
                    "2" => QoS::ExactlyOnce,
                    _ => return Err(bad("0, 1 or 2")),
                }
            }
            "retain" => m.retain = boolean(&value).ok_or_else(|| bad("true or false"))?,
            "expiry" => {
                m.properties.message_expiry_interval =
                    Some(value.parse().map_err(|_| bad("seconds, 0 to 4294967295"))?)
            }
            "content_type" => {
                m.properties.content_type = Some(mqtt_string(&value).ok_or_else(|| bad("text"))?);
                content_type_set = true;
            }
            "response_topic" => {
                m.properties.response_topic =
                    Some(TopicName::new(&value).map_err(|e| bad(&e.to_string()))?)
            }
            "correlation_data" => {
                m.properties.correlation_data = Some(Bytes::from(value.clone().into_bytes()))
            }
            "user_property" => {
                let (k, v) = value.split_once('=').ok_or_else(|| bad("NAME=VALUE"))?;
                let pair = mqtt_string(k).zip(mqtt_string(v));
                user_properties.push(pair.ok_or_else(|| bad("text"))?);
            }
            "payload_format" => match value.as_str() {
                "utf8" | "utf-8" => {
                    if std::str::from_utf8(&m.payload).is_err() {
                        return Err(ApiError::refused(
                            ReasonCode::PayloadFormatInvalid,
                            "the body is not UTF-8",
                        ));
                    }
                    m.properties.payload_format_indicator = Some(true);
                }
                "binary" => m.properties.payload_format_indicator = None,
                _ => return Err(bad("utf8 or binary")),
            },
            // Other Mqtt-* headers are someone else's business.
            _ if header => {}
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {key:?}"
                )))
            }
        }
    }
    if !content_type_set {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|ct| !ct.starts_with("application/x-www-form-urlencoded"));
        if let Some(ct) = ct {
            m.properties.content_type = mqtt_string(ct);
        }
    }
    m.properties.user_properties = user_properties;
    Ok(m)
}

fn boolean(s: &str) -> Option<bool> {
    match s {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn mqtt_string(s: &str) -> Option<MqttString> {
    MqttString::from_str(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn query_and_headers_make_the_message() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.append("mqtt-user-property", HeaderValue::from_static("room=hall"));
        h.insert("mqtt-qos", HeaderValue::from_static("2"));
        let m = message(
            "home/door",
            &q(&[
                ("qos", "0"),
                ("retain", "true"),
                ("expiry", "60"),
                ("user_property", "a=b=c"),
            ]),
            &h,
            Bytes::from_static(b"{}"),
        )
        .expect("valid");
        // The query wins over the header.
        assert_eq!(m.qos, QoS::AtMostOnce);
        assert!(m.retain);
        assert_eq!(m.properties.message_expiry_interval, Some(60));
        assert_eq!(
            m.properties.content_type.as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        let props: Vec<(&str, &str)> = m
            .properties
            .user_properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(props, [("room", "hall"), ("a", "b=c")]);
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let h = HeaderMap::new();
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
        let cases: &[Case<'_>] = &[
            ("a/+/b", &[], 400),
            ("a/#", &[], 400),
            ("", &[], 400),
            ("a", &[("qos", "3")], 400),
            ("a", &[("retain", "maybe")], 400),
            ("a", &[("expiry", "-1")], 400),
            ("a", &[("response_topic", "x/#")], 400),
            ("a", &[("user_property", "novalue")], 400),
            ("a", &[("colour", "red")], 400),
        ];
        for (topic, query, status) in cases {
            let e = message(topic, &q(query), &h, Bytes::new()).expect_err("refused");
            assert_eq!(e.status.as_u16(), *status, "{topic} {query:?}");
        }
        let e = message(
            "a",
            &q(&[("payload_format", "utf8")]),
            &h,
            Bytes::from_static(&[0xff]),
        )
        .expect_err("not UTF-8");
        assert_eq!(e.reason, Some(ReasonCode::PayloadFormatInvalid));
        // curl's default content type is not taken for the message's.
        let mut form = HeaderMap::new();
        form.insert(
            "content-type",
            axum::http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let m = message("a", &[], &form, Bytes::new()).expect("valid");
        assert_eq!(m.properties.content_type, None);
    }
}
