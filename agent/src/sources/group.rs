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
use crate::config::{GroupConfig, MemberTarget};
use crate::net::{self, BodyRead};
use crate::state::group::{self, GroupReport, SharedGroup};
use crate::state::registry::Registry;
use crate::surfaces::metrics::Metrics;

/// The most of a member's answer read; a real one is well under 4 KiB (64 containers
/// of 256-byte names would be 33 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

/// What the poller needs.
#[derive(Debug, Clone)]
pub struct Context {
    /// Where answers go.
    pub group: Arc<SharedGroup>,
    /// The leader's own instances are read from here at each poll.
    pub registry: Arc<Registry>,
    /// Poll durations.
    pub metrics: Arc<Metrics>,
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
    let mut last_error: Option<String> = None;
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
        ctx.metrics.group_poll(started.elapsed());
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
        let leader = group::instances(&ctx.registry.current());
        let timeout = ctx.config.timeout;
        ctx.group
            .update(|g| g.record(slot, result, &leader, timeout, Instant::now()));
    }
}

/// One poll of a member: its address, then `GET /group`, both within `timeout`. A poll
/// that fails forgets the address, so a recreated member pod (a new IP under the same
/// name) is found again at the next poll.
async fn poll_once(
    address: &mut Address,
    target: &MemberTarget,
    timeout: Duration,
) -> Result<GroupReport, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let host = address.host(deadline).await?;
    let result = get_group(&host, target.port, deadline).await;
    if result.is_err() {
        address.forget();
    }
    result
}

/// Where a member's agent is. Its name is looked up once and kept until a poll fails: a
/// leader of 16 members does not ask DNS 16 times a second, and a lookup that hangs is
/// waited for, never started again beside itself. Lookups run on the runtime's blocking
/// pool, one thread that the /proc sampler shares, so they must not pile up there.
struct Address {
    /// The member's host as configured.
    host: String,
    port: u16,
    /// The address the last lookup gave, while polls succeed.
    known: Option<IpAddr>,
    /// A lookup still running from an earlier poll.
    pending: Option<tokio::task::JoinHandle<std::io::Result<Option<IpAddr>>>>,
}

impl Address {
    fn new(target: &MemberTarget) -> Self {
        Self {
            host: target.host.clone(),
            port: target.port,
            known: target.host.parse().ok(),
            pending: None,
        }
    }

    /// The host to connect to: an IP literal, as configured or as looked up by `deadline`.
    async fn host(&mut self, deadline: tokio::time::Instant) -> Result<String, String> {
        if let Some(ip) = self.known {
            return Ok(ip.to_string());
        }
        let (host, port) = (self.host.clone(), self.port);
        let lookup = self.pending.get_or_insert_with(|| {
            tokio::spawn(async move {
                let mut found = tokio::net::lookup_host((host.as_str(), port)).await?;
                Ok(found.next().map(|a| a.ip()))
            })
        });
        let joined = tokio::time::timeout_at(deadline, lookup)
            .await
            .map_err(|_| "timeout: name lookup".to_owned())?;
        self.pending = None;
        match joined {
            Ok(Ok(Some(ip))) => {
                self.known = Some(ip);
                Ok(ip.to_string())
            }
            Ok(Ok(None)) => Err(format!("name lookup: {} has no address", self.host)),
            Ok(Err(e)) => Err(format!("name lookup: {e}")),
            Err(e) => Err(format!("name lookup: {e}")),
        }
    }

    /// Looks the name up again at the next poll (a configured IP stays).
    fn forget(&mut self) {
        self.known = self.host.parse().ok();
    }
}

/// One `GET /group` of a member's agent at `host` (an IP literal), bounded by `deadline`
/// (connect included) and by [`BODY_LIMIT`], on the agent's one outbound client. The one
/// place the poller does HTTP.
async fn get_group(
    host: &str,
    port: u16,
    deadline: tokio::time::Instant,
) -> Result<GroupReport, String> {
    let get = net::get_once(host, port, "/group", &[], BodyRead::Keep(BODY_LIMIT));
    match tokio::time::timeout_at(deadline, get).await {
        Err(_) => Err("timeout".to_owned()),
        Ok(Err(failure)) => Err(failure.to_string()),
        Ok(Ok(answer)) if answer.status != hyper::StatusCode::OK => {
            Err(format!("status {}", answer.status.as_u16()))
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

    #[tokio::test]
    async fn a_name_is_looked_up_once_and_again_only_after_a_failed_poll() {
        let deadline = || tokio::time::Instant::now() + Duration::from_secs(5);
        let mut ip = Address::new(&target("fd00::5"));
        assert_eq!(ip.host(deadline()).await.as_deref(), Ok("fd00::5"));
        ip.forget();
        assert_eq!(ip.known, "fd00::5".parse().ok(), "a configured IP stays");

        let mut name = Address::new(&target("localhost"));
        assert_eq!(name.known, None);
        let first = name.host(deadline()).await.expect("localhost resolves");
        assert!(first == "127.0.0.1" || first == "::1", "{first}");
        assert!(name.known.is_some() && name.pending.is_none(), "kept");
        assert_eq!(name.host(deadline()).await, Ok(first));
        name.forget();
        assert_eq!(name.known, None, "looked up again after a failed poll");
    }
}
