//! Webhook deliveries per second to a local receiver: a broker and its
//! HTTP side in this process, one webhook (`bench/#`) to a receiver (axum,
//! in this process, answering 204), N QoS 1 messages published by an MQTT
//! client; timed from the first publish to the receiver's N-th request.
//!
//! ```sh
//! cargo run --release -p tern-http --example webhook_bench [N]
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use tern_client::ClientConfig;
use tern_codec::{Message, QoS, TopicName};
use tern_http::{Gateway, HttpConfig, WebhookDef};
use tern_tokio::{AsyncClient, ClientOptions, Server, ServerConfig};
use tokio::sync::Notify;

#[tokio::main]
#[allow(clippy::disallowed_methods)]
async fn main() -> std::io::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    // The receiver.
    let got = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (g, d) = (got.clone(), done.clone());
    let app = axum::Router::new().route(
        "/in",
        post(move || {
            let (g, d) = (g.clone(), d.clone());
            async move {
                if g.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    d.notify_one();
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    let rx = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let rx_addr = rx.local_addr()?;
    tokio::spawn(async move { axum::serve(rx, app).await });
    // The broker, its HTTP side with one webhook.
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let mut config = ServerConfig {
        tcp: vec![any],
        ..ServerConfig::default()
    };
    config.broker.max_queued_messages = n as usize + 1;
    let server = Server::bind(config).await?;
    let mqtt = server.local_addrs()?[0];
    let hook = WebhookDef {
        name: "bench".into(),
        filter: "bench/#".into(),
        url: format!("http://{rx_addr}/in"),
        method: "POST".into(),
        headers: Default::default(),
        body: "json".into(),
        template: None,
        qos: 1,
        timeout: None,
        secret: None,
        paused: false,
    };
    let http = HttpConfig {
        webhooks: vec![hook],
        ..HttpConfig::default()
    };
    let _gateway = Gateway::new(server.handle(), http)?;
    tokio::spawn(server.run(std::future::pending()));
    // The publisher.
    let (client, mut events) = AsyncClient::start(ClientOptions::new(
        ClientConfig::new("bench-pub"),
        "127.0.0.1",
        mqtt.port(),
    ))
    .expect("a valid configuration");
    events.first_connection().await.expect("connected");
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    // The webhook's subscription is in place once a first message arrives.
    let topic = TopicName::new("bench/x").expect("valid");
    while got.load(Ordering::Relaxed) == 0 {
        let _ = client
            .publish(Message::new(topic.clone(), "warm-up").with_qos(QoS::AtLeastOnce))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = got.load(Ordering::Relaxed);
    got.store(0, Ordering::Relaxed);
    let start = Instant::now();
    for i in 0..n {
        let m = Message::new(topic.clone(), format!("{i}")).with_qos(QoS::AtLeastOnce);
        client.try_publish(m).ok();
        if i % 1000 == 999 {
            // Keep the publisher's queue bounded.
            let _ = client
                .publish(Message::new(topic.clone(), "mark").with_qos(QoS::AtLeastOnce))
                .await;
        }
    }
    let marks = n / 1000;
    let total = n + marks;
    // Wait for the receiver to have them all (warm-up stragglers aside).
    loop {
        if got.load(Ordering::Relaxed) + before >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = start.elapsed();
    println!(
        "{} webhook deliveries in {:.2} s: {:.0}/s (one webhook, one request at a time, keep-alive)",
        total,
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    let _ = done;
    Ok(())
}
