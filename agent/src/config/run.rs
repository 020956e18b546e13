//! The flags of `vitals-agent run` ([`RunArgs`], each also read from its `VITALS_*`
//! variable by clap) and their validated form, [`Config`], which is all `run` needs to know.
//!
//! Values are checked here, once, so a bad flag fails at start with a clear message and a
//! non-zero exit instead of surprising the kubelet later.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, FromArgMatches as _};
use vitals_core::upstreams::{self, UpstreamSpec, UpstreamsError};
use vitals_core::verdict::Thresholds;
use vitals_proto::{env, WorkerName};

use super::group::{Group, GroupArgs, GroupError};
use super::{LogFormat, DURATIONS_HELP};

/// Flags of `vitals-agent run` (SPEC §5).
#[derive(Debug, Clone, Args)]
#[command(after_help = DURATIONS_HELP)]
pub struct RunArgs {
    /// Address of the probe/metrics/status HTTP port. `[::]` listens dual-stack (IPv6 and
    /// IPv4), falling back to 0.0.0.0 where the kernel has IPv6 disabled.
    #[arg(long, env = env::LISTEN, default_value = "[::]:9180")]
    pub listen: SocketAddr,

    /// Unix socket workers report to; its folder is created if missing.
    #[arg(long, env = env::SOCKET, default_value = vitals_proto::DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// File mode of the socket, in octal.
    #[arg(long, env = env::SOCKET_MODE, default_value = "0660", value_parser = parse_mode)]
    pub socket_mode: u32,

    /// A worker that must be ready for /readyz and started for /startupz (repeat the
    /// flag, or give a comma-separated list in the env var).
    #[arg(long, env = env::EXPECT, value_delimiter = ',', value_parser = parse_name)]
    pub expect: Vec<WorkerName>,

    /// Liveness fails after this long without a heartbeat (also: stopped, silent).
    #[arg(long, env = env::HANG_TIMEOUT, default_value = "10s", value_parser = humantime::parse_duration)]
    pub hang_timeout: Duration,

    /// Liveness fails when heartbeats arrive but the loop's progress has not moved for this long.
    #[arg(long, env = env::STALL_TIMEOUT, default_value = "30s", value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,

    /// Liveness fails when loading/warming has not advanced for this long.
    #[arg(long, env = env::LOAD_STALL_TIMEOUT, default_value = "300s", value_parser = humantime::parse_duration)]
    pub load_stall_timeout: Duration,

    /// Liveness fails after this long continuously in /proc state D.
    #[arg(long, env = env::D_STATE_TIMEOUT, default_value = "30s", value_parser = humantime::parse_duration)]
    pub d_state_timeout: Duration,

    /// How often each worker's /proc entry is sampled.
    #[arg(long, env = env::PROC_INTERVAL, default_value = "1s", value_parser = humantime::parse_duration)]
    pub proc_interval: Duration,

    /// After SIGTERM/SIGINT, keep answering for this long (readiness failing), then exit 0.
    #[arg(long, env = env::SHUTDOWN_GRACE, default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log line format.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Most HTTP connections open at once; at the cap a new one is still served and the
    /// oldest idle one closed, never queued.
    #[arg(long, env = env::MAX_CONNECTIONS, default_value = "1024")]
    pub max_connections: usize,

    /// An HTTP connection is closed when a request's headers (or the next request on a
    /// kept-alive connection) take longer than this.
    #[arg(long, env = env::HEADER_TIMEOUT, default_value = "5s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// Containers that don't speak the protocol, with their original probes (SPEC §8): a
    /// JSON file, or the JSON itself (what `vitals-agent inject` puts in the env var).
    #[arg(long, env = env::UPSTREAMS, value_name = "FILE|JSON")]
    pub upstreams: Option<String>,

    /// The pod's IP (downward API); upstreams are probed there, else on 127.0.0.1.
    #[arg(long, env = env::POD_IP)]
    pub pod_ip: Option<IpAddr>,

    /// The group flags (SPEC §9).
    #[command(flatten)]
    pub group: GroupArgs,
}

impl RunArgs {
    /// Parses `flags`, the arguments after `vitals-agent run`, over the built-in defaults
    /// alone: no `VITALS_*` variable is read, so the process environment cannot change or
    /// fail the result (the binary reads them; see `vitals-agent run --help`).
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let command = Self::augment_args(clap::Command::new("run")).mut_args(|a| a.env(None));
        let argv = std::iter::once(OsString::from("run")).chain(flags.into_iter().map(Into::into));
        Self::from_arg_matches(&command.try_get_matches_from(argv)?)
    }
}

/// A value `run` cannot work with, found after parsing.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A duration that must be positive is zero.
    #[error("--{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// `--max-connections 0` would refuse every probe.
    #[error("--max-connections must be at least 1")]
    NoConnections,
    /// The upstreams file could not be read.
    #[error("--upstreams {path}: {source}")]
    UpstreamsFile {
        /// The path given.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The upstreams configuration is invalid (the message names the field).
    #[error(transparent)]
    Upstreams(#[from] UpstreamsError),
    /// The group flags do not describe one group (the message names the flag).
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The flags do not parse ([`RunArgs::from_flags`]; the binary's command line reports
    /// these itself, as clap does).
    #[error(transparent)]
    Flags(#[from] clap::Error),
}

impl ConfigError {
    /// The flag at fault (its long name, without `--`); `None` for [`ConfigError::Flags`],
    /// whose message names it.
    pub fn flag(&self) -> Option<&'static str> {
        match self {
            Self::ZeroDuration(flag) => Some(flag),
            Self::NoConnections => Some("max-connections"),
            Self::UpstreamsFile { .. } | Self::Upstreams(_) => Some("upstreams"),
            Self::Group(e) => Some(e.flag),
            Self::Flags(_) => None,
        }
    }
}

/// Validated settings of `vitals-agent run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Worker socket path.
    pub socket: PathBuf,
    /// Worker socket file mode.
    pub socket_mode: u32,
    /// Workers that must exist.
    pub expect: Vec<WorkerName>,
    /// Verdict bounds.
    pub thresholds: Thresholds,
    /// /proc sampling period.
    pub proc_interval: Duration,
    /// How long to keep answering after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// HTTP connection cap.
    pub max_connections: usize,
    /// HTTP header read (and keep-alive idle) bound.
    pub header_timeout: Duration,
    /// Containers watched through their own probes (SPEC §8).
    pub upstreams: Vec<Arc<UpstreamSpec>>,
    /// Where the upstreams are probed (`None`: 127.0.0.1).
    pub pod_ip: Option<IpAddr>,
    /// This pod's part in a multi-pod model (SPEC §9).
    pub group: Group,
}

impl TryFrom<RunArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: RunArgs) -> Result<Self, ConfigError> {
        for (name, value) in [
            ("hang-timeout", a.hang_timeout),
            ("stall-timeout", a.stall_timeout),
            ("load-stall-timeout", a.load_stall_timeout),
            ("d-state-timeout", a.d_state_timeout),
            ("proc-interval", a.proc_interval),
            ("header-timeout", a.header_timeout),
            ("group-poll", a.group.group_poll),
            ("group-timeout", a.group.group_timeout),
            ("group-lost-after", a.group.group_lost_after),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if a.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        let group = a.group.validate(a.listen.port())?;
        let mut expect = a.expect;
        expect.sort();
        expect.dedup();
        let upstreams = match a.upstreams.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(text) => {
                let json = if text.starts_with('{') {
                    text.to_owned()
                } else {
                    std::fs::read_to_string(text).map_err(|source| ConfigError::UpstreamsFile {
                        path: text.to_owned(),
                        source,
                    })?
                };
                upstreams::parse(&json, &expect, |name| std::env::var(name).ok())?
                    .into_iter()
                    .map(Arc::new)
                    .collect()
            }
        };
        Ok(Config {
            listen: a.listen,
            socket: a.socket,
            socket_mode: a.socket_mode,
            expect,
            thresholds: Thresholds {
                hang: a.hang_timeout,
                stall: a.stall_timeout,
                load_stall: a.load_stall_timeout,
                d_state: a.d_state_timeout,
                sample_max_age: sample_max_age(a.proc_interval),
            },
            proc_interval: a.proc_interval,
            shutdown_grace: a.shutdown_grace,
            log_format: a.log_format,
            max_connections: a.max_connections,
            header_timeout: a.header_timeout,
            upstreams,
            pod_ip: a.pod_ip,
            group,
        })
    }
}

impl Config {
    /// The settings of `vitals-agent run` given no flag, whatever the environment: the
    /// built-in defaults (SPEC §5), validated. No `VITALS_*` variable is read, so tests and
    /// embedders get the same settings wherever they run and a bad variable cannot fail
    /// them. An error would mean a built-in default is invalid, which the tests rule out.
    pub fn defaults() -> Result<Self, ConfigError> {
        let no_flags: [&str; 0] = [];
        Config::try_from(RunArgs::from_flags(no_flags)?)
    }
}

/// How old a /proc sample may be and still count (SPEC §7): three rounds, and at least
/// 5 s, so that a round made late by a starved node is not taken for a stuck sampler.
pub fn sample_max_age(proc_interval: Duration) -> Duration {
    (proc_interval * 3).max(Duration::from_secs(5))
}

/// Parses an octal file mode such as `0660` or `660`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("{text:?} is not an octal file mode (example: 0660)"))?;
    if mode > 0o777 {
        return Err(format!(
            "{text:?}: only permission bits (at most 0777) are allowed"
        ));
    }
    Ok(mode)
}

fn parse_name(text: &str) -> Result<WorkerName, String> {
    WorkerName::parse(text.trim()).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_humantime_forms_with_units() {
        let a = RunArgs::from_flags(["--hang-timeout", "1m30s", "--stall-timeout", "250ms"])
            .expect("parses");
        assert_eq!(a.hang_timeout, Duration::from_secs(90));
        assert_eq!(a.stall_timeout, Duration::from_millis(250));
        let a = RunArgs::from_flags(["--load-stall-timeout", "2h"]).expect("parses");
        assert_eq!(a.load_stall_timeout, Duration::from_secs(7200));
        let a = RunArgs::from_flags(["--d-state-timeout", "10sec"]).expect("unit words parse");
        assert_eq!(a.d_state_timeout, Duration::from_secs(10));
        for bad in ["10", "s", "-1s", "1x", ""] {
            let flag = format!("--hang-timeout={bad}");
            let err = RunArgs::from_flags([&flag]).expect_err(bad).to_string();
            assert!(err.contains("--hang-timeout"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn modes_are_octal_permission_bits() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("4777").is_err());
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::defaults().expect("the built-in defaults are valid");
        assert_eq!(c.listen, "[::]:9180".parse().expect("addr"));
        assert_eq!(c.socket, PathBuf::from("/run/vitals/agent.sock"));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.thresholds.hang, Duration::from_secs(10));
        assert_eq!(c.thresholds.stall, Duration::from_secs(30));
        assert_eq!(c.thresholds.load_stall, Duration::from_secs(300));
        assert_eq!(c.thresholds.d_state, Duration::from_secs(30));
        assert_eq!(c.proc_interval, Duration::from_secs(1));
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.expect.is_empty());
        assert_eq!(c.group, Group::None);
    }

    #[test]
    fn expect_repeats_and_takes_comma_lists() {
        let a = RunArgs::from_flags(["--expect", "model", "--expect", "b,c"]).expect("parses");
        let names: Vec<_> = a.expect.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["model", "b", "c"]);
        assert!(RunArgs::from_flags(["--expect", "Bad_Name"]).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["--hang-timeout", "10"][..],
            &["--listen", "nowhere"],
            &["--socket-mode", "abc"],
            &["--log-format", "xml"],
            &["--max-connections", "-1"],
        ] {
            assert!(RunArgs::from_flags(bad).is_err(), "{bad:?} must be refused");
        }
        let zero = RunArgs::from_flags(["--proc-interval", "0s"]).expect("parses");
        assert!(matches!(
            Config::try_from(zero),
            Err(ConfigError::ZeroDuration("proc-interval"))
        ));
        let none = RunArgs::from_flags(["--max-connections", "0"]).expect("parses");
        assert!(matches!(
            Config::try_from(none),
            Err(ConfigError::NoConnections)
        ));
    }

    #[test]
    fn upstreams_from_a_file_or_inline_json() {
        let json = r#"{"vllm": {"readinessProbe": {"httpGet": {"path": "/health", "port": 8000}}, "metrics": "vllm"}}"#;
        let inline =
            RunArgs::from_flags(["--upstreams", json, "--pod-ip", "10.1.2.3"]).expect("parses");
        let c = Config::try_from(inline).expect("valid");
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].name.as_str(), "vllm");
        assert_eq!(c.pod_ip, Some("10.1.2.3".parse().expect("ip")));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("u.json");
        std::fs::write(&file, json).expect("write");
        let path = file.to_string_lossy().into_owned();
        let from_file =
            Config::try_from(RunArgs::from_flags(["--upstreams", &path]).expect("parses"));
        assert_eq!(from_file.expect("valid").upstreams.len(), 1);
        let missing = Config::try_from(
            RunArgs::from_flags(["--upstreams", "/nonexistent/u.json"]).expect("parses"),
        );
        assert!(matches!(missing, Err(ConfigError::UpstreamsFile { .. })));
        let clash = RunArgs::from_flags(["--upstreams", json, "--expect", "vllm"]).expect("parses");
        let e = Config::try_from(clash).expect_err("a name in both");
        assert!(
            e.to_string().contains("vllm: also named by --expect"),
            "{e}"
        );
    }
}
