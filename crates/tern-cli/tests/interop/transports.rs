//! TLS with client certificates, WebSocket.

use tern_codec::ProtocolVersion;

use super::common::*;

#[test]
fn paho_over_websocket() {
    let tern = Tern::with_config(
        "ws",
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[listener]]\ntype = \"ws\"\nbind = \"127.0.0.1:0\"\npath = \"/mqtt\"\n",
    );
    let ws_port = listener_ports(&tern, "ws").remove(0);
    let sub = Sub::start(&tern, &["-t", "ws/#"]);
    let script = r#"
import sys, threading
import paho.mqtt.client as mqtt
port = int(sys.argv[1])
got = []
done = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-ws", transport="websockets", protocol=mqtt.MQTTv5)
c.ws_set_options(path="/mqtt")
subscribed = threading.Event()
c.on_subscribe = lambda cl, u, mid, rc, p: subscribed.set()
def on_message(cl, u, m):
    got.append(m.payload.decode()); done.set()
c.on_message = on_message
c.connect("127.0.0.1", port)
c.loop_start()
c.subscribe("ws/echo", qos=1)
assert subscribed.wait(10)
c.publish("ws/echo", "over websocket", qos=1).wait_for_publish(10)
assert done.wait(10), got
print(got[0])
c.disconnect(); c.loop_stop()
"#;
    let out = paho_on(&ws_port, script);
    assert_eq!(out.trim(), "over websocket");
    // The TCP subscriber saw it too.
    assert_eq!(sub.next(), "ws/echo over websocket");
}

#[test]
// The bound depends on how many one-second windows the attempts spanned,
// so the test reads the clock to know it.
#[allow(clippy::disallowed_methods)]
fn the_connection_rate_limit_closes_the_excess() {
    let mut tern = Tern::with_config("rate", "[limits]\nmax_connection_rate = 2\n");
    let started = std::time::Instant::now();
    let mut admitted = 0;
    for i in 0..10 {
        if Raw::try_connect(&tern, ProtocolVersion::V3_1_1, &format!("r{i}")).is_some() {
            admitted += 1;
        }
    }
    // Two per second are allowed; the attempts touched at most
    // floor(elapsed) + 2 windows (two when they took under a second).
    let windows = started.elapsed().as_secs() as usize + 2;
    assert!(
        (1..=(2 * windows).min(9)).contains(&admitted),
        "{admitted} admitted over {windows} windows"
    );
    tern.wait_log("connection rate limit reached");
}
