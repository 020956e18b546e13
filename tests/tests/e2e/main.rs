//! The end-to-end scenarios: what Vitals promises when things go wrong, proven with the real
//! `vitals-agent` and `vitals-worker` binaries and the real model.
//!
//! Each scenario is one test with time bounds derived from the short timeouts it configures
//! ([`common::agent`]); each prints its measured detection latencies, and prints its whole
//! timeline and both processes' logs when it fails. `docs/e2e.md` lists them and the numbers
//! measured. Needs `cargo build --workspace --bins` and `make model` first (`make test`
//! does both).

mod common;
mod engines;
mod faults;
mod group;
mod hangs;
mod isolation;
mod lifecycle;
mod pod_shape;
mod restarts;
mod soak;
mod upstreams;
