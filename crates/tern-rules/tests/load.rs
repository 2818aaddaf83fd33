//! Loading a rules file: every error names the file, line and key; the
//! loop guard refuses a rule that can trigger itself (or a circle of
//! rules) without a limit, and the limit holds at run time.

mod common;

use common::Home;
use tern_rules::{RuleEvent, RuleSet};

fn error(text: &str) -> String {
    RuleSet::parse(text, "rules.toml")
        .expect_err("refused")
        .to_string()
}

#[test]
fn errors_name_the_file_line_and_key() {
    let e = error(
        "[[rule]]\nname = \"a\"\ntopic = \"x\"\nfor = \"soon\"\naction = [{ publish = \"y\" }]\n",
    );
    assert!(e.starts_with("rules.toml:4:"), "{e}");
    assert!(e.contains("soon"), "{e}");

    let e = error(
        "[[rule]]\nname = \"a\"\ntopic = \"x\"\naction = [{ publish = \"y\" }]\ncolour = \"red\"\n",
    );
    assert!(e.starts_with("rules.toml:5:"), "{e}");
    assert!(e.contains("colour"), "{e}");

    let e = error("[[rule]]\nname = \"a\"\ntopic = \"x/#/y\"\naction = [{ publish = \"y\" }]\n");
    assert!(e.starts_with("rules.toml:3:") && e.contains("topic"), "{e}");

    let e = error("[[rule]]\nname = \"a\"\ntopic = \"x\"\n\naction = [{ publish = \"{{ y\" }]\n");
    assert!(
        e.starts_with("rules.toml:5:") && e.contains("publish"),
        "{e}"
    );

    let e = error("[[rule]]\nname = \"a\"\ntopic = \"x\"\nfor = \"1m\"\ndebounce = \"1s\"\naction = [{ publish = \"y\" }]\n");
    assert!(
        e.starts_with("rules.toml:5:") && e.contains("at most one"),
        "{e}"
    );

    let e = error("[[rule]]\nname = \"a\"\ntopic = \"x\"\naction = [{ publish = \"y\" }]\n[[rule]]\nname = \"a\"\ntopic = \"z\"\naction = [{ publish = \"y\" }]\n");
    assert!(
        e.starts_with("rules.toml:6:") && e.contains("another rule"),
        "{e}"
    );

    let e = error("timezone = \"Mars/Olympus\"\n");
    assert!(e.starts_with("rules.toml:1:") && e.contains("Mars"), "{e}");

    let e = error("[[rule]]\nname = \"a\"\naction = [{ publish = \"y\" }]\n");
    assert!(e.contains("needs a trigger"), "{e}");

    // Not ASCII, not a panic.
    let e = error("[[rule]]\nname = \"a\"\npresence = \"é*é\"\naction = [{ publish = \"y\" }]\n");
    assert!(e.contains("presence"), "{e}");
    let e = error(
        "[[rule]]\nname = \"a\"\nat = \"07:00\"\ndays = [\"éé\"]\naction = [{ publish = \"y\" }]\n",
    );
    assert!(e.contains("day"), "{e}");
    let e = error(
        "[[rule]]\nname = \"a\"\ntopic = \"x\"\naction = [{ repeat = 4000000000, steps = [] }]\n",
    );
    assert!(e.contains("repeat"), "{e}");

    let e = error("[[rule]]\nname = \"a\"\ntopic = \"x\"\nsequence = \"..x\"\nshort = \"1ms..2ms\"\nlong = \"3ms..4ms\"\naction = [{ publish = \"y\" }]\n");
    assert!(
        e.starts_with("rules.toml:4:") && e.contains("sequence"),
        "{e}"
    );
}

#[test]
fn a_rule_that_can_trigger_itself_is_refused_without_a_limit() {
    let e = error(
        "[[rule]]\nname = \"echo\"\ntopic = \"lights/+/set\"\naction = [{ publish = \"lights/{{ captures[0] }}/set\", payload = \"on\" }]\n",
    );
    assert!(
        e.contains("echo") && e.contains("trigger itself") && e.contains("limit"),
        "{e}"
    );
    // Two rules round a circle.
    let e = error(
        "[[rule]]\nname = \"ping\"\ntopic = \"a\"\naction = [{ publish = \"b\" }]\n[[rule]]\nname = \"pong\"\ntopic = \"b\"\naction = [{ publish = \"a\" }]\n",
    );
    assert!(
        e.contains("ping") && e.contains("pong") && e.contains("circle"),
        "{e}"
    );
    // A template that may render several levels (the topic itself).
    let e = error(
        "[[rule]]\nname = \"mirror\"\ntopic = \"home/+/x/y\"\naction = [{ publish = \"{{ topic }}\" }]\n",
    );
    assert!(e.contains("mirror") && e.contains("trigger itself"), "{e}");
    // Unrelated topics: fine.
    RuleSet::parse(
        "[[rule]]\nname = \"fine\"\ntopic = \"lights/+/set\"\naction = [{ publish = \"lights/{{ captures[0] }}/state\" }]\n",
        "r",
    )
    .expect("no loop");
}

#[test]
fn a_declared_limit_lets_it_load_and_holds_at_run_time() {
    let mut h = Home::new(
        "[[rule]]\nname = \"echo\"\ntopic = \"ping\"\nlimit = \"3/1m\"\naction = [{ publish = \"ping\" }]\n",
    );
    // The embedding feeds each publish back, as a broker would.
    h.publish("ping", "");
    for _ in 0..10 {
        for p in h.published() {
            let topic = p.split(' ').next().unwrap_or_default().to_owned();
            h.publish(&topic, "");
        }
    }
    let events = h.events();
    let fired = events
        .iter()
        .filter(|e| matches!(e, RuleEvent::Fired { .. }))
        .count();
    assert_eq!(fired, 3, "{events:?}");
    assert!(events
        .iter()
        .any(|e| matches!(e, RuleEvent::Limited { .. })));
    // The next minute, it may fire again.
    h.advance(60_000);
    h.publish("ping", "");
    assert_eq!(h.published(), ["ping "]);
}
