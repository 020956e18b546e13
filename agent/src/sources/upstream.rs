//! SPEC §8: containers that don't speak the protocol ("upstreams"). The agent runs their
//! original Kubernetes probes itself ([`probe`]), finds their process in /proc
//! ([`crate::sources::proc::discover`]), and scrapes their own Prometheus metrics
//! ([`scrape`]) for the core to read hung engines and sleep from ([`vitals_core::expo`],
//! [`vitals_core::stall`], [`vitals_core::engines`], [`vitals_core::sleep`]; which series
//! mean what per server: [`vitals_core::upstreams::profiles`]). [`vitals_core::upstreams`]
//! is the `--upstreams` JSON that says what to watch, [`vitals_core::state::upstream`] what
//! the agent knows about each, and [`run`] the tasks that learn it; [`canary`] sends the
//! opt-in canary of SPEC §12.

pub mod canary;
pub mod grpc;
pub mod probe;
pub mod run;
pub mod scrape;
