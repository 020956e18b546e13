//! The group flags of `vitals-agent run` (SPEC §9): a pod's role in a multi-pod model and,
//! for a leader, the members it polls and how, checked once into a [`Group`].

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use vitals_core::state::group::MemberTarget;
use vitals_proto::env;

/// The group flags of `vitals-agent run`, part of [`super::RunArgs`].
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
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

/// The group part of [`super::Config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Group {
    /// Not part of a group (no `--group-role`).
    None,
    /// A member: serves `/group`, polls nothing.
    Member,
    /// The leader.
    Leader(GroupConfig),
}

/// Group flags that do not describe one group.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {why}")]
pub struct GroupError {
    /// The flag at fault.
    pub flag: &'static str,
    /// Why.
    pub why: String,
}

/// The most members a leader polls: a bound on its tasks and on what a typo in
/// `--group-size` can cost (the largest groups today are 16 to 32 pods).
pub const MAX_MEMBERS: usize = 256;

impl GroupArgs {
    /// Validates the group flags, the one place they are read (SPEC §9). A leader's members
    /// derived from `--group-size` are on `port`, this agent's own.
    pub fn validate(&self, port: u16) -> Result<Group, GroupError> {
        let err = |flag, why: &str| GroupError {
            flag,
            why: why.to_owned(),
        };
        let members: Vec<&str> = self
            .group_members
            .iter()
            .map(|m| m.trim())
            .filter(|m| !m.is_empty())
            .collect();
        let derived = self.group_size.is_some()
            || self.group_pod_name.is_some()
            || self.group_subdomain.is_some();
        match self.group_role {
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
                let size = self.group_size.ok_or_else(|| err("group-size", "missing (the group's pod count, leader included)"))?;
                let pod = self.group_pod_name.as_deref().map(str::trim).filter(|p| !p.is_empty());
                let pod = pod.ok_or_else(|| err("group-pod-name", "missing (the leader pod's name)"))?;
                let sub = self.group_subdomain.as_deref().map(str::trim).filter(|s| !s.is_empty());
                let sub = sub.ok_or_else(|| err("group-subdomain", "missing (the members' headless Service)"))?;
                if size == 0 {
                    return Err(err("group-size", "must be at least 1 (the leader)"));
                }
                for (flag, label) in [("group-pod-name", pod), ("group-subdomain", sub)] {
                    if !is_dns_label(label) {
                        return Err(err(flag, &format!("{label:?} is not a DNS label")));
                    }
                }
                let zone = self.member_zone()?;
                (1..size)
                    .map(|i| MemberTarget {
                        index: i as usize,
                        host: format!("{pod}-{i}.{sub}{zone}"),
                        port,
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
            poll: self.group_poll,
            timeout: self.group_timeout,
            lost_after: self.group_lost_after,
        }))
    }

    /// What follows `NAME-i.SUB` in a derived member's name: `.NAMESPACE.svc.DOMAIN.`, fully
    /// qualified (the trailing dot: no search-list walk, SPEC §11), when the namespace is
    /// known; else nothing (the name goes through the search list, as before).
    fn member_zone(&self) -> Result<String, GroupError> {
        let err = |flag, why: String| GroupError { flag, why };
        let Some(ns) = self
            .pod_namespace
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        else {
            // `run` says so once logging is up (this runs before it).
            return Ok(String::new());
        };
        if !is_dns_label(ns) {
            return Err(err("pod-namespace", format!("{ns:?} is not a DNS label")));
        }
        let domain = match self
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
}

/// Where the kubelet writes a pod's DNS configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";

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
fn member_addr(index: usize, text: &str) -> Result<MemberTarget, GroupError> {
    let bad = |why: &str| GroupError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError, RunArgs};

    fn group_of(args: &[&str]) -> Result<Group, ConfigError> {
        Config::try_from(RunArgs::from_flags(args).expect("parses")).map(|c| c.group)
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
                Err(ConfigError::Group(GroupError {
                    flag: "pod-namespace",
                    ..
                }))
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
        assert!(RunArgs::from_flags(["--group-role", "boss"]).is_err());
    }
}
