//! Server-Sent Events on the wire (the event stream format of the WHATWG
//! HTML standard, section 9.2): each event is written to bytes once, where
//! it is made (a hub's message once for all its streams), and a stream's
//! response body sends every event that is ready in one chunk, so a stream
//! that falls behind catches up with one write, not one per event. A
//! comment line every 15 s keeps proxies from closing a quiet stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::{Interval, MissedTickBehavior};

/// How often a quiet stream gets a comment line.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// At most this many bytes of ready events go out as one chunk.
const MAX_CHUNK: usize = 64 * 1024;

/// An event: its type, its id if it has one, and its data, which may span
/// lines (each becomes a `data:` line, as the format wants).
pub(crate) fn frame(event: &str, id: Option<u64>, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(event.len() + data.len() + 32);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.to_string().as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_u8(b'\n');
    // JSON has no line breaks, so this is one line; anything else is
    // split where the format would break it (LF, CR LF, CR).
    for line in data.split('\n') {
        for part in line.strip_suffix('\r').unwrap_or(line).split('\r') {
            out.put_slice(b"data: ");
            out.put_slice(part.as_bytes());
            out.put_u8(b'\n');
        }
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// The response for a stream of events (each made by [`frame`]).
pub(crate) fn response(events: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let body = Batched {
        events: Box::pin(events),
        keep_alive,
        done: false,
    };
    (
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// The body: what is ready, as one chunk; a comment when the interval
/// ticks (its first tick is at once: the stream's first bytes go out as
/// soon as the response starts).
struct Batched {
    events: Pin<Box<dyn Stream<Item = Bytes> + Send>>,
    keep_alive: Interval,
    done: bool,
}

impl Stream for Batched {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut first: Option<Bytes> = None;
        let mut more: Option<BytesMut> = None;
        while !self.done {
            match self.events.as_mut().poll_next(cx) {
                Poll::Ready(Some(b)) => match (&mut first, &mut more) {
                    (None, None) => first = Some(b),
                    (Some(f), None) => {
                        let mut m = BytesMut::with_capacity((f.len() + b.len()) * 4);
                        m.put_slice(f);
                        m.put_slice(&b);
                        first = None;
                        more = Some(m);
                    }
                    (_, Some(m)) => m.put_slice(&b),
                },
                Poll::Ready(None) => self.done = true,
                Poll::Pending => break,
            }
            let len = first.as_ref().map_or(0, Bytes::len) + more.as_ref().map_or(0, BytesMut::len);
            if len >= MAX_CHUNK {
                break;
            }
        }
        if let Some(chunk) = more.map(BytesMut::freeze).or(first) {
            return Poll::Ready(Some(Ok(chunk)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        if self.keep_alive.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(Bytes::from_static(b":\n\n"))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_its_fields_and_a_blank_line() {
        assert_eq!(
            &frame("message", Some(7), "{\"a\":1}")[..],
            b"id: 7\nevent: message\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(&frame("end", None, "x")[..], b"event: end\ndata: x\n\n");
    }

    #[test]
    fn data_of_several_lines_is_several_data_lines() {
        assert_eq!(
            &frame("m", None, "a\nb\r\nc\rd")[..],
            b"event: m\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[tokio::test]
    async fn ready_events_go_out_as_one_chunk() {
        use futures_util::StreamExt;
        let events = futures_util::stream::iter([frame("m", None, "1"), frame("m", None, "2")]);
        let mut body = Batched {
            events: Box::pin(events),
            keep_alive: tokio::time::interval(KEEP_ALIVE),
            done: false,
        };
        let chunk = body.next().await.expect("a chunk").expect("infallible");
        assert_eq!(&chunk[..], b"event: m\ndata: 1\n\nevent: m\ndata: 2\n\n");
        assert!(body.next().await.is_none());
    }
}
