//! Test support for whole-system tests: start real `core-server` and `proxy` processes on
//! loopback ([`procs`]) and talk to them as a desktop would ([`client`]).
//!
//! It exists so that every integration test file starts processes the same way users do
//! (the built binaries, a config file, a port printed on stdout) and speaks the real wire
//! protocol through the real codec, instead of each test growing its own half-client.
#![forbid(unsafe_code)]

pub mod client;
pub mod creds;
pub mod pg;
pub mod procs;
pub mod secure_client;
pub mod storage_mode;

pub use client::TestClient;
pub use procs::{Proc, bin_path, wait_child, wait_until};
