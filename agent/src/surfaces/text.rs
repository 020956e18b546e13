//! The one place typed verdicts become words (SPEC §3, §4, §7): target labels, check names,
//! reasons and `fail: <worker>: <reason>`. Verdicts carry types ([`Target`], [`Reason`]);
//! the probe port, the metrics, the transition log and `/status` render them here.

use std::borrow::Cow;

use vitals_core::verdict::{CheckName, Failing, Reason, Target};

/// The agent's own target and its line in the aggregates. A container cannot be named so
/// (container and worker names start with `[a-z0-9]`), so a container named `agent` keeps
/// its name and its own metric series, verbose line and transitions.
pub const AGENT: &str = "_agent";

/// The aggregates' target (`/readyz`, `/startupz`), unlike any container name for the same
/// reason.
pub const ALL: &str = "_all";

/// A target as a label, a transition's `target` and a verbose line's name: [`AGENT`],
/// [`ALL`] or the container's name.
pub fn target(t: &Target) -> &str {
    match t {
        Target::Agent => AGENT,
        Target::All => ALL,
        Target::Container(name) => name.as_str(),
    }
}

/// The name of a verbose or JSON line: a target, `group`, `connected`, `live`, `phase`,
/// `started`, `process`, `awake`, `children`, `readinessProbe` or `check:<name>`.
pub fn check_name(name: &CheckName) -> Cow<'_, str> {
    Cow::Borrowed(match name {
        CheckName::Target(t) => target(t),
        CheckName::Group => "group",
        CheckName::Connected => "connected",
        CheckName::Live => "live",
        CheckName::Phase => "phase",
        CheckName::Started => "started",
        CheckName::Process => "process",
        CheckName::Awake => "awake",
        CheckName::Children => "children",
        CheckName::ReadinessProbe => "readinessProbe",
        CheckName::Check(check) => return Cow::Owned(format!("check:{check}")),
    })
}

/// The reason as probes answer it: one snake_case word, then `: detail` (SPEC §7).
/// (Functions rather than `Display` impls: the verdict types are not this module's to
/// implement traits for once the pure core is a crate of its own.)
pub fn reason(r: &Reason) -> String {
    match r {
        Reason::Agent(r) => r.as_str().to_owned(),
        Reason::Startup(r) => r.to_string(),
        Reason::Ready(r) => r.to_string(),
        Reason::Live(r) => r.to_string(),
        Reason::Upstream(r) => r.to_string(),
        Reason::Group(r) => r.to_string(),
        Reason::Broken(r) => r.to_string(),
    }
}

/// `<reason>`, or in an aggregate `<container>: <reason>` (SPEC §7).
pub fn failing(f: &Failing) -> String {
    match &f.container {
        Some(name) => format!("{name}: {}", reason(&f.reason)),
        None => reason(&f.reason),
    }
}

/// A verdict as the transition log and the verdict log lines write it: `pass` or
/// `fail: <reason>`.
pub fn outcome(result: &Result<(), Failing>) -> String {
    match result {
        Ok(()) => "pass".to_owned(),
        Err(why) => format!("fail: {}", failing(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitals_core::fixtures::name;
    use vitals_core::verdict::{AgentReason, ReadyReason};

    #[test]
    fn the_agent_and_a_container_named_agent_read_differently() {
        let container = Target::Container(name("agent"));
        assert_eq!(target(&Target::Agent), "_agent");
        assert_eq!(target(&container), "agent");
        assert_eq!(target(&Target::All), "_all");
        assert_eq!(check_name(&CheckName::Target(container)), "agent");
        let theirs = Failing {
            container: Some(name("agent")),
            reason: ReadyReason::NotConnected.into(),
        };
        assert_eq!(outcome(&Err(theirs)), "fail: agent: not_connected");
        let own = Failing {
            container: None,
            reason: AgentReason::ShuttingDown.into(),
        };
        assert_eq!(outcome(&Err(own)), "fail: shutting_down");
        assert_eq!(check_name(&CheckName::Check("gpu".into())), "check:gpu");
    }
}
