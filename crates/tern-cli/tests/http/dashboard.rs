//! The dashboard in a real browser: headless Chromium driven by selenium
//! (`dashboard.py`), against a broker with users, history and rules.
//! Screenshots of each page go to `target/dashboard-screenshots/`.

use std::path::PathBuf;
use std::process::Command;

use tern_peers::{require, scratch};

use crate::common::*;

fn require_python_module(module: &str, what: &str) {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{what} is missing: run scripts/install-peers");
}

#[test]
fn the_dashboard_in_headless_chromium() {
    require("chromium", "Debian's chromium");
    require("chromedriver", "Debian's chromium-driver");
    require("mosquitto_pub", "Debian's mosquitto-clients");
    require_python_module("selenium", "Python's selenium");
    let pw = passwords("dashboard-pw", &[("root", "hunter2"), ("bob", "builder")]);
    let dir = scratch("dashboard-files");
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"echo-a\"\ntopic = \"bell\"\naction = [{ publish = \"out/a\" }]\n\
         [[rule]]\nname = \"echo-b\"\ntopic = \"bell\"\naction = [{ publish = \"out/b\" }]\n",
    )
    .expect("written");
    let mut b = Broker::start(
        "dashboard",
        &format!(
            "[auth]\npassword_file = \"{}\"\nallow_anonymous = true\n[http]\nadmins = [\"root\"]\n\
             [persistence]\ndir = \"{}\"\n\
             [[history]]\nfilter = \"sensors/#\"\nkeep = \"1h\"\n\
             [rules]\nfile = \"{}\"\n",
            pw.display(),
            dir.join("data").display(),
            rules.display()
        ),
    );
    b._process
        .wait_logs(&["history: subscribed", "rules subscribed"]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/http/dashboard.py");
    let shots =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots");
    let out = Command::new("python3")
        .arg(&script)
        .arg(b.url(""))
        .arg(b.mqtt_port())
        .arg(&shots)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("dashboard ok"),
        "{text}"
    );
}

#[test]
fn with_no_users_loopback_signs_in_as_an_admin() {
    let b = Broker::start("dashboard-zero", "");
    let (status, body) = curl(&[&b.url("/api/v1/session")]);
    assert_eq!(status, 401);
    assert_eq!(json(&body)["anonymous"], true);
    let (jar, body) = sign_in_anonymously(&b, "dashboard-zero-jar");
    let jar = jar.to_str().expect("utf-8");
    let v = json(&body);
    assert_eq!(v["admin"], true, "{body}");
    let csrf = v["csrf"].as_str().expect("a token").to_owned();
    // Under another name for this machine (DNS rebinding), not an admin;
    // and without a session, anonymous requests manage nothing.
    let (_, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        "Host: evil.example",
        "-d",
        "{}",
        &b.url("/api/v1/session"),
    ]);
    assert_eq!(json(&body)["admin"], false, "{body}");
    let (status, _) = curl(&["-X", "DELETE", &b.url("/api/v1/clients/nobody")]);
    assert!(matches!(status, 401 | 403), "{status}");
    // The page's files.
    let (status, page) = curl(&["-b", jar, &b.url("/")]);
    assert_eq!(status, 200);
    assert!(page.contains("<title>Tern</title>"));
    let (status, _) = curl(&[&b.url("/assets/uPlot.LICENSE")]);
    assert_eq!(status, 200);
    // A change with the cookie needs the token.
    let kick = b.url("/api/v1/clients/nobody");
    let (status, _) = curl(&["-b", jar, "-X", "DELETE", &kick]);
    assert_eq!(status, 403);
    let (status, _) = curl(&[
        "-b",
        jar,
        "-X",
        "DELETE",
        "-H",
        &format!("x-csrf-token: {csrf}"),
        &kick,
    ]);
    assert_eq!(status, 404);
    // Signed out, the cookie is nobody.
    let (status, _) = curl(&[
        "-b",
        jar,
        "-c",
        jar,
        "-X",
        "DELETE",
        "-H",
        &format!("x-csrf-token: {csrf}"),
        &b.url("/api/v1/session"),
    ]);
    assert_eq!(status, 204);
    let (status, _) = curl(&["-b", jar, &b.url("/api/v1/session")]);
    assert_eq!(status, 401);
}
