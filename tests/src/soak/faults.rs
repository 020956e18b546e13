//! The soak's fault kinds: one table ([`KINDS`]) saying, for each kind, what it does to its
//! target, what the agent must show while it holds and by when (bounds derived from SPEC and
//! the agent's flags), and what clears it. Another fault kind is one more row (and, for a new
//! way of acting on a target, one more [`Action`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The kinds of targets the soak runs beside one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A protocol worker in its own process (`soak-worker`: the protocol's own `Reporter`).
    Worker,
    /// A model server that does not speak the protocol (`fake-vllm`, the `vllm` profile).
    Upstream,
    /// The agent itself.
    Agent,
}

/// The flags and intervals every bound is derived from, recorded with the run so a replay
/// judges with the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Flags {
    /// The agent's `--hang-timeout` (s).
    pub hang_timeout: f64,
    /// `--stall-timeout` (s).
    pub stall_timeout: f64,
    /// `--load-stall-timeout` (s).
    pub load_stall_timeout: f64,
    /// `--d-state-timeout` (s).
    pub d_state_timeout: f64,
    /// `--proc-interval` (s): /proc samples and metrics scrapes.
    pub proc_interval: f64,
    /// The protocol workers' heartbeat interval (s).
    pub heartbeat: f64,
    /// How often a `soak-worker` reads its mode (s): a mode change takes effect up to this
    /// much after it was written (20 ms in records kept before the field).
    #[serde(default = "twenty_ms")]
    pub worker_tick: f64,
    /// The upstreams' probes' `periodSeconds` (s).
    pub upstream_period: f64,
    /// The upstreams' probes' `timeoutSeconds` (s).
    pub upstream_timeout: f64,
    /// How often the soak probes each path of the agent (s): a verdict is seen up to one
    /// period after it flips.
    pub probe_period: f64,
    /// The soak's probe timeout (s), the kubelet's default.
    pub probe_timeout: f64,
    /// The protocol reporter's reconnect back-off cap (s, SPEC §1): an agent restart costs a
    /// worker at most this before it says hello again.
    pub reporter_backoff_cap: f64,
    /// How long a child of an upstream may stay a zombie before readiness fails (s, SPEC
    /// §12's grace, not a flag: 10 s in records kept before the field).
    #[serde(default = "ten_s")]
    pub zombie_grace: f64,
    /// The idle upstream's canary (SPEC §12): sent once it has been idle this long (s; 0 in
    /// records kept before the canary, which have no canary faults).
    #[serde(default)]
    pub canary_idle: f64,
    /// Its deadline on the whole answer (s).
    #[serde(default)]
    pub canary_deadline: f64,
    /// How often the agent's canary task looks whether one is due (s: its 1 s, or `idle`
    /// if shorter).
    #[serde(default)]
    pub canary_look: f64,
}

fn twenty_ms() -> f64 {
    0.02
}

fn ten_s() -> f64 {
    10.0
}

/// An upper bound: the timeout that governs it plus what the mechanism adds by design; the
/// judge adds the starvation measured over the same window (docs/e2e.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// The configured timeout (s).
    pub base: f64,
    /// Intervals the mechanism adds (s): a heartbeat, a /proc sample, a probe period.
    pub mechanism: f64,
}

impl Bound {
    /// Base and mechanism, without starvation.
    pub fn total(self) -> f64 {
        self.base + self.mechanism
    }
}

/// What one probe path of the fault's target shows while the fault holds and until it
/// cleared.
#[derive(Debug, Clone, Copy)]
pub enum PathRule {
    /// Passes throughout: a failure is a false failure.
    Pass,
    /// May fail, only with these reasons (each a prefix of the agent's reason).
    MayFail(&'static [&'static str]),
    /// Fails with these reasons within `detect` of the fault, not before `not_before`, and
    /// keeps failing until the fault is cleared.
    MustFail {
        /// The reasons it may give (prefixes).
        reasons: &'static [&'static str],
        /// By when, after the fault began.
        detect: fn(&Flags) -> Bound,
        /// Not before this long after the fault began (s): an early verdict is wrong too.
        not_before: fn(&Flags) -> f64,
    },
}

impl PathRule {
    /// The reasons allowed on this path while the fault holds (none for `Pass`).
    pub fn reasons(&self) -> &'static [&'static str] {
        match self {
            PathRule::Pass => &[],
            PathRule::MayFail(r) | PathRule::MustFail { reasons: r, .. } => r,
        }
    }
}

/// How the runner acts on a target to start or end a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGSTOP to the target's process group.
    Stop,
    /// SIGCONT.
    Continue,
    /// SIGKILL, reaped.
    Kill,
    /// Start the target again, as the kubelet restarts an exited container (after the
    /// crash-loop back-off the plan chose).
    Restart,
    /// A protocol worker's loop mode (`run`, `freeze`, `mute`, `stuck_load`; see the
    /// `soak-worker` binary).
    Mode(&'static str),
    /// Fake vLLM requests, in order (`/control/hang`, `/sleep`, ...; see `fake_vllm`).
    Control(&'static [&'static str]),
    /// Into the cgroup v1 freezer (uninterruptible sleep, `D` in /proc).
    Freeze,
    /// Out of the freezer.
    Thaw,
}

/// What a fault kind needs of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing special.
    Nothing,
    /// Root and the cgroup v1 freezer (`/sys/fs/cgroup/freezer`).
    Freezer,
    /// An upstream with two engines or more (vLLM data parallel).
    DataParallel,
    /// The idle upstream with a canary (SPEC §12); it gets only these kinds, and they go
    /// nowhere else (the others' load keeps them from ever being idle).
    Canary,
}

/// One fault kind: a row of the table.
#[derive(Debug, Clone, Copy)]
pub struct FaultKind {
    /// Its name in records and tables.
    pub name: &'static str,
    /// What it acts on.
    pub target: TargetKind,
    /// `/livez/<target>` while it holds.
    pub live: PathRule,
    /// `/readyz/<target>` while it holds.
    pub ready: PathRule,
    /// Starts it.
    pub inject: Action,
    /// Ends it (for `Kill`: `Restart`, after the back-off).
    pub clear: Action,
    /// By when every path passes again after the clear action.
    pub clear_bound: fn(&Flags) -> Bound,
    /// How long the plan holds it at least (s), before a random extra: its slowest
    /// `MustFail` bound and a second, so every such path can be detected first.
    pub min_hold: fn(&Flags) -> f64,
    /// What it needs of the machine.
    pub needs: Needs,
}

impl FaultKind {
    /// The rule for path `probe` (`live` or `ready`).
    pub fn rule(&self, probe: Probe) -> PathRule {
        match probe {
            Probe::Live => self.live,
            Probe::Ready => self.ready,
        }
    }
}

/// The two probes of a target the soak judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// `/livez/<target>` (`/livez` for the agent).
    Live,
    /// `/readyz/<target>`.
    Ready,
}

impl Probe {
    /// Both, in table order.
    pub const ALL: [Probe; 2] = [Probe::Live, Probe::Ready];

    /// The agent's path for `target` (`agent`: the agent's own).
    pub fn path(self, target: &str) -> String {
        match (self, target) {
            (Probe::Live, "agent") => "/livez".into(),
            (Probe::Ready, "agent") => "/readyz".into(),
            (Probe::Live, t) => format!("/livez/{t}"),
            (Probe::Ready, t) => format!("/readyz/{t}"),
        }
    }
}

// Bounds, each the SPEC rule that fires plus the intervals its evidence waits for.
// Protocol workers (SPEC §2, §7):
/// No heartbeat for the hang timeout: the clock restarted at the last heartbeat, sent
/// before the fault.
fn hang(f: &Flags) -> Bound {
    Bound {
        base: f.hang_timeout,
        mechanism: f.probe_period,
    }
}
/// The last heartbeat came up to two heartbeat intervals before the fault took hold.
fn hang_not_before(f: &Flags) -> f64 {
    f.hang_timeout - 2.0 * f.heartbeat
}
/// Progress unmoved for the stall timeout: the last heartbeat that showed it moving may come
/// one heartbeat after the loop stopped.
fn loop_stall(f: &Flags) -> Bound {
    Bound {
        base: f.stall_timeout,
        mechanism: f.worker_tick + f.heartbeat + f.probe_period,
    }
}
fn loop_stall_not_before(f: &Flags) -> f64 {
    f.stall_timeout - f.heartbeat
}
/// `phase: loading` is sent once the worker reads its mode, and the load clock restarts at
/// that phase message.
fn load_stall(f: &Flags) -> Bound {
    Bound {
        base: f.load_stall_timeout,
        mechanism: f.worker_tick + f.probe_period,
    }
}
/// The phase message goes out once the worker reads its mode.
fn next_tick(f: &Flags) -> Bound {
    Bound {
        base: 0.0,
        mechanism: f.worker_tick + f.probe_period,
    }
}
/// No heartbeat for the hang timeout once the worker read its mode.
fn muted(f: &Flags) -> Bound {
    Bound {
        base: f.hang_timeout,
        mechanism: f.worker_tick + f.probe_period,
    }
}
fn load_stall_not_before(f: &Flags) -> f64 {
    f.load_stall_timeout
}
/// `D` sampled from the first /proc sample after the freeze, for the D-state timeout; or
/// no heartbeat for the hang timeout, whichever comes first.
fn d_state(f: &Flags) -> Bound {
    Bound {
        base: f.hang_timeout.min(f.d_state_timeout + f.proc_interval),
        mechanism: f.probe_period,
    }
}
fn d_state_not_before(f: &Flags) -> f64 {
    hang_not_before(f).min(f.d_state_timeout)
}
/// A disconnect re-samples the pid at once (SPEC §2): only the probe's period.
fn at_once(f: &Flags) -> Bound {
    Bound {
        base: 0.0,
        mechanism: f.probe_period,
    }
}
fn zero(_: &Flags) -> f64 {
    0.0
}
/// The next heartbeat is newer evidence than any /proc sample or stale clock (SPEC §7);
/// for a mode written to the worker, once it read it.
fn next_heartbeat(f: &Flags) -> Bound {
    Bound {
        base: 0.0,
        mechanism: f.worker_tick + f.heartbeat + f.probe_period,
    }
}
/// After a thaw, the next heartbeat, and the next /proc sample no longer `D`.
fn next_heartbeat_and_sample(f: &Flags) -> Bound {
    Bound {
        base: 0.0,
        mechanism: f.heartbeat + f.proc_interval + f.probe_period,
    }
}

// Upstreams (SPEC §8):
/// `stopped` from a /proc sample after the hang timeout (probes time out before it).
fn upstream_stopped(f: &Flags) -> Bound {
    Bound {
        base: f.hang_timeout,
        mechanism: f.proc_interval + f.probe_period,
    }
}
/// The next probe of the upstream (refused, or answered again): one probe period.
fn next_upstream_probe(f: &Flags) -> Bound {
    Bound {
        base: 0.0,
        mechanism: f.upstream_period + f.probe_period,
    }
}
/// A restarted server: its next probe passes and the next /proc sample finds its process.
fn next_upstream_probe_and_sample(f: &Flags) -> Bound {
    Bound {
        base: 0.0,
        mechanism: f.upstream_period + f.proc_interval + f.probe_period,
    }
}
/// Busy and no work counter moved for the stall timeout, as answered scrapes show it (issue
/// 26): the clock starts at the first scrape after the engine stopped (up to a /proc
/// interval later) and the stall is seen at a scrape (up to another), as scenario U2 bounds
/// it.
fn upstream_stall(f: &Flags) -> Bound {
    Bound {
        base: f.stall_timeout,
        mechanism: 2.0 * f.proc_interval + f.probe_period,
    }
}
fn upstream_stall_not_before(f: &Flags) -> f64 {
    f.stall_timeout - 2.0 * f.proc_interval
}
/// The next scrape sees the counters move.
fn next_scrape(f: &Flags) -> Bound {
    Bound {
        base: 0.0,
        mechanism: f.proc_interval + f.probe_period,
    }
}
/// A probe sent after the server turned slow times out: at most a period until it is sent,
/// then the probe's timeout.
fn upstream_timeout(f: &Flags) -> Bound {
    Bound {
        base: f.upstream_timeout,
        mechanism: f.upstream_period + f.probe_period,
    }
}
/// A probe sent up to a period before the server turned slow, but read by it after, waits
/// the new delay: its timeout can come a period less than the probe timeout after the
/// switch.
fn upstream_timeout_not_before(f: &Flags) -> f64 {
    (f.upstream_timeout - f.upstream_period).max(0.0)
}
/// A zombie child for the grace period (SPEC §12): its clock starts at the first /proc
/// sample that finds it (up to an interval after the child died).
fn zombie(f: &Flags) -> Bound {
    Bound {
        base: f.zombie_grace,
        mechanism: f.proc_interval + f.probe_period,
    }
}
fn zombie_not_before(f: &Flags) -> f64 {
    f.zombie_grace
}
/// The canary after the engine died: the next one is due `idle` after the last one ended
/// (answered at once before the death), seen at the task's next look, and misses its
/// deadline.
fn canary_missed(f: &Flags) -> Bound {
    Bound {
        base: f.canary_idle + f.canary_deadline,
        mechanism: f.canary_look + f.probe_period,
    }
}
/// A canary sent at the death misses its deadline no sooner.
fn canary_missed_not_before(f: &Flags) -> f64 {
    f.canary_deadline
}
/// After the revival the canary the dead engine held answers at once; else the next one,
/// due `idle` after the last one ended (missed) and sent at a look, passes.
fn canary_passes(f: &Flags) -> Bound {
    Bound {
        base: f.canary_idle,
        mechanism: f.canary_look + f.probe_period,
    }
}

/// The fault kinds, by target. The soak draws from the rows whose `needs` the machine has.
pub const KINDS: &[FaultKind] = &[
    FaultKind {
        name: "stop",
        target: TargetKind::Worker,
        live: PathRule::MustFail {
            reasons: &["heartbeat_timeout", "stopped"],
            detect: hang,
            not_before: hang_not_before,
        },
        ready: PathRule::MustFail {
            reasons: &["heartbeat_timeout", "stopped"],
            detect: hang,
            not_before: hang_not_before,
        },
        inject: Action::Stop,
        clear: Action::Continue,
        clear_bound: next_heartbeat,
        min_hold: |f| hang(f).total() + 1.0,
        needs: Needs::Nothing,
    },
    FaultKind {
        name: "freeze_loop",
        target: TargetKind::Worker,
        live: PathRule::MustFail {
            reasons: &["loop_stalled"],
            detect: loop_stall,
            not_before: loop_stall_not_before,
        },
        ready: PathRule::MustFail {
            reasons: &["loop_stalled"],
            detect: loop_stall,
            not_before: loop_stall_not_before,
        },
        inject: Action::Mode("freeze"),
        clear: Action::Mode("run"),
        clear_bound: next_heartbeat,
        min_hold: |f| loop_stall(f).total() + 1.0,
        needs: Needs::Nothing,
    },
    FaultKind {
        name: "mute",
        target: TargetKind::Worker,
        live: PathRule::MustFail {
            reasons: &["heartbeat_timeout"],
            detect: muted,
            not_before: hang_not_before,
        },
        ready: PathRule::MustFail {
            reasons: &["heartbeat_timeout"],
            detect: muted,
            not_before: hang_not_before,
        },
        inject: Action::Mode("mute"),
        clear: Action::Mode("run"),
        clear_bound: next_heartbeat,
        min_hold: |f| muted(f).total() + 1.0,
        needs: Needs::Nothing,
    },
    FaultKind {
        name: "stuck_load",
        target: TargetKind::Worker,
        live: PathRule::MustFail {
            reasons: &["load_stalled"],
            detect: load_stall,
            not_before: load_stall_not_before,
        },
        ready: PathRule::MustFail {
            reasons: &["phase: loading", "load_stalled"],
            detect: next_tick,
            not_before: zero,
        },
        inject: Action::Mode("stuck_load"),
        clear: Action::Mode("run"),
        clear_bound: next_heartbeat,
        min_hold: |f| load_stall(f).total() + 1.0,
        needs: Needs::Nothing,
    },
    FaultKind {
        name: "kill",
        target: TargetKind::Worker,
        // SPEC §2: not connected and its pid gone: live passes (the kubelet restarts an
        // exited container anyway).
        live: PathRule::Pass,
        // Then `phase: unknown` between the new instance's hello and its phase message.
        ready: PathRule::MustFail {
            reasons: &["not_connected", "phase: unknown"],
            detect: at_once,
            not_before: zero,
        },
        inject: Action::Kill,
        clear: Action::Restart,
        // The new instance says hello and its phase at its start.
        clear_bound: next_heartbeat,
        min_hold: |f| at_once(f).total() + 1.0,
        needs: Needs::Nothing,
    },
    FaultKind {
        name: "d_state",
        target: TargetKind::Worker,
        live: PathRule::MustFail {
            reasons: &["uninterruptible", "heartbeat_timeout"],
            detect: d_state,
            not_before: d_state_not_before,
        },
        ready: PathRule::MustFail {
            reasons: &["uninterruptible", "heartbeat_timeout"],
            detect: d_state,
            not_before: d_state_not_before,
        },
        inject: Action::Freeze,
        clear: Action::Thaw,
        clear_bound: next_heartbeat_and_sample,
        min_hold: |f| d_state(f).total() + 1.0,
        needs: Needs::Freezer,
    },
    FaultKind {
        name: "stop",
        target: TargetKind::Upstream,
        live: PathRule::MustFail {
            reasons: &["stopped", "probe_failed: timeout"],
            detect: upstream_stopped,
            not_before: zero,
        },
        ready: PathRule::MustFail {
            reasons: &["stopped", "probe_failed: timeout"],
            detect: upstream_stopped,
            not_before: zero,
        },
        inject: Action::Stop,
        clear: Action::Continue,
        clear_bound: next_upstream_probe,
        min_hold: |f| upstream_stopped(f).total() + 1.0,
        needs: Needs::Nothing,
    },
    FaultKind {
        name: "kill",
        target: TargetKind::Upstream,
        // Liveness is the container's own probe's business (SPEC §8): refused while down,
        // then vLLM's own 503 while the restarted server loads (its /health answers 503
        // until the engine is up), until the next probe.
        live: PathRule::MayFail(&["probe_failed: refused", "probe_failed: status 503"]),
        ready: PathRule::MustFail {
            reasons: &[
                "process_gone",
                "probe_failed: refused",
                "probe_failed: status 503",
            ],
            detect: next_upstream_probe,
            not_before: zero,
        },
        inject: Action::Kill,
        clear: Action::Restart,
        clear_bound: next_upstream_probe_and_sample,
        min_hold: |f| next_upstream_probe(f).total() + 1.0,
        needs: Needs::Nothing,
    },
    FaultKind {
        name: "hung_engine",
        target: TargetKind::Upstream,
        live: PathRule::MustFail {
            reasons: &["loop_stalled"],
            detect: upstream_stall,
            not_before: upstream_stall_not_before,
        },
        ready: PathRule::MustFail {
            reasons: &["loop_stalled"],
            detect: upstream_stall,
            not_before: upstream_stall_not_before,
        },
        inject: Action::Control(&["/control/hang"]),
        clear: Action::Control(&["/control/unhang"]),
        clear_bound: next_scrape,
        min_hold: |f| upstream_stall(f).total() + 1.0,
        needs: Needs::Nothing,
    },
    FaultKind {
        name: "slow_health",
        target: TargetKind::Upstream,
        live: PathRule::MustFail {
            reasons: &["probe_failed: timeout"],
            detect: upstream_timeout,
            not_before: upstream_timeout_not_before,
        },
        ready: PathRule::MustFail {
            reasons: &["probe_failed: timeout"],
            detect: upstream_timeout,
            not_before: upstream_timeout_not_before,
        },
        // Every answer, /health and /metrics, waits 1.5 s: past `timeoutSeconds: 1`.
        inject: Action::Control(&["/control/slow?ms=1500"]),
        clear: Action::Control(&["/control/slow?ms=0"]),
        // The probe in flight at the clear still times out, and the ticks that fall due
        // meanwhile are skipped (SPEC §7): the next probe comes at most a timeout and a
        // period later.
        clear_bound: upstream_timeout,
        min_hold: |f| upstream_timeout(f).total() + 1.0,
        needs: Needs::Nothing,
    },
    FaultKind {
        name: "metrics_gone",
        target: TargetKind::Upstream,
        // SPEC §8: a scrape that fails or times out is no evidence either way; /health
        // still answers 200, so the server stays live and ready (issue 26).
        live: PathRule::Pass,
        ready: PathRule::Pass,
        // Every scrape waits 5 s: past the agent's scrape timeout, unanswered.
        inject: Action::Control(&["/control/slow_metrics?ms=5000"]),
        clear: Action::Control(&["/control/slow_metrics?ms=0"]),
        clear_bound: next_scrape,
        // Past twice the stall timeout: the span in which the metrics are dropped as stale.
        min_hold: |f| 2.0 * f.stall_timeout + f.proc_interval + 1.0,
        needs: Needs::Nothing,
    },
    FaultKind {
        name: "one_engine_hung",
        target: TargetKind::Upstream,
        // SPEC §12: each engine judged on its own series; the other keeps working.
        live: PathRule::MustFail {
            reasons: &["loop_stalled: engine 1"],
            detect: upstream_stall,
            not_before: upstream_stall_not_before,
        },
        ready: PathRule::MustFail {
            reasons: &["loop_stalled: engine 1"],
            detect: upstream_stall,
            not_before: upstream_stall_not_before,
        },
        inject: Action::Control(&["/control/hang?engine=1"]),
        clear: Action::Control(&["/control/unhang"]),
        clear_bound: next_scrape,
        min_hold: |f| upstream_stall(f).total() + 1.0,
        needs: Needs::DataParallel,
    },
    FaultKind {
        name: "sleep",
        target: TargetKind::Upstream,
        // SPEC §12: asleep is live; after a manual `/sleep` only an operator's `/wake_up`
        // wakes it, so it is not ready (`sleeping`). Its stall clock is paused: held past
        // the stall timeout, it never turns `loop_stalled`.
        live: PathRule::Pass,
        // The next scrape reads the engines' sleep state.
        ready: PathRule::MustFail {
            reasons: &["sleeping"],
            detect: next_scrape,
            not_before: zero,
        },
        inject: Action::Control(&["/sleep?level=1"]),
        // The sleep aborted the running requests: the soak's load comes back with the wake.
        clear: Action::Control(&["/wake_up", "/control/busy?running=2&waiting=1"]),
        clear_bound: next_scrape,
        min_hold: |f| f.stall_timeout + 2.0 * f.proc_interval + 1.0,
        needs: Needs::Nothing,
    },
    FaultKind {
        name: "zombie_child",
        target: TargetKind::Upstream,
        // SPEC §12: vLLM watches its own children (a dead engine core ends the server), so a
        // zombie fails only readiness; `/health` stays 200 throughout.
        live: PathRule::Pass,
        ready: PathRule::MustFail {
            reasons: &["child_zombie: sleep "],
            detect: zombie,
            not_before: zombie_not_before,
        },
        inject: Action::Control(&["/control/zombie"]),
        clear: Action::Control(&["/control/reap"]),
        // The next /proc sample no longer finds it.
        clear_bound: next_scrape,
        min_hold: |f| zombie(f).total() + 1.0,
        needs: Needs::Nothing,
    },
    FaultKind {
        name: "idle_death",
        target: TargetKind::Upstream,
        // SPEC §12: an engine that died while idle (vLLM #16259) shows in no counter and
        // `/health` stays 200; only the canary misses its deadline, on both paths.
        live: PathRule::MustFail {
            reasons: &["loop_stalled: canary"],
            detect: canary_missed,
            not_before: canary_missed_not_before,
        },
        ready: PathRule::MustFail {
            reasons: &["loop_stalled: canary"],
            detect: canary_missed,
            not_before: canary_missed_not_before,
        },
        inject: Action::Control(&["/control/die"]),
        clear: Action::Control(&["/control/revive"]),
        clear_bound: canary_passes,
        min_hold: |f| canary_missed(f).total() + 1.0,
        needs: Needs::Canary,
    },
];

/// The agent's own faults, judged across every target: `agent_kill` (SIGKILL, then the
/// kubelet's restart after its crash-loop back-off) and `agent_stop` (SIGSTOP for less than
/// the hang timeout less a heartbeat and a /proc interval, as a CPU-throttled agent: no
/// target may be judged hung for it).
pub const AGENT_KINDS: &[&str] = &["agent_kill", "agent_stop"];

/// The longest an `agent_stop` lasts (s): after it, every clock the agent keeps is still
/// under its timeout (the last heartbeat or counter move came at most one heartbeat or one
/// /proc interval before the stop).
pub fn agent_stop_max(f: &Flags) -> f64 {
    (f.hang_timeout - f.heartbeat - f.proc_interval)
        .min(f.stall_timeout - f.proc_interval)
        .max(0.0)
}

/// What a target may show after the agent (re)started until it has heard from it: a
/// worker until its reporter's hello, an upstream until its first probe answered and its
/// process was found.
pub const RECOVERY_REASONS: &[&str] = &["not_connected", "no_result_yet", "phase: unknown"];

/// From the agent answering again to every healthy target passing: the reporter's back-off
/// cap before it says hello again, one /proc interval before an upstream's process is found,
/// and a probe period.
pub fn agent_recovery(f: &Flags) -> Bound {
    Bound {
        base: f.reporter_backoff_cap,
        mechanism: f.proc_interval + f.probe_period,
    }
}

/// The row named `name` for `target`.
pub fn kind(name: &str, target: TargetKind) -> Option<&'static FaultKind> {
    KINDS.iter().find(|k| k.name == name && k.target == target)
}

/// The kubelet's crash-loop back-off before restart number `restarts_recently + 1` (10 s,
/// doubling, capped at 300 s; reset after 10 minutes of running), scaled by `scale` (the
/// soak runs at 1/10 of the kubelet's time, as scenario 12 does).
pub fn restart_backoff(restarts_recently: u32, scale: f64) -> f64 {
    (10.0 * 2f64.powi(i32::try_from(restarts_recently.min(8)).unwrap_or(8))).min(300.0) * scale
}

/// How far back restarts count for the back-off (the kubelet's 10 minutes, scaled).
pub fn backoff_reset(scale: f64) -> f64 {
    600.0 * scale
}

/// The soak's time scale against the kubelet's.
pub const KUBELET_SCALE: f64 = 0.1;

/// A duration in seconds, for records.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags a soak runs with: the e2e agent's and the soak's own intervals.
    fn flags() -> Flags {
        super::super::run::flags(&crate::pod::AgentOptions::default())
    }

    #[test]
    fn every_must_fail_rule_is_detectable_before_its_fault_is_cleared() {
        let f = flags();
        for k in KINDS {
            for p in Probe::ALL {
                if let PathRule::MustFail {
                    reasons,
                    detect,
                    not_before,
                } = k.rule(p)
                {
                    assert!(!reasons.is_empty(), "{} {p:?}", k.name);
                    assert!(
                        (k.min_hold)(&f) > detect(&f).total(),
                        "{} {p:?}: held shorter than its bound",
                        k.name
                    );
                    assert!(not_before(&f) <= detect(&f).total(), "{} {p:?}", k.name);
                }
            }
        }
    }

    #[test]
    fn names_are_unique_per_target_and_found() {
        for k in KINDS {
            let same = KINDS
                .iter()
                .filter(|o| o.name == k.name && o.target == k.target)
                .count();
            assert_eq!(same, 1, "{}", k.name);
            assert!(kind(k.name, k.target).is_some());
        }
        assert!(kind("stop", TargetKind::Agent).is_none());
    }

    #[test]
    fn backoff_is_the_kubelets_scaled() {
        assert_eq!(restart_backoff(0, KUBELET_SCALE), 1.0);
        assert_eq!(restart_backoff(2, KUBELET_SCALE), 4.0);
        assert_eq!(restart_backoff(20, KUBELET_SCALE), 30.0);
        assert_eq!(backoff_reset(KUBELET_SCALE), 60.0);
    }

    #[test]
    fn an_agent_stop_leaves_every_clock_under_its_timeout() {
        let f = flags();
        assert!((agent_stop_max(&f) - 1.5).abs() < 1e-9);
        assert_eq!(Probe::Live.path("agent"), "/livez");
        assert_eq!(Probe::Ready.path("vllm-a"), "/readyz/vllm-a");
    }
}
