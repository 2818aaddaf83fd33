//! The rules engine's own cost, I/O excluded: a message that no rule's
//! topic matches with 10,000 rules loaded (the topic index answers), a
//! simple rule firing (a condition, a literal publish), and one whose
//! topic and payload are templates.
//!
//! ```sh
//! cargo bench -p tern-benches --bench rules
//! ```

use std::fmt::Write;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tern_rules::{Engine, RuleSet};
use tern_topic::TopicName;

/// `n` unrelated rules, each on a topic of its own, some with timing.
fn many(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let timing = match i % 4 {
            0 => "",
            1 => "for = \"10m\"\n",
            2 => "debounce = \"2s\"\n",
            _ => "count = 3\nwithin = \"10s\"\n",
        };
        let _ = write!(
            s,
            "[[rule]]\nname = \"r{i}\"\ntopic = \"devices/{i}/+/state\"\nis = \"on\"\n{timing}action = [{{ publish = \"lights/{i}/set\", payload = \"on\" }}]\n"
        );
    }
    s
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("rules");
    let set = RuleSet::parse(&many(10_000), "many.toml").expect("valid");
    let mut engine = Engine::new(set, 0);
    let miss = TopicName::new("sensors/kitchen/temperature").expect("valid");
    g.bench_function("no match, 10,000 rules", |b| {
        b.iter(|| engine.handle_message(black_box(&miss), black_box(b"21.5"), 1));
    });
    let simple = "[[rule]]\nname = \"bell\"\ntopic = \"home/doorbell/pressed\"\nis = \"1\"\nlimit = \"1000000000/1s\"\nmode = \"parallel\"\naction = [{ publish = \"home/lights/hall/set\", payload = \"on\" }]\n";
    let mut with_many = many(10_000);
    with_many.push_str(simple);
    let mut engine = Engine::new(RuleSet::parse(&with_many, "r").expect("valid"), 0);
    let bell = TopicName::new("home/doorbell/pressed").expect("valid");
    let mut now = 0;
    g.bench_function("simple rule fires (10,000 loaded)", |b| {
        b.iter(|| {
            now += 1;
            engine.handle_message(black_box(&bell), black_box(b"1"), now);
            black_box(engine.poll_action());
            black_box(engine.poll_event());
        });
    });
    let templated = "[[rule]]\nname = \"motion\"\ntopic = \"rooms/+/motion\"\nfield = \"/level\"\nabove = 3\nlimit = \"1000000000/1s\"\nmode = \"parallel\"\naction = [{ publish = \"lights/{{ captures[0] }}/set\", payload = \"{{ value * 10 }}\" }]\n";
    let mut engine = Engine::new(RuleSet::parse(templated, "r").expect("valid"), 0);
    let room = TopicName::new("rooms/kitchen/motion").expect("valid");
    g.bench_function("templated rule fires", |b| {
        b.iter(|| {
            now += 1;
            engine.handle_message(black_box(&room), black_box(br#"{"level": 7}"#), now);
            black_box(engine.poll_action());
            black_box(engine.poll_event());
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
