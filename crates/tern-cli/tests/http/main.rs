//! `tern broker`'s HTTP API against real clients: Debian's curl, Python
//! `requests` (with paho-mqtt on the MQTT side), `mosquitto_pub` and
//! `mosquitto_sub`. Each test starts its own broker with its MQTT and HTTP
//! listeners on ports the OS picks (read from its log).
//!
//! Nothing sleeps to wait: a test waits for a log line, a subscription's
//! SUBACK, or an event on a stream, with a timeout that only fires when
//! something is broken.

mod api;
mod common;
mod dashboard;
mod history;
mod rules;
mod webhooks;
