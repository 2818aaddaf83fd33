//! The `conn` scenario: idle connections, their connect rate and latency,
//! and what each costs the broker.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{proc_stats, BenchArgs, Conn};

pub(super) async fn run(args: BenchArgs) -> Result<(), String> {
    let broker_before = args.broker_pid.and_then(proc_stats);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    let mut conns = Vec::with_capacity(args.clients);
    let started = Instant::now();
    let mut errors = 0u64;
    // Connect in waves of 100 concurrent handshakes.
    let mut i = 0;
    while i < args.clients {
        let wave = (args.clients - i).min(100);
        let mut tasks = Vec::with_capacity(wave);
        for k in 0..wave {
            let a = args.clone();
            let n = i + k;
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let c = Conn::open(&a, &format!("{}-c{n}", a.id_prefix), n).await;
                (c, t.elapsed())
            }));
        }
        for t in tasks {
            match t.await {
                Ok((Ok(c), d)) => {
                    let _ = latency.record(d.as_nanos() as u64);
                    conns.push(c);
                }
                _ => errors += 1,
            }
        }
        i += wave;
        if !args.quiet {
            eprint!("\r  connected {:>8}  errors {errors}   ", conns.len());
        }
    }
    let connect_time = started.elapsed().as_secs_f64();
    if !args.quiet {
        eprintln!();
    }
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let broker = args.broker_pid.and_then(proc_stats);
    let us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let rate = conns.len() as f64 / connect_time;
    println!(
        "scenario conn  connections {}  errors {errors}  connect rate {rate:.0}/s",
        conns.len()
    );
    println!(
        "  connect latency µs  p50 {:.0}  p99 {:.0}  max {:.0}",
        us(0.5),
        us(0.99),
        latency.max() as f64 / 1000.0
    );
    let per_conn = match (broker_before, broker) {
        (Some(b), Some(a)) if !conns.is_empty() => {
            let per = (a.1 as f64 - b.1 as f64) / conns.len() as f64;
            println!(
                "  broker RSS {:.1} MB, {per:.0} B per connection",
                a.1 as f64 / 1e6
            );
            Some(per)
        }
        _ => None,
    };
    let json = serde_json::json!({
        "label": args.label,
        "scenario": "conn",
        "connections": conns.len(),
        "errors": errors,
        "connect_per_s": rate,
        "latency_us": {"p50": us(0.5), "p99": us(0.99), "max": latency.max() as f64 / 1000.0},
        "broker_rss": broker.map(|b| b.1),
        "broker_bytes_per_conn": per_conn,
    });
    println!("{json}");
    drop(conns);
    Ok(())
}
