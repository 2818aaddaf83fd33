//! The broker core driven through tern-sim: scripted clients, virtual time.
//! Each test is named after the behaviour it checks.

mod common;
mod connect;
mod delivery;
mod features;
mod manage;
mod policy;
mod shards;
mod spec;
