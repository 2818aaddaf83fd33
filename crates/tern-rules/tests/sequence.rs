//! The doorbell pattern "…—…" (three short gaps, a long one, three short
//! ones) is recognised, by gaps between presses and by presses held, and
//! near misses are not: a wrong gap, too slow, an extra press.

mod common;

use common::Home;

const BY_GAPS: &str = r#"
[[rule]]
name = "doorbell-sos"
topic = "home/doorbell/pressed"
sequence = "...-..."
short = "100ms..600ms"
long = "800ms..2s"
action = [{ publish = "lights/living/set", payload = "red" }]
"#;

/// Presses with these gaps between them (one more press than gaps).
fn ring(h: &mut Home, gaps: &[u64]) {
    h.publish("home/doorbell/pressed", "1");
    for g in gaps {
        h.advance(*g);
        h.publish("home/doorbell/pressed", "1");
    }
}

const SOS: [u64; 7] = [300, 300, 300, 1200, 300, 300, 300];

#[test]
fn the_pattern_by_gaps_fires_once_it_is_complete() {
    let mut h = Home::new(BY_GAPS);
    ring(&mut h, &SOS);
    // It waits to be sure no extra press follows.
    assert!(h.published().is_empty());
    h.advance(2001);
    assert_eq!(h.published(), ["lights/living/set red"]);
}

#[test]
fn a_wrong_gap_does_not_fire() {
    let mut h = Home::new(BY_GAPS);
    // The long gap is short.
    ring(&mut h, &[300, 300, 300, 300, 300, 300, 300]);
    h.advance(5000);
    // A gap in neither range (700 ms).
    ring(&mut h, &[300, 300, 300, 700, 300, 300, 300]);
    h.advance(5000);
    assert!(h.published().is_empty());
}

#[test]
fn too_slow_does_not_fire() {
    let mut h = Home::new(BY_GAPS);
    ring(&mut h, &[300, 300, 300, 1200, 300, 300]);
    // The last press comes after more than the longest gap.
    h.advance(2500);
    h.publish("home/doorbell/pressed", "1");
    h.advance(5000);
    assert!(h.published().is_empty());
    assert!(
        h.engine.rules()[0].pending.is_empty(),
        "{:?}",
        h.engine.rules()[0].pending
    );
}

#[test]
fn an_extra_press_does_not_fire() {
    let mut h = Home::new(BY_GAPS);
    ring(&mut h, &[300, 300, 300, 1200, 300, 300, 300, 300]);
    h.advance(5000);
    assert!(h.published().is_empty());
}

#[test]
fn a_miss_then_the_pattern_fires() {
    let mut h = Home::new(BY_GAPS);
    // A stray press, then the pattern begins 1.5 s later (a long gap, which
    // does not fit the pattern's start; the pattern starts again there).
    h.publish("home/doorbell/pressed", "1");
    h.advance(1500);
    ring(&mut h, &SOS);
    h.advance(2001);
    assert_eq!(h.published(), ["lights/living/set red"]);
}

const BY_PRESSES: &str = r#"
[[rule]]
name = "doorbell-morse"
topic = "home/doorbell/button"
sequence = "…—…"
by = "presses"
down = "down"
up = "up"
short = "50ms..400ms"
long = "600ms..2s"
action = [{ publish = "lights/living/set", payload = "red" }]
"#;

/// Presses held this long, 200 ms apart.
fn press(h: &mut Home, held: &[u64]) {
    for (i, d) in held.iter().enumerate() {
        if i > 0 {
            h.advance(200);
        }
        h.publish("home/doorbell/button", "down");
        h.advance(*d);
        h.publish("home/doorbell/button", "up");
    }
}

#[test]
fn the_pattern_by_presses_held() {
    let mut h = Home::new(BY_PRESSES);
    press(&mut h, &[100, 100, 100, 900, 100, 100, 100]);
    h.advance(2001);
    assert_eq!(h.published(), ["lights/living/set red"]);
    // A long press too short: no.
    press(&mut h, &[100, 100, 100, 500, 100, 100, 100]);
    h.advance(3000);
    // One press too many: no.
    press(&mut h, &[100, 100, 100, 900, 100, 100, 100, 100]);
    h.advance(3000);
    assert!(h.published().is_empty());
}

#[test]
fn presses_held_long_with_long_pauses_between_them() {
    // The pause between presses is timed from the last release, the
    // symbol by how long a press is held: a 1.5 s press after a 1 s pause
    // is a long one, not "too slow".
    let mut h = Home::new(BY_PRESSES);
    for (i, held) in [100u64, 100, 100, 1500, 100, 100, 100].iter().enumerate() {
        if i > 0 {
            h.advance(1000);
        }
        h.publish("home/doorbell/button", "down");
        h.advance(*held);
        h.publish("home/doorbell/button", "up");
    }
    h.advance(2001);
    assert_eq!(h.published(), ["lights/living/set red"]);
    // A pause longer than the longest symbol ends the attempt.
    for (i, held) in [100u64, 100, 100, 900, 100, 100, 100].iter().enumerate() {
        if i > 0 {
            h.advance(if i == 4 { 2500 } else { 200 });
        }
        h.publish("home/doorbell/button", "down");
        h.advance(*held);
        h.publish("home/doorbell/button", "up");
    }
    h.advance(3000);
    assert!(h.published().is_empty());
}
