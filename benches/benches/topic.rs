//! The subscription index and the retained index at 10^3 to 10^6 entries,
//! side by side with `mqtt_topic_tree` and with the plain linear matcher
//! (what a broker without an index does: every filter against every topic).
//!
//! Shapes, from deployments: a device fleet (`site/{s}/device/{d}/temp`,
//! one subscriber per device), dashboards (`site/{s}/device/+/#`, one per
//! hundred devices) and a few `#` (loggers, bridges). Published topics are
//! fleet topics, so a match finds the device itself, maybe its site's
//! dashboard, and the loggers: a handful of subscribers.
//!
//! Run with `cargo bench -p tern-benches --bench topic`. Memory per
//! subscription is printed (not timed) before the timings.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use allocation_counter::measure;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use tern_topic::{Matches, RetainedIndex, SubscriptionIndex, TopicFilter, TopicName};

const SIZES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];

/// Sites and devices per site for `n` subscriptions (about 1% dashboards).
fn shape(n: usize) -> (usize, usize) {
    let devices = 1000.min(n / 10).max(10);
    (n.div_ceil(devices), devices)
}

/// The filters of a fleet of about `n` subscriptions, with their subscriber.
fn filters(n: usize) -> Vec<(String, u64)> {
    let (sites, devices) = shape(n);
    let mut out = Vec::with_capacity(n + n / 100 + 3);
    'fill: for s in 0..sites {
        for d in 0..devices {
            if out.len() >= n - n / 100 - 3 {
                break 'fill;
            }
            out.push((format!("site/{s}/device/{d}/temp"), out.len() as u64));
        }
    }
    for s in 0..n / 100 {
        out.push((format!("site/{}/device/+/#", s % sites), out.len() as u64));
    }
    for _ in 0..3 {
        out.push(("#".to_string(), out.len() as u64));
    }
    out
}

/// `count` distinct topics that devices of the fleet publish to, spread
/// over it (a stride coprime with the fleet size visits every device once).
fn topics(n: usize, count: usize) -> Vec<String> {
    let (sites, devices) = shape(n);
    let fleet = (sites * devices) as u64;
    (0..count as u64)
        .map(|i| {
            let x = (i * 7_919) % fleet;
            let (s, d) = (x / devices as u64, x % devices as u64);
            format!("site/{s}/device/{d}/temp")
        })
        .collect()
}

fn tern_index(filters: &[(String, u64)]) -> SubscriptionIndex<u64, u8> {
    let mut index = SubscriptionIndex::new();
    for (f, k) in filters {
        index.subscribe(&TopicFilter::new(f).unwrap(), *k, 1);
    }
    index
}

fn peer_tree(filters: &[(String, u64)]) -> mqtt_topic_tree::TopicTree {
    let mut tree = mqtt_topic_tree::TopicTree::default();
    for (f, k) in filters {
        let filter = mqtt_topic_tree::TopicFilter::try_from(f.clone()).unwrap();
        tree.add_subscription(filter, *k, mqtt_topic_tree::QoS::Level1);
    }
    tree
}

fn linear(filters: &[(String, u64)]) -> Vec<(TopicFilter, u64)> {
    filters
        .iter()
        .map(|(f, k)| (TopicFilter::new(f).unwrap(), *k))
        .collect()
}

fn memory_report() {
    println!("\nmemory per subscription (bytes held after building, / subscriptions)");
    println!("| subscriptions | tern | mqtt_topic_tree | linear list |");
    println!("|---:|---:|---:|---:|");
    for n in SIZES {
        let fl = filters(n);
        let mut held = [0i64; 3];
        let mut keep_t = None;
        held[0] = measure(|| keep_t = Some(tern_index(&fl))).bytes_current;
        let mut keep_p = None;
        held[1] = measure(|| keep_p = Some(peer_tree(&fl))).bytes_current;
        let mut keep_l = None;
        held[2] = measure(|| keep_l = Some(linear(&fl))).bytes_current;
        let per = |b: i64| b as f64 / fl.len() as f64;
        println!(
            "| {} | {:.0} | {:.0} | {:.0} |",
            fl.len(),
            per(held[0]),
            per(held[1]),
            per(held[2])
        );
    }
    for n in SIZES {
        let fl = filters(n);
        let index = tern_index(&fl);
        let mut m = Matches::new();
        let names = topics(n, 4096);
        let total: usize = names
            .iter()
            .map(|t| {
                index.matches(&TopicName::new(t).unwrap(), &mut m);
                m.subscriptions().len()
            })
            .sum();
        println!(
            "{} subscriptions: a published topic matches {:.1} subscriptions on average",
            fl.len(),
            total as f64 / names.len() as f64
        );
    }
    let n = 1_000_000;
    let topics_owned = topics(n, n);
    let mut keep = None;
    let held = measure(|| {
        let mut r = RetainedIndex::new();
        for t in &topics_owned {
            r.insert(TopicName::new(t).unwrap(), (), 8);
        }
        keep = Some(r);
    })
    .bytes_current;
    let len = keep.as_ref().map_or(1, |r| r.len());
    println!(
        "\nretained index: {} topics, {:.0} bytes each (the topic name's own bytes included)\n",
        len,
        held as f64 / len as f64
    );
}

fn bench_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("match");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let fl = filters(n);
        let names = topics(n, 4096);
        let tern_names: Vec<TopicName> = names.iter().map(|t| TopicName::new(t).unwrap()).collect();
        let index = tern_index(&fl);
        let mut m = Matches::new();
        let mut i = 0;
        g.bench_function(BenchmarkId::new("tern", n), |b| {
            b.iter(|| {
                i = (i + 1) % tern_names.len();
                index.matches(&tern_names[i], &mut m);
                black_box(m.subscriptions().len())
            })
        });
        drop(index);

        let tree = peer_tree(&fl);
        let peer_names: Vec<mqtt_topic_tree::TopicName> = names
            .iter()
            .map(|t| mqtt_topic_tree::TopicName::try_from(t.clone()).unwrap())
            .collect();
        g.bench_function(BenchmarkId::new("mqtt_topic_tree", n), |b| {
            b.iter(|| {
                i = (i + 1) % peer_names.len();
                black_box(tree.get_subscriptions(&peer_names[i]).len())
            })
        });
        drop(tree);

        let list = linear(&fl);
        g.bench_function(BenchmarkId::new("linear", n), |b| {
            b.iter(|| {
                i = (i + 1) % tern_names.len();
                let name = &tern_names[i];
                black_box(list.iter().filter(|(f, _)| f.matches(name)).count())
            })
        });
    }
    g.finish();
}

fn bench_churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("subscribe_unsubscribe");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let fl = filters(n);
        let extra: Vec<TopicFilter> = (0..4096)
            .map(|i| TopicFilter::new(&format!("site/{i}/device/new-{i}/cmd/+")).unwrap())
            .collect();
        let mut index = tern_index(&fl);
        let mut i = 0;
        g.bench_function(BenchmarkId::new("tern", n), |b| {
            b.iter(|| {
                i = (i + 1) % extra.len();
                index.subscribe(&extra[i], u64::MAX, 1);
                black_box(index.unsubscribe(&extra[i], &u64::MAX))
            })
        });
        drop(index);
        let mut tree = peer_tree(&fl);
        let extra_peer: Vec<mqtt_topic_tree::TopicFilter> = extra
            .iter()
            .map(|f| mqtt_topic_tree::TopicFilter::try_from(f.to_string()).unwrap())
            .collect();
        g.bench_function(BenchmarkId::new("mqtt_topic_tree", n), |b| {
            // The peer takes its filter by value, twice: the clones are
            // made outside the timed region.
            let mut j = 0;
            b.iter_batched(
                || {
                    j = (j + 1) % extra_peer.len();
                    (extra_peer[j].clone(), extra_peer[j].clone())
                },
                |(add, remove)| {
                    tree.add_subscription(add, u64::MAX, mqtt_topic_tree::QoS::Level1);
                    tree.remove_subscription(remove, u64::MAX);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_retained(c: &mut Criterion) {
    let mut g = c.benchmark_group("retained_by_filter");
    for n in [100_000, 1_000_000] {
        let names: Vec<TopicName> = topics(n, n)
            .iter()
            .map(|t| TopicName::new(t).unwrap())
            .collect();
        let mut r = RetainedIndex::new();
        let mut map = std::collections::HashMap::new();
        for t in &names {
            r.insert(t.clone(), (), 8);
            map.insert(t.clone(), ());
        }
        // One site's devices' temperature: a `+` in the middle.
        let filter = TopicFilter::new("site/17/device/+/temp").unwrap();
        let found = r.matching(&filter).len();
        g.throughput(Throughput::Elements(found as u64));
        g.bench_function(BenchmarkId::new(format!("tern ({found} found)"), n), |b| {
            b.iter(|| {
                let mut count = 0;
                r.for_each_match(&filter, |_, _| count += 1);
                black_box(count)
            })
        });
        g.bench_function(
            BenchmarkId::new(format!("linear scan ({found} found)"), n),
            |b| b.iter(|| black_box(map.keys().filter(|t| filter.matches(t)).count())),
        );
    }
    g.finish();
}

fn main() {
    memory_report();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    bench_match(&mut c);
    bench_churn(&mut c);
    bench_retained(&mut c);
    c.final_summary();
}
