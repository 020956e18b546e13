//! The leader's poller (SPEC §9): one task per configured member asks that member's agent
//! for `GET /group` every `--group-poll`, bounded by the same period and by [`BODY_LIMIT`],
//! and records the answer (or why there was none) into the [`SharedGroup`].
//!
//! Only the members given at start are ever polled: nothing in an answer adds a target.
//! A member that hangs, accepts and never answers, resets, or sends garbage or megabytes
//! costs its own task one bounded poll; the probe port reads snapshots and never waits
//! on a poll.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    let mut tick = tokio::time::interval(ctx.config.poll);
    // A slow member delays its own next poll, never bunches them up.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = get_group(&target, ctx.config.poll) => r,
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

/// One `GET /group` of a member's agent, bounded by `timeout` (connect included) and by
/// [`BODY_LIMIT`], on the agent's one outbound client. The one place the poller does HTTP.
pub async fn get_group(target: &MemberTarget, timeout: Duration) -> Result<GroupReport, String> {
    let get = net::get_once(
        &target.host,
        target.port,
        "/group",
        &[],
        BodyRead::Keep(BODY_LIMIT),
    );
    match tokio::time::timeout(timeout, get).await {
        Err(_) => Err("timeout".to_owned()),
        Ok(Err(failure)) => Err(failure.to_string()),
        Ok(Ok(answer)) if answer.status != hyper::StatusCode::OK => {
            Err(format!("status {}", answer.status.as_u16()))
        }
        Ok(Ok(answer)) => GroupReport::parse(&answer.body),
    }
}
