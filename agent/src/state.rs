//! What the agent knows, and the one way it is read: the copy-on-write [`registry`] of
//! workers and [`upstream`]s that sources write, a leader's view of its [`group`], and the
//! immutable [`snapshot`] that every surface renders.

pub mod group;
pub mod registry;
pub mod snapshot;
pub mod upstream;
