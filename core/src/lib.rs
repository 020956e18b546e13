//! `vitals-core`: the agent's pure core. What the agent knows ([`state`]), what it concludes
//! from it ([`verdict`]), the one view of both that every surface renders ([`snapshot`]), the
//! spec of what it watches ([`upstreams`]), and the readings the state is made of ([`proc`]
//! samples, the exposition parser [`expo`], the [`stall`] clock, per-[`engines`] clocks,
//! [`sleep`]).
//!
//! Layers, each importing only those before it: [`expo`]; the spec ([`upstreams`]); the other
//! readings ([`proc`], [`stall`], [`engines`], [`sleep`]); [`state`]; [`verdict`];
//! [`snapshot`].
//!
//! Nothing here does I/O or reads a clock: every function takes `now`, so tests call them
//! with any time, and the agent's probe path calls them on the spot; the environment, too,
//! is the caller's ([`upstreams::parse`] takes a lookup). The crate depends on no async
//! runtime, HTTP stack or /proc crate, so the line between the core and the agent's I/O is a
//! build error rather than a convention (`scripts/check-core-deps.sh`, run by `make lint`).

pub mod engines;
pub mod expo;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod proc;
pub mod sleep;
pub mod snapshot;
pub mod stall;
pub mod state;
pub mod upstreams;
pub mod verdict;
