//! What feeds the state: each source writes only its own part of it. Protocol workers
//! push over the Unix [`socket`]; [`proc`] samples every watched process; [`upstream`]
//! probes and scrapes the containers that do not speak the protocol; a leader's [`group`]
//! poller asks its members how they are.

pub mod group;
pub mod proc;
pub mod socket;
pub mod upstream;
