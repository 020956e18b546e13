//! The command line of `vitals-agent`: its subcommands (`run`, `status`, `inject`,
//! `webhook`), every flag also read from its `VITALS_*` variable. A bad value is an error
//! naming the flag, and the variable when it came from one; the exit code is clap's (2).

use std::ffi::OsString;

use clap::{CommandFactory as _, Parser, Subcommand};
use vitals_proto::env;

use crate::config::{ConfigError, RunArgs};
use crate::inject::webhook::WebhookArgs;
use crate::inject::InjectArgs;
use crate::surfaces::status::StatusArgs;

/// `vitals-agent`: the pod's single probe port.
#[derive(Debug, Parser)]
#[command(name = "vitals-agent", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve probes, metrics and /status; accept worker reports on the Unix socket.
    Run(Box<RunArgs>),
    /// Show the agent's /status as a table (for `kubectl exec`).
    Status(StatusArgs),
    /// Rewrite pod specs so Vitals watches their containers.
    Inject(InjectArgs),
    /// Serve the admission webhook that injects Pods at creation (SPEC §10).
    Webhook(WebhookArgs),
}

impl Cli {
    /// Parses the command line `args` (the program's name first) and the `VITALS_*`
    /// variables; a bad value that came from a variable is an error that names it.
    pub fn parse_args(args: &[OsString]) -> Result<Self, clap::Error> {
        Self::try_parse_from(args).map_err(|e| env::name_the_variable(e, &Self::command(), args))
    }
}

/// `error`'s message, naming the environment variable its flag's value came from when it
/// came from one (`args`: the command line [`Cli::parse_args`] was given).
pub fn explain(error: &ConfigError, args: &[OsString]) -> String {
    env::with_variable(error.to_string(), &Cli::command(), args, error.flag())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DURATIONS_HELP;

    #[test]
    fn help_shows_the_duration_forms() {
        let err = Cli::try_parse_from(["vitals-agent", "run", "--help"]).expect_err("help exits");
        assert!(err.to_string().contains(DURATIONS_HELP), "{err}");
    }
}
