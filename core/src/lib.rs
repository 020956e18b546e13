//! `vitals-core`: the agent's pure core. What the agent knows ([`state`]), what it concludes
//! from it ([`verdict`]), the spec of what it watches ([`upstreams`]), and the readings both
//! are made of ([`proc`] samples, the exposition parser [`expo`], the [`stall`] clock, per-
//! [`engines`] clocks, [`sleep`]).
//!
//! Nothing here does I/O or reads a clock: every function takes `now`, so tests call them
//! with any time, and the agent's probe path calls them on the spot. The crate depends on
//! no async runtime, HTTP stack or /proc crate, so that layering is a build error rather
//! than a convention (`scripts/check-core-deps.sh`, run by `make lint`).

pub mod engines;
pub mod expo;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod proc;
pub mod sleep;
pub mod stall;
pub mod state;
pub mod upstreams;
pub mod verdict;
