//! Test support: start real processes on loopback.
#![forbid(unsafe_code)]
