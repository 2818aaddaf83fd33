//! Running the broker: signals, password files, the ACL, configuration
//! errors.

use std::process::Command;

use tern_peers::{make_pki, scratch};

use super::common::*;

#[test]
fn passwords_from_tern_passwd_are_checked_and_reloaded_on_sighup() {
    let dir = scratch("passwd");
    let pw = dir.join("passwd");
    let pw_s = pw.to_str().expect("utf-8 path");
    assert!(tern_cmd(&["passwd", "-c", "-b", pw_s, "alice", "s3cret"])
        .status
        .success());
    let text = std::fs::read_to_string(&pw).expect("written");
    assert!(
        text.contains("alice:$argon2id$") && !text.contains("s3cret"),
        "{text}"
    );
    let conf = dir.join("tern.toml");
    std::fs::write(
        &conf,
        format!("[auth]\nallow_anonymous = false\npassword_file = {pw_s:?}\n"),
    )
    .expect("config written");
    let mut tern = Tern::start(&["-c", conf.to_str().expect("utf-8")]);

    let (ok, _) = try_publish(
        &tern,
        &["-t", "a", "-m", "x", "-u", "alice", "-P", "s3cret"],
    );
    assert!(ok, "the right password connects");
    for v in ["mqttv311", "mqttv5"] {
        let (ok, err) = try_publish(
            &tern,
            &["-V", v, "-t", "a", "-m", "x", "-u", "alice", "-P", "wrong"],
        );
        assert!(!ok, "a wrong password is refused ({v})");
        assert!(
            err.to_lowercase().contains("refused")
                || err.to_lowercase().contains("password")
                || err.to_lowercase().contains("authori"),
            "{err}"
        );
    }
    let (ok, _) = try_publish(&tern, &["-t", "a", "-m", "x"]);
    assert!(!ok, "anonymous clients are refused");
    tern.wait_log("authentication failed");

    // bob is added, then the broker rereads the file on SIGHUP.
    assert!(tern_cmd(&["passwd", "-b", pw_s, "bob", "hunter2"])
        .status
        .success());
    let (ok, _) = try_publish(&tern, &["-t", "a", "-m", "x", "-u", "bob", "-P", "hunter2"]);
    assert!(!ok, "not before the reload");
    let kept = Sub::start(&tern, &["-t", "kept", "-u", "alice", "-P", "s3cret"]);
    tern.process.signal("HUP");
    tern.wait_log("reloaded on SIGHUP");
    let (ok, _) = try_publish(&tern, &["-t", "a", "-m", "x", "-u", "bob", "-P", "hunter2"]);
    assert!(ok, "bob connects after the reload");
    // Connections stay up across the reload.
    publish(
        &tern,
        &["-t", "kept", "-m", "still", "-u", "bob", "-P", "hunter2"],
    );
    assert_eq!(kept.next(), "kept still");

    // Deleting a user.
    assert!(tern_cmd(&["passwd", "-D", pw_s, "alice"]).status.success());
    let text = std::fs::read_to_string(&pw).expect("written");
    assert!(!text.contains("alice") && text.contains("bob"), "{text}");
}

#[test]
fn acl_rules_deny_publishes_and_subscriptions() {
    let tern = Tern::with_config(
        "acl",
        r#"
[[acl]]
topic = "public/ok"
access = "readwrite"
[[acl]]
topic = "public/#"
access = "read"
[[acl]]
topic = "own/%c/#"
access = "readwrite"
"#,
    );
    let watcher = Sub::start(&tern, &["-t", "public/#", "-i", "watcher"]);
    publish(&tern, &["-t", "public/nope", "-m", "denied", "-q", "1"]);
    publish(&tern, &["-t", "public/ok", "-m", "allowed", "-q", "1"]);
    assert_eq!(
        watcher.next(),
        "public/ok allowed",
        "the denied publish never arrives"
    );
    // A client may subscribe to its own subtree only: SUBACK 0 / 128.
    let own = Sub::start(&tern, &["-t", "own/me/#", "-i", "me"]);
    assert!(own.subscribed.ends_with(": 0"), "{}", own.subscribed);
    let other = Sub::start(&tern, &["-t", "own/me/#", "-i", "intruder"]);
    assert!(other.subscribed.ends_with(": 128"), "{}", other.subscribed);
}

#[test]
fn a_bad_configuration_stops_startup_naming_file_line_and_key() {
    let dir = scratch("badconf");
    let conf = dir.join("tern.toml");
    std::fs::write(
        &conf,
        "[limits]\nmax_packet_size = 1024\nmax_pakcet_size = 3\n",
    )
    .expect("written");
    let out = tern_cmd(&["broker", "-c", conf.to_str().expect("utf-8"), "-p", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tern.toml"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("max_pakcet_size"), "{err}");

    let missing = dir.join("nope.toml");
    let out = tern_cmd(&["broker", "-c", missing.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

#[test]
fn tls_with_a_test_ca_and_a_client_certificate_as_user_name() {
    let dir = scratch("tls");
    make_pki(&dir, "device-7");
    let d = dir.to_str().expect("utf-8");
    let conf = dir.join("tern.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[[listener]]
bind = "127.0.0.1:0"
[[listener]]
type = "tls"
bind = "127.0.0.1:0"
cert = "{d}/server.pem"
key = "{d}/server.key"
[[listener]]
type = "tls"
bind = "127.0.0.1:0"
cert = "{d}/server.pem"
key = "{d}/server.key"
client_ca = "{d}/ca.pem"
cn_as_username = true
[[acl]]
user = "device-7"
topic = "devices/device-7/#"
access = "readwrite"
[[acl]]
topic = "devices/#"
access = "read"
"#
        ),
    )
    .expect("config written");
    let tern = Tern::start(&["-c", conf.to_str().expect("utf-8")]);
    let tls_ports = listener_ports(&tern, "tls");
    assert_eq!(tls_ports.len(), 2);
    let sub = Sub::start(&tern, &["-t", "devices/#"]);
    let ca = format!("{d}/ca.pem");
    // Server authentication only.
    let (ok, err) = try_publish_on(
        &tls_ports[0],
        &[
            "--cafile",
            &ca,
            "-t",
            "devices/any",
            "-m",
            "over tls",
            "-q",
            "1",
            "-u",
            "x",
        ],
    );
    // TLS works; the ACL drops the message (x may only read devices/#).
    assert!(ok, "{err}");
    // With the client certificate: its CN is the user name the ACL sees.
    let cert = format!("{d}/client.pem");
    let key = format!("{d}/client.key");
    let (ok, err) = try_publish_on(
        &tls_ports[1],
        &[
            "--cafile",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "-t",
            "devices/device-7/t",
            "-m",
            "21",
            "-q",
            "1",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(sub.next(), "devices/device-7/t 21", "and not devices/any");
    // Without a certificate the second listener refuses the handshake.
    let (ok, _) = try_publish_on(
        &tls_ports[1],
        &["--cafile", &ca, "-t", "devices/x", "-m", "no"],
    );
    assert!(!ok);
    // An untrusted CA on the client side fails too.
    let (ok, _) = try_publish_on(
        &tls_ports[0],
        &["--cafile", &cert, "-t", "devices/x", "-m", "no"],
    );
    assert!(!ok);
    // tern pub takes the same flags.
    let tern_pub = |port: &str, extra: &[&str], payload: &str| {
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["pub", "-h", "127.0.0.1", "-p", port, "--cafile", &ca])
            .args(extra)
            .args(["-t", "devices/device-7/t", "-m", payload, "-q", "1"])
            .output()
            .expect("tern pub runs")
    };
    let out = tern_pub(&tls_ports[1], &["--cert", &cert, "--key", &key], "22");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sub.next(), "devices/device-7/t 22");
    let out = tern_pub(&tls_ports[1], &[], "no certificate");
    assert_eq!(out.status.code(), Some(1));
}
