//! The `queue` scenario: what a broker keeps for sessions that are away.
//!
//! `-m` persistent sessions subscribe at `-q` (1 by default here) to a
//! topic each and go offline; `-n` publishers then send `-c` messages for
//! every session (fill). Later, perhaps after the broker restarted, every
//! session comes back and takes its queue (drain), checked message by
//! message: each payload carries (session, sequence), so what was lost,
//! doubled or out of order is counted exactly. `--phase` runs one half.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::ValueEnum;
use tern_codec::{Ack, Disconnect, Packet, PacketId, Publish, QoS, QosPid, ReasonCode, TopicName};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::{proc_stats, read_acks, BenchArgs, Conn};

/// Which half of the `queue` scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// Park the sessions and fill their queues, then drain them.
    Both,
    /// Park the sessions and fill their queues.
    Fill,
    /// Bring the sessions back and take their queues.
    Drain,
}

fn topic(i: usize) -> String {
    format!("bench/queue/{i}")
}

fn session_id(args: &BenchArgs, i: usize) -> String {
    format!("{}-q{i}", args.id_prefix)
}

/// Connections opened this many at a time.
const WAVE: usize = 200;

pub(super) async fn run(mut args: BenchArgs) -> Result<(), String> {
    if args.size < 12 {
        return Err("--size must be at least 12 for the queue scenario".into());
    }
    if args.count == 0 {
        return Err("the queue scenario needs --count (messages per session)".into());
    }
    // Sessions that outlive their connections: the point of the scenario.
    args.persistent = true;
    let mut json = serde_json::json!({
        "label": args.label,
        "scenario": "queue",
        "sessions": args.subscribers,
        "per_session": args.count,
        "payload": args.size,
        "qos": args.qos,
    });
    if args.phase != Phase::Drain {
        fill(&args, &mut json).await?;
    }
    if args.phase != Phase::Fill {
        drain(&args, &mut json).await?;
    }
    println!("{json}");
    Ok(())
}

async fn fill(args: &BenchArgs, json: &mut serde_json::Value) -> Result<(), String> {
    let qos = QoS::from_u8(args.qos).expect("checked");
    let sessions = args.subscribers;
    let started = Instant::now();
    let mut i = 0;
    while i < sessions {
        let wave = (sessions - i).min(WAVE);
        let mut tasks = Vec::with_capacity(wave);
        for n in i..i + wave {
            let a = args.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Conn::open(&a, &session_id(&a, n), n).await?;
                c.subscribe(&topic(n), qos).await?;
                c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
                    .await
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        i += wave;
    }
    eprintln!(
        "  {sessions} sessions subscribed and offline in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut pubs = Vec::new();
    for p in 0..args.clients.max(1) {
        let c = Conn::open(args, &format!("{}-qp{p}", args.id_prefix), sessions + p).await?;
        let mine: Vec<usize> = (p..sessions).step_by(args.clients.max(1)).collect();
        let (a, sent) = (args.clone(), sent.clone());
        pubs.push(tokio::spawn(async move { publish(c, mine, a, sent).await }));
    }
    let ticker = progress(sent.clone(), args.quiet);
    for p in pubs {
        p.await.map_err(|e| e.to_string())??;
    }
    ticker.abort();
    let secs = started.elapsed().as_secs_f64();
    let n = sent.load(Ordering::Relaxed);
    let rss = args.broker_pid.and_then(proc_stats).map(|s| s.1);
    eprintln!(
        "\n  filled: {n} messages in {secs:.1} s ({:.0}/s), broker RSS {}",
        n as f64 / secs,
        rss.map_or("-".into(), |r| format!("{:.1} MB", r as f64 / 1e6))
    );
    json["filled"] = n.into();
    json["fill_per_s"] = (n as f64 / secs).into();
    json["broker_rss_after_fill"] = rss.into();
    Ok(())
}

/// Publishes `--count` messages for each of `mine`, round-robin.
async fn publish(
    c: Conn,
    mine: Vec<usize>,
    args: BenchArgs,
    sent: Arc<AtomicU64>,
) -> Result<(), String> {
    let qos = QoS::from_u8(args.qos).expect("checked");
    let topics: Vec<TopicName> = mine
        .iter()
        .map(|&i| TopicName::new(&topic(i)).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let padding = Bytes::from(vec![b'x'; args.size - 12]);
    let (mut rd, mut wr) = c.stream.into_split();
    let (mut decoder, mut buf, version) = (c.decoder, c.buf, c.version);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut inflight = 0usize;
    let mut next_id: u16 = 1;
    for seq in 0..args.count {
        for (k, &i) in mine.iter().enumerate() {
            while qos != QoS::AtMostOnce && inflight >= args.inflight {
                if !out.is_empty() {
                    wr.write_all(&out).await.map_err(|e| e.to_string())?;
                    out.clear();
                }
                inflight -=
                    read_acks(&mut rd, &mut decoder, &mut buf, &mut wr, version, false).await?;
            }
            let mut payload = BytesMut::with_capacity(args.size);
            payload.put_u32(i as u32);
            payload.put_u64(seq);
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
            Publish::new(topics[k].clone(), qp, payload.freeze())
                .encode(version, &mut out)
                .map_err(|e| e.to_string())?;
            sent.fetch_add(1, Ordering::Relaxed);
            if out.len() >= 16 * 1024 {
                wr.write_all(&out).await.map_err(|e| e.to_string())?;
                out.clear();
            }
        }
    }
    wr.write_all(&out).await.map_err(|e| e.to_string())?;
    while inflight > 0 {
        inflight -= read_acks(&mut rd, &mut decoder, &mut buf, &mut wr, version, false).await?;
    }
    Ok(())
}

/// What the sessions got back.
#[derive(Default)]
struct Drained {
    received: AtomicU64,
    lost: AtomicU64,
    duplicates: AtomicU64,
    /// The longest wait for a session's first message, in µs.
    first_max_us: AtomicU64,
}

async fn drain(args: &BenchArgs, json: &mut serde_json::Value) -> Result<(), String> {
    let sessions = args.subscribers;
    let d = Arc::new(Drained::default());
    let started = Instant::now();
    let ticker = progress_drained(d.clone(), args.quiet);
    // Every session comes back at once (at most WAVE handshakes at a time)
    // and stays until it has its queue.
    let handshakes = Arc::new(Semaphore::new(WAVE));
    let mut tasks = Vec::with_capacity(sessions);
    for n in 0..sessions {
        let (a, d, h) = (args.clone(), d.clone(), handshakes.clone());
        tasks.push(tokio::spawn(async move { take(a, n, d, started, h).await }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    ticker.abort();
    let secs = started.elapsed().as_secs_f64();
    let got = d.received.load(Ordering::Relaxed);
    let lost = d.lost.load(Ordering::Relaxed);
    let dup = d.duplicates.load(Ordering::Relaxed);
    let first = d.first_max_us.load(Ordering::Relaxed) as f64 / 1e6;
    eprintln!(
        "\n  drained: {got} messages in {secs:.1} s ({:.0}/s), lost {lost}, duplicates {dup}, every session's first message within {first:.2} s",
        got as f64 / secs
    );
    json["drained"] = got.into();
    json["drain_per_s"] = (got as f64 / secs).into();
    json["lost"] = lost.into();
    json["duplicates"] = dup.into();
    json["first_message_max_s"] = first.into();
    json["broker_rss_after_drain"] = args.broker_pid.and_then(proc_stats).map(|s| s.1).into();
    Ok(())
}

/// One session comes back and takes its queue, in order.
async fn take(
    args: BenchArgs,
    n: usize,
    d: Arc<Drained>,
    started: Instant,
    handshakes: Arc<Semaphore>,
) -> Result<(), String> {
    let permit = handshakes
        .acquire_owned()
        .await
        .map_err(|e| e.to_string())?;
    let mut c = Conn::open(&args, &session_id(&args, n), n).await?;
    drop(permit);
    let mut next = 0u64;
    let mut first = true;
    while next < args.count {
        let p = match tokio::time::timeout(Duration::from_secs(30), c.recv()).await {
            Ok(r) => r?,
            Err(_) => None,
        };
        let Some(p) = p else {
            // Nothing more is coming: the rest were lost.
            break;
        };
        let Packet::Publish(p) = p else { continue };
        if first {
            first = false;
            let us = started.elapsed().as_micros() as u64;
            d.first_max_us.fetch_max(us, Ordering::Relaxed);
        }
        match p.qos {
            QosPid::AtLeastOnce(id) => c.queue(&Packet::PubAck(Ack::new(id)))?,
            QosPid::ExactlyOnce(id) => c.queue(&Packet::PubRec(Ack::new(id)))?,
            QosPid::AtMostOnce => {}
        }
        let mut b = &p.payload[..];
        if b.len() < 12 || b.get_u32() as usize != n {
            return Err(format!("session {n}: a message for someone else"));
        }
        let seq = b.get_u64();
        if seq < next {
            d.duplicates.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        d.lost.fetch_add(seq - next, Ordering::Relaxed);
        d.received.fetch_add(1, Ordering::Relaxed);
        next = seq + 1;
    }
    d.lost
        .fetch_add(args.count.saturating_sub(next), Ordering::Relaxed);
    // The acknowledgements out, then a clean goodbye.
    c.queue(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))?;
    c.flush().await
}

fn progress(sent: Arc<AtomicU64>, quiet: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = 0;
        loop {
            tick.tick().await;
            let s = sent.load(Ordering::Relaxed);
            if !quiet {
                eprint!("\r  sent {s:>10} ({:>9}/s)   ", s - last);
            }
            last = s;
        }
    })
}

fn progress_drained(d: Arc<Drained>, quiet: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = 0;
        loop {
            tick.tick().await;
            let r = d.received.load(Ordering::Relaxed);
            if !quiet {
                eprint!("\r  received {r:>10} ({:>9}/s)   ", r - last);
            }
            last = r;
        }
    })
}
