//! Pending waits, sequences under way, runs of steps and the rules' own
//! state survive a restart: the engine's snapshot is saved as JSON and a
//! new engine takes it back.

mod common;

use common::Home;
use tern_rules::{Engine, RuleSet, Snapshot};

/// A new engine of the same rules, at the same time, with the old one's
/// snapshot gone through JSON.
fn restart(h: &mut Home, rules: &str) {
    let json = serde_json::to_string(&h.engine.snapshot()).expect("serialises");
    let snap: Snapshot = serde_json::from_str(&json).expect("parses");
    let set = RuleSet::parse(rules, "rules.toml").expect("valid");
    let mut e = Engine::new(set, h.now);
    e.restore(snap, h.now);
    h.engine = e;
}

const HOT: &str = r#"
[[rule]]
name = "hot"
topic = "sensors/+/temp"
above = 25
for = "10m"
action = [{ publish = "alarm/{{ captures[0] }}" }]
"#;

#[test]
fn a_restart_in_the_middle_of_a_for_wait() {
    let mut h = Home::new(HOT);
    h.publish("sensors/kitchen/temp", "30");
    h.advance(4 * 60_000);
    assert!(h.engine.take_dirty());
    restart(&mut h, HOT);
    h.advance(5 * 60_000);
    assert!(h.published().is_empty());
    h.advance(60_000);
    assert_eq!(h.published(), ["alarm/kitchen "]);
}

#[test]
fn a_wait_that_ended_while_down_fires_on_restore() {
    let mut h = Home::new(HOT);
    h.publish("sensors/kitchen/temp", "30");
    let snap = h.engine.snapshot();
    // Down for an hour.
    h.now += 3_600_000;
    let mut e = Engine::new(RuleSet::parse(HOT, "r").expect("valid"), h.now);
    e.restore(snap, h.now);
    h.engine = e;
    assert!(h.engine.poll_timeout().is_some_and(|t| t <= h.now));
    h.advance(0);
    assert_eq!(h.published(), ["alarm/kitchen "]);
}

const SOS: &str = r#"
[[rule]]
name = "doorbell-sos"
topic = "bell"
sequence = "...-..."
short = "100ms..600ms"
long = "800ms..2s"
action = [
  { set = "count", value = "{{ (state.count or 0) + 1 }}" },
  { publish = "lights", payload = "red" },
  { wait = "5s" },
  { publish = "lights", payload = "off {{ state.count }}" },
]
"#;

#[test]
fn a_restart_in_the_middle_of_a_sequence_and_of_a_run() {
    let mut h = Home::new(SOS);
    for g in [300, 300, 300, 1200] {
        h.publish("bell", "1");
        h.advance(g);
    }
    restart(&mut h, SOS);
    assert_eq!(
        h.engine.rules()[0].pending,
        ["sequence: \"...\" so far"],
        "the sequence is under way"
    );
    for g in [300, 300, 300] {
        h.publish("bell", "1");
        h.advance(g);
    }
    h.publish("bell", "1");
    h.advance(2001);
    assert_eq!(h.published(), ["lights red"]);
    // Restarted in the middle of the steps' wait.
    h.advance(2000);
    restart(&mut h, SOS);
    h.advance(3000);
    assert_eq!(h.published(), ["lights off 1"]);
    assert_eq!(h.engine.rules()[0].state["count"], serde_json::json!(1));
}

#[test]
fn a_changed_rule_keeps_its_state_but_not_its_waits() {
    let mut h = Home::new(SOS);
    h.publish("bell", "1");
    h.engine.handle_message(
        &tern_topic::TopicName::new("bell").expect("valid"),
        b"1",
        300,
    );
    let changed = SOS.replace("800ms..2s", "900ms..2s");
    restart(&mut h, &changed);
    assert!(h.engine.rules()[0].pending.is_empty());
}

#[test]
fn a_reload_keeps_what_unchanged_rules_hold() {
    let mut h = Home::new(HOT);
    h.publish("sensors/hall/temp", "30");
    let more = format!(
        "{HOT}\n[[rule]]\nname = \"other\"\ntopic = \"x\"\naction = [{{ publish = \"y\" }}]\n"
    );
    h.engine
        .reload(RuleSet::parse(&more, "r").expect("valid"), h.now);
    h.advance(10 * 60_000);
    assert_eq!(h.published(), ["alarm/hall "]);
    assert_eq!(h.engine.rules().len(), 2);
}
