//! Errors as the API answers them: a status and a JSON body that says
//! why, with the MQTT reason code where the broker gave one.
//!
//! ```json
//! {"error": "not authorized to publish to this topic", "reason_code": 135, "reason": "Not authorized"}
//! ```

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tern_codec::ReasonCode;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The MQTT reason code behind it, if any.
    pub reason: Option<ReasonCode>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            reason: None,
        }
    }

    /// 400: the request is wrong (a bad topic, a bad query value).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: who is asking is not known (asks for HTTP Basic).
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 503: the broker cannot take it now.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// The answer to an MQTT refusal: the status its reason code maps to
    /// ([`status_of`]), the code named in the body.
    pub fn refused(code: ReasonCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: status_of(code),
            message: message.into(),
            reason: Some(code),
        }
    }
}

/// The HTTP status for an MQTT reason code (of a PUBACK, SUBACK or
/// CONNACK refusal).
pub fn status_of(code: ReasonCode) -> StatusCode {
    use ReasonCode as R;
    match code {
        c if (c as u8) < 0x80 => StatusCode::OK,
        R::BadUserNameOrPassword | R::BadAuthenticationMethod => StatusCode::UNAUTHORIZED,
        R::NotAuthorized | R::Banned => StatusCode::FORBIDDEN,
        R::TopicNameInvalid
        | R::TopicFilterInvalid
        | R::PayloadFormatInvalid
        | R::RetainNotSupported
        | R::QoSNotSupported
        | R::MalformedPacket
        | R::ProtocolError
        | R::SharedSubscriptionsNotSupported
        | R::SubscriptionIdentifiersNotSupported
        | R::WildcardSubscriptionsNotSupported => StatusCode::BAD_REQUEST,
        R::PacketTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        R::QuotaExceeded | R::MessageRateTooHigh | R::ConnectionRateExceeded => {
            StatusCode::TOO_MANY_REQUESTS
        }
        R::ServerBusy | R::ServerUnavailable | R::ServerShuttingDown => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: &self.message,
            reason_code: self.reason.map(|r| r as u8),
            reason: self.reason.map(ReasonCode::description),
        };
        let mut r = (self.status, Json(body)).into_response();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"tern\", charset=\"UTF-8\""),
                );
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_the_statuses_the_api_promises() {
        for (code, status) in [
            (ReasonCode::Success, 200),
            (ReasonCode::NoMatchingSubscribers, 200),
            (ReasonCode::TopicNameInvalid, 400),
            (ReasonCode::NotAuthorized, 403),
            (ReasonCode::BadUserNameOrPassword, 401),
            (ReasonCode::PacketTooLarge, 413),
            (ReasonCode::QuotaExceeded, 429),
            (ReasonCode::ServerBusy, 503),
            (ReasonCode::UnspecifiedError, 500),
        ] {
            assert_eq!(status_of(code).as_u16(), status, "{code}");
        }
    }
}
