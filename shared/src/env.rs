//! The environment variables of Vitals, named once: what the agent reads, what
//! `vitals-agent inject` writes into pods, and what workers and reporters read.
//!
//! Every flag of `vitals-agent` and of the reference worker `vitals-worker` can also be
//! given as `VITALS_<FLAG>`; clap reads them through these constants
//! (`#[arg(env = env::LISTEN)]`). Each process reads only its own environment, so one name
//! may serve two programs (the agent's and the worker's `VITALS_LISTEN` are two
//! containers' settings). The Python reporter mirrors the worker-side names in
//! `python/src/vitals_reporter/env.py`; a test here fails when the two disagree.
//!
//! With the `clap` feature, [`name_the_variable`] (clap's errors) and [`with_variable`]
//! (the binaries' own checks) make an error about a value that came from one of these
//! variables say so, for the binaries whose flags clap also reads from them.

// ---- A worker's container: `inject` sets these, every reporter reads them (SPEC §1) ----

/// Where the worker finds the agent's Unix socket. `inject` sets it in each worker
/// container; the Python reporter and `vitals-worker --agent-socket` read it.
pub const AGENT_SOCKET: &str = "VITALS_AGENT_SOCKET";
/// The worker's name in the agent, by convention its container's name. `inject` sets it in
/// each worker container; the Python reporter and `vitals-worker --name` read it.
pub const NAME: &str = "VITALS_NAME";
/// The version a worker reports in its `hello` (the Python reporter's default; optional).
pub const VERSION: &str = "VITALS_VERSION";

// ---- `vitals-agent run` (SPEC §5) ----

/// `--listen`: the agent's probe/metrics/status port; also `vitals-worker --listen`.
pub const LISTEN: &str = "VITALS_LISTEN";
/// `--socket`: the Unix socket the agent listens on for workers.
pub const SOCKET: &str = "VITALS_SOCKET";
/// `--socket-mode`: the socket file's mode, in octal.
pub const SOCKET_MODE: &str = "VITALS_SOCKET_MODE";
/// `--expect`: workers that must be ready (comma-separated).
pub const EXPECT: &str = "VITALS_EXPECT";
/// `--hang-timeout`.
pub const HANG_TIMEOUT: &str = "VITALS_HANG_TIMEOUT";
/// `--stall-timeout`.
pub const STALL_TIMEOUT: &str = "VITALS_STALL_TIMEOUT";
/// `--load-stall-timeout`.
pub const LOAD_STALL_TIMEOUT: &str = "VITALS_LOAD_STALL_TIMEOUT";
/// `--d-state-timeout`.
pub const D_STATE_TIMEOUT: &str = "VITALS_D_STATE_TIMEOUT";
/// `--proc-interval`.
pub const PROC_INTERVAL: &str = "VITALS_PROC_INTERVAL";
/// `--shutdown-grace`.
pub const SHUTDOWN_GRACE: &str = "VITALS_SHUTDOWN_GRACE";
/// `--log-format` of `vitals-agent run` and `webhook`, and of `vitals-worker`.
pub const LOG_FORMAT: &str = "VITALS_LOG_FORMAT";
/// `--max-connections`.
pub const MAX_CONNECTIONS: &str = "VITALS_MAX_CONNECTIONS";
/// `--header-timeout`.
pub const HEADER_TIMEOUT: &str = "VITALS_HEADER_TIMEOUT";
/// `--upstreams`: the containers watched through their own probes (SPEC §8), as JSON;
/// `inject` writes it into the agent container.
pub const UPSTREAMS: &str = "VITALS_UPSTREAMS";
/// `--pod-ip`: the pod's IP; `inject` sets it from the downward API (`status.podIP`).
pub const POD_IP: &str = "POD_IP";
/// `--pod-namespace`: the pod's namespace; `inject` sets it on a group leader from the
/// downward API (`metadata.namespace`).
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
/// `--cluster-domain`.
pub const CLUSTER_DOMAIN: &str = "VITALS_CLUSTER_DOMAIN";
/// `--group-role` (SPEC §9): `inject` writes it into a group's agents.
pub const GROUP_ROLE: &str = "VITALS_GROUP_ROLE";
/// `--group-members`: a leader's members wired by hand (comma-separated HOST:PORT).
pub const GROUP_MEMBERS: &str = "VITALS_GROUP_MEMBERS";
/// `--group-size`: `inject` writes it into a LeaderWorkerSet leader's agent.
pub const GROUP_SIZE: &str = "VITALS_GROUP_SIZE";
/// `--group-pod-name`: `inject` writes it into a LeaderWorkerSet leader's agent.
pub const GROUP_POD_NAME: &str = "VITALS_GROUP_POD_NAME";
/// `--group-subdomain`: `inject` writes it into a LeaderWorkerSet leader's agent.
pub const GROUP_SUBDOMAIN: &str = "VITALS_GROUP_SUBDOMAIN";
/// `--group-poll`.
pub const GROUP_POLL: &str = "VITALS_GROUP_POLL";
/// `--group-timeout`.
pub const GROUP_TIMEOUT: &str = "VITALS_GROUP_TIMEOUT";
/// `--group-lost-after`.
pub const GROUP_LOST_AFTER: &str = "VITALS_GROUP_LOST_AFTER";

// ---- `vitals-agent inject` and `vitals-agent webhook` (SPEC §10) ----

/// `inject --filename`.
pub const FILENAME: &str = "VITALS_FILENAME";
/// `inject --container`.
pub const CONTAINER: &str = "VITALS_CONTAINER";
/// `--legacy-sidecar` of `inject` and `webhook`.
pub const LEGACY_SIDECAR: &str = "VITALS_LEGACY_SIDECAR";
/// `--image` of `inject` and `webhook`: the agent image injected.
pub const IMAGE: &str = "VITALS_IMAGE";
/// `inject --skip-unknown`.
pub const SKIP_UNKNOWN: &str = "VITALS_SKIP_UNKNOWN";
/// `inject --quiet`.
pub const QUIET: &str = "VITALS_QUIET";
/// `inject --image-pull-secret` (repeatable; the variable holds them comma-separated).
pub const IMAGE_PULL_SECRETS: &str = "VITALS_IMAGE_PULL_SECRETS";
/// `inject --agent-resources`.
pub const AGENT_RESOURCES: &str = "VITALS_AGENT_RESOURCES";
/// `webhook --listen`.
pub const WEBHOOK_LISTEN: &str = "VITALS_WEBHOOK_LISTEN";
/// `webhook --tls-cert`.
pub const TLS_CERT: &str = "VITALS_TLS_CERT";
/// `webhook --tls-key`.
pub const TLS_KEY: &str = "VITALS_TLS_KEY";
/// `webhook --tls-reload-interval`.
pub const TLS_RELOAD_INTERVAL: &str = "VITALS_TLS_RELOAD_INTERVAL";
/// `webhook --shutdown-delay`.
pub const SHUTDOWN_DELAY: &str = "VITALS_SHUTDOWN_DELAY";

// ---- `vitals-agent status` ----

/// `status --url`.
pub const URL: &str = "VITALS_URL";
/// `status --watch`.
pub const WATCH: &str = "VITALS_WATCH";
/// `status --json`.
pub const JSON: &str = "VITALS_JSON";

// ---- `vitals-worker`, the reference worker (also reads AGENT_SOCKET, NAME, LISTEN, LOG_FORMAT) ----

/// `--model-dir`.
pub const MODEL_DIR: &str = "VITALS_MODEL_DIR";
/// `--device`.
pub const DEVICE: &str = "VITALS_DEVICE";
/// `--max-batch-size`.
pub const MAX_BATCH_SIZE: &str = "VITALS_MAX_BATCH_SIZE";
/// `--max-batch-tokens`.
pub const MAX_BATCH_TOKENS: &str = "VITALS_MAX_BATCH_TOKENS";
/// `--batch-linger`.
pub const BATCH_LINGER: &str = "VITALS_BATCH_LINGER";
/// `--max-queue`.
pub const MAX_QUEUE: &str = "VITALS_MAX_QUEUE";
/// `--max-inputs`.
pub const MAX_INPUTS: &str = "VITALS_MAX_INPUTS";
/// `--max-request-chars`.
pub const MAX_REQUEST_CHARS: &str = "VITALS_MAX_REQUEST_CHARS";
/// `--drain-delay`.
pub const DRAIN_DELAY: &str = "VITALS_DRAIN_DELAY";
/// `--drain-timeout`.
pub const DRAIN_TIMEOUT: &str = "VITALS_DRAIN_TIMEOUT";
/// `--heartbeat-interval`.
pub const HEARTBEAT_INTERVAL: &str = "VITALS_HEARTBEAT_INTERVAL";
/// `--threads`.
pub const THREADS: &str = "VITALS_THREADS";
/// `--enable-fault-injection` (tests only).
pub const ENABLE_FAULT_INJECTION: &str = "VITALS_ENABLE_FAULT_INJECTION";
/// `--fault-slow-load` (tests only).
pub const FAULT_SLOW_LOAD: &str = "VITALS_FAULT_SLOW_LOAD";
/// `--fault-stuck-load` (tests only).
pub const FAULT_STUCK_LOAD: &str = "VITALS_FAULT_STUCK_LOAD";

/// The environment variable that gave flag `--{long}` of `command` its value on the
/// command line `args` (the program's name first): the flag's variable, when it is set
/// and the flag was not typed. `None` when the flag was typed, has no variable, or is
/// not one of the flags of the subcommand `args` chose.
#[cfg(feature = "clap")]
pub fn variable_of(
    command: &clap::Command,
    args: &[std::ffi::OsString],
    long: &str,
) -> Option<String> {
    // The subcommand the arguments chose: its flags are the ones that were parsed.
    let mut chosen = command;
    for arg in args.iter().skip(1).filter_map(|a| a.to_str()) {
        if let Some(sub) = chosen.find_subcommand(arg) {
            chosen = sub;
        }
    }
    let flag = chosen
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?;
    let var = flag.get_env()?.to_str()?;
    let dashed = format!("--{long}");
    let short = flag.get_short().map(|s| format!("-{s}"));
    let typed = args.iter().filter_map(|a| a.to_str()).any(|a| {
        a.strip_prefix(dashed.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
            || short.as_deref().is_some_and(|s| a.starts_with(s))
    });
    (!typed && std::env::var_os(var).is_some()).then(|| var.to_owned())
}

/// `message`, about flag `--{long}` of `command`, ending with the environment variable the
/// flag's value came from on the command line `args` when it came from one
/// ([`variable_of`]): for the errors found after clap parsed the value (a zero duration, a
/// limit, a flag that contradicts another), which name only the flag.
#[cfg(feature = "clap")]
pub fn with_variable(
    message: String,
    command: &clap::Command,
    args: &[std::ffi::OsString],
    long: Option<&str>,
) -> String {
    match long.and_then(|long| variable_of(command, args, long)) {
        Some(var) => format!("{message} (the value comes from the environment variable {var})"),
        None => message,
    }
}

/// `error`, clap's refusal of the command line `args` of `command`, with a `tip:` line
/// naming the environment variable the bad value came from ([`variable_of`]): clap itself
/// names only the flag, which the user never typed. Other errors are returned as they
/// are; the exit code stays clap's (2).
#[cfg(feature = "clap")]
pub fn name_the_variable(
    mut error: clap::Error,
    command: &clap::Command,
    args: &[std::ffi::OsString],
) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};

    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return error;
    }
    // clap shows the flag as `--long <VALUE>` (or `--long` for a switch).
    let Some(ContextValue::String(shown)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    let Some(long) = shown.strip_prefix("--").and_then(|s| s.split(' ').next()) else {
        return error;
    };
    if let Some(var) = variable_of(command, args, long) {
        let tip = format!("the value comes from the environment variable {var}");
        error.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![tip.into()]),
        );
    }
    error
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    /// The Python reporter's package, beside this crate.
    const PYTHON_PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/src/vitals_reporter");

    /// `NAME = "VALUE"` assignments of a Python module, by name.
    fn python_constants(text: &str) -> BTreeMap<&str, &str> {
        text.lines()
            .filter_map(|line| line.split_once(" = "))
            .filter_map(|(name, value)| {
                let value = value.trim().strip_prefix('"')?.strip_suffix('"')?;
                let is_const =
                    !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
                is_const.then_some((name, value))
            })
            .collect()
    }

    /// The Python reporter reads the names `inject` writes: its `env.py` spells each as
    /// the constant of the same name here, and no other Python file spells one.
    #[test]
    fn the_python_reporter_reads_the_names_the_agent_writes() {
        let dir = Path::new(PYTHON_PACKAGE);
        let env_py = std::fs::read_to_string(dir.join("env.py")).expect("vitals_reporter/env.py");
        let expected = BTreeMap::from([
            ("AGENT_SOCKET", super::AGENT_SOCKET),
            ("NAME", super::NAME),
            ("VERSION", super::VERSION),
        ]);
        assert_eq!(
            python_constants(&env_py),
            expected,
            "vitals_reporter/env.py"
        );
        for entry in std::fs::read_dir(dir).expect("the Python package") {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_none_or(|e| e != "py") || path.ends_with("env.py") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a Python module");
            assert!(
                !text.contains("\"VITALS_"),
                "{}: names an env var by hand; use vitals_reporter.env",
                path.display()
            );
        }
    }
}
