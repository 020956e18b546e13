//! The group rules (SPEC §9): pure, from the leader's [`GroupState`], its own containers'
//! instances now and `now` to the group's readiness and liveness, which the leader adds,
//! after its own reasons, to its aggregate `/readyz` and to `/readyz/<c>` and `/livez/<c>`
//! of its model containers (never to the agent's own `/livez`).
//!
//! Precedence (first that holds is reported; the enums are declared in this order):
//!
//! | verdict | reason | holds when |
//! |---|---|---|
//! | ready | `group: forming <k>/<N-1>` | not formed this epoch (see [`crate::state::group`] for when it forms), or one of the leader's own instances changed since (formation starts over); `k` members answered live within `--group-timeout` |
//! | ready | `group: member <i> unreachable <age>` | formed; member `i` has not answered for `--group-timeout` (lowest `i` first) |
//! | ready | `group: member <i> <reason>` | formed; member `i`'s latest answer is not live (its own reason, else `not live`) |
//! | ready | the liveness reason below | ready as far as the above go, but broken |
//! | live | `group_broken: member <i> restarted` | formed; a known instance of member `i` differs from the one recorded at formation |
//! | live | `group_broken: member <i> lost` | formed; member `i` has not answered for `--group-lost-after` |
//! | live | `group_broken: member <i> not live` | formed; member `i`'s latest answer is not live and it has not answered live for `--group-lost-after` (a member stuck in `D` forever must not hold the leader unready forever) |
//!
//! Liveness never fails while the group is forming. An agent restart alone is never a
//! member restart: instances are processes' `pid:starttime`, and a container a member does
//! not list (yet) is no evidence ([`crate::state::group::changed`]).

use std::fmt;
use std::time::{Duration, Instant};

use crate::state::group::{changed, GroupState, MemberState};

/// `--group-timeout` and `--group-lost-after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Unanswered this long: unreachable.
    pub timeout: Duration,
    /// Unanswered this long in a formed group: lost.
    pub lost_after: Duration,
}

/// Why the group breaks the leader's model liveness, in precedence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokenReason {
    /// A member's process differs from the one recorded at formation.
    Restarted {
        /// The member's index.
        member: usize,
    },
    /// A member has not answered for `--group-lost-after`.
    Lost {
        /// The member's index.
        member: usize,
    },
    /// A member answers, but has not answered live for `--group-lost-after`.
    NotLive {
        /// The member's index.
        member: usize,
    },
}

impl BrokenReason {
    /// Every kind, for the per-reason counter.
    pub const KINDS: [&'static str; 3] = ["restarted", "lost", "not_live"];

    /// `restarted`, `lost` or `not_live` (the `reason` label of `vitals_group_broken_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Restarted { .. } => "restarted",
            Self::Lost { .. } => "lost",
            Self::NotLive { .. } => "not_live",
        }
    }
}

impl fmt::Display for BrokenReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Restarted { member } => write!(f, "group_broken: member {member} restarted"),
            Self::Lost { member } => write!(f, "group_broken: member {member} lost"),
            Self::NotLive { member } => write!(f, "group_broken: member {member} not live"),
        }
    }
}

/// Why the group fails the leader's readiness, in precedence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupReadyReason {
    /// Not formed (this epoch).
    Forming {
        /// Members that answered live within `--group-timeout`.
        live: usize,
        /// N−1.
        members: usize,
    },
    /// A member has not answered for `--group-timeout`.
    Unreachable {
        /// The member's index.
        member: usize,
        /// Since its last answer (or since polling started).
        age: Duration,
    },
    /// A member says it is not live.
    MemberNotLive {
        /// The member's index.
        member: usize,
        /// Its own reason.
        reason: String,
    },
    /// The group is broken (liveness fails too).
    Broken(BrokenReason),
}

impl fmt::Display for GroupReadyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Forming { live, members } => write!(f, "group: forming {live}/{members}"),
            Self::Unreachable { member, age } => {
                write!(f, "group: member {member} unreachable {}", age_text(*age))
            }
            Self::MemberNotLive { member, reason } => write!(f, "group: member {member} {reason}"),
            Self::Broken(b) => b.fmt(f),
        }
    }
}

/// `4.2s`: the age in a reason.
fn age_text(age: Duration) -> String {
    format!("{:.1}s", age.as_secs_f64())
}

impl GroupReadyReason {
    /// The reason with an unreachable member's age taken out: two reasons that differ only
    /// in it are the same verdict (the transition log records the change once, not every
    /// tick while the member stays away).
    pub fn without_age(&self) -> Self {
        match self {
            Self::Unreachable { member, .. } => Self::Unreachable {
                member: *member,
                age: Duration::ZERO,
            },
            other => other.clone(),
        }
    }
}

/// One member as the group verdict sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberStatus {
    /// Answered live within `--group-timeout`.
    Live,
    /// Answered within `--group-timeout`, not live.
    NotLive,
    /// No answer for `--group-timeout`.
    Unreachable,
}

impl MemberStatus {
    /// Every status (the `state` label of `vitals_group_members`).
    pub const ALL: [MemberStatus; 3] = [Self::Live, Self::NotLive, Self::Unreachable];

    /// `live`, `not_live`, `unreachable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::NotLive => "not_live",
            Self::Unreachable => "unreachable",
        }
    }
}

/// The group's verdicts at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupVerdict {
    /// Formed this epoch (and the leader's own instances unchanged since).
    pub formed: bool,
    /// Added to the leader's readiness.
    pub ready: Result<(), GroupReadyReason>,
    /// Added to the liveness of the leader's model containers.
    pub live: Result<(), BrokenReason>,
    /// Each member's status, in index order.
    pub members: Vec<MemberStatus>,
}

fn since_answer(m: &MemberState, now: Instant) -> Option<Duration> {
    m.answer
        .as_ref()
        .map(|a| now.saturating_duration_since(a.at))
}

fn status(m: &MemberState, limits: &GroupLimits, now: Instant) -> MemberStatus {
    match m.answer.as_ref() {
        Some(a) if now.saturating_duration_since(a.at) < limits.timeout => {
            if a.report.live {
                MemberStatus::Live
            } else {
                MemberStatus::NotLive
            }
        }
        _ => MemberStatus::Unreachable,
    }
}

/// Judges the group at `now`, as the leader's own containers show it
/// ([`GroupState::as_of`]: a leader restart has already started it over).
pub fn evaluate(g: &GroupState, limits: &GroupLimits, now: Instant) -> GroupVerdict {
    let members: Vec<_> = g.members.iter().map(|m| status(m, limits, now)).collect();
    let formed = g.formed_at.is_some() || g.members.is_empty();
    if !formed {
        let live = members.iter().filter(|s| **s == MemberStatus::Live).count();
        return GroupVerdict {
            formed,
            ready: Err(GroupReadyReason::Forming {
                live,
                members: g.members.len(),
            }),
            live: Ok(()),
            members,
        };
    }
    let unanswered = |m: &MemberState| {
        since_answer(m, now).unwrap_or_else(|| now.saturating_duration_since(g.epoch))
    };
    let restarted = g.members.iter().find_map(|m| {
        let recorded = m.recorded.as_ref()?;
        changed(recorded, &m.seen).map(|_| BrokenReason::Restarted {
            member: m.target.index,
        })
    });
    let lost = || {
        g.members
            .iter()
            .find(|m| unanswered(m) >= limits.lost_after)
            .map(|m| BrokenReason::Lost {
                member: m.target.index,
            })
    };
    let stuck = || {
        g.members.iter().find_map(|m| {
            let latest_not_live = m.answer.as_ref().is_some_and(|a| !a.report.live);
            let since_live = now.saturating_duration_since(m.live_at.unwrap_or(g.epoch));
            (latest_not_live && since_live >= limits.lost_after).then_some(BrokenReason::NotLive {
                member: m.target.index,
            })
        })
    };
    let live = match restarted.or_else(lost).or_else(stuck) {
        Some(b) => Err(b),
        None => Ok(()),
    };
    let unreachable = g.members.iter().zip(&members).find_map(|(m, s)| {
        (*s == MemberStatus::Unreachable).then(|| GroupReadyReason::Unreachable {
            member: m.target.index,
            age: unanswered(m),
        })
    });
    let not_live = || {
        g.members.iter().zip(&members).find_map(|(m, s)| {
            let a = m.answer.as_ref().filter(|_| *s == MemberStatus::NotLive)?;
            Some(GroupReadyReason::MemberNotLive {
                member: m.target.index,
                reason: a
                    .report
                    .reason
                    .clone()
                    .unwrap_or_else(|| "not live".to_owned()),
            })
        })
    };
    let ready = match unreachable
        .or_else(not_live)
        .or_else(|| live.err().map(GroupReadyReason::Broken))
    {
        Some(r) => Err(r),
        None => Ok(()),
    };
    GroupVerdict {
        formed,
        ready,
        live,
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{inst, live, not_live, targets, FRESH, LIMITS};
    use crate::state::group::{GroupReport, Instances, LeaderNow, PollError};
    use std::sync::Arc;

    const EPS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    /// A leader with `n` members, formed at t0 with member i's `ray` process `i:i`, and
    /// the leader's `vllm` process `0:0`.
    fn formed(n: usize) -> (GroupState, Instant) {
        let t0 = Instant::now();
        let mut g = GroupState::new(&targets(n), t0);
        for slot in 0..n {
            let me = format!("{}:{}", slot + 1, slot + 1);
            g.record(slot, live(&[("ray", &me)]), &lead(), FRESH, t0);
        }
        assert_eq!(g.formed_at, Some(t0));
        (g, t0)
    }

    fn leader() -> Instances {
        inst(&[("vllm", "0:0")])
    }

    /// The leader's pod, ready by its own reasons.
    fn lead() -> LeaderNow {
        LeaderNow {
            instances: leader(),
            ready: true,
        }
    }

    fn judge(g: &GroupState, at: Instant) -> GroupVerdict {
        judge_as(g, &leader(), at)
    }

    /// The verdict a snapshot at `at` gives, the leader's own containers being `leader`.
    fn judge_as(g: &GroupState, leader: &Instances, at: Instant) -> GroupVerdict {
        evaluate(&Arc::new(g.clone()).as_of(leader, at), &LIMITS, at)
    }

    fn texts(v: &GroupVerdict) -> (Option<String>, Option<String>) {
        (
            v.ready.as_ref().err().map(ToString::to_string),
            v.live.as_ref().err().map(ToString::to_string),
        )
    }

    fn say(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn a_formed_group_with_every_member_live_passes() {
        let (g, t0) = formed(2);
        let v = judge(&g, t0 + FRESH - EPS);
        assert_eq!(texts(&v), (None, None));
        assert!(v.formed);
        assert_eq!(v.members[0], MemberStatus::Live);
    }

    #[test]
    fn forming_counts_the_members_that_answered_live_and_never_fails_liveness() {
        let t0 = Instant::now();
        let mut g = GroupState::new(&targets(3), t0);
        assert_eq!(texts(&judge(&g, t0)), (say("group: forming 0/3"), None));
        g.record(0, live(&[]), &lead(), FRESH, t0);
        g.record(1, not_live("ray: stopped"), &lead(), FRESH, t0);
        assert_eq!(texts(&judge(&g, t0)), (say("group: forming 1/3"), None));
        // Hours unanswered while forming: still only forming (no `lost`).
        let late = t0 + Duration::from_secs(3600);
        assert_eq!(texts(&judge(&g, late)), (say("group: forming 0/3"), None));
    }

    #[test]
    fn a_group_without_members_is_formed() {
        let t0 = Instant::now();
        let g = GroupState::new(&[], t0);
        assert_eq!(texts(&judge(&g, t0)), (None, None));
    }

    #[test]
    fn unreachable_from_the_timeout_on_with_its_age() {
        let (g, t0) = formed(2);
        assert_eq!(texts(&judge(&g, t0 + FRESH - EPS)), (None, None));
        let v = judge(&g, t0 + FRESH);
        assert_eq!(texts(&v), (say("group: member 1 unreachable 3.0s"), None));
        assert_eq!(v.members[0], MemberStatus::Unreachable);
    }

    #[test]
    fn a_member_that_is_not_live_fails_readiness_with_its_reason() {
        let (mut g, t0) = formed(2);
        g.record(1, not_live("ray: stopped"), &lead(), FRESH, t0 + SEC);
        let v = judge(&g, t0 + SEC);
        assert_eq!(texts(&v), (say("group: member 2 ray: stopped"), None));
        assert_eq!(v.members[1], MemberStatus::NotLive);
        let mut silent = not_live("x");
        if let Ok(r) = silent.as_mut() {
            r.reason = None;
        }
        g.record(1, silent, &lead(), FRESH, t0 + SEC);
        assert_eq!(
            judge(&g, t0 + SEC).ready.err().map(|r| r.to_string()),
            say("group: member 2 not live")
        );
    }

    #[test]
    fn unreachable_outranks_not_live_and_lower_members_come_first() {
        let (mut g, t0) = formed(3);
        let t1 = t0 + FRESH;
        g.record(0, not_live("ray: stopped"), &lead(), FRESH, t1);
        g.record(1, live(&[("ray", "2:2")]), &lead(), FRESH, t1);
        // Member 3 last answered at t0: unreachable at t1.
        assert_eq!(
            texts(&judge(&g, t1)).0,
            say("group: member 3 unreachable 3.0s")
        );
        g.record(2, not_live("ray: uninterruptible"), &lead(), FRESH, t1);
        assert_eq!(texts(&judge(&g, t1)).0, say("group: member 1 ray: stopped"));
    }

    #[test]
    fn lost_from_lost_after_on_unreachable_before() {
        let (g, t0) = formed(1);
        let before = judge(&g, t0 + LIMITS.lost_after - EPS);
        assert_eq!(
            texts(&before),
            (say("group: member 1 unreachable 60.0s"), None)
        );
        let at = judge(&g, t0 + LIMITS.lost_after);
        assert_eq!(
            texts(&at),
            (
                say("group: member 1 unreachable 60.0s"),
                say("group_broken: member 1 lost")
            )
        );
        assert_eq!(at.live.map_err(|b| b.kind()), Err("lost"));
    }

    #[test]
    fn a_member_back_before_lost_after_is_never_broken() {
        let (mut g, t0) = formed(1);
        let back = t0 + LIMITS.lost_after - EPS;
        g.record(0, live(&[("ray", "1:1")]), &lead(), FRESH, back);
        assert_eq!(texts(&judge(&g, back)), (None, None));
    }

    #[test]
    fn a_changed_member_instance_breaks_liveness_and_readiness() {
        let (mut g, t0) = formed(2);
        g.record(1, live(&[("ray", "9:9")]), &lead(), FRESH, t0 + SEC);
        let v = judge(&g, t0 + SEC);
        assert_eq!(
            texts(&v),
            (
                say("group_broken: member 2 restarted"),
                say("group_broken: member 2 restarted")
            )
        );
        assert_eq!(v.live.map_err(|b| b.kind()), Err("restarted"));
    }

    #[test]
    fn restarted_outranks_lost() {
        let (mut g, t0) = formed(2);
        let late = t0 + LIMITS.lost_after;
        g.record(1, live(&[("ray", "9:9")]), &lead(), FRESH, late);
        assert_eq!(
            texts(&judge(&g, late)).1,
            say("group_broken: member 2 restarted")
        );
    }

    #[test]
    fn an_agent_restart_alone_is_never_a_member_restart() {
        let (mut g, t0) = formed(1);
        // The member's agent restarts: it answers before finding the process again
        // (nothing listed), then finds the same process.
        let t1 = t0 + SEC;
        g.record(0, live(&[]), &lead(), FRESH, t1);
        assert_eq!(texts(&judge(&g, t1)), (None, None));
        g.record(0, live(&[("ray", "1:1")]), &lead(), FRESH, t1);
        assert_eq!(texts(&judge(&g, t1)), (None, None));
        // A container the member did not list at formation is no evidence either.
        g.record(
            0,
            live(&[("ray", "1:1"), ("sidecar", "5:5")]),
            &lead(),
            FRESH,
            t1,
        );
        assert_eq!(texts(&judge(&g, t1)), (None, None));
    }

    #[test]
    fn the_leaders_own_restart_clears_broken_and_forms_again() {
        let (mut g, t0) = formed(1);
        let t1 = t0 + SEC;
        g.record(0, live(&[("ray", "9:9")]), &lead(), FRESH, t1);
        assert!(judge(&g, t1).live.is_err());
        // The kubelet restarted the leader's model: before the poller saw it, the verdict
        // already treats the group as forming (no broken).
        let restarted = inst(&[("vllm", "3:3")]);
        let v = judge_as(&g, &restarted, t1);
        assert_eq!(texts(&v), (say("group: forming 1/1"), None));
        // The next poll starts the epoch over and forms with the new instances.
        let t2 = t1 + SEC;
        let now = LeaderNow {
            instances: restarted.clone(),
            ready: true,
        };
        g.record(0, live(&[("ray", "9:9")]), &now, FRESH, t2);
        let v = judge_as(&g, &restarted, t2);
        assert_eq!(texts(&v), (None, None));
        assert_eq!(g.members[0].recorded, Some(inst(&[("ray", "9:9")])));
    }

    /// One poll of member `slot` answering `answer`, with the leader's own containers'
    /// instances `leader` and whether its pod is ready by its own reasons.
    fn poll(
        g: &mut GroupState,
        slot: usize,
        answer: Result<GroupReport, PollError>,
        leader: &Instances,
        leader_ready: bool,
        at: Instant,
    ) {
        let leader = LeaderNow {
            instances: leader.clone(),
            ready: leader_ready,
        };
        g.record(slot, answer, &leader, FRESH, at);
    }

    /// SPEC §11, LeaderWorkerSet `restartPolicy: None`: the kubelet restarts the leader's
    /// vLLM (the Ray head); the members' Ray workers keep answering live on the old head's
    /// processes until their raylet gives up on it (Ray's GCS reconnect timeout), then exit
    /// and are restarted by the kubelet and join the new head; the new vLLM turns ready
    /// only once its engine has every worker. None of that is a member restart: the
    /// formation that follows the leader's restart records the new processes, and the
    /// leader's liveness never fails (else the kubelet restarts it again: a loop).
    #[test]
    fn a_leader_restart_forms_again_on_the_members_restarted_workers_without_a_loop() {
        let (mut g, t0) = formed(2);
        let head = inst(&[("vllm", "3:3")]);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut verdicts = Vec::new();
        let mut judge_new = |g: &GroupState, t: Instant| {
            let v = judge_as(g, &head, t);
            verdicts.push((t, texts(&v)));
        };
        // The old workers still answer live, for as long as Ray's reconnect timeout.
        for s in 1..=5 {
            poll(&mut g, 0, live(&[("ray", "1:1")]), &head, false, at(s));
            poll(&mut g, 1, live(&[("ray", "2:2")]), &head, false, at(s));
            judge_new(&g, at(s));
        }
        // They exit, and the kubelet starts them again: new processes that join the new head.
        poll(
            &mut g,
            0,
            not_live("ray: process_gone"),
            &head,
            false,
            at(6),
        );
        poll(
            &mut g,
            1,
            Err(PollError::Request(
                crate::state::probe_result::Failure::Refused,
            )),
            &head,
            false,
            at(6),
        );
        judge_new(&g, at(6));
        for s in 7..=9 {
            poll(&mut g, 0, live(&[("ray", "11:11")]), &head, false, at(s));
            poll(&mut g, 1, live(&[("ray", "12:12")]), &head, false, at(s));
            judge_new(&g, at(s));
        }
        // The new vLLM has its workers and serves: the group forms on the new processes.
        poll(&mut g, 0, live(&[("ray", "11:11")]), &head, true, at(10));
        poll(&mut g, 1, live(&[("ray", "12:12")]), &head, true, at(10));
        judge_new(&g, at(10));
        for (t, (ready, live)) in &verdicts {
            assert_eq!(*live, None, "liveness at +{:?}: {verdicts:?}", *t - t0);
            if *t < at(10) {
                assert!(
                    ready
                        .as_deref()
                        .is_some_and(|r| r.starts_with("group: forming")),
                    "forming at +{:?}: {verdicts:?}",
                    *t - t0
                );
            }
        }
        assert_eq!(verdicts.last().map(|v| v.1.clone()), Some((None, None)));
        assert_eq!(g.members[0].recorded, Some(inst(&[("ray", "11:11")])));
        assert_eq!(g.members[1].recorded, Some(inst(&[("ray", "12:12")])));
        // Later: the new formation judges restarts against the new processes.
        poll(&mut g, 0, live(&[("ray", "21:21")]), &head, true, at(11));
        assert_eq!(
            texts(&judge_as(&g, &head, at(11))).1,
            say("group_broken: member 1 restarted")
        );
    }

    /// SPEC §11: a member stuck not live (a Ray worker in `D` forever) breaks the group
    /// after `--group-lost-after` since its last live answer, like a lost one, so the leader
    /// is not held unready forever; before that, readiness only.
    #[test]
    fn a_member_not_live_for_lost_after_breaks_the_group() {
        let (mut g, t0) = formed(2);
        let stuck = || not_live("ray: uninterruptible");
        for s in 1..=LIMITS.lost_after.as_secs() + 1 {
            let t = t0 + Duration::from_secs(s);
            poll(&mut g, 0, live(&[("ray", "1:1")]), &leader(), true, t);
            poll(&mut g, 1, stuck(), &leader(), true, t);
        }
        let before = t0 + LIMITS.lost_after - EPS;
        assert_eq!(
            texts(&judge(&g, before)),
            (say("group: member 2 ray: uninterruptible"), None)
        );
        let v = judge(&g, t0 + LIMITS.lost_after);
        assert_eq!(
            texts(&v),
            (
                say("group: member 2 ray: uninterruptible"),
                say("group_broken: member 2 not live")
            )
        );
        assert_eq!(v.live.map_err(|b| b.kind()), Err("not_live"));
        // A live answer in between starts the clock again.
        let (mut g, t0) = formed(1);
        poll(&mut g, 0, stuck(), &leader(), true, t0 + SEC);
        poll(
            &mut g,
            0,
            live(&[("ray", "1:1")]),
            &leader(),
            true,
            t0 + SEC * 30,
        );
        poll(&mut g, 0, stuck(), &leader(), true, t0 + SEC * 31);
        assert_eq!(judge(&g, t0 + LIMITS.lost_after + SEC).live, Ok(()));
        // Unreachable after being stuck: `lost` outranks it once nothing answers at all.
        let (mut g, t0) = formed(1);
        poll(&mut g, 0, stuck(), &leader(), true, t0 + SEC);
        assert_eq!(
            texts(&judge(&g, t0 + LIMITS.lost_after + SEC)).1,
            say("group_broken: member 1 lost")
        );
        assert_eq!(
            texts(&judge(&g, t0 + LIMITS.lost_after)).1,
            say("group_broken: member 1 not live")
        );
    }

    #[test]
    fn the_age_is_not_part_of_the_verdict_for_transitions() {
        let (g, t0) = formed(1);
        let at = |secs| judge(&g, t0 + Duration::from_secs(secs)).ready.err();
        let (early, late) = (at(4).expect("unreachable"), at(9).expect("unreachable"));
        assert_ne!(early, late, "the age is shown");
        assert_eq!(early.without_age(), late.without_age());
        let forming = GroupReadyReason::Forming {
            live: 1,
            members: 2,
        };
        assert_eq!(forming.without_age(), forming);
    }
}
