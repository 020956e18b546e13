//! What `vitals-agent run` is told, checked once: [`run`] turns its flags (each also read
//! from its `VITALS_*` variable, named in `vitals_proto::env`) into a validated [`Config`],
//! [`group`] the group flags (SPEC §9); the `--upstreams` spec is the pure core's
//! (`vitals_core::upstreams`). Also what the subcommands share: [`LogFormat`], [`DURATIONS_HELP`].
//!
//! The command line's root, which names every subcommand, is `crate::cli`: this module
//! imports nothing of the agent, only the core and the protocol crates.

pub mod group;
pub mod run;

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
