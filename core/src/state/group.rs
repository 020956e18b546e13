//! What the leader knows of each member of its group (SPEC §9), and what every agent says
//! of itself on `GET /group`.
//!
//! [`GroupState`] is plain data with methods that take `now`: the leader's poller records
//! each member's answer (or failure) into it, formation happens here, and so does the reset
//! when the leader's own model container restarts. Whether the group is ready or broken is
//! the verdict's business ([`crate::verdict::group`]), which reads it. [`SharedGroup`] is the
//! one shared copy, written under a short lock and read as an `Arc`, like the registry.
//!
//! Formation (SPEC §9, §11). An epoch starts when polling starts and again whenever one of
//! the leader's own known instances changes (its model container restarted). The group
//! forms, once per epoch, at the first poll at which
//! 1. every member's latest answer is live, younger than `--group-timeout`, and came after
//!    the epoch began, and
//! 2. the leader's pod is ready by its own reasons (its aggregate readiness before the
//!    group's: [`LeaderNow::ready`]).
//!
//! Each member's instances known then are recorded; only a later change of one of those is
//! a restart. Before formation a member's instances may change any number of times: they
//! are seen, never counted. Rule 2 is what keeps a leader restart under LeaderWorkerSet's
//! `restartPolicy: None` from looping: when the Ray head (the leader's vLLM) restarts, the
//! members' Ray workers keep answering live on the old head's processes until their raylet
//! gives up on it, then exit and are restarted by the kubelet and join the new head. Rule 1
//! alone would record the old processes at the first poll after the restart, and their
//! exit a moment later would be `restarted`, failing the leader's liveness again. The new
//! vLLM turns ready only once its engine has every worker (vLLM's multi-node-serving.sh
//! leader waits for `--ray_cluster_size` nodes), so the formation it allows records the
//! restarted workers. A leader with no readiness of its own (no readiness probe, nothing
//! /proc fails) forms by rule 1 alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::state::cell::CowCell;
use crate::state::probe_result::Failure;
use crate::state::registry::State;

/// One member the leader polls: its 1-based index (as reasons name it) and its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberTarget {
    /// `i` in `group: member <i> …`.
    pub index: usize,
    /// Host name or IP of the member's agent.
    pub host: String,
    /// The member agent's port.
    pub port: u16,
}

impl std::fmt::Display for MemberTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `pid:starttime` of each container whose process is known, by container name.
pub type Instances = BTreeMap<String, String>;

/// Most containers a member's answer may list; more is garbage, not a pod.
pub const MAX_CONTAINERS: usize = 64;
/// Longest container name, instance or reason kept from a member's answer (a reason is
/// cut to this; a longer name or instance makes the answer garbage).
pub const MAX_TEXT: usize = 256;

/// What an agent answers on `GET /group` (SPEC §9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    /// Every model container of the pod is live.
    pub live: bool,
    /// The pod's aggregate readiness.
    pub ready: bool,
    /// Why not live (first), else why not ready; `null` when both pass.
    pub reason: Option<String>,
    /// Each container's process, when known.
    pub instances: Instances,
}

impl GroupReport {
    /// Parses a member's answer, bounded: a member sending garbage is unreachable, never
    /// a reason with megabytes of text or control characters in the leader's probes.
    pub fn parse(body: &[u8]) -> Result<Self, PollError> {
        let garbage = PollError::Garbage;
        let mut report: GroupReport =
            serde_json::from_slice(body).map_err(|e| garbage(e.to_string()))?;
        if report.instances.len() > MAX_CONTAINERS {
            return Err(garbage(format!(
                "{} containers (at most {MAX_CONTAINERS})",
                report.instances.len()
            )));
        }
        if report
            .instances
            .iter()
            .any(|(c, i)| c.len() > MAX_TEXT || i.len() > MAX_TEXT)
        {
            return Err(garbage(format!("a name or instance over {MAX_TEXT} bytes")));
        }
        report.reason = report.reason.map(|r| printable(&r));
        Ok(report)
    }
}

/// `text` cut to [`MAX_TEXT`] characters, control characters replaced by spaces.
fn printable(text: &str) -> String {
    text.chars()
        .take(MAX_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The instances the registry knows: each worker's pid and start time once /proc sampled
/// it, each upstream's discovered process. Both survive an agent restart (the same
/// process is found again), so an agent restart alone changes nothing. A process not known
/// (yet) is left out: absence is never evidence of a restart.
pub fn instances(state: &State) -> Instances {
    let workers = state
        .workers
        .iter()
        .filter_map(|(name, w)| Some((name, &w.instance.as_ref()?.proc)));
    let upstreams = state.upstreams.iter().map(|(name, u)| (name, &u.proc));
    workers
        .chain(upstreams)
        .filter_map(|(name, proc)| {
            let w = proc.watched.as_ref().ok()?;
            Some((name.to_string(), format!("{}:{}", w.pid, w.start_time?)))
        })
        .collect()
}

/// The first container whose process is known in both `recorded` and `current` and
/// differs: a restart. A container missing from either is no evidence.
pub fn changed<'a>(recorded: &'a Instances, current: &Instances) -> Option<&'a str> {
    recorded
        .iter()
        .find(|(c, i)| current.get(*c).is_some_and(|now| now != *i))
        .map(|(c, _)| c.as_str())
}

/// The leader's own pod at one poll, as the group rules read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderNow {
    /// Its containers' instances ([`instances`]).
    pub instances: Instances,
    /// Its aggregate readiness by its own reasons, before the group's is added.
    pub ready: bool,
}

/// A member's latest answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAnswer {
    /// When it arrived.
    pub at: Instant,
    /// What it said.
    pub report: GroupReport,
}

/// Why a poll of a member gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    /// No answer within the poll's bound (`--group-poll`).
    #[error("timeout")]
    Timeout,
    /// The member's name gave no address (yet).
    #[error("name lookup: {0}")]
    Lookup(String),
    /// The request failed: refused, reset, a broken answer.
    #[error("{0}")]
    Request(Failure),
    /// An answer other than 200.
    #[error("status {0}")]
    Status(u16),
    /// A 200 whose body is not a member's document (or is over the bounds).
    #[error("bad /group answer: {0}")]
    Garbage(String),
}

impl PollError {
    /// The `result` label of `vitals_group_poll_duration_seconds`: `timeout`, `lookup`,
    /// the request failure's kind (`refused`, `reset`, ...), `status` or `garbage`.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Lookup(_) => "lookup",
            Self::Request(f) => f.kind(),
            Self::Status(_) => "status",
            Self::Garbage(_) => "garbage",
        }
    }
}

/// A failed poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollFailure {
    /// When.
    pub at: Instant,
    /// Why.
    pub error: PollError,
}

/// What the leader knows of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    /// Its index and agent address (configured, never learnt).
    pub target: MemberTarget,
    /// Its latest good answer.
    pub answer: Option<MemberAnswer>,
    /// The latest poll failure since that answer.
    pub failure: Option<PollFailure>,
    /// Each container's latest known instance, over every answer (a later answer that
    /// does not list a container does not erase it).
    pub seen: Instances,
    /// When `seen` last changed.
    pub seen_changed_at: Option<Instant>,
    /// Its latest answer that said live.
    pub live_at: Option<Instant>,
    /// Its instances at formation (containers first known after formation are added as
    /// they appear); `None` while the group is forming.
    pub recorded: Option<Instances>,
}

/// Everything the leader knows of its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// The members, in index order.
    pub members: Vec<MemberState>,
    /// When polling started, or the group last started forming again.
    pub epoch: Instant,
    /// When the group formed (this epoch).
    pub formed_at: Option<Instant>,
    /// The leader's own instances this epoch; one of them changing starts it over.
    pub leader: Instances,
    /// Times the leader's own restart started formation over.
    pub resets: u64,
}

impl GroupState {
    /// A group starting to form at `now`.
    pub fn new(targets: &[MemberTarget], now: Instant) -> Self {
        Self {
            members: targets
                .iter()
                .map(|t| MemberState {
                    target: t.clone(),
                    answer: None,
                    failure: None,
                    seen: Instances::new(),
                    seen_changed_at: None,
                    live_at: None,
                    recorded: None,
                })
                .collect(),
            epoch: now,
            formed_at: None,
            leader: Instances::new(),
            resets: 0,
        }
    }

    /// Records one poll of member `slot` (0-based position) at `now`, with the leader's
    /// own pod at that moment, and forms the group when the module's rules hold.
    /// `fresh_for` is `--group-timeout`.
    pub fn record(
        &mut self,
        slot: usize,
        result: Result<GroupReport, PollError>,
        leader: &LeaderNow,
        fresh_for: std::time::Duration,
        now: Instant,
    ) {
        self.observe_leader(&leader.instances, now);
        let Some(m) = self.members.get_mut(slot) else {
            return;
        };
        match result {
            Ok(report) => {
                for (c, i) in &report.instances {
                    // A member that names new containers at every answer cannot grow this.
                    if m.seen.len() >= MAX_CONTAINERS && !m.seen.contains_key(c) {
                        continue;
                    }
                    if m.seen.get(c) != Some(i) {
                        m.seen.insert(c.clone(), i.clone());
                        m.seen_changed_at = Some(now);
                    }
                    if let Some(rec) = m.recorded.as_mut() {
                        rec.entry(c.clone()).or_insert_with(|| i.clone());
                    }
                }
                if report.live {
                    m.live_at = Some(now);
                }
                m.answer = Some(MemberAnswer { at: now, report });
                m.failure = None;
            }
            Err(error) => m.failure = Some(PollFailure { at: now, error }),
        }
        let epoch = self.epoch;
        let all_live = self.members.iter().all(|m| {
            m.answer.as_ref().is_some_and(|a| {
                a.report.live && a.at >= epoch && now.saturating_duration_since(a.at) < fresh_for
            })
        });
        if self.formed_at.is_none() && all_live && leader.ready {
            self.formed_at = Some(now);
            for m in &mut self.members {
                m.recorded = Some(m.seen.clone());
            }
        }
    }

    /// The group as the leader's own containers `current` show it at `now`: `self` while
    /// none of them restarted since the poller last looked, else a copy already started
    /// over. Snapshots judge this view, so a leader restart counts from the moment /proc
    /// shows it, not from the next poll; only the poller's own copy keeps the change.
    pub fn as_of(self: Arc<Self>, current: &Instances, now: Instant) -> Arc<Self> {
        if changed(&self.leader, current).is_none() {
            return self;
        }
        let mut view = Arc::unwrap_or_clone(self);
        view.observe_leader(current, now);
        Arc::new(view)
    }

    /// Adopts newly known leader instances; when a known one changed (the leader's model
    /// container restarted), the group starts forming again from scratch (SPEC §9). The
    /// one place a leader restart is noticed, whether by a poll or by a snapshot's view.
    fn observe_leader(&mut self, current: &Instances, now: Instant) {
        if changed(&self.leader, current).is_some() {
            self.leader = current.clone();
            self.epoch = now;
            self.formed_at = None;
            self.resets += 1;
            for m in &mut self.members {
                m.recorded = None;
            }
            return;
        }
        for (c, i) in current {
            self.leader.entry(c.clone()).or_insert_with(|| i.clone());
        }
    }
}

/// The shared copy of the leader's [`GroupState`], a [`CowCell`] like the registry: the
/// poller writes it; snapshots read it as an `Arc`.
pub type SharedGroup = CowCell<GroupState>;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fixtures::{inst, live, not_live, targets, up, FRESH};

    #[test]
    fn the_group_forms_when_every_member_answered_live_and_records_their_instances() {
        let t0 = Instant::now();
        let lead = up(&[("vllm", "10:100")]);
        let mut g = GroupState::new(&targets(2), t0);
        g.record(0, live(&[("ray", "7:70")]), &lead, FRESH, t0);
        assert_eq!(g.formed_at, None, "one of two");
        g.record(1, not_live("ray: stopped"), &lead, FRESH, t0);
        assert_eq!(g.formed_at, None, "member 2 not live");
        let t1 = t0 + Duration::from_secs(1);
        g.record(1, live(&[("ray", "8:80")]), &lead, FRESH, t1);
        assert_eq!(g.formed_at, Some(t1));
        assert_eq!(g.members[0].recorded, Some(inst(&[("ray", "7:70")])));
        assert_eq!(g.members[1].recorded, Some(inst(&[("ray", "8:80")])));
        assert_eq!(g.leader, lead.instances);
    }

    #[test]
    fn an_answer_older_than_the_timeout_does_not_count_toward_formation() {
        let t0 = Instant::now();
        let mut g = GroupState::new(&targets(2), t0);
        g.record(0, live(&[]), &up(&[]), FRESH, t0);
        g.record(1, live(&[]), &up(&[]), FRESH, t0 + FRESH);
        assert_eq!(g.formed_at, None, "member 1's answer is {FRESH:?} old");
        g.record(
            1,
            live(&[]),
            &up(&[]),
            FRESH,
            t0 + FRESH - Duration::from_millis(1),
        );
        assert!(g.formed_at.is_some());
    }

    #[test]
    fn unknown_instances_are_no_evidence_and_late_ones_are_recorded() {
        let t0 = Instant::now();
        let mut g = GroupState::new(&targets(1), t0);
        g.record(0, live(&[]), &up(&[]), FRESH, t0);
        assert!(g.formed_at.is_some());
        g.record(0, live(&[("ray", "7:70")]), &up(&[]), FRESH, t0);
        assert_eq!(g.members[0].recorded, Some(inst(&[("ray", "7:70")])));
        // A restarted member agent that has not found the process yet lists nothing.
        g.record(0, live(&[]), &up(&[]), FRESH, t0);
        assert_eq!(g.members[0].seen, inst(&[("ray", "7:70")]));
        g.record(0, live(&[("ray", "9:90")]), &up(&[]), FRESH, t0);
        assert_eq!(g.members[0].seen, inst(&[("ray", "9:90")]));
        assert_eq!(g.members[0].recorded, Some(inst(&[("ray", "7:70")])));
    }

    #[test]
    fn a_failed_poll_keeps_the_last_answer() {
        let t0 = Instant::now();
        let mut g = GroupState::new(&targets(1), t0);
        g.record(0, live(&[]), &up(&[]), FRESH, t0);
        g.record(0, Err(PollError::Timeout), &up(&[]), FRESH, t0);
        assert_eq!(g.members[0].answer.as_ref().map(|a| a.at), Some(t0));
        assert_eq!(
            g.members[0].failure.as_ref().map(|f| &f.error),
            Some(&PollError::Timeout)
        );
    }

    #[test]
    fn the_leaders_own_restart_starts_formation_over() {
        let t0 = Instant::now();
        let mut g = GroupState::new(&targets(1), t0);
        g.record(0, live(&[("ray", "7:70")]), &up(&[]), FRESH, t0);
        assert!(g.formed_at.is_some());
        // Learning the leader's process is not a restart.
        let first = up(&[("vllm", "10:100")]);
        g.record(0, live(&[("ray", "7:70")]), &first, FRESH, t0);
        assert!(g.formed_at.is_some());
        let t1 = t0 + Duration::from_secs(5);
        g.record(
            0,
            Err(PollError::Timeout),
            &up(&[("vllm", "11:110")]),
            FRESH,
            t1,
        );
        assert_eq!(g.formed_at, None);
        assert_eq!(g.members[0].recorded, None);
        assert_eq!((g.epoch, g.resets), (t1, 1));
        g.record(
            0,
            live(&[("ray", "9:90")]),
            &up(&[("vllm", "11:110")]),
            FRESH,
            t1,
        );
        assert_eq!(g.members[0].recorded, Some(inst(&[("ray", "9:90")])));
    }

    /// A leader restart is noticed in one place: a snapshot's view shows it at once, the
    /// shared state is untouched by looking, and the next poll counts it once.
    #[test]
    fn a_leader_restart_seen_by_snapshots_is_counted_once_by_the_poller() {
        let t0 = Instant::now();
        let mut g = GroupState::new(&targets(1), t0);
        let before = up(&[("vllm", "10:100")]);
        g.record(0, live(&[("ray", "7:70")]), &before, FRESH, t0);
        let shared = Arc::new(g.clone());
        let t1 = t0 + Duration::from_secs(1);
        let restarted = up(&[("vllm", "11:110")]);
        let unchanged = Arc::clone(&shared).as_of(&before.instances, t1);
        assert!(
            Arc::ptr_eq(&unchanged, &shared),
            "no restart: the same state, no copy"
        );
        for _ in 0..3 {
            let view = Arc::clone(&shared).as_of(&restarted.instances, t1);
            assert_eq!((view.formed_at, view.resets), (None, 1));
        }
        assert_eq!((shared.formed_at, shared.resets), (Some(t0), 0));
        g.record(0, Err(PollError::Timeout), &restarted, FRESH, t1);
        g.record(0, Err(PollError::Timeout), &restarted, FRESH, t1);
        assert_eq!(g.resets, 1);
    }

    #[test]
    fn garbage_answers_are_refused_and_reasons_bounded() {
        assert!(GroupReport::parse(b"not json").is_err());
        assert!(GroupReport::parse(br#"{"live": true}"#).is_err());
        let many: Instances = (0..=MAX_CONTAINERS)
            .map(|i| (format!("c{i}"), "1:1".to_owned()))
            .collect();
        let doc =
            serde_json::json!({"live": true, "ready": true, "reason": null, "instances": many});
        assert!(GroupReport::parse(doc.to_string().as_bytes()).is_err());
        let long = "x".repeat(MAX_TEXT + 1);
        let doc = serde_json::json!({"live": true, "ready": true, "reason": null, "instances": {long.clone(): "1:1"}});
        assert!(GroupReport::parse(doc.to_string().as_bytes()).is_err());
        let doc = serde_json::json!({"live": false, "ready": false, "reason": format!("a\nb{long}"), "instances": {}});
        let r = GroupReport::parse(doc.to_string().as_bytes()).expect("bounded, not refused");
        let reason = r.reason.expect("kept");
        assert_eq!(reason.chars().count(), MAX_TEXT);
        assert!(reason.starts_with("a b"));
    }

    #[test]
    fn a_member_naming_new_containers_every_time_cannot_grow_the_state() {
        let t0 = Instant::now();
        let mut g = GroupState::new(&targets(1), t0);
        for round in 0..10 {
            let names: Vec<(String, String)> = (0..MAX_CONTAINERS)
                .map(|i| (format!("c{round}-{i}"), "1:1".to_owned()))
                .collect();
            let pairs: Vec<(&str, &str)> = names
                .iter()
                .map(|(c, i)| (c.as_str(), i.as_str()))
                .collect();
            g.record(0, live(&pairs), &up(&[]), FRESH, t0);
        }
        assert_eq!(g.members[0].seen.len(), MAX_CONTAINERS);
        assert!(g.members[0]
            .recorded
            .as_ref()
            .is_some_and(|r| r.len() == MAX_CONTAINERS));
    }

    #[test]
    fn changed_needs_two_known_and_different_values() {
        let a = inst(&[("m", "1:1"), ("n", "2:2")]);
        assert_eq!(changed(&a, &inst(&[("m", "1:1")])), None);
        assert_eq!(changed(&a, &Instances::new()), None);
        assert_eq!(changed(&a, &inst(&[("n", "3:3")])), Some("n"));
        assert_eq!(changed(&Instances::new(), &a), None);
    }
}
