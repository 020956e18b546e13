//! Command line of `vitals-agent` (clap derive; every flag also from `VITALS_<FLAG>`) and
//! its validated form, [`Config`], which is all `run` needs to know.
//!
//! Values are checked here, once, so a bad flag fails at start with a clear message and a
//! non-zero exit instead of surprising the kubelet later.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use vitals_proto::{env, WorkerName};

use crate::inject::webhook::WebhookArgs;
use crate::inject::InjectArgs;
use crate::surfaces::status::StatusArgs;
use vitals_core::state::group::MemberTarget;
use vitals_core::upstreams::{self, UpstreamSpec, UpstreamsError};
use vitals_core::verdict::Thresholds;

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

    /// Most HTTP connections served at once; more are closed at once, not queued.
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

    /// The pod's namespace (downward API `metadata.namespace`). A leader's members derived
    /// from `--group-size` are then fully qualified names, looked up without the search
    /// list (SPEC §11).
    #[arg(long, env = env::POD_NAMESPACE)]
    pub pod_namespace: Option<String>,

    /// The cluster's DNS domain, for the members' fully qualified names. Default: the
    /// domain in /etc/resolv.conf's search list (`<namespace>.svc.<domain>`, as the
    /// kubelet writes it), else `cluster.local`.
    #[arg(long, env = env::CLUSTER_DOMAIN)]
    pub cluster_domain: Option<String>,

    /// This pod's role in a multi-pod model (SPEC §9): the leader polls its members'
    /// `/group` and judges the group as one; a member only serves `/group`.
    #[arg(long, env = env::GROUP_ROLE, value_enum)]
    pub group_role: Option<GroupRole>,

    /// The leader's members, as their agents' addresses (comma-separated HOST:PORT).
    #[arg(
        long,
        env = env::GROUP_MEMBERS,
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    pub group_members: Vec<String>,

    /// Pods in the group, leader included (LeaderWorkerSet's size): members are
    /// `<pod-name>-1 … <pod-name>-(N-1)` under `--group-subdomain`, on this agent's port.
    #[arg(long, env = env::GROUP_SIZE)]
    pub group_size: Option<u32>,

    /// The leader pod's name (downward API), for members derived from `--group-size`.
    #[arg(long, env = env::GROUP_POD_NAME)]
    pub group_pod_name: Option<String>,

    /// The headless Service's name the members resolve under (LeaderWorkerSet's subdomain).
    #[arg(long, env = env::GROUP_SUBDOMAIN)]
    pub group_subdomain: Option<String>,

    /// How often the leader polls each member; each poll's timeout is the same.
    #[arg(long, env = env::GROUP_POLL, default_value = "1s", value_parser = humantime::parse_duration)]
    pub group_poll: Duration,

    /// The leader's readiness fails when a member has not answered for this long.
    #[arg(long, env = env::GROUP_TIMEOUT, default_value = "3s", value_parser = humantime::parse_duration)]
    pub group_timeout: Duration,

    /// The leader's model liveness fails (`group_broken: member i lost`) when a member of
    /// a formed group has not answered for this long.
    #[arg(long, env = env::GROUP_LOST_AFTER, default_value = "60s", value_parser = humantime::parse_duration)]
    pub group_lost_after: Duration,
}

/// A pod's role in a group (SPEC §9): what `inject` writes into a group's agents
/// (`VITALS_GROUP_ROLE`) and `run` parses, one spelling (clap's) both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupRole {
    /// Polls the members and judges the group.
    Leader,
    /// Judges its own pod and serves `/group`.
    Member,
}

impl std::fmt::Display for GroupRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self
            .to_possible_value()
            .expect("no variant is skipped: each role is a value of --group-role");
        f.write_str(value.get_name())
    }
}

impl std::str::FromStr for GroupRole {
    type Err = String;

    /// The role a `--group-role` value names, as clap reads it.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        <Self as ValueEnum>::from_str(text, false)
    }
}

/// A leader's group settings (SPEC §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// The members, in index order; only these are ever polled.
    pub members: Vec<MemberTarget>,
    /// Poll period, also each poll's timeout.
    pub poll: Duration,
    /// Unanswered this long: `unreachable` (readiness).
    pub timeout: Duration,
    /// Unanswered this long in a formed group: `lost` (liveness).
    pub lost_after: Duration,
}

/// The group part of [`Config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Group {
    /// Not part of a group (no `--group-role`).
    None,
    /// A member: serves `/group`, polls nothing.
    Member,
    /// The leader.
    Leader(GroupConfig),
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
    #[error("--{flag}: {why}")]
    Group {
        /// The flag at fault.
        flag: &'static str,
        /// Why.
        why: String,
    },
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
            ("group-poll", a.group_poll),
            ("group-timeout", a.group_timeout),
            ("group-lost-after", a.group_lost_after),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if a.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        let group = group(&a)?;
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

/// The most members a leader polls: a bound on its tasks and on what a typo in
/// `--group-size` can cost (the largest groups today are 16 to 32 pods).
pub const MAX_MEMBERS: usize = 256;

/// Validates the group flags, the one place they are read (SPEC §9).
fn group(a: &RunArgs) -> Result<Group, ConfigError> {
    let err = |flag, why: &str| ConfigError::Group {
        flag,
        why: why.to_owned(),
    };
    let members: Vec<&str> = a
        .group_members
        .iter()
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
        .collect();
    let derived =
        a.group_size.is_some() || a.group_pod_name.is_some() || a.group_subdomain.is_some();
    match a.group_role {
        None if !members.is_empty() => return Err(err("group-members", "needs --group-role leader")),
        None if derived => return Err(err("group-size", "needs --group-role leader")),
        None => return Ok(Group::None),
        Some(GroupRole::Member) if !members.is_empty() || derived => {
            return Err(err(
                "group-role",
                "a member polls nothing: --group-members, --group-size, --group-pod-name and --group-subdomain are for the leader",
            ))
        }
        Some(GroupRole::Member) => return Ok(Group::Member),
        Some(GroupRole::Leader) => {}
    }
    let targets = match (members.is_empty(), derived) {
        (false, true) => {
            return Err(err(
                "group-members",
                "give either --group-members or --group-size with --group-pod-name and --group-subdomain, not both",
            ))
        }
        (true, false) => {
            return Err(err(
                "group-members",
                "a leader needs its members: --group-members HOST:PORT,... or --group-size, --group-pod-name and --group-subdomain",
            ))
        }
        (false, false) => members
            .iter()
            .enumerate()
            .map(|(i, m)| member_addr(i + 1, m))
            .collect::<Result<Vec<_>, _>>()?,
        (true, true) => {
            let size = a.group_size.ok_or_else(|| err("group-size", "missing (the group's pod count, leader included)"))?;
            let pod = a.group_pod_name.as_deref().map(str::trim).filter(|p| !p.is_empty());
            let pod = pod.ok_or_else(|| err("group-pod-name", "missing (the leader pod's name)"))?;
            let sub = a.group_subdomain.as_deref().map(str::trim).filter(|s| !s.is_empty());
            let sub = sub.ok_or_else(|| err("group-subdomain", "missing (the members' headless Service)"))?;
            if size == 0 {
                return Err(err("group-size", "must be at least 1 (the leader)"));
            }
            for (flag, label) in [("group-pod-name", pod), ("group-subdomain", sub)] {
                if !is_dns_label(label) {
                    return Err(err(flag, &format!("{label:?} is not a DNS label")));
                }
            }
            let zone = member_zone(a)?;
            (1..size)
                .map(|i| MemberTarget {
                    index: i as usize,
                    host: format!("{pod}-{i}.{sub}{zone}"),
                    port: a.listen.port(),
                })
                .collect()
        }
    };
    if targets.len() > MAX_MEMBERS {
        return Err(err(
            if members.is_empty() {
                "group-size"
            } else {
                "group-members"
            },
            &format!("{} members; at most {MAX_MEMBERS}", targets.len()),
        ));
    }
    Ok(Group::Leader(GroupConfig {
        members: targets,
        poll: a.group_poll,
        timeout: a.group_timeout,
        lost_after: a.group_lost_after,
    }))
}

/// How old a /proc sample may be and still count (SPEC §7): three rounds, and at least
/// 5 s, so that a round made late by a starved node is not taken for a stuck sampler.
pub fn sample_max_age(proc_interval: Duration) -> Duration {
    (proc_interval * 3).max(Duration::from_secs(5))
}

/// Where the kubelet writes a pod's DNS configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What follows `NAME-i.SUB` in a derived member's name: `.NAMESPACE.svc.DOMAIN.`, fully
/// qualified (the trailing dot: no search-list walk, SPEC §11), when the namespace is
/// known; else nothing (the name goes through the search list, as before).
fn member_zone(a: &RunArgs) -> Result<String, ConfigError> {
    let err = |flag, why: String| ConfigError::Group { flag, why };
    let Some(ns) = a
        .pod_namespace
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    else {
        tracing::warn!(
            "{} is not set: the members' names are looked up through the search list",
            env::POD_NAMESPACE
        );
        return Ok(String::new());
    };
    if !is_dns_label(ns) {
        return Err(err("pod-namespace", format!("{ns:?} is not a DNS label")));
    }
    let domain = match a
        .cluster_domain
        .as_deref()
        .map(|d| d.trim().trim_end_matches('.'))
    {
        Some(d) => d.to_owned(),
        None => std::fs::read_to_string(RESOLV_CONF)
            .ok()
            .and_then(|text| cluster_domain(&text, ns).map(str::to_owned))
            .unwrap_or_else(|| "cluster.local".to_owned()),
    };
    if domain.is_empty() || domain.len() > 200 || !domain.split('.').all(is_dns_label) {
        return Err(err(
            "cluster-domain",
            format!("{domain:?} is not a DNS name"),
        ));
    }
    Ok(format!(".{ns}.svc.{domain}."))
}

/// The cluster domain in a pod's resolv.conf: the search entry `<namespace>.svc.<domain>`
/// the kubelet writes first for `dnsPolicy: ClusterFirst` (and `ClusterFirstWithHostNet`).
fn cluster_domain<'a>(resolv_conf: &'a str, namespace: &str) -> Option<&'a str> {
    let prefix = format!("{namespace}.svc.");
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("search"))
        .flat_map(str::split_whitespace)
        .find_map(|entry| entry.trim_end_matches('.').strip_prefix(prefix.as_str()))
        .filter(|d| !d.is_empty())
}

/// Parses one `HOST:PORT` of `--group-members` (`[v6]:PORT` for IPv6 addresses).
fn member_addr(index: usize, text: &str) -> Result<MemberTarget, ConfigError> {
    let bad = |why: &str| ConfigError::Group {
        flag: "group-members",
        why: format!("{text:?}: {why}"),
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number 1-65535"))?;
    if port == 0 {
        return Err(bad("the port is not a number 1-65535"));
    }
    let valid_host = host.parse::<IpAddr>().is_ok()
        || (!host.is_empty() && host.len() <= 253 && host.split('.').all(is_dns_label));
    if !valid_host {
        return Err(bad("the host is neither an IP address nor a DNS name"));
    }
    Ok(MemberTarget {
        index,
        host: host.to_owned(),
        port,
    })
}

/// An RFC 1123 label: 1-63 of `a-z0-9-`, not starting or ending with `-`.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Config {
    /// The defaults of `vitals-agent run`, as if no flag were given (for tests and
    /// embedding; ignores the environment).
    pub fn defaults() -> Self {
        let args = Cli::try_parse_from(["vitals-agent", "run"])
            .map(|cli| cli.command)
            .expect("the defaults of `run` parse");
        let Command::Run(args) = args else {
            unreachable!("parsed the `run` subcommand")
        };
        Config::try_from(*args).expect("the defaults of `run` are valid")
    }
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

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["vitals-agent", "run"].iter().chain(args))?;
        match cli.command {
            Command::Run(a) => Ok(*a),
            _ => unreachable!("parsed run"),
        }
    }

    #[test]
    fn durations_take_humantime_forms_with_units() {
        let a = run_args(&["--hang-timeout", "1m30s", "--stall-timeout", "250ms"]).expect("parses");
        assert_eq!(a.hang_timeout, Duration::from_secs(90));
        assert_eq!(a.stall_timeout, Duration::from_millis(250));
        let a = run_args(&["--load-stall-timeout", "2h"]).expect("parses");
        assert_eq!(a.load_stall_timeout, Duration::from_secs(7200));
        let a = run_args(&["--d-state-timeout", "10sec"]).expect("unit words parse");
        assert_eq!(a.d_state_timeout, Duration::from_secs(10));
        for bad in ["10", "s", "-1s", "1x", ""] {
            let flag = format!("--hang-timeout={bad}");
            let err = run_args(&[&flag]).expect_err(bad).to_string();
            assert!(err.contains("--hang-timeout"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn help_shows_the_duration_forms() {
        let err = Cli::try_parse_from(["vitals-agent", "run", "--help"]).expect_err("help exits");
        assert!(err.to_string().contains(DURATIONS_HELP), "{err}");
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
        let c = Config::defaults();
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

    fn group_of(args: &[&str]) -> Result<Group, ConfigError> {
        Config::try_from(run_args(args).expect("parses")).map(|c| c.group)
    }

    /// A LeaderWorkerSet leader's flags: its group's size, its pod's name, the subdomain.
    fn lws_leader<'a>(size: &'a str, pod_name: &'a str, subdomain: &'a str) -> [&'a str; 8] {
        [
            "--group-role",
            "leader",
            "--group-size",
            size,
            "--group-pod-name",
            pod_name,
            "--group-subdomain",
            subdomain,
        ]
    }

    /// SPEC §11: a LeaderWorkerSet leader that knows its namespace looks its members up
    /// by fully qualified name (trailing dot), never through the search list (ndots 5 makes
    /// `NAME-i.SUB` walk every search domain first).
    #[test]
    fn a_leader_that_knows_its_namespace_names_its_members_fully_qualified() {
        let shown = |extra: &[&str]| match group_of(
            &[&lws_leader("3", "vllm-0", "vllm")[..], extra].concat(),
        ) {
            Ok(Group::Leader(g)) => g
                .members
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            other => panic!("a leader: {other:?}"),
        };
        assert_eq!(
            shown(&[
                "--pod-namespace",
                "serving",
                "--cluster-domain",
                "corp.example"
            ]),
            [
                "vllm-0-1.vllm.serving.svc.corp.example.:9180",
                "vllm-0-2.vllm.serving.svc.corp.example.:9180"
            ]
        );
        let bad = group_of(
            &[
                &lws_leader("2", "p", "s")[..],
                &["--pod-namespace", "Bad_NS"],
            ]
            .concat(),
        );
        assert!(
            matches!(
                bad,
                Err(ConfigError::Group {
                    flag: "pod-namespace",
                    ..
                })
            ),
            "{bad:?}"
        );
        let resolv = "nameserver 10.96.0.10\nsearch serving.svc.corp.example svc.corp.example corp.example\noptions ndots:5\n";
        assert_eq!(cluster_domain(resolv, "serving"), Some("corp.example"));
        assert_eq!(cluster_domain(resolv, "other"), None);
        assert_eq!(cluster_domain("search serving.svc.\n", "serving"), None);
        assert_eq!(cluster_domain("", "serving"), None);
    }

    #[test]
    fn a_leader_polls_the_members_it_was_given() {
        let g = group_of(&[
            "--group-role",
            "leader",
            "--group-members",
            "10.0.0.2:9180, m-2.sub:9181,[::1]:9",
        ]);
        let Ok(Group::Leader(g)) = g else {
            panic!("a leader: {g:?}")
        };
        let shown: Vec<_> = g.members.iter().map(|m| (m.index, m.to_string())).collect();
        assert_eq!(
            shown,
            [
                (1, "10.0.0.2:9180".to_owned()),
                (2, "m-2.sub:9181".to_owned()),
                (3, "[::1]:9".to_owned())
            ]
        );
        assert_eq!(g.poll, Duration::from_secs(1));
        assert_eq!(g.timeout, Duration::from_secs(3));
        assert_eq!(g.lost_after, Duration::from_secs(60));
    }

    #[test]
    fn a_leaderworkerset_leader_derives_its_members_on_its_own_port() {
        let g = group_of(&[
            "--listen",
            "0.0.0.0:9200",
            "--group-role",
            "leader",
            "--group-size",
            "4",
            "--group-pod-name",
            "vllm-0",
            "--group-subdomain",
            "vllm",
            "--group-poll",
            "500ms",
        ]);
        let Ok(Group::Leader(g)) = g else {
            panic!("a leader: {g:?}")
        };
        let shown: Vec<_> = g.members.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "vllm-0-1.vllm:9200",
                "vllm-0-2.vllm:9200",
                "vllm-0-3.vllm:9200"
            ]
        );
        assert_eq!(g.poll, Duration::from_millis(500));
        let alone = group_of(&lws_leader("1", "a-0", "a"));
        assert!(matches!(alone, Ok(Group::Leader(g)) if g.members.is_empty()));
        assert_eq!(
            group_of(&["--group-role", "member"]).ok(),
            Some(Group::Member)
        );
    }

    #[test]
    fn group_flags_that_do_not_describe_one_group_name_the_flag() {
        for (args, flag) in [
            (&["--group-members", "a:1"][..], "--group-members"),
            (&["--group-size", "2"], "--group-size"),
            (&["--group-role", "leader"], "--group-members"),
            (
                &["--group-role", "member", "--group-members", "a:1"],
                "--group-role",
            ),
            (
                &[
                    "--group-role",
                    "leader",
                    "--group-members",
                    "a:1",
                    "--group-size",
                    "2",
                ],
                "--group-members",
            ),
            (
                &["--group-role", "leader", "--group-members", "a"],
                "--group-members",
            ),
            (
                &["--group-role", "leader", "--group-members", "a:0"],
                "--group-members",
            ),
            (
                &["--group-role", "leader", "--group-members", "a:99999"],
                "--group-members",
            ),
            (
                &["--group-role", "leader", "--group-members", "bad_host:1"],
                "--group-members",
            ),
            (
                &[
                    "--group-role",
                    "leader",
                    "--group-size",
                    "3",
                    "--group-pod-name",
                    "p",
                ],
                "--group-subdomain",
            ),
            (
                &[
                    "--group-role",
                    "leader",
                    "--group-size",
                    "3",
                    "--group-subdomain",
                    "s",
                ],
                "--group-pod-name",
            ),
            (
                &[
                    "--group-role",
                    "leader",
                    "--group-pod-name",
                    "p",
                    "--group-subdomain",
                    "s",
                ],
                "--group-size",
            ),
            (&lws_leader("0", "p", "s")[..], "--group-size"),
            (&lws_leader("9999", "p", "s")[..], "--group-size"),
            (&lws_leader("2", "P", "s")[..], "--group-pod-name"),
            (
                &[
                    "--group-role",
                    "leader",
                    "--group-members",
                    "a:1",
                    "--group-poll",
                    "0s",
                ],
                "--group-poll",
            ),
        ] {
            let e = group_of(args).expect_err(&format!("{args:?}")).to_string();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
        assert!(run_args(&["--group-role", "boss"]).is_err());
    }

    #[test]
    fn expect_repeats_and_takes_comma_lists() {
        let a = run_args(&["--expect", "model", "--expect", "b,c"]).expect("parses");
        let names: Vec<_> = a.expect.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["model", "b", "c"]);
        assert!(run_args(&["--expect", "Bad_Name"]).is_err());
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
            assert!(run_args(bad).is_err(), "{bad:?} must be refused");
        }
        let zero = run_args(&["--proc-interval", "0s"]).expect("parses");
        assert!(matches!(
            Config::try_from(zero),
            Err(ConfigError::ZeroDuration("proc-interval"))
        ));
        let none = run_args(&["--max-connections", "0"]).expect("parses");
        assert!(matches!(
            Config::try_from(none),
            Err(ConfigError::NoConnections)
        ));
    }

    #[test]
    fn upstreams_from_a_file_or_inline_json() {
        let json = r#"{"vllm": {"readinessProbe": {"httpGet": {"path": "/health", "port": 8000}}, "metrics": "vllm"}}"#;
        let inline = run_args(&["--upstreams", json, "--pod-ip", "10.1.2.3"]).expect("parses");
        let c = Config::try_from(inline).expect("valid");
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].name.as_str(), "vllm");
        assert_eq!(c.pod_ip, Some("10.1.2.3".parse().expect("ip")));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("u.json");
        std::fs::write(&file, json).expect("write");
        let path = file.to_string_lossy().into_owned();
        let from_file = Config::try_from(run_args(&["--upstreams", &path]).expect("parses"));
        assert_eq!(from_file.expect("valid").upstreams.len(), 1);
        let missing =
            Config::try_from(run_args(&["--upstreams", "/nonexistent/u.json"]).expect("parses"));
        assert!(matches!(missing, Err(ConfigError::UpstreamsFile { .. })));
        let clash = run_args(&["--upstreams", json, "--expect", "vllm"]).expect("parses");
        let e = Config::try_from(clash).expect_err("a name in both");
        assert!(
            e.to_string().contains("vllm: also named by --expect"),
            "{e}"
        );
    }
}
