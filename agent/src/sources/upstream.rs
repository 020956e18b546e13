//! SPEC §8: containers that don't speak the protocol ("upstreams"). The agent runs their
//! original Kubernetes probes itself ([`probe`]), finds their process in /proc
//! ([`crate::sources::proc::discover`]), and reads hung engines from their own Prometheus
//! metrics ([`expo`], [`stall`], [`engines`], [`scrape`]), and when they sleep
//! ([`sleep`], SPEC §12; which series mean what per server:
//! [`crate::config::upstreams::profiles`]). [`crate::config::upstreams`] is the `--upstreams`
//! JSON that says what to watch, [`crate::state::upstream`] what the agent knows about each,
//! and [`run`] the tasks that learn it; [`canary`] sends the opt-in canary of SPEC §12.

pub mod canary;
pub mod engines;
pub mod expo;
pub mod grpc;
pub mod probe;
pub mod run;
pub mod scrape;
pub mod sleep;
pub mod stall;
