//! Every kind of trigger and timing, in virtual time: the engine is given
//! messages and times, and what it does is read back.

mod common;

use common::Home;
use tern_rules::RuleEvent;

#[test]
fn a_topic_trigger_captures_its_wildcards_and_tests_the_payload() {
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "motion"
        topic = "rooms/+/motion/#"
        is = "on"
        action = [{ publish = "lights/{{ captures[0] }}/set", payload = "{{ captures[1] }}:{{ payload }}" }]
        "#,
    );
    h.publish("rooms/hall/motion/left", "on");
    h.publish("rooms/hall/motion/left", "off");
    h.publish("rooms/hall/other", "on");
    assert_eq!(h.published(), ["lights/hall/set left:on"]);
}

#[test]
fn numeric_json_and_text_conditions() {
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "warm"
        topic = "t"
        field = "/temp"
        above = 20
        below = 30
        action = [{ publish = "warm", payload = "{{ value }}" }]

        [[rule]]
        name = "text"
        topic = "log"
        contains = "error"
        action = [{ publish = "alert", payload = "{{ payload }}" }]

        [[rule]]
        name = "expr"
        topic = "e"
        when = "json.a + json.b == 3"
        action = [{ publish = "sum" }]

        [[rule]]
        name = "number-equals"
        topic = "n"
        is = 1
        action = [{ publish = "one" }]
        "#,
    );
    h.publish("t", r#"{"temp": 25}"#);
    h.publish("t", r#"{"temp": 35}"#);
    h.publish("t", r#"not json"#);
    h.publish("log", "disk error on sda");
    h.publish("log", "all fine");
    h.publish("e", r#"{"a": 1, "b": 2}"#);
    h.publish("e", r#"{"a": 2, "b": 2}"#);
    h.publish("n", "1");
    h.publish("n", "1.0");
    h.publish("n", "2");
    assert_eq!(
        h.published(),
        ["warm 25", "alert disk error on sda", "sum ", "one ", "one "]
    );
}

#[test]
fn for_fires_once_the_test_has_held_that_long_and_not_again_until_it_fails() {
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "hot"
        topic = "sensors/+/temp"
        above = 25
        for = "10m"
        action = [{ publish = "alarm/{{ captures[0] }}", payload = "{{ value }}" }]
        "#,
    );
    h.publish("sensors/kitchen/temp", "26");
    h.advance(5 * 60_000);
    // Cooler for a moment: the wait starts again.
    h.publish("sensors/kitchen/temp", "24");
    h.publish("sensors/kitchen/temp", "27");
    h.advance(9 * 60_000);
    assert!(h.published().is_empty());
    // Another room waits on its own.
    h.publish("sensors/hall/temp", "30");
    h.advance(60_000);
    assert_eq!(h.published(), ["alarm/kitchen 27"]);
    h.publish("sensors/kitchen/temp", "28");
    h.advance(20 * 60_000);
    assert_eq!(h.published(), ["alarm/hall 30"]);
}

#[test]
fn debounce_fires_with_the_last_event_once_they_stop() {
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "settled"
        topic = "dial"
        debounce = "2s"
        action = [{ publish = "volume", payload = "{{ payload }}" }]
        "#,
    );
    for v in 1..=5 {
        h.publish("dial", &v.to_string());
        h.advance(500);
    }
    assert!(h.published().is_empty());
    h.advance(1600);
    assert_eq!(h.published(), ["volume 5"]);
}

#[test]
fn throttle_fires_at_most_once_a_window() {
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "notify"
        topic = "door"
        throttle = "1m"
        action = [{ publish = "phone", payload = "{{ payload }}" }]
        "#,
    );
    h.publish("door", "a");
    h.advance(30_000);
    h.publish("door", "b");
    h.advance(30_000);
    h.publish("door", "c");
    assert_eq!(h.published(), ["phone a", "phone c"]);
}

#[test]
fn count_fires_on_n_events_within_the_window() {
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "triple"
        topic = "button"
        count = 3
        within = "2s"
        action = [{ publish = "scene", payload = "party" }]
        "#,
    );
    h.publish("button", "1");
    h.advance(1500);
    h.publish("button", "1");
    h.advance(1500);
    // The first press is out of the window: two within it.
    h.publish("button", "1");
    assert!(h.published().is_empty());
    h.advance(400);
    h.publish("button", "1");
    assert_eq!(h.published(), ["scene party"]);
}

#[test]
fn absence_fires_once_per_silence_from_start_and_after_each_message() {
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "freezer"
        topic = "freezer/temp"
        absent = "15m"
        action = [{ publish = "alarm", payload = "freezer silent" }]
        "#,
    );
    h.advance(10 * 60_000);
    h.publish("freezer/temp", "-18");
    h.advance(14 * 60_000);
    assert!(h.published().is_empty());
    h.advance(60_000);
    assert_eq!(h.published(), ["alarm freezer silent"]);
    // Once per silence.
    h.advance(60 * 60_000);
    assert!(h.published().is_empty());
    h.publish("freezer/temp", "-18");
    h.advance(15 * 60_000);
    assert_eq!(h.published(), ["alarm freezer silent"]);
}

#[test]
fn presence_fires_on_a_client_going_offline_for_a_while() {
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "gone"
        presence = "sensor-*"
        state = "offline"
        for = "1m"
        action = [{ publish = "presence/{{ client }}", payload = "{{ payload }}" }]
        "#,
    );
    h.engine.handle_presence("sensor-1", false, h.now);
    h.engine.handle_presence("phone", false, h.now);
    h.advance(30_000);
    // Back within the minute: nothing.
    h.engine.handle_presence("sensor-1", true, h.now);
    h.engine.handle_presence("sensor-2", false, h.now);
    h.advance(60_000);
    assert_eq!(h.published(), ["presence/sensor-2 offline"]);
}

#[test]
fn a_schedule_fires_at_its_wall_time_every_day() {
    let mut h = Home::new(
        r#"
        timezone = "Europe/Berlin"

        [[rule]]
        name = "morning"
        at = "07:30"
        action = [{ publish = "blinds", payload = "up" }]
        "#,
    );
    // Time 0 is 1970-01-01 01:00 in Berlin: 07:30 is 6.5 hours later.
    h.advance(6 * 3_600_000 + 29 * 60_000);
    assert!(h.published().is_empty());
    h.advance(60_000);
    assert_eq!(h.published(), ["blinds up"]);
    h.advance(86_400_000);
    assert_eq!(h.published(), ["blinds up"]);
}

#[test]
fn steps_wait_and_repeat_and_the_rule_keeps_state() {
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "flash"
        topic = "bell"
        action = [
          { set = "rings", value = "{{ (state.rings or 0) + 1 }}" },
          { repeat = 2, steps = [
            { publish = "light", payload = "red" },
            { wait = "1s" },
            { publish = "light", payload = "off" },
            { wait = "1s" },
          ] },
          { publish = "rings", payload = "{{ state.rings }}", retain = true },
        ]
        "#,
    );
    h.publish("bell", "1");
    assert_eq!(h.published(), ["light red"]);
    h.advance(1000);
    assert_eq!(h.published(), ["light off"]);
    // While a run is under way, another firing is dropped (mode single).
    h.publish("bell", "1");
    h.advance(3000);
    assert_eq!(h.published(), ["light red", "light off", "rings 1"]);
    h.publish("bell", "1");
    h.advance(4000);
    assert_eq!(
        h.published(),
        [
            "light red",
            "light off",
            "light red",
            "light off",
            "rings 2"
        ]
    );
}

#[test]
fn a_failing_step_is_reported_and_stops_its_run() {
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "bad"
        topic = "x"
        action = [{ publish = "a/{{ payload }}" }, { publish = "after" }]
        "#,
    );
    h.publish("x", "has/+/wildcard");
    assert!(h.published().is_empty());
    let events = h.events();
    assert!(
        events.iter().any(|e| matches!(e, RuleEvent::Error { message, .. } if message.contains("not a topic name"))),
        "{events:?}"
    );
    assert_eq!(h.engine.rules()[0].stats.errors, 1);
}

#[test]
fn a_rule_turned_off_sees_nothing() {
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "r"
        topic = "x"
        action = [{ publish = "y" }]
        "#,
    );
    assert!(h.engine.set_enabled("r", false, h.now));
    h.publish("x", "1");
    assert!(h.published().is_empty());
    assert!(h.engine.set_enabled("r", true, h.now));
    h.publish("x", "1");
    assert_eq!(h.published(), ["y "]);
    assert!(!h.engine.set_enabled("nope", true, h.now));
}

#[test]
fn a_silence_rule_turned_off_waits_for_nothing_and_turned_on_starts_afresh() {
    // Off in the file: nothing is due, ever (it used to come due at once,
    // forever).
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "freezer"
        topic = "freezer/temp"
        absent = "1m"
        enabled = false
        action = [{ publish = "alarm" }]
        "#,
    );
    assert_eq!(h.engine.poll_timeout(), None);
    h.advance(10 * 60_000);
    assert!(h.published().is_empty());
    // On: the silence is timed from now.
    assert!(h.engine.set_enabled("freezer", true, h.now));
    assert_eq!(h.engine.poll_timeout(), Some(h.now + 60_000));
    h.advance(60_000);
    assert_eq!(h.published(), ["alarm "]);
    // Off again while waiting: nothing.
    h.publish("freezer/temp", "-18");
    assert!(h.engine.set_enabled("freezer", false, h.now));
    assert_eq!(h.engine.poll_timeout(), None);
}

#[test]
fn a_for_rule_keeps_at_most_a_thousand_topics() {
    let mut h = Home::new(
        r#"
        [[rule]]
        name = "hot"
        topic = "sensors/+/temp"
        above = 25
        for = "1m"
        limit = "10000/1s"
        action = [{ publish = "alarm/{{ captures[0] }}" }]
        "#,
    );
    for i in 0..1500 {
        h.publish(&format!("sensors/s{i}/temp"), "30");
    }
    let waiting = h.engine.rules()[0].pending.len();
    assert_eq!(waiting, 1000);
    // The oldest went: the newest fire.
    h.advance(60_000);
    let fired = h.published();
    assert_eq!(fired.len(), 1000);
    assert!(fired.contains(&"alarm/s1499 ".to_owned()));
    assert!(!fired.contains(&"alarm/s0 ".to_owned()));
}
