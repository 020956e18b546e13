//! What the agent knows: the copy-on-write ([`cell`]) [`registry`] of workers and
//! [`upstream`]s (with their [`probe_result`]s) that sources write through handles that can
//! change only their part, each watched process's [`proc_track`], a leader's view of its
//! [`group`], an upstream's [`load_progress`] and [`zombies`]. It is read one way, through
//! the immutable [`crate::snapshot`] that pairs it with its verdicts; nothing here judges.

pub mod cell;
pub mod group;
pub mod load_progress;
pub mod probe_result;
pub mod proc_track;
pub mod registry;
pub mod upstream;
pub mod zombies;
