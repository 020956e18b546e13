//! SPEC §8: containers that don't speak the protocol ("upstreams"). The agent runs their
//! original Kubernetes probes itself ([`probe`]), finds their process in /proc
//! ([`crate::sources::proc::discover`]), and reads hung engines from their own Prometheus
//! metrics ([`profiles`], [`expo`], [`stall`], [`scrape`]). [`config`] is the `--upstreams`
//! JSON that says what to watch, [`crate::state::upstream`] what the agent knows about each,
//! and [`run`] the tasks that learn it.

pub mod config;
pub mod expo;
pub mod grpc;
pub mod probe;
pub mod profiles;
pub mod run;
pub mod scrape;
pub mod stall;
