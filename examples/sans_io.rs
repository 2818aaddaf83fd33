//! The sans-IO client embedded in a plain blocking loop over
//! `std::net::TcpStream`: no tokio, no async, no threads. This is the
//! whole adapter contract of `tern-client`: feed it bytes and time, write
//! what it polls, and act on its events.
//!
//! Run `tern broker` (or Mosquitto) first, then
//! `cargo run --example sans_io` (or `-- host:port`; 127.0.0.1:1883 by
//! default).

// The adapter owns the clock: reading it is its job.
#![allow(clippy::disallowed_methods)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern::client::{Client, ClientConfig, ClientEvent, Message, State};
use tern::codec::{QoS, SubscribeFilter, SubscriptionOptions, TopicFilter, TopicName};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:1883".into());
    let mut stream = TcpStream::connect(&addr)?;
    stream.set_nodelay(true)?;

    let mut client = Client::new(ClientConfig::new("sans-io-example"));
    client.connect(Instant::now());
    let topic = TopicName::new("sans-io/hello")?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut received = false;
    let mut acked = false;

    loop {
        // 1. Act on its events (which may queue packets).
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::Connected { .. } => {
                    println!("connected to {addr}");
                    let now = Instant::now();
                    let f = SubscribeFilter {
                        filter: TopicFilter::new("sans-io/#")?,
                        options: SubscriptionOptions::new(QoS::AtLeastOnce),
                    };
                    client.subscribe(vec![f], Default::default(), now)?;
                    let m = Message::new(topic.clone(), "no tokio here").with_qos(QoS::AtLeastOnce);
                    client.publish(m, now)?;
                }
                ClientEvent::Published { result, .. } => {
                    println!("publish acknowledged: {result:?}");
                    acked = true;
                }
                ClientEvent::Message(d) => {
                    println!(
                        "{}: {}",
                        d.message.topic,
                        String::from_utf8_lossy(&d.message.payload)
                    );
                    received = true;
                }
                ClientEvent::Disconnected { reason } => {
                    return Err(format!("disconnected: {reason:?}").into())
                }
                other => println!("{other:?}"),
            }
        }
        // 2. Write whatever the client wants sent.
        while let Some(bytes) = client.poll_transmit() {
            stream.write_all(&bytes)?;
        }
        if received && acked {
            client.disconnect(Instant::now());
            while let Some(bytes) = client.poll_transmit() {
                stream.write_all(&bytes)?;
            }
            println!("done");
            return Ok(());
        }
        if client.state() == State::Disconnected {
            return Err("the client gave up on the connection".into());
        }
        // 3. Wait for bytes, but no longer than the client's next timer.
        let wait = client
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(60))
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(wait))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                client.handle_closed(Instant::now());
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                client.handle_read(&mut buf, Instant::now());
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
        // 4. Let time pass for it (keep alive, timeouts).
        client.handle_timeout(Instant::now());
    }
}
