//! `tern broker` against real third-party peers: Debian's `mosquitto_pub`
//! and `mosquitto_sub` (3.1.1 and 5.0), the Python `paho-mqtt` 2.x client,
//! and raw sockets speaking through tern-codec.
//!
//! Each test starts its own broker on a free port. Nothing sleeps to wait:
//! a test waits for an event (a log line, "Subscribed", a message), with a
//! timeout that only fires when something is broken. A missing peer fails
//! the test with the command that installs it (`scripts/install-peers`).

mod admin;
mod common;
mod limits;
mod mqtt;
mod transports;
