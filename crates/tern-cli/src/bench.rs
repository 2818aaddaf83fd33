//! `tern bench`: a load generator over real sockets, built on tern-codec
//! directly (no client library in the way), for any MQTT broker.
//!
//! Scenarios:
//! - `conn`: C idle connections held for a while; connect rate and latency.
//! - `fanin`: N publishers, one wildcard subscriber.
//! - `fanout`: one publisher, M subscribers of its topic.
//! - `p2p`: N pairs, a topic each.
//! - `latency`: one publisher at a fixed rate, one subscriber.
//! - `queue`: M persistent sessions away while their queues fill, then
//!   back to take them (`--phase` runs one half, around a restart).
//!
//! Every payload carries (publisher, sequence, send time), so the
//! subscribers count loss and duplicates exactly and measure latency into an
//! HDR histogram. The end is a table and one JSON line.

// A load generator measures time: the one place outside the adapters that
// reads the clock.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use tern_codec::{Ack, Packet, PacketId, ProtocolVersion, Publish, QoS, QosPid, TopicName};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, Semaphore};

mod conn;
mod queue;
mod wire;

use wire::{read_acks, Conn};

/// Which load to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Idle connections: connect rate and latency.
    Conn,
    /// N publishers to one wildcard subscriber.
    Fanin,
    /// One publisher to M subscribers.
    Fanout,
    /// N publisher/subscriber pairs, a topic each.
    P2p,
    /// One publisher at a fixed rate to one subscriber.
    Latency,
    /// M persistent sessions away while N publishers fill their queues,
    /// then back to take them.
    Queue,
}

/// `tern bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The scenario.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Broker host.
    #[arg(short = 'H', long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    pub port: u16,
    /// QoS of publishes and subscriptions.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 20: the header the bench reads back).
    #[arg(short = 's', long, default_value_t = 64)]
    pub size: usize,
    /// Publishers (fanin, p2p pairs) or connections (conn).
    #[arg(short = 'n', long, default_value_t = 8)]
    pub clients: usize,
    /// Subscribers (fanout).
    #[arg(short = 'm', long, default_value_t = 8)]
    pub subscribers: usize,
    /// Messages per publisher; 0 means run for --duration.
    #[arg(short = 'c', long, default_value_t = 0)]
    pub count: u64,
    /// Seconds to run (publishing, or holding connections).
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// QoS 1/2 messages in flight per publisher.
    #[arg(long, default_value_t = 100)]
    pub inflight: usize,
    /// How many messages publishers may run ahead of delivery, in all.
    #[arg(long, default_value_t = 10_000)]
    pub ahead: u64,
    /// Messages per second (latency scenario).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Protocol version: 3 (3.1.1) or 5.
    #[arg(short = 'V', long, default_value_t = 4, value_parser = parse_version)]
    pub version: u8,
    /// Client id prefix.
    #[arg(long, default_value = "tern-bench")]
    pub id_prefix: String,
    /// Source addresses 127.0.0.1 to 127.0.0.N, so that many connections do
    /// not run out of loopback ports.
    #[arg(long, default_value_t = 1)]
    pub sources: u8,
    /// The broker's process id, to report its CPU time and memory.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Label for the JSON line (e.g. the broker's name).
    #[arg(long, default_value = "")]
    pub label: String,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Sessions that outlive their connections (5.0: an expiry of an hour;
    /// 3.1.1: clean session off): what a durable broker must store.
    #[arg(long)]
    pub persistent: bool,
    /// Which half of the queue scenario to run.
    #[arg(long, value_enum, default_value = "both")]
    pub phase: queue::Phase,
}

fn parse_version(s: &str) -> Result<u8, String> {
    match s {
        "3" | "4" | "311" | "mqttv311" => Ok(4),
        "5" | "mqttv5" => Ok(5),
        _ => Err(format!("{s}: 3 (3.1.1) or 5")),
    }
}

const HEADER: usize = 20;

/// Shared counters.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    connected: AtomicU64,
}

/// What the subscribers saw.
struct Seen {
    /// Per (subscriber, publisher): a bit per sequence number.
    bits: HashMap<(u32, u32), Vec<u64>>,
    unique: u64,
    duplicates: u64,
    latency: Histogram<u64>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            bits: HashMap::new(),
            unique: 0,
            duplicates: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("bounds"),
        }
    }

    fn record(&mut self, subscriber: u32, publisher: u32, seq: u64, sent_ns: u64, now_ns: u64) {
        let bits = self.bits.entry((subscriber, publisher)).or_default();
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
        } else {
            bits[word] |= 1 << bit;
            self.unique += 1;
        }
        let _ = self.latency.record(now_ns.saturating_sub(sent_ns).max(1));
    }
}

struct Clock(Instant);

impl Clock {
    fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// Runs the benchmark; returns the process exit code.
pub fn run(args: BenchArgs) -> u8 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(bench(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tern bench: {e}");
            1
        }
    }
}

fn version(v: u8) -> ProtocolVersion {
    if v == 5 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V3_1_1
    }
}

struct Plan {
    publishers: Vec<String>,
    subscribers: Vec<String>,
    expected_per_message: u64,
}

fn plan(args: &BenchArgs) -> Plan {
    let t = |s: &str| s.to_owned();
    match args.scenario {
        Scenario::Fanin => Plan {
            publishers: (0..args.clients)
                .map(|i| format!("bench/fanin/{i}"))
                .collect(),
            subscribers: vec![t("bench/fanin/+")],
            expected_per_message: 1,
        },
        Scenario::Fanout => Plan {
            publishers: vec![t("bench/fanout")],
            subscribers: (0..args.subscribers).map(|_| t("bench/fanout")).collect(),
            expected_per_message: args.subscribers as u64,
        },
        Scenario::P2p => Plan {
            publishers: (0..args.clients)
                .map(|i| format!("bench/p2p/{i}"))
                .collect(),
            subscribers: (0..args.clients)
                .map(|i| format!("bench/p2p/{i}"))
                .collect(),
            expected_per_message: 1,
        },
        Scenario::Latency => Plan {
            publishers: vec![t("bench/latency")],
            subscribers: vec![t("bench/latency")],
            expected_per_message: 1,
        },
        Scenario::Conn | Scenario::Queue => Plan {
            publishers: Vec::new(),
            subscribers: Vec::new(),
            expected_per_message: 0,
        },
    }
}

/// CPU seconds (user + system) and resident bytes of a process.
fn proc_stats(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted from the state field
    // (3) here, in clock ticks of 1/100 s on Linux.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks as f64 / 100.0, rss_kb * 1024))
}

async fn bench(args: BenchArgs) -> Result<(), String> {
    if args.size < HEADER {
        return Err(format!("--size must be at least {HEADER}"));
    }
    match args.scenario {
        Scenario::Conn => return conn::run(args).await,
        Scenario::Queue => return queue::run(args).await,
        _ => {}
    }
    let qos = QoS::from_u8(args.qos).expect("checked");
    let clock = Arc::new(Clock(Instant::now()));
    let counters = Arc::new(Counters::default());
    let seen = Arc::new(Mutex::new(Seen::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Notify::new());
    let p = plan(&args);
    let broker_before = args.broker_pid.and_then(proc_stats);

    // Subscribers first, each subscribed before anyone publishes.
    let mut subs = Vec::new();
    for (i, filter) in p.subscribers.iter().enumerate() {
        let mut c = Conn::open(&args, &format!("{}-s{i}", args.id_prefix), i).await?;
        c.subscribe(filter, qos).await?;
        counters.connected.fetch_add(1, Ordering::Relaxed);
        let (counters, seen, clock, progress) = (
            counters.clone(),
            seen.clone(),
            clock.clone(),
            progress.clone(),
        );
        let me = i as u32;
        subs.push(tokio::spawn(async move {
            subscriber(c, me, counters, seen, clock, progress).await
        }));
    }

    // Publishers may run `ahead` messages ahead of what was delivered.
    let ahead = Arc::new(Semaphore::new(args.ahead as usize));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let mut pubs = Vec::new();
    for (i, topic) in p.publishers.iter().enumerate() {
        let c = Conn::open(
            &args,
            &format!("{}-p{i}", args.id_prefix),
            p.subscribers.len() + i,
        )
        .await?;
        counters.connected.fetch_add(1, Ordering::Relaxed);
        let topic = TopicName::new(topic).map_err(|e| e.to_string())?;
        let a = args.clone();
        let (counters, clock, stop, ahead) =
            (counters.clone(), clock.clone(), stop.clone(), ahead.clone());
        let per_msg = p.expected_per_message;
        pubs.push(tokio::spawn(async move {
            publisher(
                c, i as u32, topic, a, counters, clock, stop, ahead, deadline, per_msg,
            )
            .await
        }));
    }
    // Give back "ahead" permits as deliveries come in.
    let feeder = {
        let (counters, ahead, progress) = (counters.clone(), ahead.clone(), progress.clone());
        let per_msg = p.expected_per_message.max(1);
        tokio::spawn(async move {
            let mut returned = 0u64;
            loop {
                progress.notified().await;
                let done = counters.received.load(Ordering::Relaxed) / per_msg;
                if done > returned {
                    ahead.add_permits((done - returned) as usize);
                    returned = done;
                }
            }
        })
    };
    let ticker = {
        let counters = counters.clone();
        let quiet = args.quiet;
        tokio::spawn(async move {
            let mut last = (0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = counters.sent.load(Ordering::Relaxed);
                let r = counters.received.load(Ordering::Relaxed);
                let e = counters.errors.load(Ordering::Relaxed);
                if !quiet {
                    eprint!(
                        "\r  sent {s:>10} ({:>9}/s)  received {r:>10} ({:>9}/s)  errors {e}   ",
                        s - last.0,
                        r - last.1
                    );
                }
                last = (s, r);
            }
        })
    };
    let mut publish_errors = Vec::new();
    for p in pubs {
        if let Ok(Err(e)) = p.await {
            publish_errors.push(e);
        }
    }
    let publish_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    // Let deliveries drain: until nothing arrives for a second, or all are in.
    let expected = counters.sent.load(Ordering::Relaxed) * p.expected_per_message;
    let mut last = counters.received.load(Ordering::Relaxed);
    let mut quiet_for = 0;
    while counters.received.load(Ordering::Relaxed) < expected && quiet_for < 20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = counters.received.load(Ordering::Relaxed);
        quiet_for = if now == last { quiet_for + 1 } else { 0 };
        last = now;
    }
    let total_time = started.elapsed();
    ticker.abort();
    feeder.abort();
    for s in subs {
        s.abort();
    }
    if !args.quiet {
        eprintln!();
    }
    let broker_after = args.broker_pid.and_then(proc_stats);
    let sent = counters.sent.load(Ordering::Relaxed);
    let seen = seen.lock().expect("seen");
    let received = seen.unique + seen.duplicates;
    let loss = expected.saturating_sub(seen.unique);
    let secs = publish_time.as_secs_f64();
    let recv_secs = total_time.as_secs_f64();
    let h = &seen.latency;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let cpu = match (broker_before, broker_after) {
        (Some(b), Some(a)) => Some((a.0 - b.0, a.1)),
        _ => None,
    };
    println!(
        "scenario {:?}  qos {}  payload {} B  publishers {}  subscribers {}",
        args.scenario,
        args.qos,
        args.size,
        p.publishers.len(),
        p.subscribers.len()
    );
    println!(
        "  sent        {sent:>12}  {:>12.0} msg/s",
        sent as f64 / secs
    );
    println!(
        "  received    {received:>12}  {:>12.0} msg/s  {:.1} MB/s",
        received as f64 / recv_secs,
        (received as f64 * args.size as f64) / recv_secs / 1e6
    );
    println!("  loss        {loss:>12}  duplicates {}", seen.duplicates);
    println!(
        "  latency µs  p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    );
    if let Some((cpu_s, rss)) = cpu {
        println!(
            "  broker      {cpu_s:.2} CPU s  {:.0} msg per CPU s  RSS {:.1} MB",
            received as f64 / cpu_s.max(0.01),
            rss as f64 / 1e6
        );
    }
    for e in &publish_errors {
        eprintln!("  publisher error: {e}");
    }
    let json = serde_json::json!({
        "label": args.label,
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "qos": args.qos,
        "payload": args.size,
        "publishers": p.publishers.len(),
        "subscribers": p.subscribers.len(),
        "sent": sent,
        "received": received,
        "sent_per_s": sent as f64 / secs,
        "received_per_s": received as f64 / recv_secs,
        "mb_per_s": (received as f64 * args.size as f64) / recv_secs / 1e6,
        "loss": loss,
        "duplicates": seen.duplicates,
        "errors": counters.errors.load(Ordering::Relaxed) + publish_errors.len() as u64,
        "latency_us": {
            "p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p999": us(0.999),
            "max": h.max() as f64 / 1000.0
        },
        "broker_cpu_s": cpu.map(|c| c.0),
        "broker_rss": cpu.map(|c| c.1),
    });
    println!("{json}");
    Ok(())
}

async fn subscriber(
    mut c: Conn,
    me: u32,
    counters: Arc<Counters>,
    seen: Arc<Mutex<Seen>>,
    clock: Arc<Clock>,
    progress: Arc<Notify>,
) -> Result<(), String> {
    let mut local = Vec::with_capacity(1024);
    loop {
        let Some(p) = c.recv().await? else {
            return Err("broker closed the connection".into());
        };
        match p {
            Packet::Publish(m) => {
                let now = clock.ns();
                let mut b = &m.payload[..];
                if b.len() >= HEADER {
                    let publisher = b.get_u32();
                    let seq = b.get_u64();
                    let ts = b.get_u64();
                    local.push((publisher, seq, ts, now));
                }
                counters
                    .bytes
                    .fetch_add(m.payload.len() as u64, Ordering::Relaxed);
                match m.qos {
                    QosPid::AtMostOnce => {}
                    QosPid::AtLeastOnce(id) => c.queue(&Packet::PubAck(Ack::new(id)))?,
                    QosPid::ExactlyOnce(id) => c.queue(&Packet::PubRec(Ack::new(id)))?,
                }
            }
            Packet::PubRel(a) => c.queue(&Packet::PubComp(Ack::new(a.packet_id)))?,
            _ => {}
        }
        // Record in batches, when nothing more is waiting.
        if !local.is_empty() && (c.buf.is_empty() || local.len() >= 1024) {
            let n = local.len() as u64;
            let mut s = seen.lock().expect("seen");
            for (p, seq, ts, now) in local.drain(..) {
                s.record(me, p, seq, ts, now);
            }
            drop(s);
            counters.received.fetch_add(n, Ordering::Relaxed);
            progress.notify_one();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn publisher(
    c: Conn,
    me: u32,
    topic: TopicName,
    args: BenchArgs,
    counters: Arc<Counters>,
    clock: Arc<Clock>,
    stop: Arc<AtomicBool>,
    ahead: Arc<Semaphore>,
    deadline: Instant,
    per_msg: u64,
) -> Result<(), String> {
    let qos = QoS::from_u8(args.qos).expect("checked");
    let padding = Bytes::from(vec![b'x'; args.size - HEADER]);
    let mut inflight = 0usize;
    let mut next_id: u16 = 1;
    let mut seq = 0u64;
    let interval = (args.scenario == Scenario::Latency)
        .then(|| Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    let t0 = Instant::now();
    let (mut rd, mut wr) = c.stream.into_split();
    let mut decoder = c.decoder;
    let mut buf = c.buf;
    let version = c.version;
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        let done = if args.count > 0 {
            seq >= args.count
        } else {
            Instant::now() >= deadline || stop.load(Ordering::Relaxed)
        };
        if done {
            break;
        }
        if let Some(iv) = interval {
            let due = t0 + iv * seq as u32;
            tokio::time::sleep_until(due.into()).await;
        }
        // Wait for room: the global bound on running ahead, and the window.
        // What is encoded goes out before any wait.
        let room = per_msg == 0 || ahead.try_acquire().map(|p| p.forget()).is_ok();
        if !room && !out.is_empty() {
            wr.write_all(&out).await.map_err(|e| e.to_string())?;
            out.clear();
        }
        if !room {
            // Lost messages never come back as deliveries: give up waiting
            // after a while rather than hang.
            let wait = tokio::time::timeout(Duration::from_secs(5), ahead.acquire());
            match wait.await {
                Ok(Ok(p)) => p.forget(),
                Ok(Err(_)) => break,
                Err(_) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    return Err("deliveries stopped coming: 5 s without room to publish".into());
                }
            }
        }
        while qos != QoS::AtMostOnce && inflight >= args.inflight {
            inflight -= read_acks(&mut rd, &mut decoder, &mut buf, &mut wr, version, false).await?;
        }
        let mut payload = BytesMut::with_capacity(args.size);
        payload.put_u32(me);
        payload.put_u64(seq);
        payload.put_u64(clock.ns());
        payload.put_slice(&padding);
        let qp = match qos {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            q => {
                let id = PacketId::new(next_id).expect("non-zero");
                next_id = if next_id == u16::MAX { 1 } else { next_id + 1 };
                inflight += 1;
                if q == QoS::AtLeastOnce {
                    QosPid::AtLeastOnce(id)
                } else {
                    QosPid::ExactlyOnce(id)
                }
            }
        };
        let p = Publish::new(topic.clone(), qp, payload.freeze());
        p.encode(version, &mut out).map_err(|e| e.to_string())?;
        seq += 1;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        // QoS 1/2: written when the window is full (or 16 KiB are ready),
        // several publishes per system call.
        let window_full = qos != QoS::AtMostOnce && inflight >= args.inflight;
        if out.len() >= 16 * 1024 || interval.is_some() || window_full {
            wr.write_all(&out).await.map_err(|e| e.to_string())?;
            out.clear();
        }
        if qos != QoS::AtMostOnce && out.is_empty() {
            // Take whatever acknowledgements are already in.
            inflight -= read_acks(&mut rd, &mut decoder, &mut buf, &mut wr, version, true).await?;
        }
    }
    wr.write_all(&out).await.map_err(|e| e.to_string())?;
    while inflight > 0 {
        inflight -= read_acks(&mut rd, &mut decoder, &mut buf, &mut wr, version, false).await?;
    }
    Ok(())
}
