//! What `vitals-agent run` is told, checked once: [`run`] turns its flags (each also read
//! from its `VITALS_*` variable, named in `vitals_proto::env`) into a validated [`Config`],
//! [`group`] the group flags (SPEC §9); the `--upstreams` spec is the pure core's
//! ([`upstreams`]). Also what the subcommands share: [`LogFormat`], [`DURATIONS_HELP`].
//!
//! The command line's root, which names every subcommand, is `crate::cli`: this module
//! imports nothing of the agent, only the core and the protocol crates.

pub mod group;
pub mod run;

/// A member the leader polls: the group's state keeps one per member.
pub use vitals_core::state::group::MemberTarget;
/// The `--upstreams` spec: its types and validation live in the pure core, which the
/// state and the verdicts read it from; `run` parses it here, with the other flags.
pub use vitals_core::upstreams;

pub use self::group::{Group, GroupArgs, GroupConfig, GroupError, GroupRole};
pub use self::run::{Config, ConfigError, RunArgs};

use clap::ValueEnum;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The one duration grammar of both binaries, as `--help` states it.
pub const DURATIONS_HELP: &str =
    "Durations are numbers with units, summed: 250ms, 10s, 1m30s, 2h (a bare number is refused).";
