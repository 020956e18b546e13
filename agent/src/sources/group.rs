//! The leader's poller (SPEC §9): one task per configured member asks that member's agent
//! for `GET /group` every `--group-poll`, bounded by the same period and by [`BODY_LIMIT`],
//! and records the answer (or why there was none) into the [`SharedGroup`].
//!
//! Only the members given at start are ever polled: nothing in an answer adds a target.
//! A member that hangs, accepts and never answers, resets, or sends garbage or megabytes
//! costs its own task one bounded poll; the probe port reads snapshots and never waits
//! on a poll.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cadence::Cadence;
use crate::config::GroupConfig;
use crate::counters::SourceCounters;
use crate::net::{self, BodyRead};
use vitals_core::snapshot::Snapshots;
use vitals_core::state::group::MemberTarget;
use vitals_core::state::group::{self, GroupReport, LeaderNow, PollError, SharedGroup};
use vitals_core::verdict::Probe;

/// The most of a member's answer read; a real one is well under 4 KiB (a few containers,
/// each a name of at most 63 characters, an instance and a verdict line).
pub const BODY_LIMIT: usize = 64 * 1024;

/// What the poller needs.
#[derive(Debug, Clone)]
pub struct Context {
    /// Where answers go.
    pub group: Arc<SharedGroup>,
    /// The leader's own pod, judged without the group, read at each poll: its instances
    /// and readiness decide formation (SPEC §9, §11).
    pub own: Snapshots,
    /// Poll durations.
    pub counters: SourceCounters,
    /// The members and the periods.
    pub config: GroupConfig,
}

/// Starts one polling task per member on `tasks`, until `stop`.
pub fn spawn(tasks: &TaskTracker, ctx: &Context, stop: &CancellationToken) {
    for (slot, target) in ctx.config.members.iter().enumerate() {
        tasks.spawn(poll_member(ctx.clone(), slot, target.clone(), stop.clone()));
    }
    tracing::info!(
        members = ?ctx.config.members.iter().map(ToString::to_string).collect::<Vec<_>>(),
        poll = ?ctx.config.poll,
        "group leader: polling members"
    );
}

async fn poll_member(ctx: Context, slot: usize, target: MemberTarget, stop: CancellationToken) {
    // A slow member skips its own next poll, never bunches them up.
    let mut tick = Cadence::every(ctx.config.poll);
    let mut last_error: Option<PollError> = None;
    let mut address = Address::new(&target);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = poll_once(&mut address, &target, ctx.config.poll) => r,
        };
        ctx.counters
            .group_poll(started.elapsed(), result.as_ref().map(|_| ()));
        match (&result, &last_error) {
            (Err(e), None) => {
                tracing::warn!(member = target.index, address = %target, error = %e, "group member did not answer");
            }
            (Ok(_), Some(_)) => {
                tracing::info!(member = target.index, address = %target, "group member answers again");
            }
            _ => {}
        }
        last_error = result.as_ref().err().cloned();
        let now = Instant::now();
        let own = ctx.own.take(now);
        // Formation reads the leader's own pod, judged without its group (SPEC §11).
        let leader = LeaderNow {
            instances: group::instances(&own.state),
            ready: own.verdicts.aggregate(Probe::Ready).ok(),
        };
        let timeout = ctx.config.timeout;
        ctx.group
            .update(|g| g.record(slot, result, &leader, timeout, now));
    }
}

/// One poll of a member: its address, then `GET /group`, both within `timeout`. A poll
/// that fails asks for the name to be looked up again (with [`Backoff`]), so a recreated
/// member pod (a new IP under the same name) is found again.
async fn poll_once(
    address: &mut Address,
    target: &MemberTarget,
    timeout: Duration,
) -> Result<GroupReport, PollError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let host = address.host(deadline).await?;
    let result = get_group(&host, target.port, deadline).await;
    match &result {
        Ok(_) => address.answered(),
        Err(_) => address.unanswered(Instant::now()),
    }
    result
}

/// When a member's name may be looked up next (SPEC §11): at once the first time, then,
/// after each failed lookup or unanswered poll in a row, 1 s later, doubling to at most
/// 10 s; an answered poll starts over. A leader of 31 pending members asks DNS for each at
/// most once a second at first and every 10 s in the long run, never once a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Not before this; `None`: now.
    next: Option<Instant>,
    /// The wait after the next failure.
    delay: Duration,
}

impl Backoff {
    /// The first wait.
    pub const FIRST: Duration = Duration::from_secs(1);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(10);

    /// Nothing failed yet.
    pub fn new() -> Self {
        Self {
            next: None,
            delay: Self::FIRST,
        }
    }

    /// Whether a lookup may start at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// A lookup failed, or a poll went unanswered, at `now`.
    pub fn failed(&mut self, now: Instant) {
        self.next = Some(now + self.delay);
        self.delay = (self.delay * 2).min(Self::MAX);
    }

    /// The member answered: the next failure waits [`Backoff::FIRST`] again.
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// A name lookup running on the runtime's blocking pool (never the /proc sampler's thread).
type Lookup = tokio::task::JoinHandle<std::io::Result<Option<IpAddr>>>;

/// Where a member's agent is. Its name is looked up once and kept while polls are
/// answered; after an unanswered poll it is looked up again when [`Backoff`] allows, and
/// the address known meanwhile is still polled. A lookup that hangs is waited for, never
/// started again beside itself; while a known address exists, polls do not wait for it.
struct Address {
    /// The member's host as configured (fully qualified where the namespace is known).
    host: String,
    port: u16,
    /// The address the latest lookup gave.
    known: Option<IpAddr>,
    /// `known` is to be looked up again (a poll went unanswered).
    stale: bool,
    /// A lookup still running from an earlier poll.
    pending: Option<Lookup>,
    /// When the next lookup may start.
    backoff: Backoff,
    /// Why the latest lookup failed, shown while waiting to try again.
    last_error: Option<String>,
}

impl Address {
    fn new(target: &MemberTarget) -> Self {
        Self {
            host: target.host.clone(),
            port: target.port,
            known: target.host.parse().ok(),
            stale: false,
            pending: None,
            backoff: Backoff::new(),
            last_error: None,
        }
    }

    fn is_literal(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// The host to connect to, an IP literal: as configured, as known, or as looked up by
    /// `deadline`.
    async fn host(&mut self, deadline: tokio::time::Instant) -> Result<String, PollError> {
        let wanted = !self.is_literal() && (self.known.is_none() || self.stale);
        if wanted && self.pending.is_none() && self.backoff.due(Instant::now()) {
            let (host, port) = (self.host.clone(), self.port);
            self.pending = Some(tokio::spawn(async move {
                let mut found = tokio::net::lookup_host((host.as_str(), port)).await?;
                Ok(found.next().map(|a| a.ip()))
            }));
        }
        if let Some(lookup) = self.pending.as_mut() {
            // With an address known, a lookup is only looked at when it has finished.
            let finished = if self.known.is_some() && !lookup.is_finished() {
                None
            } else {
                tokio::time::timeout_at(deadline, lookup).await.ok()
            };
            if let Some(joined) = finished {
                self.pending = None;
                self.looked_up(joined);
            }
        }
        match (self.known, &self.last_error) {
            (Some(ip), _) => Ok(ip.to_string()),
            (None, _) if self.pending.is_some() => Err(PollError::Lookup("timeout".to_owned())),
            (None, Some(e)) => Err(PollError::Lookup(e.clone())),
            (None, None) => Err(PollError::Lookup(format!(
                "{} not looked up yet",
                self.host
            ))),
        }
    }

    fn looked_up(
        &mut self,
        joined: Result<std::io::Result<Option<IpAddr>>, tokio::task::JoinError>,
    ) {
        let error = match joined {
            Ok(Ok(Some(ip))) => {
                self.known = Some(ip);
                self.stale = false;
                self.last_error = None;
                return;
            }
            Ok(Ok(None)) => format!("{} has no address", self.host),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        self.backoff.failed(Instant::now());
        self.last_error = Some(error);
    }

    /// The member answered at this address.
    fn answered(&mut self) {
        self.backoff.reset();
    }

    /// The member did not answer at this address: look its name up again, when
    /// [`Backoff`] allows (a configured IP stays).
    fn unanswered(&mut self, now: Instant) {
        if !self.is_literal() && !self.stale {
            self.stale = true;
            self.backoff.failed(now);
        }
    }
}

/// One `GET /group` of a member's agent at `host` (an IP literal), bounded by `deadline`
/// (connect included) and by [`BODY_LIMIT`], on the agent's one outbound client. The one
/// place the poller does HTTP.
async fn get_group(
    host: &str,
    port: u16,
    deadline: tokio::time::Instant,
) -> Result<GroupReport, PollError> {
    let get = net::get_once(host, port, "/group", &[], BodyRead::Keep(BODY_LIMIT));
    match tokio::time::timeout_at(deadline, get).await {
        Err(_) => Err(PollError::Timeout),
        Ok(Err(failure)) => Err(PollError::Request(failure)),
        Ok(Ok(answer)) if answer.status != hyper::StatusCode::OK => {
            Err(PollError::Status(answer.status.as_u16()))
        }
        Ok(Ok(answer)) => GroupReport::parse(&answer.body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str) -> MemberTarget {
        MemberTarget {
            index: 1,
            host: host.to_owned(),
            port: 9180,
        }
    }

    /// SPEC §11: a failing name is retried 1 s later, doubling to 10 s; an answer starts
    /// over.
    #[test]
    fn lookups_back_off_from_one_second_doubling_to_ten() {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        assert!(b.due(t0), "the first lookup at once");
        let mut at = t0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            b.failed(at);
            let next = b.next.expect("scheduled");
            assert!(!b.due(next - Duration::from_millis(1)) && b.due(next));
            waits.push((next - at).as_secs());
            at = next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        b.reset();
        b.failed(at);
        assert_eq!(b.next, Some(at + Backoff::FIRST));
    }

    #[tokio::test]
    async fn a_name_is_looked_up_once_and_again_only_as_the_backoff_allows() {
        let deadline = || tokio::time::Instant::now() + Duration::from_secs(5);
        let mut ip = Address::new(&target("fd00::5"));
        assert_eq!(ip.host(deadline()).await.as_deref(), Ok("fd00::5"));
        ip.unanswered(Instant::now());
        assert!(
            !ip.stale && ip.pending.is_none(),
            "a configured IP is never looked up"
        );

        let mut name = Address::new(&target("localhost"));
        assert_eq!(name.known, None);
        let first = name.host(deadline()).await.expect("localhost resolves");
        assert!(first == "127.0.0.1" || first == "::1", "{first}");
        assert!(name.known.is_some() && name.pending.is_none(), "kept");
        assert_eq!(name.host(deadline()).await, Ok(first.clone()));
        // Unanswered: looked up again one second later; meanwhile the known address.
        let t = Instant::now();
        name.unanswered(t);
        assert_eq!(name.host(deadline()).await, Ok(first.clone()));
        assert!(name.stale && name.pending.is_none(), "not before a second");
        assert_eq!(name.backoff.next, Some(t + Backoff::FIRST));
        name.unanswered(t);
        assert_eq!(
            name.backoff.next,
            Some(t + Backoff::FIRST),
            "one wait per outage"
        );
        // A failed lookup waits its turn too, saying why meanwhile.
        let mut gone = Address::new(&target("m-1.sub.ns.svc.cluster.local."));
        gone.looked_up(Ok(Ok(None)));
        let err = gone.host(deadline()).await.expect_err("no address yet");
        assert!(err.to_string().contains("has no address"), "{err}");
        assert!(
            gone.pending.is_none(),
            "no lookup before the backoff's second"
        );
    }
}
