//! What the agent knows, and the one way it is read: the copy-on-write [`registry`] of
//! workers and [`upstream`]s that sources write, and the immutable [`snapshot`] that every
//! surface renders.

pub mod registry;
pub mod snapshot;
pub mod upstream;
