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

    /// SPEC §5: every flag of every subcommand is also read from `VITALS_<FLAG>`; a flag
    /// added without its variable is a setting a pod spec cannot give. The exceptions are
    /// named here with their reason.
    #[test]
    fn every_flag_reads_its_variable() {
        let exceptions = [
            // The downward API's names, which pod specs already set (`fieldRef`).
            ("run", "pod-ip", env::POD_IP),
            ("run", "pod-namespace", env::POD_NAMESPACE),
            // A repeatable flag: one variable holds them all, comma-separated.
            ("inject", "image-pull-secret", env::IMAGE_PULL_SECRETS),
            ("webhook", "image-pull-secret", env::IMAGE_PULL_SECRETS),
            // Not `run`'s `VITALS_LISTEN`: the webhook's port is the Service's, not a probe port.
            ("webhook", "listen", env::WEBHOOK_LISTEN),
        ];
        let mut missing = Vec::new();
        for Flag { command, long, var } in flags() {
            let want = exceptions
                .iter()
                .find(|(cmd, flag, _)| *cmd == command && *flag == long)
                .map_or_else(
                    || format!("VITALS_{}", long.to_uppercase().replace('-', "_")),
                    |(_, _, var)| (*var).to_owned(),
                );
            if var.as_deref() != Some(want.as_str()) {
                missing.push(format!("{command} --{long}: {var:?}, want {want}"));
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
    }

    /// docs/reference.md lists every flag of every subcommand, in that subcommand's
    /// section, with the variable clap reads: a flag added, renamed or given a variable
    /// shows in the reference or fails here.
    #[test]
    fn the_reference_lists_every_flag_with_its_variable() {
        let reference = include_str!("../../docs/reference.md");
        let mut wrong = Vec::new();
        for Flag { command, long, var } in flags() {
            let heading = format!("### `vitals-agent {command}`");
            let Some((_, section)) = reference.split_once(&heading) else {
                wrong.push(format!("no section {heading}"));
                continue;
            };
            let section = section.split("\n#").next().unwrap_or_default();
            let flag = format!("`--{long}`");
            let var = var.as_deref().unwrap_or("no variable");
            let row = section.lines().find(|l| {
                l.starts_with('|') && l.split('|').nth(1).is_some_and(|c| c.contains(&flag))
            });
            match row {
                // `--image` and friends are listed once, under inject, for both.
                None if command == "webhook" && section.contains(&flag) => {}
                None => wrong.push(format!("{command}: {flag} not in the table")),
                Some(row) if !row.contains(&format!("`{var}`")) => {
                    wrong.push(format!("{command}: {flag} without `{var}`: {row}"))
                }
                Some(_) => {}
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// A long flag of a subcommand and the variable clap reads it from.
    struct Flag {
        command: String,
        long: String,
        var: Option<String>,
    }

    /// Every long flag of every subcommand, clap's own `--help` and `--version` aside.
    fn flags() -> Vec<Flag> {
        let root = Cli::command();
        let mut flags = Vec::new();
        for sub in root.get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                flags.push(Flag {
                    command: sub.get_name().to_owned(),
                    long: long.to_owned(),
                    var: arg.get_env().and_then(|v| v.to_str()).map(str::to_owned),
                });
            }
        }
        flags
    }
}
