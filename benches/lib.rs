//! Shared helpers for the codec benchmarks.
#![forbid(unsafe_code)]
