//! Client-side publish throughput and allocations: tern's `AsyncClient`
//! next to rumqttc's `AsyncClient`, in the same run, against the same
//! broker (tern's server in this process, one shard, on its own thread).
//!
//! Run with `cargo bench -p tern-benches --bench client`. Each client runs
//! on a current-thread tokio runtime on the main thread, so the broker's
//! threads are not in the allocation counts (`allocation-counter` counts
//! the current thread only).
//!
//! - rate: N messages of 64 B, QoS 0 or 1, to one topic nobody subscribes,
//!   with up to 100 publishes outstanding; timed from the first publish to
//!   the acknowledgement of the last (QoS 0: of a QoS 1 sentinel sent after
//!   them, so both clients have written everything).
//! - allocations: heap allocations on the client's thread per QoS 1
//!   publish, one at a time (publish, wait for PUBACK), steady state.
#![allow(missing_docs, clippy::disallowed_methods)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allocation_counter::measure;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tern_client::{ClientConfig, Message};
use tern_codec::{QoS, TopicName};
use tern_tokio::{AsyncClient, ClientOptions, Server, ServerConfig};
use tokio::sync::Notify;

const N: u64 = 200_000;
const WINDOW: usize = 100;
const ROUNDS: usize = 3;
const ALLOC_N: u64 = 2_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn start_broker() -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut config = ServerConfig {
                tcp: vec!["127.0.0.1:0".parse().expect("addr")],
                shards: 1,
                ..ServerConfig::default()
            };
            config.broker.receive_maximum = u16::MAX;
            config.broker.max_inflight = u16::MAX;
            let server = Server::bind(config).await.expect("bind");
            tx.send(server.local_addrs().expect("addr")[0].port())
                .expect("send");
            server.run(std::future::pending()).await.expect("run");
        });
    });
    rx.recv().expect("port")
}

fn payload() -> Bytes {
    Bytes::from(vec![b'x'; 64])
}

async fn tern_client(port: u16, id: &str) -> AsyncClient {
    let mut config = ClientConfig::new(id);
    config.max_inflight = WINDOW as u16;
    config.max_queued = 100_000;
    let (c, mut rx) = AsyncClient::start(ClientOptions::new(config, "127.0.0.1", port))
        .expect("a valid configuration");
    rx.first_connection().await.expect("connected");
    // Keep the stream alive (and drained) for the client's life.
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    c
}

async fn tern_rate(port: u16, qos: QoS) -> f64 {
    let c = tern_client(port, "tern-rate").await;
    let topic = TopicName::new("bench/client").expect("topic");
    let p = payload();
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    for _ in 0..N {
        if pending.len() >= WINDOW {
            let r: Result<_, tern_tokio::ClientError> = pending.next().await.expect("some");
            r.expect("published");
        }
        let m = Message::new(topic.clone(), p.clone()).with_qos(qos);
        pending.push(c.publish(m));
    }
    while let Some(r) = pending.next().await {
        r.expect("published");
    }
    if qos == QoS::AtMostOnce {
        let m = Message::new(topic.clone(), p.clone()).with_qos(QoS::AtLeastOnce);
        c.publish(m).await.expect("sentinel");
    }
    let rate = N as f64 / start.elapsed().as_secs_f64();
    c.disconnect().await;
    rate
}

/// rumqttc, acks counted off its event loop.
struct Rumqttc {
    client: rumqttc::AsyncClient,
    acked: Arc<AtomicU64>,
    notify: Arc<Notify>,
}

async fn rumqttc_client(port: u16, id: &str) -> Rumqttc {
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(60));
    opts.set_inflight(WINDOW as u16);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, WINDOW);
    let acked = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(Notify::new());
    let connected = Arc::new(Notify::new());
    let (a, n, c) = (acked.clone(), notify.clone(), connected.clone());
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    a.fetch_add(1, Ordering::Relaxed);
                    n.notify_one();
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => c.notify_one(),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    connected.notified().await;
    Rumqttc {
        client,
        acked,
        notify,
    }
}

async fn rumqttc_rate(port: u16, qos: QoS) -> f64 {
    let r = rumqttc_client(port, "rumqttc-rate").await;
    let q = match qos {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        _ => rumqttc::QoS::AtLeastOnce,
    };
    let topic = "bench/client".to_owned();
    let p = payload();
    let start = Instant::now();
    for _ in 0..N {
        // Its API takes the topic by value (a String per message).
        r.client
            .publish_bytes(topic.clone(), q, false, p.clone())
            .await
            .expect("queued");
    }
    let want = if qos == QoS::AtMostOnce {
        r.client
            .publish_bytes(topic.clone(), rumqttc::QoS::AtLeastOnce, false, p.clone())
            .await
            .expect("queued");
        1
    } else {
        N
    };
    while r.acked.load(Ordering::Relaxed) < want {
        r.notify.notified().await;
    }
    let rate = N as f64 / start.elapsed().as_secs_f64();
    let _ = r.client.disconnect().await;
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let port = start_broker();
    let mut rows = Vec::new();
    for (name, qos) in [("QoS 0", QoS::AtMostOnce), ("QoS 1", QoS::AtLeastOnce)] {
        let (mut t, mut r) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            t.push(runtime().block_on(tern_rate(port, qos)));
            r.push(runtime().block_on(rumqttc_rate(port, qos)));
        }
        rows.push((name, median(t), median(r)));
    }

    // Allocations per QoS 1 publish, one at a time, steady state.
    let rt = runtime();
    let topic = TopicName::new("bench/client").expect("topic");
    let p = payload();
    let tern_allocs = rt.block_on(async {
        let c = tern_client(port, "tern-alloc").await;
        for _ in 0..100 {
            let m = Message::new(topic.clone(), p.clone()).with_qos(QoS::AtLeastOnce);
            c.publish(m).await.expect("published");
        }
        c
    });
    let info = measure(|| {
        rt.block_on(async {
            for _ in 0..ALLOC_N {
                let m = Message::new(topic.clone(), p.clone()).with_qos(QoS::AtLeastOnce);
                tern_allocs.publish(m).await.expect("published");
            }
        })
    });
    let tern_per = (
        info.count_total as f64 / ALLOC_N as f64,
        info.bytes_total as f64 / ALLOC_N as f64,
    );
    let rt2 = runtime();
    let r = rt2.block_on(async {
        let r = rumqttc_client(port, "rumqttc-alloc").await;
        for i in 1..=100 {
            r.client
                .publish_bytes("bench/client", rumqttc::QoS::AtLeastOnce, false, p.clone())
                .await
                .expect("queued");
            while r.acked.load(Ordering::Relaxed) < i {
                r.notify.notified().await;
            }
        }
        r
    });
    let info = measure(|| {
        rt2.block_on(async {
            for i in 101..=100 + ALLOC_N {
                r.client
                    .publish_bytes("bench/client", rumqttc::QoS::AtLeastOnce, false, p.clone())
                    .await
                    .expect("queued");
                while r.acked.load(Ordering::Relaxed) < i {
                    r.notify.notified().await;
                }
            }
        })
    });
    let rumqttc_per = (
        info.count_total as f64 / ALLOC_N as f64,
        info.bytes_total as f64 / ALLOC_N as f64,
    );

    println!("| publish, 64 B, window {WINDOW} | tern AsyncClient | rumqttc AsyncClient | tern / rumqttc |");
    println!("|---|---|---|---|");
    for (name, t, r) in rows {
        println!(
            "| {name} | {:.0}k msg/s | {:.0}k msg/s | {:.2}x |",
            t / 1e3,
            r / 1e3,
            t / r
        );
    }
    println!(
        "| allocations per QoS 1 publish (client thread) | {:.2} ({:.0} B) | {:.2} ({:.0} B) | |",
        tern_per.0, tern_per.1, rumqttc_per.0, rumqttc_per.1
    );
    println!("(medians of {ROUNDS} rounds of {N} messages; broker: tern, in process, 1 shard)");
}
