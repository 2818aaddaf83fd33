//! Subscribe streams under load: S Server-Sent Events subscribers on one
//! topic, a publisher at R messages/s (QoS 0), for T seconds; the delay
//! from publish to each subscriber's event, as percentiles. Everything in
//! this process (broker, HTTP side, publisher, readers), on its cores.
//!
//! ```sh
//! cargo run --release -p tern-http --example sse_bench [S] [R] [T] [live|history]
//! ```
//!
//! `live`: streams served live (QoS 0 streams share one subscription).
//! `history`: the topic is recorded and the streams are served from the
//! recorder. A fifth argument `apart` runs the readers in a process of
//! their own (the delay is then measured on the wall clock).
//!
//! `mqtt [HOST:PORT]`: the baseline, the same fan-out over MQTT: the
//! readers are MQTT 3.1.1 subscribers (QoS 0) of this process's broker, or
//! of the broker at HOST:PORT (Mosquitto, say), which the publisher then
//! publishes to.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tern_client::ClientConfig;
use tern_codec::{Message, TopicFilter, TopicName};
use tern_http::{Gateway, HistoryConfig, HttpConfig};
use tern_store::history::Rule;
use tern_tokio::{AsyncClient, ClientOptions, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
#[allow(clippy::disallowed_methods)]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let subs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rate: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let secs: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    let history = args.get(4).is_some_and(|m| m == "history");
    if args.get(1).is_some_and(|a| a == "readers") {
        // The readers' process: readers ADDR COUNT SECONDS.
        let addr: SocketAddr = args[2].parse().expect("an address");
        let n: usize = args[3].parse().expect("a count");
        let secs: u64 = args[4].parse().expect("seconds");
        let hist = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
        ));
        let mut ready = Vec::new();
        for _ in 0..n {
            let (tx, rx) = tokio::sync::oneshot::channel();
            ready.push(rx);
            tokio::spawn(reader(addr, hist.clone(), tx));
        }
        for r in ready {
            let _ = r.await;
        }
        println!("ready");
        tokio::time::sleep(Duration::from_secs(secs + 2)).await;
        report(&hist.lock().expect("histogram"), "apart");
        return Ok(());
    }
    let apart = args.get(5).is_some_and(|m| m == "apart");
    let mqtt_mode = args.get(4).is_some_and(|m| m == "mqtt");

    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let mut config = ServerConfig {
        tcp: vec![any],
        ..ServerConfig::default()
    };
    config.broker.max_connections = subs + 100;
    let server = Server::bind(config).await?;
    let mqtt = server.local_addrs()?[0];
    let dir = std::env::temp_dir().join(format!("tern-sse-bench-{}", std::process::id()));
    let mut http = HttpConfig {
        max_streams: subs + 10,
        ..HttpConfig::default()
    };
    if history {
        http.history = Some(HistoryConfig {
            path: dir.join("history.redb"),
            rules: vec![Rule {
                filter: TopicFilter::new("bench/#").expect("valid"),
                keep: Duration::from_secs(3600),
                value: None,
            }],
        });
    }
    let gateway = Gateway::new(server.handle(), http)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_addr = listener.local_addr()?;
    tokio::spawn(gateway.serve(listener, std::future::pending()));
    tokio::spawn(server.run(std::future::pending()));

    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
    ));
    let mut child = None;
    // The broker the publisher publishes to (and MQTT readers read).
    let target: SocketAddr = match args.get(5) {
        Some(a) if mqtt_mode => a.parse().expect("HOST:PORT"),
        _ => mqtt,
    };
    if mqtt_mode {
        let mut ready = Vec::new();
        for _ in 0..subs {
            let (tx, rx) = tokio::sync::oneshot::channel();
            ready.push(rx);
            tokio::spawn(mqtt_reader(target, hist.clone(), tx));
        }
        for r in ready {
            let _ = r.await;
        }
    } else if apart {
        let mut c = std::process::Command::new(std::env::current_exe()?)
            .args([
                "readers",
                &http_addr.to_string(),
                &subs.to_string(),
                &secs.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let out = c.stdout.take().expect("piped");
        // Its first line says its readers are in place.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let rest = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(out).lines();
            let _ = lines.next();
            let _ = tx.send(());
            lines.map_while(Result::ok).collect::<Vec<_>>().join("\n")
        });
        let _ = rx.await;
        child = Some((c, rest));
    } else {
        let mut ready = Vec::new();
        for _ in 0..subs {
            let (tx, rx) = tokio::sync::oneshot::channel();
            ready.push(rx);
            tokio::spawn(reader(http_addr, hist.clone(), tx));
        }
        for r in ready {
            let _ = r.await;
        }
    }
    // Each stream's response began: its subscription is in place.
    let (client, mut events) = AsyncClient::start(ClientOptions::new(
        ClientConfig::new("sse-bench-pub"),
        target.ip().to_string(),
        target.port(),
    ))
    .expect("a valid configuration");
    events.first_connection().await.expect("connected");
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let topic = TopicName::new("bench/sse").expect("valid");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let total = rate * secs;
    for _ in 0..total {
        tick.tick().await;
        let t = micros();
        let _ = client.try_publish(Message::new(topic.clone(), t.to_string()));
    }
    if let Some((mut c, rest)) = child {
        let text = tokio::task::spawn_blocking(move || rest.join().unwrap_or_default())
            .await
            .unwrap_or_default();
        let _ = c.wait();
        println!(
            "{subs} streams ({}, readers apart), {rate} msg/s for {secs} s: {text}",
            if history { "history" } else { "live" }
        );
    } else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        print!(
            "{subs} {} ({}), {rate} msg/s for {secs} s: ",
            if mqtt_mode {
                "MQTT subscribers"
            } else {
                "streams"
            },
            if mqtt_mode {
                format!("broker {target}")
            } else if history {
                "history".into()
            } else {
                "live".into()
            }
        );
        report(&hist.lock().expect("histogram"), "");
    }
    let _ = total;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The wall clock in microseconds (the same in both processes).
#[allow(clippy::disallowed_methods)]
fn micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn report(h: &Histogram<u64>, _how: &str) {
    println!(
        "{} events; delay p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    );
}

/// One stream: reads events, records each one's delay.
async fn reader(
    addr: SocketAddr,
    hist: Arc<Mutex<Histogram<u64>>>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let req = "GET /api/v1/subscribe?filter=bench/%23&retained=false HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(req.as_bytes()).await.expect("written");
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut ready = Some(ready);
    let mut local = Vec::new();
    let needle = b"\"payload\":\"";
    let finder = memchr::memmem::Finder::new(needle);
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(r) = ready.take() {
            if !buf[..n].starts_with(b"HTTP/1.1 200") {
                let head = String::from_utf8_lossy(&buf[..n.min(300)]).into_owned();
                eprintln!("stream refused: {head}");
            }
            let _ = r.send(());
        }
        let now = micros();
        pending.extend_from_slice(&buf[..n]);
        let mut from = 0;
        while let Some(i) = finder.find(&pending[from..]) {
            let at = from + i + needle.len();
            let len = pending[at..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(pending.len() - at);
            if at + len >= pending.len() {
                break;
            }
            let sent = pending[at..at + len]
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if len > 0 {
                local.push(now.saturating_sub(sent).max(1));
            }
            from = at + len;
        }
        pending.drain(..from);
        if !local.is_empty() {
            let mut h = hist.lock().expect("histogram");
            for v in local.drain(..) {
                let _ = h.record(v);
            }
        }
    }
}

/// One MQTT 3.1.1 subscriber (QoS 0, clean session) of `bench/#`, on a raw
/// socket: each PUBLISH's payload is the time it was sent.
async fn mqtt_reader(
    addr: SocketAddr,
    hist: Arc<Mutex<Histogram<u64>>>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let _ = s.set_nodelay(true);
    // CONNECT (3.1.1, clean session, keep alive 0, an empty client id) and
    // SUBSCRIBE bench/# at QoS 0.
    let mut hello = vec![0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 0];
    hello.extend_from_slice(&[0x82, 12, 0, 1, 0, 7]);
    hello.extend_from_slice(b"bench/#");
    hello.push(0);
    s.write_all(&hello).await.expect("written");
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut ready = Some(ready);
    let mut local = Vec::new();
    let finder = memchr::memmem::Finder::new(b"bench/sse");
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = micros();
        pending.extend_from_slice(&buf[..n]);
        // CONNACK (4 bytes) and SUBACK (5 bytes) come first.
        if ready.is_some() {
            if pending.len() < 9 {
                continue;
            }
            pending.drain(..9);
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
        }
        // PUBLISH: 0x30, a one-byte remaining length (small payloads), the
        // topic (two-byte length) and the payload.
        let mut at = 0;
        while pending.len() >= at + 2 && pending.len() >= at + 2 + usize::from(pending[at + 1]) {
            let len = usize::from(pending[at + 1]);
            let packet = &pending[at + 2..at + 2 + len];
            if let Some(i) = finder.find(packet) {
                let sent = packet[i + 9..]
                    .iter()
                    .fold(0u64, |n, d| n * 10 + u64::from(d.wrapping_sub(b'0')));
                local.push(now.saturating_sub(sent).max(1));
            }
            at += 2 + len;
        }
        pending.drain(..at);
        if !local.is_empty() {
            let mut h = hist.lock().expect("histogram");
            for v in local.drain(..) {
                let _ = h.record(v);
            }
        }
    }
}
